"""Point <-> voxel ops: SPVCNN (sparse, spvnas ``core/models/utils.py``) and PVCNN (dense grid).

All ops are differentiable w.r.t. features (not coordinates). They reduce to two
mutually adjoint autograd Functions (see ``sparse3d.ops.pointops``):
:class:`DevoxelizeFunction` (weighted gather) and :class:`ScatterFunction`
(weighted scatter); each one's backward is the other, so double backward works.
Kernels: numba on the CPU (float32/64), pure torch otherwise; set
``SPARSE3D_POINTOPS=torch`` to force the torch reference.

Point-voxel caches on a :class:`PointTensor` ``z`` (shared by ``z.replace``), as in
spvnas, but each entry is tagged with the ``x.coords`` tensor it was built on
(``z.additional_features["pointops_coords"]``) and reused only for that same
tensor object, so a different coordinate set at the same stride recomputes
instead of silently reading wrong rows:

* ``z.idx_query[stride]``: ``[P]`` int64 row of the voxel containing each point
  (-1 if absent), from :func:`initial_voxelize` / :func:`point_to_voxel`.
* ``z.idx_query[(stride, "trilinear")]`` ``[P, 8]`` int64 and
  ``z.weights[(stride, "trilinear")]`` ``[P, 8]`` float, from :func:`voxel_to_point`
  (``"nearest"``: ``[P, 1]``).
"""
from __future__ import annotations

import math
import os

import torch

from sparse3d.ops.kmap import pack_params
from sparse3d.ops.kmap import reference as kref
from sparse3d.ops.kmap.common import pack
from sparse3d.ops.pointops import reference as pref

from ..._backend import HAS_NUMBA
from ...tensor import PointTensor, SparseTensor

__all__ = ["initial_voxelize", "point_to_voxel", "voxel_to_point", "avg_voxelize", "trilinear_devoxelize",
           "scatter_mean", "devoxelize", "DevoxelizeFunction", "ScatterFunction"]

_MAX_COORD = 2 ** 31 - 1


# ----------------------------------------------------------------------------- kernels
def _use_numba(t: torch.Tensor) -> bool:
    return (HAS_NUMBA and os.environ.get("SPARSE3D_POINTOPS", "") != "torch" and t.device.type == "cpu"
            and t.dtype in (torch.float32, torch.float64))


def _gather(feats: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    feats, idx, w = feats.detach().contiguous(), idx.contiguous(), w.detach().to(feats.dtype).contiguous()
    if _use_numba(feats):
        from sparse3d.ops.pointops import numba_cpu
        return torch.from_numpy(numba_cpu.gather_weighted(feats.numpy(), idx.numpy(), w.numpy()))
    return pref.gather_weighted(feats, idx, w)


def _scatter(src: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, num_out: int) -> torch.Tensor:
    src, idx, w = src.detach().contiguous(), idx.contiguous(), w.detach().to(src.dtype).contiguous()
    if _use_numba(src):
        from sparse3d.ops.pointops import numba_cpu
        return torch.from_numpy(numba_cpu.scatter_weighted(src.numpy(), idx.numpy(), w.numpy(), num_out))
    return pref.scatter_weighted(src, idx, w, num_out)


class DevoxelizeFunction(torch.autograd.Function):
    """``out[p] = sum_k w[p, k] * feats[idx[p, k]]``; gradient w.r.t. ``feats`` only."""

    @staticmethod
    def forward(ctx, feats, idx, weights):
        ctx.save_for_backward(idx, weights)
        ctx.num_in = feats.shape[0]
        return _gather(feats, idx, weights)

    @staticmethod
    def backward(ctx, grad):
        idx, w = ctx.saved_tensors
        g = ScatterFunction.apply(grad, idx, w, ctx.num_in) if ctx.needs_input_grad[0] else None
        return g, None, None


class ScatterFunction(torch.autograd.Function):
    """``out[v] = sum_{idx[p, k] = v} w[p, k] * src[p]``; gradient w.r.t. ``src`` only."""

    @staticmethod
    def forward(ctx, src, idx, weights, num_out):
        ctx.save_for_backward(idx, weights)
        return _scatter(src, idx, weights, num_out)

    @staticmethod
    def backward(ctx, grad):
        idx, w = ctx.saved_tensors
        g = DevoxelizeFunction.apply(grad, idx, w) if ctx.needs_input_grad[0] else None
        return g, None, None, None


# ----------------------------------------------------------------------------- checks
def _check_index(idx: torch.Tensor, n: int, name: str, what: str) -> None:
    if idx.dtype != torch.long:
        raise TypeError(f"{name} must be int64, got {idx.dtype}")
    if idx.numel() and int(idx.max()) >= n:
        raise ValueError(f"{name} has entry {int(idx.max())} but {what} has only {n} rows")


def _check_points(z: PointTensor) -> None:
    if not isinstance(z, PointTensor):
        raise TypeError(f"z must be a sparse3d.PointTensor, got {type(z).__name__}")
    F, C = z.feats, z.coords
    if F.dim() != 2 or C.dim() != 2 or C.shape[1] != 4:
        raise ValueError(f"z.feats must be [P, C] and z.coords [P, 4]; got {tuple(F.shape)} and {tuple(C.shape)}")
    if F.shape[0] != C.shape[0]:
        raise ValueError(f"z.feats has {F.shape[0]} rows but z.coords has {C.shape[0]}")
    if not C.is_floating_point():
        raise TypeError(f"z.coords must be floating point, got {C.dtype}")
    checked = getattr(z, "_coords_checked", None)
    if checked is not None and checked[0] is C and checked[1] == C._version:
        return      # these coordinates (same tensor, not modified in place) passed the value checks
    if C.numel():
        if not torch.isfinite(C).all():
            raise ValueError("z.coords contain NaN or inf")
        if C.abs().max() >= _MAX_COORD:
            raise ValueError(f"z.coords exceed the int32 voxel range (|c| < 2^31); max |c| = {float(C.abs().max())}")
        if (C[:, 0] < 0).any():
            raise ValueError("z.coords[:, 0] (batch index) must be >= 0")
    z._coords_checked = (C, C._version)


def _check_pair(x: SparseTensor, z: PointTensor) -> None:
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a sparse3d.SparseTensor, got {type(x).__name__}")
    _check_points(z)
    if x.coords.device != z.coords.device:
        raise ValueError(f"x is on {x.coords.device} but z is on {z.coords.device}")


def _lookup(x: SparseTensor, queries: torch.Tensor) -> torch.Tensor:
    """Row of each query ``[Q, 4]`` int64 in ``x.coords``, -1 if absent; ``[Q]`` int64."""
    if len(x) == 0 or queries.shape[0] == 0:
        return torch.full((queries.shape[0],), -1, dtype=torch.long, device=queries.device)
    if HAS_NUMBA and x.coords.device.type == "cpu" and os.environ.get("SPARSE3D_POINTOPS", "") != "torch":
        from sparse3d.ops.kmap.numba_cpu import HashTable
        key = (x.stride, "hash")  # the kernel-map builder's key for a HashTable, so it is shared
        table = x._caches.hashmaps.get(key)
        if not isinstance(table, HashTable):
            p = pack_params(x.coords, x.stride)
            table = HashTable(x.coords.numpy(), p.mins, p.dims, x.stride)
            x._caches.hashmaps.setdefault(key, table)
        return torch.from_numpy(table.lookup(queries.contiguous().numpy()))
    return kref.lookup(x.coords, queries, x.stride)


_SRC = "pointops_coords"  # z.additional_features[_SRC][key]: the voxel coords a cached map was built on


def _cached(z: PointTensor, key, coords: torch.Tensor):
    """Cached ``(idx, weights)`` under ``key`` if built for this very ``coords`` tensor, else ``(None, None)``."""
    idx, w = z.idx_query.get(key), z.weights.get(key)
    if z.additional_features.get(_SRC, {}).get(key) is not coords or idx is None or idx.shape[0] != len(z):
        return None, None
    return idx, w


def _store(z: PointTensor, key, coords: torch.Tensor, idx: torch.Tensor, w=None) -> None:
    z.idx_query[key] = idx
    if w is not None:
        z.weights[key] = w
    z.additional_features.setdefault(_SRC, {})[key] = coords


# ----------------------------------------------------------------------------- generic ops
def scatter_mean(src: torch.Tensor, index: torch.Tensor, num_out: int) -> torch.Tensor:
    """Mean of the rows of ``src`` per target (``torch_scatter.scatter_mean``, dim 0).

    Args:
        src: ``[P, C]`` float. index: ``[P]`` int64 target row, -1 = dropped.
        num_out: number of target rows ``V``.
    Returns:
        ``[V, C]``; rows with no source are 0.
    """
    if src.dim() != 2 or index.dim() != 1 or index.shape[0] != src.shape[0]:
        raise ValueError(f"src must be [P, C] and index [P]; got {tuple(src.shape)} and {tuple(index.shape)}")
    _check_index(index, num_out, "index", "the output")
    valid = index >= 0
    cnt = torch.bincount(index[valid], minlength=num_out).to(src.dtype)
    cnt = torch.cat([cnt, cnt.new_full((1,), math.inf)])  # dropped points (-> row num_out) get weight 0
    w = 1.0 / cnt[torch.where(valid, index, num_out)]
    return ScatterFunction.apply(src, index.unsqueeze(1), w.unsqueeze(1), num_out)


def devoxelize(feats: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted gather (torchsparse ``spdevoxelize``): ``out[p] = sum_k weights[p, k] * feats[idx[p, k]]``.

    Args:
        feats: ``[V, C]`` float. idx: ``[P, K]`` int64 (-1 = missing, skipped).
        weights: ``[P, K]`` float (treated as constants).
    Returns:
        ``[P, C]`` in feats' dtype.
    """
    if feats.dim() != 2 or idx.dim() != 2 or weights.shape != idx.shape:
        raise ValueError(f"feats must be [V, C], idx [P, K] and weights [P, K]; got {tuple(feats.shape)}, "
                         f"{tuple(idx.shape)} and {tuple(weights.shape)}")
    _check_index(idx, feats.shape[0], "idx", "feats")
    return DevoxelizeFunction.apply(feats, idx, weights.to(feats.dtype))


# ----------------------------------------------------------------------------- SPVCNN
def initial_voxelize(z: PointTensor, voxel_size_ratio: float = 1.0) -> SparseTensor:
    """Voxelize points at stride 1 with mean-pooled features (spvnas ``initial_voxelize``).

    With ``voxel_size_ratio = r != 1`` (spvnas ``init_res / after_res``), ``z.coords``
    xyz are first rescaled **in place** to ``p * r`` (spvnas does the same), and
    ``z``'s caches are reset, so later point-voxel ops use the new grid.

    Args:
        z: points, ``z.coords [P, 4]`` float (b, x, y, z), ``z.feats [P, C]``.
    Returns:
        SparseTensor at stride 1: coords ``[V, 4]`` int32 = unique ``(b, floor(p))``
        sorted by (b, x, y, z); feats ``[V, C]`` = mean of the points in each voxel.
        ``z.idx_query[(1, 1, 1)]`` caches the ``[P]`` point -> voxel row.
    """
    _check_points(z)
    r = float(voxel_size_ratio)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"voxel_size_ratio must be a positive finite number, got {voxel_size_ratio}")
    if r != 1.0:
        z.coords = torch.cat([z.coords[:, :1], z.coords[:, 1:] * r], 1)
        z.idx_query, z.weights = {}, {}
        z.additional_features.pop(_SRC, None)
        _check_points(z)
    vox = pref.point_voxels(z.coords, (1, 1, 1))
    P = vox.shape[0]
    if P == 0:
        inv = torch.zeros(0, dtype=torch.long, device=vox.device)
        coords = vox.new_zeros((0, 4))
    else:
        keys, _ = pack(vox, pack_params(vox, (1, 1, 1)))
        ukeys, inv = torch.unique(keys, sorted=True, return_inverse=True)
        coords = vox.new_empty((ukeys.shape[0], 4))
        coords[inv] = vox
    coords = coords.to(torch.int32)
    _store(z, (1, 1, 1), coords, inv)
    feats = scatter_mean(z.feats, inv, coords.shape[0])
    return SparseTensor(feats, coords, 1, check=False)


def point_to_voxel(x: SparseTensor, z: PointTensor) -> SparseTensor:
    """Mean of point features per voxel of ``x`` (spvnas ``point_to_voxel``).

    The voxel of point ``p`` at ``x.stride = s`` is ``(b, floor(p / s) * s)``. Points
    whose voxel is not in ``x`` are dropped (spvnas would clamp them onto row 0);
    voxels with no point get zeros.

    Args:
        x: SparseTensor ``[V, *]`` (only coords/stride used). z: PointTensor ``[P, C]``.
    Returns:
        ``x.replace(feats [V, C])`` (x's coords, stride and cache). Caches ``z.idx_query[x.stride]``.
    """
    _check_pair(x, z)
    idx, _ = _cached(z, x.stride, x.coords)
    if idx is None:
        idx = _lookup(x, pref.point_voxels(z.coords, x.stride))
        _store(z, x.stride, x.coords, idx)
    return x.replace(scatter_mean(z.feats, idx, len(x)))


def voxel_to_point(x: SparseTensor, z: PointTensor, nearest: bool = False) -> PointTensor:
    """Interpolate voxel features at the points (spvnas ``voxel_to_point``).

    Convention (spvnas ``calc_ti_weights``, corner-aligned): voxel ``c`` covers
    ``[c, c + s)`` at stride ``s``, but its feature is anchored at its integer
    coordinate ``c``, not at ``c + s/2``. A point ``p`` with ``base = floor(p / s) * s``
    and ``u = (p - base) / s`` reads the 8 voxels ``base + s * d``, ``d in {0,1}^3``
    (z fastest), with weights ``prod_a (u_a if d_a else 1 - u_a)``; missing voxels
    get 0 and the rest are renormalized, ``w / (sum w + 1e-8)``, so a point with
    no neighbour gets zeros. ``nearest=True`` reads only the containing voxel
    ``base`` with weight 1 (0 if absent); spvnas instead keeps that voxel's
    renormalized trilinear weight, which we do not reproduce.

    Args:
        x: SparseTensor ``[V, C]``. z: PointTensor ``[P, *]`` (coords used).
    Returns:
        ``z.replace(feats [P, C])`` in x's dtype. Caches ``[P, 8]`` (``[P, 1]`` if
        nearest) index/weights in ``z.idx_query`` / ``z.weights`` under ``(stride, mode)``.
    """
    _check_pair(x, z)
    key = (x.stride, "nearest" if nearest else "trilinear")
    P = len(z)
    idx, w = _cached(z, key, x.coords)
    if idx is None or w is None:
        if nearest:
            idx = _lookup(x, pref.point_voxels(z.coords, x.stride)).unsqueeze(1)
            w = (idx >= 0).to(x.dtype)
        else:
            q, w = pref.trilinear_neighbors(z.coords, x.stride)
            idx = _lookup(x, q.view(-1, 4)).view(P, 8)
            w = pref.renormalize(w, idx).to(x.dtype)
        _store(z, key, x.coords, idx, w)
    return z.replace(DevoxelizeFunction.apply(x.feats, idx, w.to(x.dtype)))


# ----------------------------------------------------------------------------- PVCNN (dense)
def _check_dense(feats: torch.Tensor, coords: torch.Tensor, resolution: int, fname: str) -> None:
    if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
        raise ValueError(f"resolution must be a positive int, got {resolution!r}")
    if coords.dim() != 3 or coords.shape[1] != 3:
        raise ValueError(f"coords must be [B, 3, N], got {tuple(coords.shape)}")
    if feats.shape[0] != coords.shape[0]:
        raise ValueError(f"{fname} has batch {feats.shape[0]} but coords has batch {coords.shape[0]}")
    if coords.device != feats.device:
        raise ValueError(f"{fname} is on {feats.device} but coords on {coords.device}")
    if coords.is_floating_point() and coords.numel() and not torch.isfinite(coords).all():
        raise ValueError("coords contain NaN or inf")


def avg_voxelize(feats: torch.Tensor, coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool point features into a dense grid (PVCNN ``avg_voxelize``).

    Args:
        feats: ``[B, C, N]`` float.
        coords: ``[B, 3, N]`` normalized to ``[0, R-1]``; float coords are rounded
            with ``torch.round`` (half to even, as PVCNN), integer coords used as is.
            Out-of-range coords raise ``ValueError``.
        resolution: ``R``.
    Returns:
        ``[B, C, R, R, R]``; voxel ``(x, y, z)`` holds the mean of its points, empty voxels 0.
    """
    if feats.dim() != 3:
        raise ValueError(f"feats must be [B, C, N], got {tuple(feats.shape)}")
    _check_dense(feats, coords, resolution, "feats")
    B, C, N = feats.shape
    if coords.shape[2] != N:
        raise ValueError(f"feats has {N} points but coords has {coords.shape[2]}")
    R3 = resolution ** 3
    flat = pref.dense_voxel_index(coords, resolution)
    flat = flat + torch.arange(B, device=flat.device).unsqueeze(1) * R3
    src = feats.permute(0, 2, 1).reshape(B * N, C)
    out = scatter_mean(src, flat.reshape(-1), B * R3)
    return out.view(B, resolution, resolution, resolution, C).permute(0, 4, 1, 2, 3).contiguous()


def trilinear_devoxelize(grid: torch.Tensor, coords: torch.Tensor, resolution: int,
                         training: bool = True) -> torch.Tensor:
    """Trilinear interpolation of a dense grid at the points (PVCNN ``trilinear_devoxelize``).

    Grid value ``(i, j, k)`` sits at coordinate ``(i, j, k)``. Coords are clamped to
    ``[0, R-1]``; the 8 corners are ``floor(c) + d`` with weights from ``c - floor(c)``
    (indices clamped at ``R-1``, where their weight is 0). No renormalization.

    Args:
        grid: ``[B, C, R, R, R]`` float. coords: ``[B, 3, N]`` float. resolution: ``R``.
        training: as PVCNN, ``False`` skips saving for backward (the result then
            carries no gradient).
    Returns:
        ``[B, C, N]`` in grid's dtype; differentiable w.r.t. ``grid`` only.
    """
    _check_dense(grid, coords, resolution, "grid")
    R = resolution
    if grid.dim() != 5 or tuple(grid.shape[2:]) != (R, R, R):
        raise ValueError(f"grid must be [B, C, {R}, {R}, {R}], got {tuple(grid.shape)}")
    B, C = grid.shape[:2]
    N = coords.shape[2]
    idx, w = pref.dense_trilinear(coords, R)
    idx = idx + (torch.arange(B, device=idx.device) * R ** 3).view(B, 1, 1)
    feats = grid.permute(0, 2, 3, 4, 1).reshape(B * R ** 3, C)
    with torch.set_grad_enabled(torch.is_grad_enabled() and training):
        out = DevoxelizeFunction.apply(feats, idx.reshape(B * N, 8), w.reshape(B * N, 8).to(grid.dtype))
    return out.view(B, N, C).permute(0, 2, 1).contiguous()
