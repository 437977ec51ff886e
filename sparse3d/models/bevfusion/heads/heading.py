"""Multi-bin heading (yaw) classification + in-bin residual regression (Mousavian et al., "3D Bounding Box
Estimation Using Deep Learning and Geometry", CVPR 2017; PointRCNN's bin-based heading), as an alternative to
regressing ``(sin yaw, cos yaw)`` with L1.

``num_bins`` = K equal bins cover ``[-pi, pi)``: bin ``k`` spans ``[-pi + k w, -pi + (k + 1) w)`` with
``w = 2 pi / K`` and centre ``c_k = -pi + (k + 0.5) w``. A yaw is coded as its bin and the residual
``r = (yaw - c_k) / (w / 2)`` in ``[-1, 1)``. The head predicts ``K`` bin logits and ``K`` residuals (one per bin);
decoding takes the arg-max bin and that bin's residual: ``yaw = c_k + r_k w / 2``.

Why: with L1 on ``(sin, cos)``, a query whose cue is weak or two-sided (front / back of a box) sits at a near-zero
vector (the per-component median), and ``atan2`` of it is noise. A softmax over bins keeps the most likely
direction as the arg-max even when its probability is only a little above the others'.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["HeadingBins"]


class HeadingBins:
    """Encode / decode / loss of a ``num_bins``-bin heading.

    Args:
        num_bins: K >= 2 bins over ``[-pi, pi)``.
    """

    def __init__(self, num_bins: int):
        if int(num_bins) != num_bins or num_bins < 2:
            raise ValueError(f"num_bins must be an int >= 2, got {num_bins!r}")
        self.num_bins = int(num_bins)
        self.width = 2 * math.pi / self.num_bins

    def __repr__(self) -> str:
        return f"HeadingBins(num_bins={self.num_bins})"

    def centers(self, like: torch.Tensor) -> torch.Tensor:
        """``[K]`` bin centres (rad), dtype / device of ``like``."""
        return (torch.arange(self.num_bins, device=like.device, dtype=like.dtype) + 0.5) * self.width - math.pi

    def encode(self, yaw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``yaw [...]`` (any real value, wrapped to ``[-pi, pi)``) -> ``(bin [...] int64, residual [...])`` with the
        residual in ``[-1, 1)`` (units of half a bin)."""
        if not yaw.is_floating_point():
            raise TypeError(f"yaw must be a float tensor, got {yaw.dtype}")
        wrapped = torch.remainder(yaw + math.pi, 2 * math.pi)  # [0, 2 pi)
        k = torch.div(wrapped, self.width, rounding_mode="floor").long().clamp_(0, self.num_bins - 1)
        res = (wrapped - (k.to(yaw.dtype) + 0.5) * self.width) / (self.width / 2)
        return k, res

    def decode(self, logits: torch.Tensor, residuals: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """``logits``, ``residuals`` with K along ``dim`` -> yaw (rad) with ``dim`` removed: arg-max bin centre plus
        its residual times half a bin."""
        if logits.shape != residuals.shape or logits.shape[dim] != self.num_bins:
            raise ValueError(f"logits {tuple(logits.shape)} and residuals {tuple(residuals.shape)} must match, with "
                             f"{self.num_bins} bins along dim {dim}")
        k = logits.argmax(dim, keepdim=True)
        r = residuals.gather(dim, k).squeeze(dim)
        k = k.squeeze(dim)
        return (k.to(residuals.dtype) + 0.5) * self.width - math.pi + r * (self.width / 2)

    def loss(self, logits: torch.Tensor, residuals: torch.Tensor, yaw: torch.Tensor) -> torch.Tensor:
        """Per-element loss ``[N]``: cross-entropy of the bins plus L1 of the target bin's residual.

        Args:
            logits, residuals: ``[N, K]``; yaw: ``[N]`` target headings (rad).
        """
        if logits.ndim != 2 or logits.shape != residuals.shape or logits.shape[1] != self.num_bins:
            raise ValueError(f"logits and residuals must be [N, {self.num_bins}], got {tuple(logits.shape)} and "
                             f"{tuple(residuals.shape)}")
        if yaw.shape != logits.shape[:1]:
            raise ValueError(f"yaw must be [N={logits.shape[0]}], got {tuple(yaw.shape)}")
        k, r = self.encode(yaw.to(logits.dtype))
        ce = F.cross_entropy(logits, k, reduction="none")
        return ce + (residuals.gather(1, k[:, None]).squeeze(1) - r).abs()
