"""Start numba's thread pool without changing torch's thread count (``import sparse3d`` does it once).

numba's OpenMP threading layer and torch share one libgomp. Starting numba's pool (the first parallel
kernel, ``numba.set_num_threads`` or ``numba.get_num_threads`` in a process) calls
``omp_set_num_threads(NUMBA_NUM_THREADS)``, which silently resets the calling thread's torch intra-op
thread count: ``torch.set_num_threads(1)`` followed by the first ``numba.set_num_threads(1)`` left
torch at 2 threads (measured; a "1-thread" benchmark then used both cores). Importing this module
(``import sparse3d`` does, before any kernel runs) starts the pool once and puts torch's count back, so later
thread settings hold.
"""
from __future__ import annotations

import numba

__all__ = ["start_numba_threads"]


def start_numba_threads() -> int:
    """Start numba's thread pool (idempotent) keeping torch's intra-op thread count; returns numba's count."""
    import torch
    n = torch.get_num_threads()
    nt = numba.get_num_threads()   # launches the pool on first use
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return nt


start_numba_threads()
