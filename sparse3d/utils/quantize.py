"""Voxelization of raw point coordinates (cf. torchsparse ``sparse_quantize``)."""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

__all__ = ["sparse_quantize"]


def sparse_quantize(points, voxel_size: Union[float, Sequence[float]] = 1.0, *,
                    return_index: bool = False, return_inverse: bool = False):
    """Voxelize points: ``floor(xyz / voxel_size)``, deduplicated.

    Args:
        points: ``[N, D]`` float array/tensor of coordinates (D = 3 for xyz, or
            ``[N, 4]`` int with a leading batch column when ``voxel_size`` is 1).
        voxel_size: scalar or per-axis sizes (length D).
        return_index: also return ``index [M]`` so that ``coords == voxels_of(points[index])``
            (the first point that fell in each voxel).
        return_inverse: also return ``inverse [N]`` with ``coords[inverse]`` the voxel of each point.

    Returns:
        ``coords [M, D]`` int32 (numpy if the input was numpy, else a tensor), unique rows in
        ascending lexicographic order, then ``index`` and/or ``inverse`` (int64) as requested.
    """
    is_torch = isinstance(points, torch.Tensor)
    arr = points.detach().cpu().numpy() if is_torch else np.asarray(points)
    if arr.ndim != 2:
        raise ValueError(f"points must be a 2-D array [N, D], got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"points must be numeric, got dtype {arr.dtype}")
    vs = np.asarray(voxel_size, dtype=np.float64).reshape(-1)
    if vs.size not in (1, arr.shape[1]) or (vs <= 0).any() or not np.isfinite(vs).all():
        raise ValueError(f"voxel_size must be positive and scalar or length {arr.shape[1]}, got {voxel_size!r}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr).all(axis=1)
        if bad.any():
            raise ValueError(f"points contain NaN or inf in {int(bad.sum())} rows (first: row {int(bad.argmax())})")
    grid = np.floor(arr / vs) if arr.dtype.kind == "f" or (vs != 1).any() else arr
    if grid.size and (grid.min() < -(2**31) or grid.max() > 2**31 - 1):
        raise ValueError("voxel coordinates overflow int32; use a larger voxel_size")
    grid = grid.astype(np.int32)
    coords, index, inverse = _unique_rows(grid)
    out = [coords]
    if return_index:
        out.append(index.astype(np.int64))
    if return_inverse:
        out.append(inverse.astype(np.int64))
    if is_torch:
        out = [torch.from_numpy(np.ascontiguousarray(o)) for o in out]
    return out[0] if len(out) == 1 else tuple(out)


def _unique_rows(grid: np.ndarray):
    """``np.unique(grid, axis=0, return_index=True, return_inverse=True)`` for an int32 ``[N, D]`` array.

    Rows are packed into one int64 key (mixed radix over the per-column ranges, which keeps the
    lexicographic order) and deduplicated with a 1-D ``np.unique`` (a stable sort, so ``index`` is the
    first occurrence, as with ``axis=0``); ~5x faster than the row-wise ``axis=0`` path on a LiDAR
    scan. Falls back to ``axis=0`` when the ranges do not fit in 63 bits.
    """
    n, d = grid.shape
    if n:
        lo = grid.min(axis=0).astype(np.int64)
        span = grid.max(axis=0).astype(np.int64) - lo + 1
    if n == 0 or d == 0 or float(np.prod(span.astype(np.float64))) >= 2.0 ** 62:
        coords, index, inverse = np.unique(grid, axis=0, return_index=True, return_inverse=True)
        return coords, index, inverse.reshape(-1)
    key = grid[:, 0].astype(np.int64) - lo[0]
    for j in range(1, d):
        key *= span[j]
        key += grid[:, j].astype(np.int64) - lo[j]
    _, index, inverse = np.unique(key, return_index=True, return_inverse=True)
    return grid[index], index, inverse.reshape(-1)
