"""Pure-PyTorch sparse convolution (device-agnostic): the ground truth for tests.

All functions take offset-grouped pair lists (``in_idx``, ``out_idx``, ``sizes``)
as built by ``sparse3d.nn.functional.kmap``.
"""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["conv_pairs", "conv_bruteforce"]


def conv_pairs(x: torch.Tensor, w: torch.Tensor, in_idx: torch.Tensor, out_idx: torch.Tensor,
               sizes: Sequence[int], n_out: int) -> torch.Tensor:
    """``out[o] = sum_k sum_{(i,o) in pairs_k} x[i] @ w[k]``.

    Args:
        x: ``[N, Cin]``; w: ``[K, Cin, Cout]``; in_idx/out_idx: ``[P]`` grouped by offset.
    Returns:
        ``[n_out, Cout]``.
    """
    out = x.new_zeros((n_out, w.shape[2]))
    s = 0
    for k, n in enumerate(sizes):
        if n:
            i, o = in_idx[s:s + n], out_idx[s:s + n]
            out.index_add_(0, o, x.index_select(0, i) @ w[k])
        s += n
    return out


def conv_bruteforce(in_coords: torch.Tensor, x: torch.Tensor, out_coords: torch.Tensor, w: torch.Tensor,
                    offsets: torch.Tensor) -> torch.Tensor:
    """O(M*N*K) conv straight from the definition: ``out[j] = sum_k x[i: c_i == c_j + off_k] @ w[k]``."""
    out = x.new_zeros((out_coords.shape[0], w.shape[2]))
    if in_coords.shape[0] == 0:
        return out
    for k in range(offsets.shape[0]):
        q = out_coords.long().clone()
        q[:, 1:] += offsets[k].long()
        eq = (q[:, None, :] == in_coords.long()[None, :, :]).all(-1)  # [M, N]
        out += eq.to(x.dtype) @ x @ w[k]
    return out
