"""Module-level functions for the local DDP launcher test (spawned workers import them by name)."""
import torch
import torch.distributed as dist

from sparse3d.engine.distributed import cleanup, init_distributed


def rank_sum(x):
    """(rank, world, sum over ranks of rank + x) after init_distributed (gloo)."""
    assert init_distributed("gloo")
    try:
        t = torch.tensor([dist.get_rank() + x])
        dist.all_reduce(t)
        return dist.get_rank(), dist.get_world_size(), int(t)
    finally:
        cleanup()


def fail_on_rank1():
    assert init_distributed("gloo")
    try:
        if dist.get_rank() == 1:
            raise RuntimeError("rank 1 failed on purpose")
        return 0
    finally:
        cleanup()
