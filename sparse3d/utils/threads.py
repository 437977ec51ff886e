"""Thread-count policy for the CPU kernels: numba follows torch, small inputs run torch single-threaded.

torch parallelizes an element-wise op or GEMM over its OpenMP threads once it has more than ~32k
elements. With ``OMP_WAIT_POLICY=PASSIVE`` (set by ``import sparse3d`` so that idle OpenMP threads
do not spin on the cores numba needs) every such parallel region wakes a sleeping thread, which costs
more than the work on a ~1k-row sparse tensor. A forward pass over a small input (a calorimeter
event, one object) is a few hundred of these regions; measured on 2 cores, Calo-SPVCNN per event:
1 torch thread 35 ms vs 2 threads 50 ms at ~1.2k hits, 12.4 vs 14.7 ms at ~10k hits (batch 8), equal
at ~38k hits. :func:`small_input_threads` therefore runs a forward pass with one torch thread below
``SMALL_INPUT_ROWS`` rows; numba kernels keep the outer thread count (they pick their own serial or
parallel variant by size).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Optional

import torch

__all__ = ["SMALL_INPUT_ROWS", "small_input_threads", "sync_numba_threads", "numba_thread_target"]

# rows below which a model forward runs with one torch thread (see the module docstring)
SMALL_INPUT_ROWS = 16384

_state = threading.local()


def numba_thread_target() -> int:
    """Threads the numba kernels should use: the torch thread count outside :func:`small_input_threads`,
    the outer count inside it."""
    outer = getattr(_state, "outer", None)
    return int(outer) if outer else torch.get_num_threads()


def sync_numba_threads() -> int:
    """Set numba's thread count to :func:`numba_thread_target` (capped by ``NUMBA_NUM_THREADS``); returns it."""
    import numba
    nt = max(1, min(numba_thread_target(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != nt:
        numba.set_num_threads(nt)
    return nt


@contextmanager
def small_input_threads(rows: int, limit: Optional[int] = None) -> Iterator[None]:
    """Run the block with one torch intra-op thread if ``rows < limit`` (default :data:`SMALL_INPUT_ROWS`,
    read at call time; 0 disables), restored afterwards, also on error; numba kernels inside keep the
    outer thread count. Nested use keeps the outermost count. Setting the thread count costs well under
    a microsecond."""
    limit = SMALL_INPUT_ROWS if limit is None else int(limit)
    n = torch.get_num_threads()
    if rows >= limit or n == 1:
        yield
        return
    prev = getattr(_state, "outer", None)
    _state.outer = prev or n
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
        _state.outer = prev
