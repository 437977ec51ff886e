"""Losses of the TransFusion head (mmdet semantics, ``reduction='mean'`` with an ``avg_factor``).

- :func:`gaussian_focal_loss` — CenterNet focal loss on a Gaussian heatmap (alpha 2, gamma 4);
- :func:`sigmoid_focal_loss` — RetinaNet focal loss on per-class sigmoid logits, label ``C`` = background;
- :func:`weighted_l1_loss` — L1 on box codes with per-element weights (code weights x positive mask).

Each returns ``loss.sum() / avg_factor`` (``avg_factor`` defaults to the element count, as mmdet's mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["clip_sigmoid", "gaussian_focal_loss", "sigmoid_focal_loss", "weighted_l1_loss"]


def _reduce(loss: torch.Tensor, avg_factor: float | None) -> torch.Tensor:
    if avg_factor is None:
        return loss.mean() if loss.numel() else loss.sum()
    return loss.sum() / max(float(avg_factor), 1e-12)


def clip_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """``sigmoid(x)`` clamped to ``[eps, 1 - eps]``."""
    return torch.clamp(x.sigmoid(), min=eps, max=1 - eps)


def gaussian_focal_loss(pred: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0,
                        avg_factor: float | None = None) -> torch.Tensor:
    """Gaussian focal loss.

    Args:
        pred: probabilities, any shape (e.g. ``clip_sigmoid(dense_heatmap)`` ``[B, C, X, Y]``).
        target: same shape, Gaussian targets in ``[0, 1]``; cells equal to 1 are positives.
        avg_factor: divisor of the summed loss (upstream: number of positives, at least 1).
    Returns:
        scalar. With an all-zero target only the negative term ``-log(1-p) p^alpha`` remains.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    eps = 1e-12
    pos_weights = target.eq(1).to(pred.dtype)
    neg_weights = (1 - target).pow(gamma)
    pos_loss = -(pred + eps).log() * (1 - pred).pow(alpha) * pos_weights
    neg_loss = -(1 - pred + eps).log() * pred.pow(alpha) * neg_weights
    return _reduce(pos_loss + neg_loss, avg_factor)


def sigmoid_focal_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None,
                       alpha: float = 0.25, gamma: float = 2.0, avg_factor: float | None = None) -> torch.Tensor:
    """Sigmoid focal loss.

    Args:
        logits: ``[N, C]`` float.
        labels: ``[N]`` int64 in ``[0, C]``; ``C`` means background (all-zero target).
        weights: ``[N]`` per-sample weights (default 1).
        avg_factor: divisor of the summed loss (upstream: number of positives, at least 1).
    Returns:
        scalar.
    """
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}")
    num_classes = logits.shape[1]
    target = F.one_hot(labels.long(), num_classes + 1)[:, :num_classes].to(logits.dtype)
    p = logits.sigmoid()
    pt = (1 - p) * target + p * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none") * focal_weight
    if weights is not None:
        loss = loss * weights.to(loss.dtype)[:, None]
    return _reduce(loss, avg_factor)


def weighted_l1_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None,
                     avg_factor: float | None = None) -> torch.Tensor:
    """``sum(|pred - target| * weights) / avg_factor``; ``pred``, ``target``, ``weights`` of one shape."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape")
    loss = (pred - target).abs()
    if weights is not None:
        loss = loss * weights
    return _reduce(loss, avg_factor)
