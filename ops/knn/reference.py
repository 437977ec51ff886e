"""Pure-torch exact k-nearest neighbours per event (any device); the ground truth for ``numba_cpu``.

Conventions (shared with :mod:`sparse3d.ops.knn.numba_cpu`, which must agree exactly):

- rows ``offsets[b] .. offsets[b+1]-1`` form event ``b``; neighbours never cross events;
- the query point itself is a candidate (distance 0), as in PyG ``knn(x, x, k, batch)``;
- squared Euclidean distance ``d2 = sum_c (p_i[c] - p_j[c])^2`` computed in float64
  from differences (no ``|a|^2 + |b|^2 - 2ab`` expansion);
- neighbours are ordered by ``(d2, j)`` ascending (ties broken by the smaller row);
- an event with ``n < k`` points pads columns ``n .. k-1`` with index -1 and ``d2 = inf``.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["knn"]


def knn(pos: torch.Tensor, offsets: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Brute-force kNN within each event.

    Args:
        pos: ``[N, D]`` float. offsets: ``[B + 1]`` int64 event boundaries. k: neighbours per point.
    Returns:
        ``(idx [N, k] int64, d2 [N, k] float64)``, sorted by ``(d2, idx)``; -1 / inf padding.
    """
    N = pos.shape[0]
    idx = torch.full((N, k), -1, dtype=torch.long, device=pos.device)
    d2 = torch.full((N, k), float("inf"), dtype=torch.float64, device=pos.device)
    p = pos.detach().double()
    for b in range(offsets.shape[0] - 1):
        s, e = int(offsets[b]), int(offsets[b + 1])
        n = e - s
        if n == 0:
            continue
        q = p[s:e]
        d = ((q.unsqueeze(1) - q.unsqueeze(0)) ** 2).sum(-1)       # [n, n]
        order = torch.argsort(d, dim=1, stable=True)[:, :k]        # stable: ties by row
        m = order.shape[1]
        idx[s:e, :m] = order + s
        d2[s:e, :m] = torch.gather(d, 1, order)
    return idx, d2
