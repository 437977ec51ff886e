"""Offsets and int64 coordinate packing shared by the torch and numba kernel maps.

Offset order (the weight's K axis): x fastest, then y, then z, i.e.
``k = ix + Kx * (iy + Ky * iz)``. Per axis the offset is ``(i - K//2) * d * t``
for odd K and ``i * d * t`` for even K (MinkowskiEngine convention), where ``d``
is the dilation and ``t`` the input tensor stride.
"""
from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence, Tuple

import torch

__all__ = ["PackParams", "kernel_offsets", "pack_params", "pack", "MAX_KEY_BITS"]

MAX_KEY_BITS = 62


def kernel_offsets(kernel_size: Sequence[int], dilation: Sequence[int],
                   tensor_stride: Sequence[int], device=None) -> torch.Tensor:
    """Return ``[K, 3]`` int32 xyz offsets in input-voxel units (order documented above)."""
    key = (tuple(int(v) for v in kernel_size), tuple(int(v) for v in dilation), tuple(int(v) for v in tensor_stride))
    cached = _kernel_offsets(*key)
    return cached.clone() if device is None else cached.to(device, copy=True)


@lru_cache(maxsize=256)
def _kernel_offsets(kernel_size, dilation, tensor_stride) -> torch.Tensor:
    axes = []
    for K, d, t in zip(kernel_size, dilation, tensor_stride):
        i = torch.arange(K, dtype=torch.int64)
        axes.append((i - K // 2 if K % 2 == 1 else i) * d * t)
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    return torch.stack([x.reshape(-1), y.reshape(-1), z.reshape(-1)], 1).to(torch.int32)


class PackParams(NamedTuple):
    """Box of a coordinate set: key = (((b - b0) * DX + x') * DY + y') * DZ + z'
    with ``x' = (x - x0) / tx``. ``mins``/``dims`` are (b, x, y, z); ``stride`` is xyz."""
    mins: Tuple[int, int, int, int]
    dims: Tuple[int, int, int, int]
    stride: Tuple[int, int, int]


def pack_params(coords: torch.Tensor, stride: Sequence[int]) -> PackParams:
    """Packing box of ``coords [N, 4]``. Raises ``ValueError`` if keys would not fit in int64."""
    if coords.shape[0] == 0:
        return PackParams((0, 0, 0, 0), (1, 1, 1, 1), tuple(stride))
    mn, mx = (v.tolist() for v in torch.aminmax(coords, dim=0))
    st = (1, *stride)
    dims = tuple((mx[a] - mn[a]) // st[a] + 1 for a in range(4))
    vol = 1
    for d in dims:
        vol *= d
    if vol >= 2 ** MAX_KEY_BITS:
        raise ValueError(
            f"coordinate extent too large to pack into int64 keys: per-axis extents (b, x, y, z) = "
            f"{dims} in stride units (volume {vol} >= 2^{MAX_KEY_BITS}); min {mn}, max {mx}. "
            "Split the batch or use a coarser voxel size.")
    return PackParams(tuple(mn), dims, tuple(stride))


def pack(coords: torch.Tensor, p: PackParams) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pack ``coords [..., 4]`` into int64 keys ``[...]``; returns (keys, inside_box mask)."""
    c = coords.long()
    st = torch.tensor((1, *p.stride), dtype=torch.long, device=c.device)
    rel = c - torch.tensor(p.mins, dtype=torch.long, device=c.device)
    dims = torch.tensor(p.dims, dtype=torch.long, device=c.device)
    inside = ((rel >= 0) & (rel < dims * st) & (torch.remainder(rel, st) == 0)).all(-1)
    q = torch.div(rel, st, rounding_mode="floor")
    key = ((q[..., 0] * p.dims[1] + q[..., 1]) * p.dims[2] + q[..., 2]) * p.dims[3] + q[..., 3]
    return torch.where(inside, key, torch.full_like(key, -1)), inside
