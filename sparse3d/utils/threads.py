"""Thread-count policy for the CPU kernels: numba follows torch, small inputs run single-threaded.

torch parallelizes an element-wise op or GEMM over its OpenMP threads once it has more than ~32k
elements. With ``OMP_WAIT_POLICY=PASSIVE`` (set by ``import sparse3d`` so that idle OpenMP threads
do not spin on the cores numba needs) every such parallel region wakes a sleeping thread, which costs
more than the work on a ~1k-row sparse tensor. A forward pass over a small input (a calorimeter
event, one object) is a few hundred of these regions; measured on 2 cores, Calo-SPVCNN per event:
1 torch thread 35 ms vs 2 threads 50 ms at ~1.2k hits, 12.4 vs 14.7 ms at ~10k hits (batch 8), equal
at ~38k hits. :func:`small_input_threads` therefore runs a forward pass single-threaded below
``SMALL_INPUT_ROWS`` rows, the numba kernels included: with numba at 2 threads as well, Calo-SPVCNN took
33.8 ms per ~1.2k-hit event vs 25.9 ms with both at one thread (10.9 vs 10.0 ms per event at batch 8;
measured 2026-11-29 on the idle 2-core machine; until then numba kept the outer count).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, List, Optional, TypeVar

import torch

__all__ = ["SMALL_INPUT_ROWS", "small_input_threads", "sync_numba_threads", "numba_thread_target", "concurrent_map"]

# rows below which a model forward runs with one torch thread (see the module docstring)
SMALL_INPUT_ROWS = 16384


def numba_thread_target() -> int:
    """Threads the numba kernels should use: torch's intra-op thread count (1 inside
    :func:`small_input_threads`)."""
    return torch.get_num_threads()


def sync_numba_threads() -> int:
    """Set numba's thread count to :func:`numba_thread_target` (capped by ``NUMBA_NUM_THREADS``); returns it."""
    import numba
    nt = max(1, min(numba_thread_target(), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != nt:
        numba.set_num_threads(nt)
    return nt


@contextmanager
def small_input_threads(rows: int, limit: Optional[int] = None) -> Iterator[None]:
    """Run the block single-threaded (torch intra-op and, through :func:`sync_numba_threads`, the numba
    kernels) if ``rows < limit`` (default :data:`SMALL_INPUT_ROWS`, read at call time; 0 disables);
    the thread count is restored afterwards, also on error. Setting it costs well under a microsecond."""
    limit = SMALL_INPUT_ROWS if limit is None else int(limit)
    n = torch.get_num_threads()
    if rows >= limit or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


_T = TypeVar("_T")
_R = TypeVar("_R")


def _one_thread_worker() -> None:
    import numba
    numba.set_num_threads(1)   # numba's count is per thread


def concurrent_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> List[_R]:
    """``[fn(x) for x in items]`` on ``workers`` Python threads, each running torch and numba single-threaded.

    The other way to use several cores: instead of splitting every op over the intra-op threads (which
    pays a thread wake-up per op and leaves the cores idle in Python and in small ops), independent
    inputs, e.g. batches of calorimeter events, run side by side. This works because torch ops and the
    ``ops/`` numba kernels (``nogil=True``) release the GIL. Items are handed out one at a time (a slow
    item does not stall the others); results come back in input order; an exception in ``fn`` is raised
    here. torch's intra-op thread count is 1 during the call and restored afterwards; the caller's grad
    mode (thread-local in torch, e.g. ``torch.no_grad()``) holds in the workers too. ``workers <= 1`` runs
    the plain loop in the calling thread with the current thread counts.
    """
    items = list(items)
    grad = torch.is_grad_enabled()

    def call(x):
        with torch.set_grad_enabled(grad):
            return fn(x)

    workers = int(workers)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(items)), initializer=_one_thread_worker) as pool:
            return list(pool.map(call, items))
    finally:
        torch.set_num_threads(n)
