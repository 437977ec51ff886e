"""Segmentation losses that complement cross-entropy.

``lovasz_softmax`` is the Lovász-Softmax loss (Berman et al., CVPR 2018), a convex surrogate of the
per-class Jaccard loss ``1 - IoU``; adding it to cross-entropy is the usual SemanticKITTI recipe for the
rare classes. ``class_weights`` turns class frequencies into cross-entropy weights.
"""
from __future__ import annotations

import torch

__all__ = ["lovasz_softmax", "lovasz_grad", "class_weights"]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in descending order.

    Args:
        gt_sorted: ``[P]`` {0, 1} float, the foreground indicator in the order of the sorted errors.
    Returns:
        ``[P]`` float: ``J(1..i) - J(1..i-1)`` with ``J`` the Jaccard loss of the top-i prefix.
    """
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1.0 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                   classes: str = "present") -> torch.Tensor:
    """Lovász-Softmax loss.

    Args:
        probs: ``[N, C]`` class probabilities (softmax of the logits).
        labels: ``[N]`` int64 in ``[0, C)`` or ``ignore_index``.
        classes: ``"present"`` averages over the classes that occur in ``labels``; ``"all"`` over all C
            (absent classes then only penalize false positives).
    Returns:
        scalar: mean over classes of ``<sorted |fg - p_c|, lovasz_grad(fg sorted)>``; 0 (with a graph) when
        no label is valid.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs must be [N, C] and labels [N], got {tuple(probs.shape)} and {tuple(labels.shape)}")
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    C = probs.shape[1]
    fg = torch.nn.functional.one_hot(labels, C).to(probs.dtype)          # [N, C]
    present = fg.sum(0) > 0
    cls = torch.nonzero(present).flatten() if classes == "present" else torch.arange(C, device=probs.device)
    errors = (fg[:, cls] - probs[:, cls]).abs()                            # [N, C']
    errors_sorted, perm = torch.sort(errors, 0, descending=True)
    fg_sorted = torch.gather(fg[:, cls], 0, perm)
    grads = torch.stack([lovasz_grad(fg_sorted[:, j]) for j in range(fg_sorted.shape[1])], 1)
    return (errors_sorted * grads).sum(0).mean()


def class_weights(counts: torch.Tensor, scheme: str = "inv_sqrt") -> torch.Tensor:
    """Cross-entropy class weights from label counts ``[C]``, normalized to mean 1 over the seen classes.

    Schemes: ``"inv_sqrt"`` ``1/sqrt(f)``; ``"inv_log"`` ``1/ln(1.02 + f)`` (ENet); ``"none"`` all ones.
    Classes never seen get the largest seen weight.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError("counts must be a 1-D tensor of non-negative class counts")
    if scheme == "none":
        return torch.ones_like(counts, dtype=torch.float32)
    seen = counts > 0
    if not seen.any():
        raise ValueError("class_weights: all class counts are zero")
    f = counts / counts.sum()
    if scheme == "inv_sqrt":
        w = torch.where(seen, 1.0 / f.clamp_min(1e-12).sqrt(), torch.zeros_like(f))
    elif scheme == "inv_log":
        w = torch.where(seen, 1.0 / torch.log(1.02 + f), torch.zeros_like(f))
    else:
        raise ValueError(f"unknown class weighting scheme {scheme!r} (inv_sqrt, inv_log, none)")
    w = w / w[seen].mean()
    w[~seen] = w[seen].max()
    return w.float()
