"""Device-agnostic kernel maps from torch ops (sort + searchsorted); runs on CUDA as is."""
from __future__ import annotations

from typing import Sequence

import torch

from .common import pack, pack_params

__all__ = ["build_nbmap", "downsample_coords", "check_unique", "lookup"]


def check_unique(sorted_keys: torch.Tensor, perm: torch.Tensor, coords: torch.Tensor) -> None:
    if sorted_keys.numel() > 1:
        dup = sorted_keys[1:] == sorted_keys[:-1]
        if dup.any():
            k = int(dup.nonzero()[0])
            raise ValueError(
                f"duplicate coordinates: rows {int(perm[k])} and {int(perm[k + 1])} are both "
                f"{coords[perm[k]].tolist()}; deduplicate with sparse3d.sparse_quantize")


def build_nbmap(in_coords: torch.Tensor, out_coords: torch.Tensor, offsets: torch.Tensor,
                in_stride: Sequence[int]) -> torch.Tensor:
    """Neighbour map by binary search.

    Args:
        in_coords: ``[N, 4]`` int32 unique input coordinates (multiples of ``in_stride``).
        out_coords: ``[M, 4]`` int32 output coordinates.
        offsets: ``[K, 3]`` int32 xyz offsets.
    Returns:
        ``nbmap [M, K]`` int32: the input row at ``out_coords[j] + offsets[k]``, or -1.
    """
    M, K = out_coords.shape[0], offsets.shape[0]
    if in_coords.shape[0] == 0 or M == 0:
        return torch.full((M, K), -1, dtype=torch.int32, device=out_coords.device)
    p = pack_params(in_coords, in_stride)
    keys, _ = pack(in_coords, p)
    sorted_keys, perm = torch.sort(keys)
    check_unique(sorted_keys, perm, in_coords)
    q = out_coords.long().unsqueeze(1).repeat(1, K, 1)
    q[..., 1:] += offsets.long().unsqueeze(0)
    qk, inside = pack(q, p)
    pos = torch.searchsorted(sorted_keys, qk).clamp_(max=sorted_keys.numel() - 1)
    hit = inside & (sorted_keys[pos] == qk)
    return torch.where(hit, perm[pos], torch.full_like(pos, -1)).to(torch.int32)


def downsample_coords(coords: torch.Tensor, in_stride: Sequence[int], conv_stride: Sequence[int]) -> torch.Tensor:
    """Output coordinates of a strided conv: unique ``floor(c / (s*t)) * (s*t)``, sorted.

    Args:
        coords: ``[N, 4]`` int32. Returns ``[M, 4]`` int32.
    """
    st = torch.tensor([1] + [s * t for s, t in zip(conv_stride, in_stride)], dtype=torch.long, device=coords.device)
    c = torch.div(coords.long(), st, rounding_mode="floor") * st
    if c.shape[0] == 0:
        return c.to(torch.int32)
    out_stride = tuple(int(v) for v in st[1:].tolist())
    p = pack_params(c, out_stride)
    keys, _ = pack(c, p)
    ukeys = torch.unique(keys)
    # unpack
    d = p.dims
    z = ukeys % d[3]
    r = ukeys // d[3]
    y = r % d[2]
    r = r // d[2]
    x = r % d[1]
    b = r // d[1]
    q = torch.stack([b, x, y, z], 1)
    out = q * torch.tensor((1, *out_stride), device=c.device) + torch.tensor(p.mins, device=c.device)
    return out.to(torch.int32)


def lookup(table_coords: torch.Tensor, queries: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Row of each query ``[Q, 4]`` in ``table_coords [N, 4]`` (unique), -1 where absent; ``[Q]`` int64."""
    if table_coords.shape[0] == 0 or queries.shape[0] == 0:
        return torch.full((queries.shape[0],), -1, dtype=torch.long, device=queries.device)
    p = pack_params(table_coords, stride)
    keys, _ = pack(table_coords, p)
    sk, perm = torch.sort(keys)
    check_unique(sk, perm, table_coords)
    qk, inside = pack(queries, p)
    pos = torch.searchsorted(sk, qk).clamp_(max=sk.numel() - 1)
    hit = inside & (sk[pos] == qk)
    return torch.where(hit, perm[pos], torch.full_like(pos, -1))
