"""Pure-PyTorch BEV pooling (device-agnostic; the ground truth for tests).

Cell convention: a point with integer cell ``geom = (x, y, z)`` in sample ``b`` goes to
the flat cell ``rank = ((b * Z + z) * X + x) * Y + y`` of a ``[B, Z, X, Y]`` grid, and the
pooled output is ``[B, C, Z, X, Y]`` (sum of the features of the points in each cell).

* :func:`bev_pool_naive` -- **the naive scatter**: ``out = zeros(B*Z*X*Y, C).index_add_(0,
  rank, feats)`` followed by a reshape/permute to ``[B, C, Z, X, Y]``. No sort, no intervals.
* :func:`build_intervals` + :func:`interval_pool` -- rank -> sort -> intervals of equal rank
  -> segment sum (``torch.segment_reduce``) written into the occupied cells. Works on
  any device; the numba kernels implement the same plan on the CPU.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["flat_ranks", "bev_pool_naive", "build_intervals", "interval_pool", "interval_pool_backward",
           "frustum_pixel_index", "depth_pool"]


def flat_ranks(geom: torch.Tensor, batch_idx: torch.Tensor, B: int, X: int, Y: int, Z: int,
               valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Flat cell index of every point.

    Args:
        geom: ``[M, 3]`` integer (x, y, z) cell indices; batch_idx: ``[M]`` integer sample index.
        valid: optional ``[M]`` bool; points with ``False`` are skipped (rank -1) and need not
            lie in the grid. Without it every point must lie in the grid.
    Returns:
        ``[M]`` int64 ranks in ``[0, B*Z*X*Y)`` (or -1 for skipped points).
    Raises:
        ValueError naming ``geom`` / ``batch_idx`` if a (valid) point lies outside the grid.
    """
    g = geom.long()
    b = batch_idx.long()
    inside = ((g[:, 0] >= 0) & (g[:, 0] < X) & (g[:, 1] >= 0) & (g[:, 1] < Y) & (g[:, 2] >= 0) & (g[:, 2] < Z))
    inb = (b >= 0) & (b < B)
    need = torch.ones_like(inside) if valid is None else valid.bool()
    bad_g = need & ~inside
    bad_b = need & ~inb
    if bool(bad_b.any()):
        i = int(bad_b.nonzero()[0, 0])
        raise ValueError(f"batch_idx[{i}] = {int(b[i])} is outside [0, B={B}); filter or fix the batch index")
    if bool(bad_g.any()):
        i = int(bad_g.nonzero()[0, 0])
        raise ValueError(f"geom[{i}] = {g[i].tolist()} is outside the grid (X, Y, Z) = ({X}, {Y}, {Z}); "
                         f"the caller must drop out-of-grid points (or pass a `valid` mask)")
    r = ((b * Z + g[:, 2]) * X + g[:, 0]) * Y + g[:, 1]
    if valid is not None:
        r = torch.where(need, r, torch.full_like(r, -1))
    return r


def bev_pool_naive(feats: torch.Tensor, geom: torch.Tensor, batch_idx: torch.Tensor, B: int, X: int, Y: int,
                   Z: int) -> torch.Tensor:
    """The naive scatter: one ``index_add_`` of ``feats [M, C]`` into ``[B*Z*X*Y, C]``.

    Returns ``[B, C, Z, X, Y]`` (contiguous, dtype of ``feats``). Differentiable through
    torch autograd (``index_add_`` backward is a gather).
    """
    C = feats.shape[1]
    r = flat_ranks(geom, batch_idx, B, X, Y, Z)
    out = feats.new_zeros((B * Z * X * Y, C)).index_add(0, r, feats)
    return out.view(B, Z, X, Y, C).permute(0, 4, 1, 2, 3).contiguous()


def build_intervals(ranks: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank -> sort -> intervals.

    The kept points are grouped by rank; the groups (intervals) are ordered by their first
    (smallest) point index and each keeps its points in increasing index order. Visiting the
    intervals in this order walks the feature rows nearly monotonically through memory (the
    points of one cell come from a few neighbouring pixels and depth bins), which the CPU
    kernel needs to run at streaming speed; the order is canonical, so both implementations
    build identical plans.

    Args:
        ranks: ``[M]`` int64 flat cell indices, -1 = skipped point.
    Returns:
        order ``[K]`` int64 (indices of the kept points, grouped by cell),
        starts ``[I + 1]`` int64 (interval ``i`` is ``order[starts[i]:starts[i+1]]``),
        cells ``[I]`` int64 (the flat cell of each interval; distinct, not sorted).
    """
    dev = ranks.device
    keep = (ranks >= 0).nonzero().squeeze(1)
    r = ranks.index_select(0, keep)
    if keep.numel() == 0:
        return keep, torch.zeros(1, dtype=torch.long, device=dev), keep.clone()
    uniq, inv = torch.unique(r, return_inverse=True)
    first = torch.full((uniq.numel(),), keep.numel(), dtype=torch.long, device=dev)
    first.scatter_reduce_(0, inv, torch.arange(keep.numel(), device=dev), "amin")
    key = first.index_select(0, inv)  # the first point of each point's cell: one value per cell
    ks, perm = torch.sort(key, stable=True)
    order = keep.index_select(0, perm)
    _, counts = torch.unique_consecutive(ks, return_counts=True)
    starts = torch.zeros(counts.numel() + 1, dtype=torch.long, device=dev)
    torch.cumsum(counts, 0, out=starts[1:])
    cells = ranks.index_select(0, order.index_select(0, starts[:-1]))
    return order, starts, cells


def interval_pool(feats: torch.Tensor, order: torch.Tensor, starts: torch.Tensor, cells: torch.Tensor, B: int,
                  ncell: int) -> torch.Tensor:
    """Segment sums of the sorted features, written into the occupied cells.

    Args:
        feats: ``[M, C]`` float; order/starts/cells from :func:`build_intervals`;
        ncell: cells per sample (``Z*X*Y``).
    Returns:
        ``[B, C, ncell]`` (cell ``rank`` of sample ``rank // ncell`` holds its interval's sum).
    """
    C = feats.shape[1]
    flat = feats.new_zeros((B * ncell, C))
    if cells.numel():
        seg = torch.segment_reduce(feats.index_select(0, order), "sum", offsets=starts, axis=0)
        flat.index_copy_(0, cells, seg)
    return flat.view(B, ncell, C).transpose(1, 2).contiguous()


def interval_pool_backward(grad: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """``grad [B, C, ncell] -> [M, C]``: every kept point receives its cell's gradient, skipped points 0."""
    B, C, ncell = grad.shape
    gflat = grad.transpose(1, 2).reshape(B * ncell, C)
    keep = ranks >= 0
    out = gflat.index_select(0, ranks.clamp(min=0))
    if not bool(keep.all()):
        out = out * keep.unsqueeze(1).to(out.dtype)
    return out


def frustum_pixel_index(M: int, D: int, HW: int, device=None) -> torch.Tensor:
    """Context row of every frustum point for points laid out ``[BN, D, HW]``: ``(p // (D*HW)) * HW + p % HW``."""
    p = torch.arange(M, device=device)
    return torch.div(p, D * HW, rounding_mode="floor") * HW + p % HW


def depth_pool(depth: torch.Tensor, context: torch.Tensor, order: torch.Tensor, starts: torch.Tensor,
               cells: torch.Tensor, B: int, ncell: int) -> torch.Tensor:
    """Fused LSS pooling reference: ``feats[p] = depth[p] * context[pix(p)]``, then :func:`interval_pool`.

    Args:
        depth: ``[BN, D, HW]`` float (frustum point ``p`` = flat index into this layout);
        context: ``[BN, HW, C]`` float; order/starts/cells index the ``BN*D*HW`` frustum points.
    Returns:
        ``[B, C, ncell]``. Differentiable through torch autograd w.r.t. depth and context.
    """
    BN, D, HW = depth.shape
    C = context.shape[2]
    pix = frustum_pixel_index(BN * D * HW, D, HW, depth.device)
    feats = depth.reshape(-1, 1) * context.reshape(BN * HW, C).index_select(0, pix)
    return interval_pool(feats, order, starts, cells, B, ncell)
