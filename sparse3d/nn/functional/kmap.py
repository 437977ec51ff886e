"""Kernel maps with caching (the glue between SparseTensor caches and ``sparse3d.ops.kmap``).

A kernel map pairs input and output rows per kernel offset. It is stored twice:
``nbmap [M, K]`` (output-major, -1 = no neighbour; used by the fused kernel) and
offset-grouped pair lists ``in_idx/out_idx [P]`` with ``sizes [K]`` (used by
gather-GEMM-scatter and the weight gradient).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from sparse3d.ops.kmap import kernel_offsets, pack_params
from sparse3d.ops.kmap import reference as kref

from ..._backend import HAS_NUMBA
from ...tensor import SparseTensor, TensorCache

__all__ = ["KernelMap", "build_kernel_map", "get_kernel_map", "get_transposed_kernel_map",
           "output_coords", "kmap_backend"]

Triple = Tuple[int, int, int]


def kmap_backend(device: torch.device) -> str:
    """``"merge"`` on the CPU when numba is installed, else ``"torch"`` (override: ``SPARSE3D_KMAP``).

    CPU backends (both numba, both exact): ``"merge"`` walks the sorted packed keys once per
    (chunk of outputs, xy-column of offsets); ``"hash"`` probes an open-addressing table with
    Fibonacci hashing. On the real scan (94k voxels, 27 offsets, one thread) the merge-join
    needed ~17 ms against ~40 ms for the hash, whose random probes miss the cache; the hash
    table serves the unsorted point->voxel lookups of the point-voxel ops instead.
    """
    forced = os.environ.get("SPARSE3D_KMAP")
    if forced:
        return forced
    return "merge" if (device.type == "cpu" and HAS_NUMBA) else "torch"


class KernelMap:
    """Pairs of (input row, output row) for every kernel offset.

    Attributes:
        nbmap: ``[M, K]`` int32, input row at output ``j`` offset ``k`` or -1.
        in_idx, out_idx: ``[P]`` int64, grouped by offset; ``sizes [K]`` (python ints).
        n_in, n_out: row counts. ``center``: offset index whose map is the identity
            (submanifold odd kernels), else -1.
    """

    def __init__(self, nbmap: torch.Tensor, in_idx: Optional[torch.Tensor], out_idx: Optional[torch.Tensor],
                 sizes: Optional[Sequence[int]], n_in: int, center: int = -1, symmetric: bool = False) -> None:
        self.nbmap = nbmap
        self._in_idx, self._out_idx = in_idx, out_idx
        self._sizes: Optional[List[int]] = None if sizes is None else [int(s) for s in sizes]
        self.n_in = int(n_in)
        self.n_out = int(nbmap.shape[0])
        self.center = center
        self.symmetric = symmetric
        self._t: Optional["KernelMap"] = None
        self.extras: dict = {}

    def _build_pairs(self) -> None:
        if self.nbmap.device.type == "cpu" and HAS_NUMBA:
            from sparse3d.ops.kmap.numba_merge import pairs_from_nbmap
            i, o, s = pairs_from_nbmap(self.nbmap.numpy())
            self._in_idx, self._out_idx, self._sizes = torch.from_numpy(i), torch.from_numpy(o), s.tolist()
        else:
            nbT = self.nbmap.t()
            kk, oo = torch.nonzero(nbT >= 0, as_tuple=True)
            self._in_idx, self._out_idx = nbT[kk, oo].long(), oo
            self._sizes = torch.bincount(kk, minlength=self.nbmap.shape[1]).tolist()

    @property
    def in_idx(self) -> torch.Tensor:
        if self._in_idx is None:
            self._build_pairs()
        return self._in_idx

    @property
    def out_idx(self) -> torch.Tensor:
        if self._out_idx is None:
            self._build_pairs()
        return self._out_idx

    @property
    def sizes(self) -> List[int]:
        if self._sizes is None:
            self._build_pairs()
        return self._sizes

    @property
    def starts(self) -> List[int]:
        if "starts" not in self.extras:
            self.extras["starts"] = [0] + np.cumsum(self.sizes)[:-1].tolist() if self.sizes else []
        return self.extras["starts"]

    @property
    def kernel_volume(self) -> int:
        return int(self.nbmap.shape[1])

    @property
    def num_pairs(self) -> int:
        if "num_pairs" not in self.extras:
            # counted on nbmap when the pair lists are not built: the fused dataflow never needs them
            self.extras["num_pairs"] = (sum(self._sizes) if self._sizes is not None
                                        else int(torch.count_nonzero(self.nbmap >= 0)))
        return self.extras["num_pairs"]

    def pairs(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        s, n = self.starts[k], self.sizes[k]
        return self.in_idx[s:s + n], self.out_idx[s:s + n]

    def transpose(self) -> "KernelMap":
        """The same pairs with inputs and outputs swapped (for transposed conv / input grads).

        For a symmetric (submanifold, odd kernel) map this is the map with its offsets
        mirrored: ``nbmap[:, ::-1]``, no scatter needed.
        """
        if self._t is None:
            K = self.kernel_volume
            if self.symmetric:
                t = KernelMap(self.nbmap.flip(1).contiguous(), None, None, None, self.n_out, self.center, True)
            else:
                nbT = torch.full((self.n_in, K), -1, dtype=torch.int32, device=self.nbmap.device)
                if self.num_pairs:
                    koff = torch.repeat_interleave(torch.arange(K, device=self.nbmap.device),
                                                   torch.tensor(self.sizes, device=self.nbmap.device))
                    nbT[self.in_idx, koff] = self.out_idx.to(torch.int32)
                t = KernelMap(nbT, self.out_idx, self.in_idx, self.sizes, self.n_out, self.center)
            t._t = self
            self._t = t
        return self._t


def _table(cache: Optional[TensorCache], coords: torch.Tensor, stride: Triple, backend: str):
    """Per-stride lookup structure, built once and kept in the tensor cache."""
    key = (stride, backend)
    if cache is not None and key in cache.hashmaps:
        return cache.hashmaps[key]
    p = pack_params(coords, stride)
    if backend == "merge":
        from sparse3d.ops.kmap.numba_merge import SortedCoords
        table = SortedCoords(coords.numpy(), p.mins, p.dims, stride)
    elif backend == "hash":
        from sparse3d.ops.kmap.numba_cpu import HashTable
        table = HashTable(coords.numpy(), p.mins, p.dims, stride)
    else:
        table = p
    if cache is not None:
        cache.hashmaps[key] = table
    return table


def build_kernel_map(in_coords: torch.Tensor, out_coords: torch.Tensor, offsets: torch.Tensor,
                     in_stride: Triple, symmetric: bool = False, backend: Optional[str] = None,
                     cache: Optional[TensorCache] = None) -> KernelMap:
    """Build a :class:`KernelMap`.

    Args:
        in_coords: ``[N, 4]`` int32; out_coords: ``[M, 4]`` int32; offsets: ``[K, 3]`` int32.
        symmetric: ``out_coords is in_coords`` with a point-symmetric odd kernel
            (probe half the offsets, mirror the hits, centre = identity).
        backend: ``"merge"`` (numba sorted merge-join, CPU default), ``"hash"`` (numba
            open-addressing hash table), ``"torch"`` (sort + searchsorted, any device).
    """
    backend = backend or kmap_backend(in_coords.device)
    K = offsets.shape[0]
    center = K // 2 if symmetric else -1
    if in_coords.shape[0] == 0 or out_coords.shape[0] == 0:
        nb = torch.full((out_coords.shape[0], K), -1, dtype=torch.int32, device=in_coords.device)
        e = torch.zeros(0, dtype=torch.long, device=in_coords.device)
        return KernelMap(nb, e, e, [0] * K, in_coords.shape[0], center, symmetric)
    if backend in ("merge", "hash"):
        table = _table(cache, in_coords, in_stride, backend)
        if backend == "merge":
            nb = table.query(out_coords.numpy(), offsets.numpy(), symmetric, same=out_coords is in_coords)
        else:
            nb = table.query(out_coords.numpy(), offsets.numpy(), symmetric)
        return KernelMap(torch.from_numpy(nb), None, None, None, in_coords.shape[0], center, symmetric)
    if backend != "torch":
        raise ValueError(f"unknown kernel-map backend {backend!r}: use 'merge', 'hash' or 'torch'")
    nb = kref.build_nbmap(in_coords, out_coords, offsets, in_stride)
    return KernelMap(nb, None, None, None, in_coords.shape[0], center, symmetric)


def output_coords(x: SparseTensor, conv_stride: Triple, backend: Optional[str] = None) -> Tuple[torch.Tensor, Triple]:
    """Coordinates and stride after a strided conv: unique ``floor(c / (s*t)) * (s*t)`` (cached)."""
    out_stride = tuple(s * t for s, t in zip(conv_stride, x.stride))
    cmaps = x._caches.cmaps
    if out_stride in cmaps:
        return cmaps[out_stride], out_stride
    backend = backend or kmap_backend(x.coords.device)
    if backend in ("merge", "hash") and x.coords.shape[0]:
        from sparse3d.ops.kmap.numba_cpu import downsample_unique
        st = torch.tensor((1, *out_stride), dtype=torch.long)
        c = torch.div(x.coords.long(), st, rounding_mode="floor") * st
        p = pack_params(c, out_stride)
        out = torch.from_numpy(downsample_unique(c.numpy(), p.mins, p.dims, out_stride))
    else:
        out = kref.downsample_coords(x.coords, x.stride, conv_stride)
    cmaps[out_stride] = out
    return out, out_stride


def get_kernel_map(x: SparseTensor, kernel_size: Triple, conv_stride: Triple, dilation: Triple,
                   backend: Optional[str] = None) -> Tuple[KernelMap, torch.Tensor, Triple]:
    """Kernel map of a (sub)manifold or strided conv on ``x``, cached on ``x``'s cache.

    Returns:
        (kmap, out_coords ``[M, 4]``, out_stride).
    """
    key = (x.stride, kernel_size, conv_stride, dilation)
    cache = x._caches
    if conv_stride == (1, 1, 1):
        out_coords, out_stride = x.coords, x.stride
    else:
        out_coords, out_stride = output_coords(x, conv_stride, backend)
    km = cache.kmaps.get(key)
    if km is None:
        offsets = kernel_offsets(kernel_size, dilation, x.stride)
        symmetric = conv_stride == (1, 1, 1) and all(k % 2 == 1 for k in kernel_size)
        km = build_kernel_map(x.coords, out_coords, offsets, x.stride, symmetric, backend, cache)
        cache.kmaps[key] = km
    return km, out_coords, out_stride


def get_transposed_kernel_map(x: SparseTensor, kernel_size: Triple, conv_stride: Triple, dilation: Triple,
                              backend: Optional[str] = None) -> Tuple[KernelMap, torch.Tensor, Triple]:
    """Map of the inverse of the strided conv that produced ``x``: upsample onto cached finer coords.

    Returns:
        (kmap with inputs = ``x`` rows and outputs = finer rows, finer coords, finer stride).
    """
    if any(t % s for t, s in zip(x.stride, conv_stride)):
        raise ValueError(f"transposed conv stride {conv_stride} does not divide tensor stride {x.stride}")
    fine_stride = tuple(t // s for t, s in zip(x.stride, conv_stride))
    cache = x._caches
    if fine_stride not in cache.cmaps:
        raise ValueError(
            f"transposed conv needs the finer coordinates at stride {fine_stride}, but this tensor's cache "
            f"only has strides {sorted(cache.cmaps)}; run it on the output of a strided conv")
    key = (fine_stride, kernel_size, conv_stride, dilation)
    km = cache.kmaps.get(key)
    if km is None:
        fine = cache.cmaps[fine_stride]
        offsets = kernel_offsets(kernel_size, dilation, fine_stride)
        km = build_kernel_map(fine, x.coords, offsets, fine_stride, False, backend, cache)
        cache.kmaps[key] = km
    return km.transpose(), cache.cmaps[fine_stride], fine_stride
