"""Pure-torch point-voxel kernels (any device); the ground truth for ``numba_cpu``.

Neighbour order of the 2x2x2 trilinear stencil (spvnas ``calc_ti_weights`` /
PVCNN ``trilinear_devox.cu``): z fastest, ``k = 4*dx + 2*dy + dz``, i.e.
(0,0,0), (0,0,1), (0,1,0), (0,1,1), (1,0,0), ...
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch

__all__ = ["CORNERS", "gather_weighted", "scatter_weighted", "point_voxels", "trilinear_neighbors",
           "renormalize", "dense_voxel_index", "dense_trilinear"]

CORNERS = torch.tensor([[dx, dy, dz] for dx in (0, 1) for dy in (0, 1) for dz in (0, 1)], dtype=torch.long)


def gather_weighted(feats: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``out[p] = sum_k weights[p, k] * feats[idx[p, k]]``, skipping ``idx < 0``.

    Args:
        feats: ``[V, C]`` float. idx: ``[P, K]`` int64. weights: ``[P, K]``, feats' dtype.
    Returns:
        ``[P, C]``.
    """
    P, K = idx.shape
    out = feats.new_zeros((P, feats.shape[1]))
    if P == 0 or feats.shape[0] == 0:
        return out
    valid = idx >= 0
    w = torch.where(valid, weights, torch.zeros_like(weights))
    ic = idx.clamp(min=0)
    for k in range(K):
        out += w[:, k:k + 1] * feats.index_select(0, ic[:, k])
    return out


def scatter_weighted(src: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor, num_out: int) -> torch.Tensor:
    """Transpose of :func:`gather_weighted`: ``out[v] = sum_{idx[p,k]=v} weights[p, k] * src[p]``.

    Args:
        src: ``[P, C]`` float. idx: ``[P, K]`` int64 (-1 = skip). weights: ``[P, K]``.
    Returns:
        ``[num_out, C]``.
    """
    out = src.new_zeros((num_out, src.shape[1]))
    if src.shape[0] == 0 or num_out == 0:
        return out
    for k in range(idx.shape[1]):
        m = idx[:, k] >= 0
        out.index_add_(0, idx[m, k], weights[m, k:k + 1] * src[m])
    return out


def point_voxels(coords: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Voxel of each point at ``stride``: ``(b, floor(p / s) * s)``.

    Computed as ``floor_div(floor(p), s) * s`` in integers, so it is exact.
    Args: coords ``[P, 4]`` float (b, x, y, z). Returns ``[P, 4]`` int64.
    """
    s = torch.tensor(stride, dtype=torch.long, device=coords.device)
    cell = torch.floor(coords[:, 1:].double()).long()
    base = torch.div(cell, s, rounding_mode="floor") * s
    return torch.cat([coords[:, :1].long(), base], 1)


def trilinear_neighbors(coords: torch.Tensor, stride: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Corner-aligned trilinear stencil of each point (spvnas convention).

    Voxel ``c`` (a multiple of ``s``) covers ``[c, c + s)`` and its value sits at
    its integer coordinate ``c``. With ``base = floor(p / s) * s`` and
    ``u = (p - base) / s`` in ``[0, 1)``, corner ``base + s * d`` gets weight
    ``prod_a (u_a if d_a else 1 - u_a)``.

    Args:
        coords: ``[P, 4]`` float (b, x, y, z). stride: 3 ints.
    Returns:
        (queries ``[P, 8, 4]`` int64, weights ``[P, 8]`` float64), corners ordered as :data:`CORNERS`.
    """
    vox = point_voxels(coords, stride)
    s = torch.tensor(stride, dtype=torch.long, device=coords.device)
    u = ((coords[:, 1:].double() - vox[:, 1:]) / s).clamp_(0.0, 1.0)
    d = CORNERS.to(coords.device)
    w = torch.where(d.unsqueeze(0) == 1, u.unsqueeze(1), 1.0 - u.unsqueeze(1)).prod(-1)
    q = vox.unsqueeze(1).repeat(1, 8, 1)
    q[..., 1:] += d * s
    return q, w


def renormalize(weights: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Zero missing neighbours and rescale: ``w / (sum w + 1e-8)`` (spvnas; all missing -> 0)."""
    w = torch.where(idx >= 0, weights, torch.zeros_like(weights))
    return w / (w.sum(1, keepdim=True) + 1e-8)


def dense_voxel_index(coords: torch.Tensor, resolution: int) -> torch.Tensor:
    """Flat voxel of each point in an ``R^3`` grid: ``x*R*R + y*R + z`` (PVCNN ``vox.cu``).

    Args:
        coords: ``[B, 3, N]``, float (rounded with ``torch.round``, half to even, as
            PVCNN) or integer; must lie in ``[0, R-1]`` after rounding.
    Returns:
        ``[B, N]`` int64.
    """
    v = torch.round(coords).long() if coords.is_floating_point() else coords.long()
    if v.numel() and (v.min() < 0 or v.max() > resolution - 1):
        raise ValueError(f"coords must lie in [0, resolution-1] = [0, {resolution - 1}] after rounding; "
                         f"got range [{int(v.min())}, {int(v.max())}]")
    return (v[:, 0] * resolution + v[:, 1]) * resolution + v[:, 2]


def dense_trilinear(coords: torch.Tensor, resolution: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """PVCNN trilinear stencil in an ``R^3`` grid (``trilinear_devox.cu``).

    Coords are clamped to ``[0, R-1]``; ``lo = floor(c)``, ``hi = min(lo + 1, R - 1)``
    (at the border the ``hi`` weight is 0, like PVCNN's ``hi = lo`` when ``frac == 0``).

    Args:
        coords: ``[B, 3, N]`` float.
    Returns:
        (flat idx ``[B, N, 8]`` int64, weights ``[B, N, 8]`` float64), corners ordered as :data:`CORNERS`.
    """
    R = resolution
    c = coords.double().clamp(0.0, R - 1).transpose(1, 2)  # [B, N, 3]
    lo = torch.floor(c)
    u = c - lo
    lo = lo.long()
    d = CORNERS.to(coords.device)
    w = torch.where(d == 1, u.unsqueeze(2), 1.0 - u.unsqueeze(2)).prod(-1)
    v = (lo.unsqueeze(2) + d).clamp_(max=R - 1)  # [B, N, 8, 3]
    idx = (v[..., 0] * R + v[..., 1]) * R + v[..., 2]
    return idx, w
