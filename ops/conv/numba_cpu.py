"""Fused output-stationary sparse convolution for the CPU (numba).

``out[j] = sum_k x[nbmap[j, k]] @ w[k]`` without materializing gathered rows.
Rows are processed in blocks; for each offset the block's rows reuse ``w[k]``
while it is hot in L1, and the channel loop is unrolled by 4 so each load/store
of the accumulator feeds four FMAs. Each output row is written by one thread in
a fixed order, so results are deterministic.
"""
from __future__ import annotations

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


_fused = njit(cache=True, parallel=True, fastmath=True)(_fused_py)
_fused_serial = njit(cache=True, fastmath=True)(_fused_py)
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
