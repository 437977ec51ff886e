"""``Conv3d`` module (cf. torchsparse ``nn/modules/conv.py``)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ...tensor import SparseTensor
from ...utils.args import IntOr3, triple
from .. import functional as F

__all__ = ["Conv3d"]


class Conv3d(nn.Module):
    r"""Sparse 3D convolution.

    Args:
        in_channels, out_channels: feature widths.
        kernel_size, stride, dilation: int or (x, y, z) tuple.
        bias: add a learnable ``[Cout]`` bias.
        transposed: upsample onto the cached finer coordinates (inverse of a strided conv).
        dataflow: force ``"fused"`` / ``"gather_gemm_scatter"``; None = heuristic.

    Weight: ``[K, Cin, Cout]`` with K = prod(kernel_size) and offsets x fastest:
    ``k = ix + Kx * (iy + Ky * iz)``, offset ``(i - K//2)*d*t`` (odd K) or ``i*d*t`` (even K).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOr3 = 3, stride: IntOr3 = 1,
                 dilation: IntOr3 = 1, bias: bool = False, transposed: bool = False,
                 dataflow: Optional[str] = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = triple(kernel_size, "kernel_size")
        self.stride = triple(stride, "stride")
        self.dilation = triple(dilation, "dilation")
        self.transposed = transposed
        self.dataflow = dataflow
        K = math.prod(self.kernel_size)
        self.kernel_volume = K
        self.weight = nn.Parameter(torch.empty(K, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan = (self.out_channels if self.transposed else self.in_channels) * self.kernel_volume
        bound = 1.0 / math.sqrt(fan)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.transposed:
            s += ", transposed=True"
        return s

    def forward(self, input: SparseTensor) -> SparseTensor:
        return F.conv3d(input, self.weight, self.kernel_size, self.bias, self.stride, self.dilation,
                        self.transposed, self.dataflow)
