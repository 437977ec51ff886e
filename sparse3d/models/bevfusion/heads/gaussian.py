"""Gaussian heatmap targets as in CenterPoint (``gaussian_radius``, ``draw_heatmap_gaussian``).

Axis order differs from CenterPoint on purpose: sparse3d BEV maps are ``[X, Y]`` (dim 0 = LiDAR x), so
``draw_heatmap_gaussian(heatmap, (ix, iy), r)`` writes around ``heatmap[ix, iy]``. (CenterPoint indexes
``heatmap[y, x]``; upstream TransFusion then swaps the centre, ``center_int[[1, 0]]``, to fit its ``[X, Y]`` BEV —
correct only for square grids. Here there is no swap and no square-grid assumption.)
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["gaussian_radius", "gaussian_2d", "draw_heatmap_gaussian"]


def gaussian_radius(det_size: Sequence[float], min_overlap: float = 0.5) -> float:
    """Gaussian radius (in cells) for a box of ``det_size = (length, width)`` cells, as in CenterPoint.

    The smallest of the three CornerNet radii such that a corner displacement keeps IoU >= ``min_overlap``.
    CenterPoint's exact formulas are kept (including its ``r1``, which is not the textbook root), so the targets
    match upstream TransFusion.
    """
    height, width = float(det_size[0]), float(det_size[1])
    if not 0.0 < min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in (0, 1), got {min_overlap}")
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 * b1 - 4 * a1 * c1, 0.0))) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2 * b2 - 4 * a2 * c2, 0.0))) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3 * b3 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def gaussian_2d(shape: Sequence[int], sigma: float = 1.0) -> np.ndarray:
    """``[shape[0], shape[1]]`` float64 Gaussian with peak 1 at the centre; values below eps·max set to 0."""
    m, n = [(s - 1.0) / 2.0 for s in shape]
    y, x = np.ogrid[-m:m + 1, -n:n + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h


def draw_heatmap_gaussian(heatmap: torch.Tensor, center: Sequence[int], radius: int, k: float = 1.0) -> torch.Tensor:
    """Max-blend a Gaussian of ``radius`` cells (sigma = diameter / 6) peaking at ``heatmap[ix, iy]``, in place.

    Args:
        heatmap: ``[X, Y]`` float tensor (one class).
        center: integer cell ``(ix, iy)``; a centre outside the map draws only the part that falls inside.
        radius: non-negative int.
        k: peak value.
    Returns:
        ``heatmap`` (modified in place).
    """
    if heatmap.ndim != 2:
        raise ValueError(f"heatmap must be [X, Y], got shape {tuple(heatmap.shape)}")
    radius = int(radius)
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    diameter = 2 * radius + 1
    gaussian = gaussian_2d((diameter, diameter), sigma=diameter / 6)
    ix, iy = int(center[0]), int(center[1])
    size_x, size_y = heatmap.shape
    lo_x, hi_x = max(ix - radius, 0), min(ix + radius + 1, size_x)
    lo_y, hi_y = max(iy - radius, 0), min(iy + radius + 1, size_y)
    if lo_x >= hi_x or lo_y >= hi_y:
        return heatmap
    patch = gaussian[lo_x - ix + radius:hi_x - ix + radius, lo_y - iy + radius:hi_y - iy + radius]
    region = heatmap[lo_x:hi_x, lo_y:hi_y]
    region.copy_(torch.maximum(region, torch.from_numpy(patch * k).to(heatmap.device, heatmap.dtype)))
    return heatmap
