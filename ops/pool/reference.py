"""Pure-PyTorch sparse pooling over a kernel map (device-agnostic; the ground truth for tests).

``nbmap [M, K]`` int32 gives the input row of output ``j`` at offset ``k`` (-1 = absent),
as built by ``sparse3d.nn.functional.kmap``.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["max_pool", "max_pool_backward", "sum_pool"]


def max_pool(x: torch.Tensor, nbmap: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Channel-wise max over the existing neighbours of every output.

    Args:
        x: ``[N, C]`` float features; nbmap: ``[M, K]`` int32.
    Returns:
        (out ``[M, C]``, argmax ``[M, C]`` int64 input row). Outputs without any
        neighbour get 0 and argmax -1. A running max over the K offsets (only the rows
        that have a neighbour at offset k are touched), so no ``[M, K, C]`` block is
        built; ties go to the lowest k and NaN propagates, as in the numba kernel.
    """
    M, K = nbmap.shape
    C = x.shape[1]
    out = x.new_zeros((M, C))
    arg = torch.full((M, C), -1, dtype=torch.long, device=x.device)
    if M == 0 or x.shape[0] == 0:
        return out, arg
    has = torch.zeros(M, dtype=torch.bool, device=x.device)
    for k in range(K):
        nbk = nbmap[:, k].long()
        rows = (nbk >= 0).nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        src = nbk.index_select(0, rows)
        v = x.index_select(0, src)
        o = out.index_select(0, rows)
        take = (~has.index_select(0, rows)).unsqueeze(1) | (v > o) | (v.isnan() & ~o.isnan())
        out[rows] = torch.where(take, v, o)
        arg[rows] = torch.where(take, src.unsqueeze(1).expand_as(o), arg.index_select(0, rows))
        has[rows] = True
    return out, arg


def max_pool_backward(grad_out: torch.Tensor, arg: torch.Tensor, n_in: int) -> torch.Tensor:
    """``grad_in[arg[j, c], c] += grad_out[j, c]``; grad_out/arg ``[M, C]`` -> ``[n_in, C]``."""
    C = grad_out.shape[1]
    gin = grad_out.new_zeros((n_in + 1, C))
    if arg.numel():
        idx = arg.long()
        idx = torch.where(idx < 0, torch.full_like(idx, n_in), idx)
        gin.scatter_add_(0, idx, grad_out)
    return gin[:n_in]


def sum_pool(x: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor, n_out: int) -> torch.Tensor:
    """``out[o] = sum over pairs (i, o) of x[i]``; x ``[N, C]``, pairs ``[P]`` int64 -> ``[n_out, C]``."""
    out = x.new_zeros((n_out, x.shape[1]))
    if in_idx.numel():
        out.index_add_(0, out_idx, x.index_select(0, in_idx))
    return out
