"""Exact k-nearest neighbours within events: ``reference.py`` (brute-force PyTorch) and ``numba_cpu.py``.

:func:`knn` checks its arguments and dispatches (numba on the CPU, the reference
elsewhere or with ``backend="reference"``). Indices carry no gradient; to train through
a kNN graph, recompute the distances of the selected pairs with :func:`knn_distances`,
which is differentiable w.r.t. the positions (GravNet's ``exp(-10 d^2)`` weights).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

__all__ = ["knn", "knn_distances", "BACKENDS"]

BACKENDS = ("numba", "reference")


def _check_offsets(offsets: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(offsets, torch.Tensor):
        raise TypeError(f"offsets must be a torch.Tensor, got {type(offsets).__name__}")
    if offsets.dtype not in (torch.int32, torch.int64) or offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"offsets must be a 1-D int64 tensor [B + 1], got {offsets.dtype} {tuple(offsets.shape)}")
    offsets = offsets.long().cpu()
    if int(offsets[0]) != 0 or int(offsets[-1]) != n:
        raise ValueError(f"offsets must start at 0 and end at the number of points {n}, "
                         f"got {int(offsets[0])} .. {int(offsets[-1])}")
    if (offsets[1:] < offsets[:-1]).any():
        raise ValueError("offsets must be non-decreasing")
    return offsets


def knn(pos: torch.Tensor, offsets: torch.Tensor, k: int,
        backend: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """k nearest neighbours of every point among the points of its own event.

    Conventions (see :mod:`sparse3d.ops.knn.reference`): the point itself is included
    (distance 0); neighbours are sorted by ``(d2, index)``; events with fewer than ``k``
    points pad with index -1 and ``d2 = inf``.

    Args:
        pos: ``[N, D]`` float (D >= 1), finite. offsets: ``[B + 1]`` int64 event
            boundaries (``0 = offsets[0] <= ... <= offsets[B] = N``; events are contiguous).
        k: number of neighbours, >= 1.
        backend: ``"numba"`` (CPU; default there) or ``"reference"`` (default elsewhere).
    Returns:
        ``idx [N, k]`` int64 (rows of ``pos``, -1 padding) and ``d2 [N, k]`` float64 squared
        distances, both without gradient, on ``pos``'s device.
    Raises:
        TypeError / ValueError naming the bad argument.
    """
    if not isinstance(pos, torch.Tensor):
        raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
    if pos.dim() != 2 or pos.shape[1] < 1:
        raise ValueError(f"pos must be [N, D] with D >= 1, got {tuple(pos.shape)}")
    if not pos.is_floating_point():
        raise TypeError(f"pos must be floating point, got {pos.dtype}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    offsets = _check_offsets(offsets, pos.shape[0])
    if pos.numel() and not torch.isfinite(pos).all():
        raise ValueError("pos contains NaN or inf")
    if backend is None:
        from ..._backend import HAS_NUMBA
        backend = "numba" if HAS_NUMBA and pos.device.type == "cpu" else "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        from .reference import knn as ref
        return ref(pos, offsets.to(pos.device), k)
    from .numba_cpu import knn_numba
    idx, d2 = knn_numba(pos.detach().cpu().double().contiguous().numpy(), offsets.numpy(), k)
    return torch.from_numpy(idx).to(pos.device), torch.from_numpy(d2).to(pos.device)


def knn_distances(pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Differentiable squared distances of the kNN pairs.

    Args:
        pos: ``[N, D]`` float. idx: ``[N, k]`` int64 from :func:`knn` (-1 = padding).
    Returns:
        ``[N, k]`` in pos' dtype: ``|pos[i] - pos[idx[i, j]]|^2``, 0 at padding; gradients
        flow to ``pos`` through both ends of each pair (never through ``idx``).
    """
    if idx.dim() != 2 or idx.shape[0] != pos.shape[0]:
        raise ValueError(f"idx must be [N={pos.shape[0]}, k], got {tuple(idx.shape)}")
    if idx.dtype != torch.long:
        raise TypeError(f"idx must be int64, got {idx.dtype}")
    valid = idx >= 0
    self_idx = torch.arange(pos.shape[0], device=pos.device).unsqueeze(1)
    j = torch.where(valid, idx, self_idx)           # padding -> the point itself: distance 0
    diff = pos.unsqueeze(1) - pos[j]
    return (diff * diff).sum(-1)
