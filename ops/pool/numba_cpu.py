"""Output-stationary sparse pooling kernels for the CPU (numba).

Each output row is written by one thread and reads its neighbours straight from
``nbmap [M, K]`` (-1 = absent), so no gathered ``[M, K, C]`` block is built and
results are deterministic. Ties in the max go to the lowest offset index ``k``;
NaN propagates like ``torch.max``.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["max_pool", "max_pool_backward", "sum_pool"]

_CBLOCK = 16  # channels per thread in the backward scatter (one 64-byte line of float32)


@njit(cache=True, nogil=True, parallel=True)
def _max_pool(x, nbmap, out, arg):
    M, K = nbmap.shape
    C = x.shape[1]
    for j in prange(M):
        first = True
        for k in range(K):
            i = nbmap[j, k]
            if i < 0:
                continue
            if first:
                for c in range(C):
                    out[j, c] = x[i, c]
                    arg[j, c] = i
                first = False
            else:
                for c in range(C):
                    v = x[i, c]
                    b = out[j, c]
                    if v > b or (v != v and b == b):
                        out[j, c] = v
                        arg[j, c] = i
        if first:
            for c in range(C):
                out[j, c] = 0
                arg[j, c] = -1


@njit(cache=True, nogil=True, parallel=True)
def _max_pool_backward(g, arg, gin, cblock):
    M, C = g.shape
    nb = (C + cblock - 1) // cblock
    for cb in prange(nb):
        c0 = cb * cblock
        c1 = min(C, c0 + cblock)
        for j in range(M):
            for c in range(c0, c1):
                i = arg[j, c]
                if i >= 0:
                    gin[i, c] += g[j, c]


@njit(cache=True, nogil=True, parallel=True)
def _sum_pool(x, nbmap, out):
    M, K = nbmap.shape
    C = x.shape[1]
    for j in prange(M):
        for c in range(C):
            out[j, c] = 0
        for k in range(K):
            i = nbmap[j, k]
            if i < 0:
                continue
            for c in range(C):
                out[j, c] += x[i, c]


def max_pool(x: np.ndarray, nbmap: np.ndarray):
    """Args: x ``[N, C]`` float32/64 C-contiguous, nbmap ``[M, K]`` int32.

    Returns (out ``[M, C]``, argmax ``[M, C]`` int32 input row, -1 where the output has no neighbour).
    """
    M = nbmap.shape[0]
    out = np.empty((M, x.shape[1]), dtype=x.dtype)
    arg = np.empty((M, x.shape[1]), dtype=np.int32)
    if M:
        _max_pool(x, nbmap, out, arg)
    return out, arg


def max_pool_backward(grad_out: np.ndarray, arg: np.ndarray, n_in: int) -> np.ndarray:
    """``grad_in [n_in, C]`` with ``grad_in[arg[j, c], c] += grad_out[j, c]`` (fixed order over j)."""
    gin = np.zeros((n_in, grad_out.shape[1]), dtype=grad_out.dtype)
    if grad_out.shape[0] and n_in:
        _max_pool_backward(grad_out, arg, gin, _CBLOCK)
    return gin


def sum_pool(x: np.ndarray, nbmap: np.ndarray) -> np.ndarray:
    """``out[j] = sum_k x[nbmap[j, k]]`` over existing neighbours; x ``[N, C]`` -> ``[M, C]``."""
    out = np.empty((nbmap.shape[0], x.shape[1]), dtype=x.dtype)
    if nbmap.shape[0]:
        _sum_pool(x, nbmap, out)
    return out
