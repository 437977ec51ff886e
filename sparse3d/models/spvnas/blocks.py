"""Building blocks of MinkUNet / SPVCNN (cf. spvnas ``core/models/semantic_kitti/minkunet.py``).

Every block maps a :class:`~sparse3d.SparseTensor` with feats ``[N, Cin]`` to a
SparseTensor with feats ``[M, Cout]`` sharing the input's cache.
"""
from __future__ import annotations

import torch
from torch import nn

from ... import nn as spnn
from ...tensor import SparseTensor

__all__ = ["BasicConvolutionBlock", "BasicDeconvolutionBlock", "ResidualBlock", "sparse_cat"]


class BasicConvolutionBlock(nn.Sequential):
    """Conv3d(ks, stride, dilation) -> BatchNorm -> ReLU.

    With ``stride=2, ks=2`` this is the MinkUNet downsampling block:
    coords ``c`` at tensor stride ``t`` go to ``floor(c / 2t) * 2t``.
    """

    def __init__(self, inc: int, outc: int, ks: int = 3, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            spnn.Conv3d(inc, outc, kernel_size=ks, stride=stride, dilation=dilation),
            spnn.BatchNorm(outc),
            spnn.ReLU(True),
        )


class BasicDeconvolutionBlock(nn.Sequential):
    """Transposed Conv3d(ks, stride) -> BatchNorm -> ReLU.

    Upsamples onto the cached finer coordinates of the strided conv it inverts
    (the output rows are those of the matching encoder tensor, in the same order).
    """

    def __init__(self, inc: int, outc: int, ks: int = 3, stride: int = 1) -> None:
        super().__init__(
            spnn.Conv3d(inc, outc, kernel_size=ks, stride=stride, transposed=True),
            spnn.BatchNorm(outc),
            spnn.ReLU(True),
        )


class ResidualBlock(nn.Module):
    """``relu(BN(conv(relu(BN(conv(x))))) + shortcut(x))``.

    The shortcut is the identity when ``inc == outc`` and ``stride == 1``,
    else a 1x1x1 Conv3d + BatchNorm projection.
    """

    def __init__(self, inc: int, outc: int, ks: int = 3, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            spnn.Conv3d(inc, outc, kernel_size=ks, stride=stride, dilation=dilation),
            spnn.BatchNorm(outc),
            spnn.ReLU(True),
            spnn.Conv3d(outc, outc, kernel_size=ks, stride=1, dilation=dilation),
            spnn.BatchNorm(outc),
        )
        if inc == outc and stride == 1:
            self.downsample = nn.Sequential()
        else:
            self.downsample = nn.Sequential(
                spnn.Conv3d(inc, outc, kernel_size=1, stride=stride),
                spnn.BatchNorm(outc),
            )
        self.relu = spnn.ReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.relu(self.net(x) + self.downsample(x))


def sparse_cat(tensors) -> SparseTensor:
    """Concatenate the feats of SparseTensors on the same coordinates (cf. ``torchsparse.cat``).

    Args:
        tensors: sequence of SparseTensors with identical coords ``[N, 4]`` and stride.
    Returns:
        SparseTensor with feats ``[N, sum(C_i)]``, coords/stride/cache of ``tensors[0]``.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("sparse_cat needs at least one tensor")
    first = tensors[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.stride != first.stride:
            raise ValueError(f"tensors[{i}] has stride {t.stride}, expected {first.stride}")
        if t.coords is not first.coords and not torch.equal(t.coords, first.coords):
            raise ValueError(f"tensors[{i}] has different coords from tensors[0]")
    return first.replace(torch.cat([t.feats for t in tensors], dim=1))
