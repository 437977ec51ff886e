"""Fused output-stationary sparse convolution for the CPU (numba).

``out[j] = sum_k x[nbmap[j, k]] @ w[k]`` without materializing gathered rows.
Rows are processed in blocks; for each offset the block's rows reuse ``w[k]``
while it is hot in L1, and the channel loop is unrolled by 4 so each load/store
of the accumulator feeds four FMAs. Each output row is written by one thread in
a fixed order, so results are deterministic.
"""
from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

__all__ = ["fused_conv"]


def _fused_py(x, w, nbmap, out, block):
    M, K = nbmap.shape
    Cin = x.shape[1]
    Cout = w.shape[2]
    c4 = Cin - Cin % 4
    nblk = (M + block - 1) // block
    for b in prange(nblk):
        j0 = b * block
        j1 = min(M, j0 + block)
        acc = np.zeros((j1 - j0, Cout), dtype=out.dtype)
        for k in range(K):
            for j in range(j0, j1):
                i = nbmap[j, k]
                if i < 0:
                    continue
                r = j - j0
                for c in range(0, c4, 4):
                    v0 = x[i, c]
                    v1 = x[i, c + 1]
                    v2 = x[i, c + 2]
                    v3 = x[i, c + 3]
                    for o in range(Cout):
                        acc[r, o] += (v0 * w[k, c, o] + v1 * w[k, c + 1, o]
                                      + v2 * w[k, c + 2, o] + v3 * w[k, c + 3, o])
                for c in range(c4, Cin):
                    v = x[i, c]
                    for o in range(Cout):
                        acc[r, o] += v * w[k, c, o]
        for j in range(j0, j1):
            for o in range(Cout):
                out[j, o] = acc[j - j0, o]


def _variants(py_func):
    """``(parallel, serial)`` njit builds of one kernel body.

    Each build gets its own ``__qualname__``: numba's on-disk cache (``cache=True``) names its files by the
    function's qualified name and first line, not by the ``parallel`` flag, so two builds of the same Python
    function share cache entries and one silently runs the other's machine code (the parallel gather and
    scatter ran serially: no speedup at 2 threads).
    """
    builds = []
    for suffix, parallel in (("parallel", True), ("serial", False)):
        f = types.FunctionType(py_func.__code__, py_func.__globals__, f"{py_func.__name__}_{suffix}",
                               py_func.__defaults__, py_func.__closure__)
        f.__qualname__ = f"{py_func.__qualname__}_{suffix}"
        builds.append(njit(cache=True, nogil=True, parallel=parallel, fastmath=True)(f))
    return tuple(builds)


_fused, _fused_serial = _variants(_fused_py)
# below this many multiply-adds the thread-pool wake-up costs more than it saves
PARALLEL_MIN_MACS = 1 << 21


def fused_conv(x: np.ndarray, w: np.ndarray, nbmap: np.ndarray, block: int = 32) -> np.ndarray:
    """Args: x ``[N, Cin]``, w ``[K, Cin, Cout]`` (same float dtype), nbmap ``[M, K]`` int32.
    Returns ``[M, Cout]``."""
    out = np.empty((nbmap.shape[0], w.shape[2]), dtype=x.dtype)
    if nbmap.shape[0]:
        macs = nbmap.shape[0] * nbmap.shape[1] * w.shape[1] * w.shape[2]
        (_fused if macs >= PARALLEL_MIN_MACS else _fused_serial)(x, w, nbmap, out, block)
    return out


# ----------------------------------------------------------------------------- gather-GEMM-scatter helpers
def _gather_py(x, idx, out):
    C = x.shape[1]
    for p in prange(idx.shape[0]):
        i = idx[p]
        if i < 0:
            for c in range(C):
                out[p, c] = 0
        else:
            for c in range(C):
                out[p, c] = x[i, c]


def _scatter_py(y, pos, out, accumulate):
    M, K = pos.shape
    C = y.shape[1]
    for j in prange(M):
        if not accumulate:
            for o in range(C):
                out[j, o] = 0
        for k in range(K):
            p = pos[j, k]
            if p >= 0:
                for o in range(C):
                    out[j, o] += y[p, o]


_gather, _gather_serial = _variants(_gather_py)
_scatter, _scatter_serial = _variants(_scatter_py)


def gather_rows(x: np.ndarray, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out[p] = x[idx[p]]`` (zeros where ``idx[p] < 0``); x ``[N, C]``, idx ``[R]``, out ``[R, C]``."""
    if idx.shape[0]:
        (_gather if idx.shape[0] * x.shape[1] >= PARALLEL_MIN_MACS // 8 else _gather_serial)(x, idx, out)
    return out


def scatter_rows(y: np.ndarray, pos: np.ndarray, out: np.ndarray, accumulate: bool) -> np.ndarray:
    """Output-stationary reduction ``out[j] (+)= sum_k y[pos[j, k]]`` over ``pos >= 0``.

    y ``[R, C]``, pos ``[M, K]`` int32/int64, out ``[M, C]``. Each row is summed by one
    thread in offset order, so the result is deterministic and race-free.
    """
    if pos.shape[0]:
        big = pos.shape[0] * y.shape[1] * 4 >= PARALLEL_MIN_MACS // 8
        (_scatter if big else _scatter_serial)(y, pos, out, accumulate)
    return out


@njit(cache=True, nogil=True, parallel=True)
def _fill(a, v):
    flat = a.reshape(-1)
    n = flat.shape[0]
    step = 1 << 16
    for b in prange((n + step - 1) // step):
        for t in range(b * step, min(n, b * step + step)):
            flat[t] = v


@njit(cache=True, nogil=True, parallel=True)
def _plan_rows(in_idx, out_idx, starts, sizes, group_of, slot_of, group_row0, group_n, K, gin, gout, pos, posT):
    for k in prange(K):
        g = group_of[k]
        if g < 0:
            continue
        base = group_row0[g] + slot_of[k] * group_n[g]
        s = starts[k]
        for t in range(sizes[k]):
            r = base + t
            i = in_idx[s + t]
            o = out_idx[s + t]
            gin[r] = i
            gout[r] = o
            pos[o, k] = r
            posT[i, k] = r


def plan_rows(in_idx, out_idx, sizes, groups, n_in, n_out):
    """Padded row layout of grouped pairs.

    Group ``g`` with offsets ``ks`` and max size ``n`` occupies rows
    ``[row0, row0 + len(ks) * n)``; offset ``ks[s]`` uses the slice ``s``.
    Returns ``(gin [R], gout [R], pos [n_out, K], posT [n_in, K], row0 list)``:
    gin/gout hold the input/output row of each padded row (-1 = padding);
    pos/posT (int32) give the padded row of pair (output j, k) / (input i, k), -1 if none.
    """
    K = len(sizes)
    sizes = np.asarray(sizes, np.int64)
    starts = np.zeros(K, np.int64)
    starts[1:] = np.cumsum(sizes)[:-1]
    group_of = np.full(K, -1, np.int64)
    slot_of = np.zeros(K, np.int64)
    group_n = np.zeros(max(len(groups), 1), np.int64)
    group_row0 = np.zeros(max(len(groups), 1), np.int64)
    R = 0
    for g, ks in enumerate(groups):
        n = int(max(sizes[k] for k in ks))
        group_n[g] = n
        group_row0[g] = R
        for s, k in enumerate(ks):
            group_of[k] = g
            slot_of[k] = s
        R += n * len(ks)
    if R >= 2**31:
        raise ValueError(f"kernel map too large: {R} gathered rows exceed int32 indexing")
    gin = np.empty(R, np.int64)
    gout = np.empty(R, np.int64)
    pos = np.empty((n_out, K), np.int32)
    posT = np.empty((n_in, K), np.int32)
    for a in (gin, gout, pos, posT):
        if a.size:
            _fill(a, -1)
    _plan_rows(in_idx, out_idx, starts, sizes, group_of, slot_of, group_row0, group_n, K, gin, gout, pos, posT)
    return gin, gout, pos, posT, group_row0[: len(groups)].tolist()
