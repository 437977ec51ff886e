r"""Point-cloud augmentations and voxelization on dict samples (spvnas recipe).

Samples are dicts with ``"points"``: ``[N, 4]`` float32 (x, y, z, remission) and optionally
``"labels"``: ``[N]`` int64. Random transforms draw from ``torch``'s RNG (or a given
``torch.Generator``), so DataLoader workers are seeded by torch and runs follow ``torch.manual_seed``.
:class:`Voxelize` turns the sample into the model input that :func:`sparse3d.sparse_collate_fn` batches.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..tensor import SparseTensor
from ..utils.quantize import sparse_quantize

__all__ = ["rotate_z", "Compose", "RandomRotateZ", "RandomScale", "RandomFlip", "RandomJitter", "Voxelize"]


def _uniform(low: float, high: float, g: Optional[torch.Generator]) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def _xyz(sample: dict) -> np.ndarray:
    pts = sample.get("points")
    if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError("sample['points'] must be a numpy array [N, >=3]")
    return pts


def rotate_z(points: np.ndarray, angle: float) -> np.ndarray:
    """A copy of ``points [N, >=3]`` with x, y rotated about z by ``angle`` radians (computed in float64)."""
    pts = points.copy()
    c, s = math.cos(angle), math.sin(angle)
    x, y = points[:, 0].astype(np.float64), points[:, 1].astype(np.float64)
    pts[:, 0], pts[:, 1] = c * x - s * y, s * x + c * y
    return pts


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[dict], dict]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: dict) -> dict:
        for t in self.transforms:
            sample = t(sample)
        return sample


class RandomRotateZ:
    """Rotate xyz about z by an angle ~ U(low, high) radians (default a full turn)."""

    def __init__(self, low: float = 0.0, high: float = 2 * math.pi, generator: Optional[torch.Generator] = None):
        self.low, self.high, self.generator = low, high, generator

    def __call__(self, sample: dict) -> dict:
        return {**sample, "points": rotate_z(_xyz(sample), _uniform(self.low, self.high, self.generator))}


class RandomScale:
    """Scale xyz isotropically by a factor ~ U(low, high)."""

    def __init__(self, low: float = 0.95, high: float = 1.05, generator: Optional[torch.Generator] = None):
        if not 0 < low <= high:
            raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
        self.low, self.high, self.generator = low, high, generator

    def __call__(self, sample: dict) -> dict:
        pts = _xyz(sample).copy()
        pts[:, :3] *= _uniform(self.low, self.high, self.generator)
        return {**sample, "points": pts}


class RandomFlip:
    """Mirror x (``x -> -x``) and/or y, each with probability ``p``."""

    def __init__(self, axes: Sequence[str] = ("x", "y"), p: float = 0.5,
                 generator: Optional[torch.Generator] = None):
        bad = [a for a in axes if a not in ("x", "y", "z")]
        if bad:
            raise ValueError(f"axes must be among 'x', 'y', 'z', got {bad}")
        self.axes, self.p, self.generator = ["xyz".index(a) for a in axes], p, generator

    def __call__(self, sample: dict) -> dict:
        pts = _xyz(sample).copy()
        for ax in self.axes:
            if float(torch.rand((), generator=self.generator)) < self.p:
                pts[:, ax] = -pts[:, ax]
        return {**sample, "points": pts}


class RandomJitter:
    """Add per-point Gaussian noise N(0, sigma) clipped to ``[-clip, clip]`` metres to xyz."""

    def __init__(self, sigma: float = 0.01, clip: float = 0.05, generator: Optional[torch.Generator] = None):
        if sigma < 0 or clip < 0:
            raise ValueError(f"sigma and clip must be >= 0, got {sigma}, {clip}")
        self.sigma, self.clip, self.generator = sigma, clip, generator

    def __call__(self, sample: dict) -> dict:
        pts = _xyz(sample).copy()
        noise = torch.randn((len(pts), 3), generator=self.generator).numpy() * self.sigma
        pts[:, :3] += np.clip(noise, -self.clip, self.clip).astype(pts.dtype)
        return {**sample, "points": pts}


class Voxelize:
    r"""Quantize to voxels and build the model input.

    Voxel coords are ``floor(xyz / voxel_size) - min`` (via :func:`sparse3d.sparse_quantize`); each
    voxel keeps the features and label of one representative point (the first one, as in spvnas).
    With ``max_voxels`` (training), a random subset of that many voxels is kept, and only the
    points inside kept voxels stay in the per-point outputs.

    Output dict (``N'`` = kept points, ``M`` = voxels)::

        lidar           SparseTensor: feats [M, 4] float32 (x, y, z in metres, remission),
                        coords [M, 4] int32 (0, x, y, z)
        targets         [M]  int64 voxel labels          (if the sample has "labels")
        targets_mapped  [N'] int64 per-point labels      (if the sample has "labels")
        lidar_inverse   [N'] int64 voxel row of every point: lidar.feats[lidar_inverse] per point
        scan_id, ...    other non-array entries are passed through

    ``sparse_collate_fn`` offsets ``lidar_inverse`` by the voxel count of the preceding samples.
    """

    def __init__(self, voxel_size: float = 0.05, max_voxels: Optional[int] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        if max_voxels is not None and max_voxels < 1:
            raise ValueError(f"max_voxels must be >= 1 or None, got {max_voxels}")
        self.voxel_size, self.max_voxels, self.generator = float(voxel_size), max_voxels, generator

    def __call__(self, sample: dict) -> dict:
        pts = _xyz(sample)
        if len(pts) == 0:
            raise ValueError(f"empty scan {sample.get('scan_id', '')!s}: nothing to voxelize")
        labels = sample.get("labels")
        if labels is not None and len(labels) != len(pts):
            raise ValueError(f"labels has {len(labels)} entries but points has {len(pts)}")
        coords, index, inverse = sparse_quantize(pts[:, :3], self.voxel_size,
                                                 return_index=True, return_inverse=True)
        coords = coords - coords.min(axis=0, keepdims=True)
        if self.max_voxels is not None and len(coords) > self.max_voxels:
            keep = torch.randperm(len(coords), generator=self.generator)[: self.max_voxels]
            keep = np.sort(keep.numpy())
            remap = np.full(len(coords), -1, dtype=np.int64)
            remap[keep] = np.arange(len(keep))
            point_mask = remap[inverse] >= 0
            coords, index = coords[keep], index[keep]
            inverse = remap[inverse[point_mask]]
        else:
            point_mask = None
        feats = np.ascontiguousarray(pts[index], dtype=np.float32)
        c4 = np.zeros((len(coords), 4), dtype=np.int32)
        c4[:, 1:] = coords
        out = {k: v for k, v in sample.items() if k not in ("points", "labels")
               and not isinstance(v, (np.ndarray, torch.Tensor))}
        out["lidar"] = SparseTensor(torch.from_numpy(feats), torch.from_numpy(c4))
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            out["targets"] = torch.from_numpy(labels[index])
            out["targets_mapped"] = torch.from_numpy(labels if point_mask is None else labels[point_mask])
        out["lidar_inverse"] = torch.from_numpy(np.ascontiguousarray(inverse, dtype=np.int64))
        return out
