"""Normalization layers on SparseTensor features."""
from __future__ import annotations

from torch import nn

from ...tensor import SparseTensor

__all__ = ["BatchNorm"]


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the voxel rows of ``feats [N, C]`` (all samples of the batch pooled)."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        return input.replace(super().forward(input.feats))
