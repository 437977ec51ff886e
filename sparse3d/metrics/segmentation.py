r"""Semantic-segmentation metrics: confusion matrix, per-class IoU and mIoU.

Follows the official semantic-kitti-api rules (``auxiliary/np_ioueval.py``): points whose target
is the ignore label are dropped, ``IoU_c = tp / (tp + fp + fn)`` and an absent class (no target,
no prediction) counts as 0 in the mean. The nuScenes-lidarseg convention (``nanmean``: absent
classes are skipped) is available through ``miou(convention="nuscenes")``.
"""
from __future__ import annotations

import torch

__all__ = ["ConfusionMatrix", "CONVENTIONS"]

CONVENTIONS = ("semantickitti", "nuscenes")


class ConfusionMatrix:
    r"""Accumulates a ``[C, C]`` confusion matrix (rows = target, cols = prediction).

    Args:
        num_classes: number of classes ``C`` (ids ``0..C-1``).
        ignore_index: target value that is dropped (default 255). ``None`` drops nothing.

    ``update(pred, target)`` takes ``[N]`` integer tensors (any device; the matrix lives on CPU).
    Targets equal to ``ignore_index`` are dropped; any other target or prediction outside
    ``0..C-1`` raises ValueError.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} collides with a class id (0..{num_classes - 1})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        """Zero the matrix."""
        self.matrix.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predictions ``pred [N]`` against targets ``target [N]`` (integer tensors)."""
        for name, t in (("pred", pred), ("target", target)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor, got {t.dtype}")
        pred, target = pred.reshape(-1).long().cpu(), target.reshape(-1).long().cpu()
        if pred.shape != target.shape:
            raise ValueError(f"pred has {pred.numel()} entries but target has {target.numel()}")
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        C = self.num_classes
        for name, t in (("target", target), ("pred", pred)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= C):
                bad = t[(t < 0) | (t >= C)].unique()[:10].tolist()
                raise ValueError(f"{name} has ids {bad} outside 0..{C - 1}"
                                 + (f" (ignore_index={self.ignore_index})" if name == "target" else ""))
        self.matrix += torch.bincount(target * C + pred, minlength=C * C).view(C, C)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks (no-op unless ``torch.distributed`` is initialized)."""
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            m = self.matrix.clone()
            if dist.get_backend() == "nccl":
                m = m.cuda()
            dist.all_reduce(m, op=dist.ReduceOp.SUM)
            self.matrix = m.cpu()

    def stats(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tp, fp, fn)``: int64 ``[C]`` each."""
        m = self.matrix
        tp = m.diagonal()
        return tp, m.sum(0) - tp, m.sum(1) - tp

    def iou(self) -> torch.Tensor:
        """Per-class IoU ``tp / (tp + fp + fn)``: float64 ``[C]``, 0 for absent classes."""
        tp, fp, fn = self.stats()
        den = (tp + fp + fn).double()
        return torch.where(den > 0, tp.double() / den.clamp(min=1), torch.zeros_like(den))

    def miou(self, convention: str = "semantickitti") -> float:
        """Mean IoU. ``"semantickitti"``: mean over all C classes, absent classes count 0.
        ``"nuscenes"``: classes with ``tp + fp + fn == 0`` are skipped (NaN if all are absent)."""
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}")
        iou = self.iou()
        if convention == "semantickitti":
            return float(iou.mean())
        tp, fp, fn = self.stats()
        present = (tp + fp + fn) > 0
        return float(iou[present].mean()) if present.any() else float("nan")

    def accuracy(self) -> float:
        """Overall accuracy ``sum(tp) / number of counted points`` (NaN when empty)."""
        n = int(self.matrix.sum())
        return float(self.matrix.diagonal().sum()) / n if n else float("nan")
