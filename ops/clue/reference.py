"""Slow dense reference for CLUE (pure PyTorch, O(N^2) memory): the ground truth for tests.

Same conventions as :mod:`sparse3d.ops.clue.numba_cpu` (density kernel, "higher" order
with index tie-break, nearest-higher ties to the smallest index, seeds / outliers /
followers, seed numbering by point index).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["clue_reference"]


def clue_reference(u, v, plane, weight, dc: float, rhoc: float, deltac: float, deltao: float,
                   layer_window: int = 0, kernel: str = "flat", tile: float = 0.0):
    """Dense CLUE; same arguments and returns (numpy) as ``clue_numba`` (``tile`` is ignored)."""
    u, v, w = (torch.as_tensor(np.asarray(a, np.float64)) for a in (u, v, weight))
    pl = torch.as_tensor(np.asarray(plane, np.int64))
    n = u.shape[0]
    if n == 0:
        z = np.zeros(0)
        return z, z.copy(), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    du = u[:, None] - u[None, :]
    dv = v[:, None] - v[None, :]
    d2 = du * du + dv * dv
    near_plane = (pl[:, None] - pl[None, :]).abs() <= layer_window
    eye = torch.eye(n, dtype=torch.bool)
    if kernel == "flat":
        chi = torch.full_like(d2, 0.5)
    elif kernel == "gaussian":
        chi = torch.exp(-d2 / (2.0 * (0.5 * dc) ** 2))
    else:
        raise ValueError(f"kernel must be 'flat' or 'gaussian', got {kernel!r}")
    chi = torch.where(eye, torch.ones_like(chi), chi)
    chi = torch.where(near_plane & (d2 <= dc * dc), chi, torch.zeros_like(chi))
    rho = (chi * w[None, :]).sum(dim=1)
    idx = torch.arange(n)
    higher = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & (idx[None, :] > idx[:, None]))
    dm = max(deltac, deltao)
    cand = higher & near_plane & (d2 <= dm * dm)
    masked = torch.where(cand, d2, torch.full_like(d2, math.inf))
    best, nh = masked.min(dim=1)   # first (smallest) index among equal minima
    has = torch.isfinite(best)
    nh = torch.where(has, nh, torch.full_like(nh, -1))
    delta = torch.where(has, best.sqrt(), torch.full_like(best, math.inf))
    is_seed = (rho > rhoc) & (delta > deltac)
    is_out = (rho < rhoc) & (delta > deltao)
    labels = torch.full((n,), -1, dtype=torch.int64)
    labels[is_seed] = torch.arange(int(is_seed.sum()))
    # follow the chain of nearest-highers up to a seed (or stop at an outlier / dead end)
    for i in range(n):
        if is_seed[i] or is_out[i]:
            continue
        j = int(nh[i])
        while j >= 0 and not is_seed[j] and not is_out[j]:
            j = int(nh[j])
        labels[i] = labels[j] if j >= 0 and is_seed[j] else -1
    return rho.numpy(), delta.numpy(), nh.numpy(), labels.numpy(), is_seed.numpy()
