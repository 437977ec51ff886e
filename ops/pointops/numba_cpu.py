"""Numba CPU point-voxel kernels: weighted gather and its transpose (weighted scatter).

Both are race-free and deterministic: the gather writes each output row from one
thread; the scatter first sorts the (point, k) entries by target row (counting
sort, CSR), then each target row sums its entries in a fixed (p, k) order.
No gathered ``[P, K, C]`` tensor is ever materialized.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["gather_weighted", "scatter_weighted", "csr_by_target", "PARALLEL_MIN_WORK"]

# Below this many multiply-adds (P * K * C) the serial kernels run: thread start-up would dominate.
PARALLEL_MIN_WORK = 1 << 16


@njit(cache=True, nogil=True, inline="always")
def _gather_row(feats, idx, w, out, p):
    C = feats.shape[1]
    for c in range(C):
        out[p, c] = 0
    for k in range(idx.shape[1]):
        i = idx[p, k]
        if i < 0:
            continue
        wk = w[p, k]
        for c in range(C):
            out[p, c] += wk * feats[i, c]


@njit(cache=True, nogil=True, parallel=True)
def _gather_par(feats, idx, w, out):
    for p in prange(idx.shape[0]):
        _gather_row(feats, idx, w, out, p)


@njit(cache=True, nogil=True)
def _gather_seq(feats, idx, w, out):
    for p in range(idx.shape[0]):
        _gather_row(feats, idx, w, out, p)


@njit(cache=True, nogil=True)
def _csr(idx, num_out):
    P, K = idx.shape
    indptr = np.zeros(num_out + 1, dtype=np.int64)
    for p in range(P):
        for k in range(K):
            i = idx[p, k]
            if i >= 0:
                indptr[i + 1] += 1
    for v in range(num_out):
        indptr[v + 1] += indptr[v]
    fill = indptr[:-1].copy()
    order = np.empty(indptr[num_out], dtype=np.int64)
    for p in range(P):
        for k in range(K):
            i = idx[p, k]
            if i >= 0:
                order[fill[i]] = p * K + k
                fill[i] += 1
    return indptr, order


@njit(cache=True, nogil=True, inline="always")
def _scatter_row(src, w, indptr, order, K, out, v):
    C = src.shape[1]
    for c in range(C):
        out[v, c] = 0
    for j in range(indptr[v], indptr[v + 1]):
        e = order[j]
        p = e // K
        wk = w[p, e - p * K]
        for c in range(C):
            out[v, c] += wk * src[p, c]


@njit(cache=True, nogil=True, parallel=True)
def _scatter_par(src, w, indptr, order, K, out):
    for v in prange(out.shape[0]):
        _scatter_row(src, w, indptr, order, K, out, v)


@njit(cache=True, nogil=True)
def _scatter_seq(src, w, indptr, order, K, out):
    for v in range(out.shape[0]):
        _scatter_row(src, w, indptr, order, K, out, v)


def _check_idx(idx: np.ndarray, n: int, what: str) -> None:
    if idx.size and idx.max() >= n:
        raise ValueError(f"idx has entry {int(idx.max())} but {what} has only {n} rows")


def csr_by_target(idx: np.ndarray, num_out: int):
    """Entries ``p*K + k`` of ``idx [P, K]`` grouped by target row: ``(indptr [V+1], order [E])`` int64."""
    _check_idx(idx, num_out, "the output")
    return _csr(np.ascontiguousarray(idx, dtype=np.int64), num_out)


def gather_weighted(feats: np.ndarray, idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``out[p] = sum_k w[p, k] * feats[idx[p, k]]`` (skip ``idx < 0``).

    Args: feats ``[V, C]`` float32/64; idx ``[P, K]`` int64; w ``[P, K]`` feats' dtype.
    Returns ``[P, C]``.
    """
    _check_idx(idx, feats.shape[0], "feats")
    out = np.empty((idx.shape[0], feats.shape[1]), dtype=feats.dtype)
    if idx.shape[0]:
        fn = _gather_par if idx.size * feats.shape[1] >= PARALLEL_MIN_WORK else _gather_seq
        fn(np.ascontiguousarray(feats), np.ascontiguousarray(idx, dtype=np.int64),
           np.ascontiguousarray(w, dtype=feats.dtype), out)
    return out


def scatter_weighted(src: np.ndarray, idx: np.ndarray, w: np.ndarray, num_out: int) -> np.ndarray:
    """``out[v] = sum_{idx[p, k] = v} w[p, k] * src[p]`` (skip ``idx < 0``).

    Args: src ``[P, C]`` float32/64; idx ``[P, K]`` int64; w ``[P, K]`` src's dtype.
    Returns ``[num_out, C]``.
    """
    out = np.zeros((num_out, src.shape[1]), dtype=src.dtype)
    if idx.shape[0] == 0 or num_out == 0:
        return out
    indptr, order = csr_by_target(idx, num_out)
    fn = _scatter_par if idx.size * src.shape[1] >= PARALLEL_MIN_WORK else _scatter_seq
    fn(np.ascontiguousarray(src), np.ascontiguousarray(w, dtype=src.dtype), indptr, order,
       np.int64(idx.shape[1]), out)
    return out
