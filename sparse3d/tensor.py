"""SparseTensor and PointTensor (cf. torchsparse ``tensor.py``, MinkowskiEngine semantics).

Coordinates stay in input-voxel units: a tensor of stride ``t`` has xyz
coordinates that are multiples of ``t`` (per axis). After a stride-``s`` conv
the stride becomes ``s*t`` and coordinates are ``floor(c / (s*t)) * (s*t)``.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from .utils.args import IntOr3, triple

__all__ = ["SparseTensor", "PointTensor", "TensorCache"]

Stride = Tuple[int, int, int]


class TensorCache:
    """Coordinate maps, hash tables and kernel maps shared by a network pass.

    ``cmaps``: stride -> coords ``[N, 4]`` int32.
    ``hashmaps``: stride -> hash table over ``cmaps[stride]``.
    ``kmaps``: ``(stride, kernel_size, conv_stride, dilation)`` -> ``KernelMap``.
    Every tensor produced by a layer shares its input's cache, so it is built
    once per forward and freed with the last tensor that refers to it.
    """

    __slots__ = ("cmaps", "hashmaps", "kmaps", "extras")

    def __init__(self) -> None:
        self.cmaps: Dict[Stride, torch.Tensor] = {}
        self.hashmaps: Dict[Stride, object] = {}
        self.kmaps: Dict[tuple, object] = {}
        self.extras: Dict[object, object] = {}

    def clear(self) -> None:
        self.cmaps.clear()
        self.hashmaps.clear()
        self.kmaps.clear()
        self.extras.clear()


def _check_feats(feats: torch.Tensor) -> None:
    if not isinstance(feats, torch.Tensor):
        raise TypeError(f"feats must be a torch.Tensor, got {type(feats).__name__}")
    if feats.dim() != 2:
        raise ValueError(f"feats must have shape [N, C], got {tuple(feats.shape)}")
    if not feats.is_floating_point():
        raise TypeError(f"feats must be a floating-point tensor, got dtype {feats.dtype}")


def _check_coords(coords: torch.Tensor, ncols: int = 4) -> torch.Tensor:
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"coords must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dim() != 2 or coords.shape[1] != ncols:
        raise ValueError(f"coords must have shape [N, {ncols}] (batch, x, y, z), got {tuple(coords.shape)}")
    if coords.is_floating_point() or coords.is_complex() or coords.dtype == torch.bool:
        raise TypeError(
            f"coords must be an integer tensor (int32), got dtype {coords.dtype}; "
            "quantize float points with sparse3d.sparse_quantize first"
        )
    if coords.dtype != torch.int32:
        if coords.numel() and (coords.max() > 2**31 - 1 or coords.min() < -(2**31)):
            raise ValueError("coords do not fit in int32")
        coords = coords.to(torch.int32)
    return coords.contiguous()


class SparseTensor:
    r"""A batch of sparse voxels.

    Args:
        feats (Tensor): ``[N, C]`` floating point features.
        coords (Tensor): ``[N, 4]`` int32 ``(batch, x, y, z)``; xyz are multiples
            of ``stride``. Rows must be unique (use :func:`sparse3d.sparse_quantize`).
        stride (int or 3-tuple): tensor stride in input-voxel units.
    """

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, stride: IntOr3 = 1,
                 *, cache: Optional[TensorCache] = None, check: bool = True) -> None:
        self.stride: Stride = triple(stride, "stride")
        if check:
            _check_feats(feats)
            coords = _check_coords(coords)
            if feats.shape[0] != coords.shape[0]:
                raise ValueError(
                    f"feats and coords length mismatch: feats has {feats.shape[0]} rows, coords has {coords.shape[0]}")
            if feats.device != coords.device:
                raise ValueError(f"feats on {feats.device} but coords on {coords.device}")
            if coords.numel() and (coords[:, 0] < 0).any():
                raise ValueError("coords[:, 0] (batch index) must be >= 0")
            if self.stride != (1, 1, 1) and coords.numel():
                s = torch.tensor(self.stride, dtype=torch.int32, device=coords.device)
                bad = (torch.remainder(coords[:, 1:], s) != 0).any(dim=1)
                if bad.any():
                    row = int(bad.nonzero()[0])
                    raise ValueError(
                        f"coords must be multiples of the tensor stride {self.stride}; "
                        f"row {row} is {coords[row].tolist()}")
        self.feats = feats
        self.coords = coords
        self._caches = cache if cache is not None else TensorCache()
        if self.stride not in self._caches.cmaps:
            self._caches.cmaps[self.stride] = coords

    # torchsparse-style aliases
    F = property(lambda self: self.feats)
    C = property(lambda self: self.coords)
    s = property(lambda self: self.stride)

    @property
    def shape(self) -> torch.Size:
        return self.feats.shape

    @property
    def device(self) -> torch.device:
        return self.feats.device

    @property
    def dtype(self) -> torch.dtype:
        return self.feats.dtype

    @property
    def batch_size(self) -> int:
        return int(self.coords[:, 0].max()) + 1 if self.coords.numel() else 0

    def __len__(self) -> int:
        return self.feats.shape[0]

    def __repr__(self) -> str:
        return (f"SparseTensor(N={self.feats.shape[0]}, C={self.feats.shape[1]}, stride={self.stride}, "
                f"dtype={self.feats.dtype}, device={self.feats.device})")

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """Same coordinates, stride and cache; new ``feats [N, C']``."""
        if feats.shape[0] != self.feats.shape[0]:
            raise ValueError(f"replacement feats have {feats.shape[0]} rows, expected {self.feats.shape[0]}")
        return SparseTensor(feats, self.coords, self.stride, cache=self._caches, check=False)

    def to(self, *args, **kwargs) -> "SparseTensor":
        """``torch.Tensor.to`` semantics; a dtype only applies to feats, devices to both.

        Moving to another device starts a fresh cache (maps live on one device).
        """
        feats = self.feats.to(*args, **kwargs)
        if feats.device != self.coords.device:
            coords = self.coords.to(feats.device)
            return SparseTensor(feats, coords, self.stride, check=False)
        return SparseTensor(feats, self.coords, self.stride, cache=self._caches, check=False)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def cuda(self, device=None) -> "SparseTensor":
        return self.to(device or "cuda")

    def half(self) -> "SparseTensor":
        return self.to(torch.float16)

    def bfloat16(self) -> "SparseTensor":
        return self.to(torch.bfloat16)

    def float(self) -> "SparseTensor":
        return self.to(torch.float32)

    def double(self) -> "SparseTensor":
        return self.to(torch.float64)

    def detach(self) -> "SparseTensor":
        return self.replace(self.feats.detach())

    def __add__(self, other):
        if isinstance(other, SparseTensor):
            if other.coords is not self.coords and not torch.equal(other.coords, self.coords):
                raise ValueError("adding SparseTensors with different coordinates")
            other = other.feats
        return self.replace(self.feats + other)

    def dense(self, spatial_shape: Optional[Sequence[int]] = None,
              min_coord: Optional[Sequence[int]] = None, batch_size: Optional[int] = None) -> torch.Tensor:
        """Scatter into a dense grid.

        Returns:
            Tensor ``[B, C, X, Y, Z]``; voxel ``(b, x, y, z)`` lands at index
            ``(x - min_coord) / stride``. ``min_coord`` defaults to the per-axis
            minimum coordinate, ``spatial_shape`` to the extent.
        """
        st = torch.tensor(self.stride, device=self.coords.device)
        xyz = self.coords[:, 1:].long()
        if min_coord is None:
            mn = xyz.min(0).values if xyz.numel() else torch.zeros(3, dtype=torch.long, device=xyz.device)
            mn = torch.div(mn, st, rounding_mode="floor") * st
        else:
            mn = torch.as_tensor(min_coord, dtype=torch.long, device=xyz.device)
        idx = torch.div(xyz - mn, st, rounding_mode="floor")
        if spatial_shape is None:
            shape = (idx.max(0).values + 1).tolist() if idx.numel() else [0, 0, 0]
        else:
            shape = list(spatial_shape)
        if idx.numel() and ((idx < 0).any() or (idx >= torch.tensor(shape, device=idx.device)).any()):
            raise ValueError(f"coordinates fall outside spatial_shape {shape} from min_coord {mn.tolist()}")
        b = self.coords[:, 0].long()
        bs = batch_size if batch_size is not None else self.batch_size
        out = self.feats.new_zeros((bs, *shape, self.feats.shape[1]))
        out[b, idx[:, 0], idx[:, 1], idx[:, 2]] = self.feats
        return out.permute(0, 4, 1, 2, 3).contiguous()


class PointTensor:
    r"""Per-point features with float coordinates, for point-voxel models (SPVCNN).

    Args:
        feats (Tensor): ``[P, C]`` features.
        coords (Tensor): ``[P, 4]`` float ``(batch, x, y, z)`` in voxel units.
    """

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor) -> None:
        _check_feats(feats)
        if not isinstance(coords, torch.Tensor) or coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(f"PointTensor coords must be [P, 4] (batch, x, y, z), got "
                             f"{getattr(coords, 'shape', type(coords))}")
        if not coords.is_floating_point():
            coords = coords.float()
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"feats and coords length mismatch: {feats.shape[0]} vs {coords.shape[0]}")
        if coords.numel() and not torch.isfinite(coords).all():
            raise ValueError("PointTensor coords contain NaN or inf")
        self.feats = feats
        self.coords = coords
        # per-stride point->voxel index maps and trilinear weights, filled by the point-voxel ops
        self.idx_query: Dict[Stride, torch.Tensor] = {}
        self.weights: Dict[Stride, torch.Tensor] = {}
        self.additional_features: Dict[str, torch.Tensor] = {}

    F = property(lambda self: self.feats)
    C = property(lambda self: self.coords)

    def __len__(self) -> int:
        return self.feats.shape[0]

    def replace(self, feats: torch.Tensor) -> "PointTensor":
        _check_feats(feats)
        if feats.shape[0] != self.coords.shape[0]:
            raise ValueError(f"feats and coords length mismatch: {feats.shape[0]} vs {self.coords.shape[0]}")
        out = PointTensor.__new__(PointTensor)     # the coordinates were checked when self was built
        out.feats, out.coords = feats, self.coords
        out._coords_checked = getattr(self, "_coords_checked", None)
        out.idx_query, out.weights = self.idx_query, self.weights
        out.additional_features = self.additional_features
        return out

    def to(self, *args, **kwargs) -> "PointTensor":
        feats = self.feats.to(*args, **kwargs)
        out = PointTensor(feats, self.coords.to(feats.device))
        if feats.device == self.feats.device:
            out.idx_query, out.weights = self.idx_query, self.weights
        return out
