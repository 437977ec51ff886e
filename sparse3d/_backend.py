"""Capability flags and global switches (cf. PyG ``typing.py``)."""
from __future__ import annotations

import importlib.util

import torch

__all__ = ["HAS_NUMBA", "HAS_SPCONV", "HAS_CUDA", "set_deterministic", "is_deterministic"]

HAS_NUMBA = importlib.util.find_spec("numba") is not None
HAS_SPCONV = importlib.util.find_spec("spconv") is not None
HAS_CUDA = torch.cuda.is_available()

_DETERMINISTIC = False


def set_deterministic(flag: bool = True) -> None:
    """Make every sparse3d op bitwise reproducible across runs.

    When on, convolution uses one fixed dataflow per layer (no timing-based
    autotuning), every scatter is done in a fixed order (output-stationary or
    per-offset sequential ``index_add_`` with unique targets), and
    ``torch.use_deterministic_algorithms`` is switched on for the rest of torch.
    """
    global _DETERMINISTIC
    _DETERMINISTIC = bool(flag)
    torch.use_deterministic_algorithms(_DETERMINISTIC, warn_only=True)


def is_deterministic() -> bool:
    return _DETERMINISTIC


def omp_passive() -> bool:
    """True if GNU OpenMP threads wait passively (set by importing sparse3d before torch)."""
    import sparse3d
    return bool(sparse3d._OMP_POLICY_SET)
