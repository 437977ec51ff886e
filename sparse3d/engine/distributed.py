"""``torch.distributed`` helpers for ``torchrun`` (env:// rendezvous; gloo on CPU, nccl on CUDA)."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "is_distributed", "get_rank", "get_world_size", "is_main_process",
           "barrier", "broadcast_object", "all_reduce_sum", "cleanup", "launch_local"]


def init_distributed(backend: str = "auto") -> bool:
    """Initialize the default process group from ``torchrun``'s environment.

    Returns True when running distributed (``WORLD_SIZE`` > 1). ``backend="auto"`` picks nccl
    when CUDA is available, else gloo. Does nothing when already initialized.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    if dist.is_initialized():
        return True
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a new tensor; ``t`` itself when not distributed)."""
    if not is_distributed():
        return t
    t = t.clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def launch_local(fn: Callable[..., Any], nproc: int, *args: Any, threads_per_proc: Optional[int] = None) -> Dict[int, Any]:
    """Run ``fn(*args)`` in ``nproc`` local worker processes, as ``torchrun --standalone --nproc_per_node``.

    Uses torch's elastic launcher API (``torch.distributed.launcher.api.elastic_launch``, the machinery of
    ``torchrun``): a c10d rendezvous on a free localhost port, workers started with ``spawn`` and given
    ``RANK`` / ``LOCAL_RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT``, so ``fn`` calls
    :func:`init_distributed` as under ``torchrun``. ``fn`` and ``args`` must be picklable (a module-level
    function; e.g. a resolved OmegaConf config). ``OMP_NUM_THREADS`` of the workers is
    ``threads_per_proc`` (default: the usable cores // ``nproc``, at least 1) unless already set. No restarts:
    a failing worker raises ``torch.distributed.elastic.multiprocessing.errors.ChildFailedError`` naming its
    rank and error. Returns ``{rank: fn's return value}``.
    """
    import uuid

    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    nproc = int(nproc)
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if threads_per_proc is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads_per_proc = max(1, cores // nproc)
    cfg = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"sparse3d-{uuid.uuid4().hex[:8]}",
                       rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn")
    set_omp = "OMP_NUM_THREADS" not in os.environ
    if set_omp:   # inherited by the spawned workers only
        os.environ["OMP_NUM_THREADS"] = str(int(threads_per_proc))
    try:
        return elastic_launch(cfg, fn)(*args)
    finally:
        if set_omp:
            os.environ.pop("OMP_NUM_THREADS", None)
