"""PVConv and its parts (pvcnn ``modules/{pvconv,voxelization,shared_mlp}.py``), CPU-capable.

The CUDA kernels of upstream PVCNN are replaced by :func:`sparse3d.nn.functional.avg_voxelize`
(scatter-mean into an ``R^3`` grid) and :func:`sparse3d.nn.functional.trilinear_devoxelize`.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import torch
from torch import nn

from ...nn.functional import avg_voxelize, trilinear_devoxelize

__all__ = ["SharedMLP", "Voxelization", "PVConv", "normalize_coords"]


def normalize_coords(coords: torch.Tensor, resolution: int, normalize: bool = True, eps: float = 0.0) -> torch.Tensor:
    """PVCNN voxelization coordinates (pvcnn ``Voxelization.forward``), without gradient.

    ``n = c - mean_N(c)``; with ``normalize``: ``n / (2 * max_N ||n||_2 + eps) + 0.5`` (the
    cloud's bounding sphere mapped into the unit cube), else ``(n + 1) / 2``; then
    ``clamp(n * R, 0, R - 1)``. A cloud of zero radius with ``eps = 0`` (upstream: 0/0 = NaN)
    is mapped to the centre, ``0.5 * R`` clamped.

    Args:
        coords: ``[B, 3, N]`` float. resolution: ``R``.
    Returns:
        ``[B, 3, N]`` float in ``[0, R - 1]`` (round to get the voxel index).
    """
    if coords.dim() != 3 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [B, 3, N], got {tuple(coords.shape)}")
    if not coords.is_floating_point():
        raise TypeError(f"coords must be floating point, got {coords.dtype}")
    c = coords.detach()
    n = c - c.mean(2, keepdim=True)
    if normalize:
        denom = n.norm(dim=1, keepdim=True).max(dim=2, keepdim=True).values * 2.0 + eps
        n = n / torch.where(denom > 0, denom, torch.ones_like(denom)) + 0.5
    else:
        n = (n + 1) / 2.0
    return torch.clamp(n * resolution, 0, resolution - 1)


class Voxelization(nn.Module):
    """Normalize coordinates and average-pool features into a dense grid (no parameters).

    Input: feats ``[B, C, N]``, coords ``[B, 3, N]`` float.
    Output: (grid ``[B, C, R, R, R]``, normalized coords ``[B, 3, N]`` in ``[0, R-1]``);
    voxel ``round(normalized coords)`` holds the mean of its points' features.
    """

    def __init__(self, resolution: int, normalize: bool = True, eps: float = 0.0) -> None:
        super().__init__()
        if int(resolution) < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        self.r, self.normalize, self.eps = int(resolution), bool(normalize), float(eps)

    def forward(self, feats: torch.Tensor, coords: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        norm = normalize_coords(coords, self.r, self.normalize, self.eps)
        return avg_voxelize(feats, norm, self.r), norm

    def extra_repr(self) -> str:
        return f"resolution={self.r}" + (f", normalized eps={self.eps}" if self.normalize else "")


class SharedMLP(nn.Sequential):
    """Per-point MLP: [Conv1d k1 -> BatchNorm1d -> ReLU] per width; ``[B, Cin, N] -> [B, Cout, N]``."""

    def __init__(self, in_channels: int, out_channels: Union[int, Sequence[int]]) -> None:
        widths = [out_channels] if isinstance(out_channels, int) else list(out_channels)
        layers = []
        for oc in widths:
            layers += [nn.Conv1d(in_channels, oc, 1), nn.BatchNorm1d(oc), nn.ReLU(True)]
            in_channels = oc
        super().__init__(*layers)
        self.out_channels = in_channels


class PVConv(nn.Module):
    r"""Point-voxel convolution (Liu et al., "Point-Voxel CNN for Efficient 3D Deep Learning",
    NeurIPS 2019, https://arxiv.org/abs/1907.03739).

    Voxel branch: :class:`Voxelization` -> 2 x [Conv3d(k, pad k//2), BatchNorm3d(eps=1e-4),
    LeakyReLU(0.1)] -> trilinear devoxelize at the normalized coords. Point branch:
    :class:`SharedMLP`. Output: the sum of both.

    Input/output: ``(feats [B, Cin, N], coords [B, 3, N])`` -> ``(feats [B, Cout, N], coords)``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, resolution: int = 32,
                 normalize: bool = True, eps: float = 0.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.resolution = kernel_size, int(resolution)
        self.voxelization = Voxelization(resolution, normalize=normalize, eps=eps)
        pad = kernel_size // 2
        self.voxel_layers = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=1, padding=pad),
            nn.BatchNorm3d(out_channels, eps=1e-4),
            nn.LeakyReLU(0.1, True),
            nn.Conv3d(out_channels, out_channels, kernel_size, stride=1, padding=pad),
            nn.BatchNorm3d(out_channels, eps=1e-4),
            nn.LeakyReLU(0.1, True),
        )
        self.point_features = SharedMLP(in_channels, out_channels)

    def forward(self, inputs: Tuple[torch.Tensor, torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        feats, coords = inputs
        grid, norm = self.voxelization(feats, coords)
        grid = self.voxel_layers(grid)
        voxel = trilinear_devoxelize(grid, norm, self.resolution, self.training)
        return voxel + self.point_features(feats), coords
