"""Sparse pooling layers: local ``MaxPool3d`` / ``AvgPool3d`` and per-sample global pools."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ...tensor import SparseTensor
from ...utils.args import IntOr3, triple
from ..functional.pooling import avg_pool3d, global_avg_pool, global_max_pool, max_pool3d

__all__ = ["MaxPool3d", "AvgPool3d", "GlobalAvgPool", "GlobalMaxPool"]


class _LocalPool(nn.Module):
    def __init__(self, kernel_size: IntOr3, stride: IntOr3 = 1, dilation: IntOr3 = 1) -> None:
        super().__init__()
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.dilation = triple(dilation, "dilation")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, dilation={self.dilation}"


class MaxPool3d(_LocalPool):
    """Channel-wise max over the existing neighbours, with ``Conv3d`` coordinate semantics.

    stride 1 keeps the coordinates; stride s maps to ``floor(c / (s*t)) * (s*t)``. The kernel
    map is shared with any ``Conv3d`` of the same (tensor stride, kernel_size, stride, dilation).
    feats ``[N, C] -> [M, C]``.
    """

    def forward(self, input: SparseTensor) -> SparseTensor:
        return max_pool3d(input, self.kernel_size, self.stride, self.dilation)


class AvgPool3d(_LocalPool):
    """Mean over the existing neighbours only (absent voxels are not counted), ``Conv3d``
    coordinate semantics as :class:`MaxPool3d`. feats ``[N, C] -> [M, C]``."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        return avg_pool3d(input, self.kernel_size, self.stride, self.dilation)


class GlobalAvgPool(nn.Module):
    """Mean of each batch sample's voxel features: ``SparseTensor -> [B, C]``."""

    def forward(self, input: SparseTensor, batch_size: Optional[int] = None) -> torch.Tensor:
        return global_avg_pool(input, batch_size)


class GlobalMaxPool(nn.Module):
    """Channel-wise max of each batch sample's voxel features: ``SparseTensor -> [B, C]``."""

    def forward(self, input: SparseTensor, batch_size: Optional[int] = None) -> torch.Tensor:
        return global_max_pool(input, batch_size)
