"""Mean-of-points voxelization of LiDAR sweeps (BEVFusion ``Voxelization`` + ``voxelize_reduce``).

The upstream op (mmcv ``hard_voxelize``) is CUDA/C++ only. This is a device-agnostic torch
version with the same semantics: points outside ``point_cloud_range`` are dropped, each voxel
keeps at most ``max_num_points`` points (the first ones in input order), each sample keeps at
most ``max_voxels`` voxels (those whose first point comes first in input order) and the voxel
feature is the mean of its kept points. The result is deterministic: the output rows are
sorted by ``(b, x, y, z)`` and the mean is a fixed-order scatter (``scatter_mean``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ....nn.functional.pointops import scatter_mean
from ....tensor import SparseTensor

__all__ = ["Voxelization", "voxelize", "grid_size"]

POINT_FIELDS = ("x", "y", "z", "intensity", "dt")


def grid_size(voxel_size: Sequence[float], point_cloud_range: Sequence[float]) -> Tuple[int, int, int]:
    """Cells per axis ``(X, Y, Z)`` of ``point_cloud_range`` (xmin, ymin, zmin, xmax, ymax, zmax).

    Raises ValueError unless every extent is a positive whole number of voxels.
    """
    vs = [float(v) for v in voxel_size]
    pr = [float(v) for v in point_cloud_range]
    if len(vs) != 3 or any(not v > 0 for v in vs):
        raise ValueError(f"voxel_size must be 3 positive numbers (x, y, z), got {voxel_size!r}")
    if len(pr) != 6:
        raise ValueError(f"point_cloud_range must be 6 numbers (xmin, ymin, zmin, xmax, ymax, zmax), "
                         f"got {point_cloud_range!r}")
    out = []
    for a, name in enumerate("xyz"):
        n = (pr[a + 3] - pr[a]) / vs[a]
        if not n >= 0.5 or abs(n - round(n)) > 1e-4 * max(1.0, n):
            raise ValueError(f"point_cloud_range {name} extent {pr[a + 3] - pr[a]:g} m is not a positive whole "
                             f"number of voxels of {vs[a]:g} m (voxel_size)")
        out.append(int(round(n)))
    return tuple(out)


def _check_points(points) -> list:
    if isinstance(points, torch.Tensor):
        points = [points]
    if not isinstance(points, (list, tuple)):
        raise TypeError(f"points must be a list of [P_i, C] tensors, got {type(points).__name__}")
    if len(points) == 0:
        raise ValueError("points is an empty list (batch size 0)")
    C = None
    for i, p in enumerate(points):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"points[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if p.dim() != 2 or p.shape[1] < 3:
            raise ValueError(f"points[{i}] must have shape [P, C] with C >= 3 (x, y, z, ...), got {tuple(p.shape)}")
        if not p.is_floating_point():
            raise TypeError(f"points[{i}] must be floating point, got {p.dtype}")
        if C is None:
            C = p.shape[1]
        elif p.shape[1] != C:
            raise ValueError(f"points[{i}] has {p.shape[1]} features, points[0] has {C}")
        if p.device != points[0].device:
            raise ValueError(f"points[{i}] is on {p.device}, points[0] on {points[0].device}")
        if p.numel():
            finite = torch.isfinite(p)
            if not bool(finite.all()):
                bad = ~finite.all(dim=1)
                row = int(bad.nonzero()[0])
                col = int((~finite[row]).nonzero()[0])
                field = POINT_FIELDS[col] if col < len(POINT_FIELDS) else f"feature {col}"
                raise ValueError(f"points[{i}] contains NaN or inf in {int(bad.sum())} rows "
                                 f"(first: row {row}, column {col} '{field}')")
    return list(points)


def voxelize(points, voxel_size: Sequence[float], point_cloud_range: Sequence[float],
             max_voxels: Optional[int] = None, max_num_points: Optional[int] = None) -> SparseTensor:
    """Voxelize a batch of point clouds into mean-of-points voxels.

    Args:
        points: list of B float tensors ``[P_i, C]`` (x, y, z, then features, e.g. intensity, Δt),
            or one ``[P, C]`` tensor (B = 1). All on one device.
        voxel_size: (vx, vy, vz) metres.
        point_cloud_range: (xmin, ymin, zmin, xmax, ymax, zmax) metres; a point is kept when
            ``min <= p < max`` on every axis (mmcv: ``0 <= floor((p - min) / v) < grid``).
        max_voxels: per-sample cap; the voxels whose first point comes first in input order
            are kept (mmcv hard voxelization). None or <= 0: no cap.
        max_num_points: per-voxel cap; the first points in input order are averaged.
            None or <= 0: all points.
    Returns:
        SparseTensor (stride 1): feats ``[N, C]`` (points' dtype, the mean of the kept points,
        all C columns including x, y, z) and coords ``[N, 4]`` int32 ``(b, i, j, k)`` with
        ``i = floor((x - xmin) / vx)`` in ``[0, X)`` etc., rows sorted by ``(b, i, j, k)``.
        No points (or none in range) give ``N = 0``.
    Raises:
        ValueError naming ``points[i]`` for NaN/inf, wrong shapes or mixed feature counts.
    """
    pts = _check_points(points)
    X, Y, Z = grid_size(voxel_size, point_cloud_range)
    dev = pts[0].device
    dtype = pts[0].dtype
    C = pts[0].shape[1]
    batch = torch.cat([torch.full((p.shape[0],), i, dtype=torch.long, device=dev) for i, p in enumerate(pts)])
    allp = torch.cat(pts, 0)
    # range and voxel size rounded to the points' dtype (a float32 point at -51.2 is on the border),
    # then the cell index in float64 so that it does not depend on the rounding of the division
    pr = torch.tensor([float(v) for v in point_cloud_range], dtype=dtype, device=dev).double()
    vs = torch.tensor([float(v) for v in voxel_size], dtype=dtype, device=dev).double()
    dims = torch.tensor([X, Y, Z], dtype=torch.long, device=dev)
    cell = torch.floor((allp[:, :3].detach().double() - pr[:3]) / vs).long()
    keep = ((cell >= 0) & (cell < dims)).all(dim=1)
    idx = keep.nonzero().squeeze(1)  # kept point rows, ascending input order
    cell, b = cell[idx], batch[idx]
    key = ((b * X + cell[:, 0]) * Y + cell[:, 1]) * Z + cell[:, 2]
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    V = uniq.shape[0]
    n = idx.shape[0]

    if max_num_points is not None and max_num_points > 0 and n:
        order = torch.argsort(inv, stable=True)  # by voxel, then input order
        counts = torch.bincount(inv, minlength=V)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(inv)
        rank[order] = torch.arange(n, device=dev) - starts[inv[order]]
        sel = rank < max_num_points
        idx, inv = idx[sel], inv[sel]

    if max_voxels is not None and max_voxels > 0 and V:
        first = torch.full((V,), n, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, inv, torch.arange(inv.shape[0], device=dev), reduce="amin")
        vb = torch.div(uniq, X * Y * Z, rounding_mode="floor")
        order = torch.argsort(first)  # first points are in batch order, so this groups samples too
        per = torch.bincount(vb, minlength=len(pts))
        bstart = torch.cumsum(per, 0) - per
        rank = torch.empty_like(order)
        rank[order] = torch.arange(V, device=dev) - bstart[vb[order]]
        vkeep = rank < max_voxels
        if not bool(vkeep.all()):
            remap = torch.cumsum(vkeep.long(), 0) - 1
            psel = vkeep[inv]
            idx, inv = idx[psel], remap[inv[psel]]
            uniq = uniq[vkeep]
            V = uniq.shape[0]

    feats = scatter_mean(allp[idx], inv, V) if V else allp.new_zeros((0, C))
    k = uniq
    coords = torch.empty((V, 4), dtype=torch.long, device=dev)
    coords[:, 3] = k % Z
    k = torch.div(k, Z, rounding_mode="floor")
    coords[:, 2] = k % Y
    k = torch.div(k, Y, rounding_mode="floor")
    coords[:, 1] = k % X
    coords[:, 0] = torch.div(k, X, rounding_mode="floor")
    return SparseTensor(feats.to(dtype), coords.to(torch.int32), 1)


class Voxelization(nn.Module):
    r"""Mean-of-points voxelization (BEVFusion ``Voxelization`` with ``voxelize_reduce=True``).

    Args:
        voxel_size: (vx, vy, vz) metres. Tiny config: (0.1, 0.1, 0.2).
        point_cloud_range: (xmin, ymin, zmin, xmax, ymax, zmax). Tiny: (-51.2, -51.2, -5, 51.2, 51.2, 3)
            -> ``sparse_shape`` (1024, 1024, 40).
        max_voxels: int, or (train, eval) pair as BEVFusion's (120000, 160000); per sample.
        max_num_points: points averaged per voxel (BEVFusion: 10); None/-1 = all.

    ``forward(points: list of [P_i, C]) -> SparseTensor`` (see :func:`voxelize`). The batch size is
    ``len(points)``; an empty sample simply contributes no rows.
    """

    def __init__(self, voxel_size: Sequence[float] = (0.1, 0.1, 0.2),
                 point_cloud_range: Sequence[float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
                 max_voxels: Union[int, Sequence[int], None] = (120000, 160000),
                 max_num_points: Optional[int] = 10) -> None:
        super().__init__()
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.sparse_shape = grid_size(self.voxel_size, self.point_cloud_range)
        if max_voxels is None or isinstance(max_voxels, int):
            self.max_voxels = (max_voxels, max_voxels)
        else:
            mv = tuple(max_voxels)
            if len(mv) != 2:
                raise ValueError(f"max_voxels must be an int or a (train, eval) pair, got {max_voxels!r}")
            self.max_voxels = mv
        self.max_num_points = max_num_points

    def extra_repr(self) -> str:
        return (f"voxel_size={self.voxel_size}, point_cloud_range={self.point_cloud_range}, "
                f"sparse_shape={self.sparse_shape}, max_voxels={self.max_voxels}, "
                f"max_num_points={self.max_num_points}")

    def forward(self, points) -> SparseTensor:
        cap = self.max_voxels[0] if self.training else self.max_voxels[1]
        return voxelize(points, self.voxel_size, self.point_cloud_range, cap, self.max_num_points)
