"""Multi-sweep motion features for a dense velocity branch: per-Δt-bin BEV occupancy through a small conv tower.

A moving object shows in the accumulated (ego-motion compensated) sweeps as a trail of occupancy blobs, the newest
at its keyframe position and older ones displaced against its velocity. :class:`MotionEncoder` rasterizes the
points per Δt bin on a grid ``upsample`` times finer than the detection head's (``log1p`` count as
:func:`~sparse3d.models.bevfusion.lidar.sparse_encoder.time_raster`, plus the mean sub-cell x / y offset, which
resolves displacements below a cell), and reads the trails with a few (dilated) 3x3 convs down to the head grid.
It has its own parameters, so a velocity loss trained through it does not compete with detection for the shared
BEV trunk (:class:`~sparse3d.models.bevfusion.heads.TransFusionHead` ``motion_channels``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .sparse_encoder import time_binned_means

__all__ = ["MotionEncoder"]


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class MotionEncoder(nn.Module):
    """``forward(points: list of B [P_i, >=5] (x, y, z, intensity, Δt)) -> [B, channels, X, Y]``.

    Args:
        point_cloud_range: (xmin, ymin, zmin, xmax, ymax, zmax) of the BEV grid (points outside are not counted).
        grid_size: ``(X, Y)`` cells of the output (the detection head's grid).
        time_bins: increasing Δt edges in seconds, e.g. ``[0, 0.025, 0.125, 0.275, 0.5]``; ``T = len - 1`` bins.
        upsample: the raster has ``(upsample X, upsample Y)`` cells; a stride-``upsample`` conv brings it to the
            head grid (finer rasters resolve slow objects: 1 m/s moves 0.45 m over 9 sweeps).
        channels: width of the tower. dilations: one 3x3 conv per entry at the head grid; the receptive field
            (radius ~ ``1.5 + sum(dilations)`` head cells) must cover the longest trail (15 m/s x 0.45 s = 6.75 m).
    """

    def __init__(self, point_cloud_range: Sequence[float], grid_size: Sequence[int], time_bins: Sequence[float],
                 upsample: int = 2, channels: int = 32, dilations: Sequence[int] = (1, 2, 4, 2)) -> None:
        super().__init__()
        pcr = [float(v) for v in point_cloud_range]
        if len(pcr) != 6 or not all(math.isfinite(v) for v in pcr) or pcr[3] <= pcr[0] or pcr[4] <= pcr[1] \
                or pcr[5] <= pcr[2]:
            raise ValueError(f"point_cloud_range must be 6 finite values with max > min, got {point_cloud_range!r}")
        if len(grid_size) != 2 or any(int(v) != v or v < 1 for v in grid_size):
            raise ValueError(f"grid_size must be two positive ints, got {grid_size!r}")
        X, Y = (int(v) for v in grid_size)
        tb = [float(t) for t in time_bins]
        if len(tb) < 2 or any(not math.isfinite(t) for t in tb) or any(b <= a for a, b in zip(tb, tb[1:])):
            raise ValueError(f"time_bins must be >= 2 increasing finite Δt edges (seconds), got {time_bins!r}")
        if int(upsample) != upsample or upsample < 1 or int(channels) != channels or channels < 1:
            raise ValueError(f"upsample and channels must be positive ints, got {upsample}, {channels}")
        if any(int(d) != d or d < 1 for d in dilations):
            raise ValueError(f"dilations must be positive ints, got {list(dilations)}")
        self.point_cloud_range, self.grid_size, self.time_bins = pcr, (X, Y), tb
        self.upsample, self.out_channels = int(upsample), int(channels)
        T, c = len(tb) - 1, int(channels)
        layers = [_conv_bn(3 * T, c)]
        if self.upsample > 1:
            layers.append(_conv_bn(c, c, stride=self.upsample))
        layers += [_conv_bn(c, c, dilation=int(d)) for d in dilations]
        self.tower = nn.Sequential(*layers)

    def raster(self, points: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[B, 3 T, upsample X, upsample Y]`` per Δt bin: ``log1p`` point count, then the mean x and y offset of
        those points from the cell centre in cell units (``[-0.5, 0.5)``, 0 in empty cells): the tower's input."""
        X, Y = self.grid_size
        return _motion_raster(points, self.time_bins, self.point_cloud_range, (X * self.upsample, Y * self.upsample))

    def forward(self, points) -> torch.Tensor:
        pts = [points] if isinstance(points, torch.Tensor) else list(points)
        if not pts:
            raise ValueError("MotionEncoder needs at least one point cloud")
        return self.tower(self.raster(pts).to(next(self.parameters()).dtype))   # stride u: u X -> X cells


def _motion_raster(points: Sequence[torch.Tensor], edges: Sequence[float], point_cloud_range: Sequence[float],
                   shape: Sequence[int]) -> torch.Tensor:
    """``[B, 3 T, X, Y]``: per Δt bin the ``log1p`` point count (channels ``0..T-1``, equal to :func:`time_raster`),
    then the mean x (``T..2T-1``) and y (``2T..3T-1``) offset of the points in a cell from its centre, in cell
    units (0 where empty); one binning pass (:func:`time_cells`) per point cloud."""
    return time_binned_means(points, edges, point_cloud_range, shape,
                             lambda fx, fy, z: [fx - fx.floor() - 0.5, fy - fy.floor() - 0.5], 2,
                             "MotionEncoder: points")
