"""Numba CPU kernels for BEV pooling: rank -> counting sort -> load-balanced interval reduction.

Plan (see ``reference.py`` for the cell convention): ``ranks [M]`` int64 flat cell per point
(-1 = skipped), ``order [K]`` kept points grouped by cell, ``starts [I+1]`` interval
boundaries, ``cells [I]`` flat cell per interval, ``chunks [T+1]`` interval boundaries that
split the points into T nearly equal parallel work items (intervals are very unequal:
cells near a camera collect thousands of frustum points, far cells a few). The intervals
are ordered by their first point, so a thread's reads move almost monotonically through
the ``[M, C]`` features (measured: 2.2x less time than cell order at the realistic size,
within a few % of a plain streaming read).

Forward: one thread per chunk sums each interval (in point order, accumulator in the input
dtype, like ``index_add``) and writes the ``C`` sums straight into ``out [B, C, ncell]`` (no
atomics, no ``[B, ncell, C]`` transpose); every cell is written by exactly one interval, so
the result is deterministic and independent of the thread count.
Backward: a gather, ``grad_feats[p] = grad[cell(p)]``, in point order (sequential writes).

The fused variant (``depth_pool*``, cf. BEVPoolv2) takes the LSS depth probabilities
``[BN, D, HW]`` and context features ``[BN, HW, C]`` and never builds the ``[BN*D*HW, C]``
outer product: it reads ``depth[p] * context[pix(p)]`` on the fly.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["compute_ranks", "build_intervals", "balance_chunks", "interval_pool", "interval_pool_backward",
           "pixel_of", "depth_pool", "depth_pool_backward"]


@njit(cache=True, nogil=True, parallel=True)
def _ranks(geom, bidx, valid, use_valid, B, X, Y, Z, out):
    M = geom.shape[0]
    nbad = 0
    for i in prange(M):
        if use_valid and not valid[i]:
            out[i] = -1
            continue
        x = np.int64(geom[i, 0])
        y = np.int64(geom[i, 1])
        z = np.int64(geom[i, 2])
        b = np.int64(bidx[i])
        if x < 0 or x >= X or y < 0 or y >= Y or z < 0 or z >= Z or b < 0 or b >= B:
            out[i] = -2
            nbad += 1
        else:
            out[i] = ((b * Z + z) * X + x) * Y + y
    return nbad


@njit(cache=True, nogil=True)
def _count_sort(ranks, ncells):
    M = ranks.shape[0]
    counts = np.zeros(ncells + 1, np.int64)
    for i in range(M):
        r = ranks[i]
        if r >= 0:
            counts[r + 1] += 1
    nint = 0
    for c in range(ncells):
        if counts[c + 1] > 0:
            nint += 1
        counts[c + 1] += counts[c]
    K = counts[ncells]
    order = np.empty(K, np.int64)
    pos = counts[:ncells].copy()
    for i in range(M):
        r = ranks[i]
        if r >= 0:
            order[pos[r]] = i
            pos[r] += 1
    starts = np.empty(nint + 1, np.int64)
    cells = np.empty(nint, np.int64)
    j = 0
    for c in range(ncells):
        if counts[c + 1] > counts[c]:
            starts[j] = counts[c]
            cells[j] = c
            j += 1
    starts[nint] = K
    return order, starts, cells


@njit(cache=True, nogil=True)
def _sorted_intervals(order, ranks):
    K = order.shape[0]
    nint = 0
    for j in range(K):
        if j == 0 or ranks[order[j]] != ranks[order[j - 1]]:
            nint += 1
    starts = np.empty(nint + 1, np.int64)
    cells = np.empty(nint, np.int64)
    n = 0
    for j in range(K):
        r = ranks[order[j]]
        if j == 0 or r != ranks[order[j - 1]]:
            starts[n] = j
            cells[n] = r
            n += 1
    starts[nint] = K
    return starts, cells


@njit(cache=True, nogil=True, parallel=True)
def _permute_intervals(order, starts, cells, perm, new_starts, new_order, new_cells):
    I = perm.shape[0]
    for k in range(I):
        i = perm[k]
        new_starts[k + 1] = new_starts[k] + starts[i + 1] - starts[i]
        new_cells[k] = cells[i]
    for k in prange(I):
        i = perm[k]
        s0 = starts[i]
        d0 = new_starts[k]
        for j in range(starts[i + 1] - s0):
            new_order[d0 + j] = order[s0 + j]


@njit(cache=True, nogil=True, parallel=True)
def _fwd(feats, order, starts, cells, chunks, ncell, out):
    C = feats.shape[1]
    for t in prange(chunks.shape[0] - 1):
        acc = np.empty(C, out.dtype)
        for k in range(chunks[t], chunks[t + 1]):
            for c in range(C):
                acc[c] = 0
            for j in range(starts[k], starts[k + 1]):
                p = order[j]
                for c in range(C):
                    acc[c] += feats[p, c]
            b = cells[k] // ncell
            r = cells[k] - b * ncell
            for c in range(C):
                out[b, c, r] = acc[c]


@njit(cache=True, nogil=True, parallel=True)
def _bwd(gflat, ranks, nblock, out):
    M = ranks.shape[0]
    C = gflat.shape[1]
    step = (M + nblock - 1) // nblock
    for t in prange(nblock):
        for p in range(t * step, min(M, (t + 1) * step)):
            r = ranks[p]
            if r >= 0:
                for c in range(C):
                    out[p, c] = gflat[r, c]
            else:
                for c in range(C):
                    out[p, c] = 0


@njit(cache=True, nogil=True, parallel=True)
def _pixel_of(order, D, HW, out):
    DHW = D * HW
    for j in prange(order.shape[0]):
        p = order[j]
        out[j] = (p // DHW) * HW + p % HW


@njit(cache=True, nogil=True, parallel=True)
def _depth_fwd(depth, ctx, order, pix, starts, cells, chunks, ncell, out):
    C = ctx.shape[1]
    for t in prange(chunks.shape[0] - 1):
        acc = np.empty(C, out.dtype)
        for k in range(chunks[t], chunks[t + 1]):
            for c in range(C):
                acc[c] = 0
            for j in range(starts[k], starts[k + 1]):
                q = pix[j]
                w = depth[order[j]]
                for c in range(C):
                    acc[c] += w * ctx[q, c]
            b = cells[k] // ncell
            r = cells[k] - b * ncell
            for c in range(C):
                out[b, c, r] = acc[c]


@njit(cache=True, nogil=True, parallel=True)
def _depth_bwd(gflat, ranks, depth, ctx, D, HW, blk, need_depth, need_ctx, gdepth, gctx):
    NQ, C = ctx.shape
    BN = NQ // HW
    nb = (HW + blk - 1) // blk
    C8 = C - C % 8
    for t in prange(BN * nb):
        bn = t // nb
        h0 = (t - bn * nb) * blk
        h1 = min(HW, h0 + blk)
        acc = np.zeros((h1 - h0, C), gctx.dtype)
        part = np.empty(8, gdepth.dtype)
        for d in range(D):
            base = (bn * D + d) * HW
            for hw in range(h0, h1):
                p = base + hw
                r = ranks[p]
                if r < 0:
                    if need_depth:
                        gdepth[p] = 0
                    continue
                q = bn * HW + hw
                if need_depth:
                    # dot product with 8 fixed partial sums: vectorizes without reassociating (deterministic)
                    for i in range(8):
                        part[i] = 0
                    for c0 in range(0, C8, 8):
                        for i in range(8):
                            part[i] += gflat[r, c0 + i] * ctx[q, c0 + i]
                    tot = part.sum()
                    for c in range(C8, C):
                        tot += gflat[r, c] * ctx[q, c]
                    gdepth[p] = tot
                if need_ctx:
                    w = depth[p]
                    for c in range(C):
                        acc[hw - h0, c] += w * gflat[r, c]
        if need_ctx:
            for hw in range(h0, h1):
                for c in range(C):
                    gctx[bn * HW + hw, c] = acc[hw - h0, c]


def compute_ranks(geom: np.ndarray, batch_idx: np.ndarray, B: int, X: int, Y: int, Z: int,
                  valid: np.ndarray = None) -> np.ndarray:
    """``[M]`` int64 flat ranks ``((b*Z + z)*X + x)*Y + y`` (-1 where ``valid`` is False).

    Args: geom ``[M, 3]`` int32/int64 (x, y, z); batch_idx ``[M]`` int32/int64; valid ``[M]`` bool or None.
    Raises ValueError naming the first point outside the grid (among the valid ones).
    """
    M = geom.shape[0]
    out = np.empty(M, np.int64)
    use_valid = valid is not None
    vmask = valid if use_valid else np.zeros(1, np.bool_)
    if M and _ranks(geom, batch_idx, vmask, use_valid, B, X, Y, Z, out):
        i = int(np.flatnonzero(out == -2)[0])
        b = int(batch_idx[i])
        if not 0 <= b < B:
            raise ValueError(f"batch_idx[{i}] = {b} is outside [0, B={B}); filter or fix the batch index")
        raise ValueError(f"geom[{i}] = {geom[i].tolist()} is outside the grid (X, Y, Z) = ({X}, {Y}, {Z}); "
                         f"the caller must drop out-of-grid points (or pass a `valid` mask)")
    return out


def build_intervals(ranks: np.ndarray, ncells: int):
    """Group the kept points by rank; intervals ordered by their first point (see ``reference.build_intervals``).

    A counting sort (O(M + ncells), stable by construction) when the grid is not much larger
    than the point set, else a stable ``np.argsort``; then the intervals are reordered by their
    first point index. Returns (order ``[K]``, starts ``[I+1]``, cells ``[I]``), all int64,
    identical to ``reference.build_intervals``.
    """
    M = ranks.shape[0]
    if ncells <= 4 * M + (1 << 20):
        order, starts, cells = _count_sort(ranks, ncells)
    else:
        keep = np.flatnonzero(ranks >= 0)
        order = keep[np.argsort(ranks[keep], kind="stable")].astype(np.int64)
        starts, cells = _sorted_intervals(order, ranks)
    I = cells.shape[0]
    if I < 2:
        return order, starts, cells
    perm = np.argsort(order[starts[:-1]], kind="stable")
    new_starts = np.zeros(I + 1, np.int64)
    new_order = np.empty_like(order)
    new_cells = np.empty_like(cells)
    _permute_intervals(order, starts, cells, perm, new_starts, new_order, new_cells)
    return new_order, new_starts, new_cells


def balance_chunks(starts: np.ndarray, nchunks: int) -> np.ndarray:
    """``[T+1]`` int64 interval boundaries giving T <= nchunks chunks of about equal point counts."""
    nint = starts.shape[0] - 1
    if nint <= 0:
        return np.zeros(1, np.int64)
    K = int(starts[-1])
    targets = (np.arange(1, nchunks, dtype=np.int64) * K) // nchunks
    inner = np.searchsorted(starts[:-1], targets, side="left")
    b = np.unique(np.concatenate([[0], inner, [nint]])).astype(np.int64)
    return b


def interval_pool(feats: np.ndarray, order, starts, cells, chunks, B: int, ncell: int) -> np.ndarray:
    """``feats [M, C]`` float32/64 C-contiguous -> ``[B, C, ncell]`` interval sums (zeros in empty cells)."""
    out = np.zeros((B, feats.shape[1], ncell), feats.dtype)
    if cells.shape[0] and feats.shape[1]:
        _fwd(feats, order, starts, cells, chunks, ncell, out)
    return out


def interval_pool_backward(grad: np.ndarray, ranks: np.ndarray, nblock: int = 64) -> np.ndarray:
    """``grad [B, C, ncell]`` -> ``[M, C]`` with ``out[p] = grad[cell(p)]`` (0 for skipped points)."""
    B, C, ncell = grad.shape
    gflat = np.ascontiguousarray(grad.transpose(0, 2, 1)).reshape(B * ncell, C)
    out = np.empty((ranks.shape[0], C), grad.dtype)
    if ranks.shape[0] and C:
        _bwd(gflat, ranks, nblock, out)
    return out


def pixel_of(order: np.ndarray, D: int, HW: int) -> np.ndarray:
    """``[K]`` int64 context row ``(p // (D*HW)) * HW + p % HW`` of every sorted frustum point ``p = order[j]``."""
    out = np.empty(order.shape[0], np.int64)
    if order.shape[0]:
        _pixel_of(order, D, HW, out)
    return out


def depth_pool(depth: np.ndarray, ctx: np.ndarray, order, pix, starts, cells, chunks, B: int,
               ncell: int) -> np.ndarray:
    """Fused pooling: ``depth [BN, D, HW]``, ``ctx [BN, HW, C]`` (C-contiguous, same float dtype) -> ``[B, C, ncell]``.

    ``pix`` = :func:`pixel_of` ``(order, D, HW)`` (part of the cacheable plan). Accumulates in the input
    dtype, in the fixed sorted order (deterministic).
    """
    BN, D, HW = depth.shape
    C = ctx.shape[2]
    out = np.zeros((B, C, ncell), ctx.dtype)
    if cells.shape[0] and C:
        _depth_fwd(depth.reshape(-1), ctx.reshape(BN * HW, C), order, pix, starts, cells, chunks, ncell, out)
    return out


def depth_pool_backward(grad: np.ndarray, ranks: np.ndarray, depth: np.ndarray, ctx: np.ndarray,
                        need_depth: bool = True, need_ctx: bool = True, block: int = 32):
    """Gradients of :func:`depth_pool`: (``grad_depth [BN, D, HW]``, ``grad_ctx [BN, HW, C]``), None where not needed.

    One thread per block of ``block`` pixels walks their D frustum points (contiguous in ``ranks`` and
    ``depth`` for each depth bin), so both gradients are written without atomics and deterministically.
    """
    B, C, ncell = grad.shape
    BN, D, HW = depth.shape
    gflat = np.ascontiguousarray(grad.transpose(0, 2, 1)).reshape(B * ncell, C)
    gd = np.empty(depth.shape, depth.dtype)
    gc = np.empty(ctx.shape, ctx.dtype)
    if depth.size and C:
        _depth_bwd(gflat, ranks, depth.reshape(-1), ctx.reshape(BN * HW, C), D, HW, block, need_depth, need_ctx,
                   gd.reshape(-1), gc.reshape(BN * HW, C))
    else:
        gd[...] = 0
        gc[...] = 0
    return (gd if need_depth else None), (gc if need_ctx else None)
