"""Sparse -> dense conversions: a full voxel grid and a bird's-eye-view map (height folded into channels).

Both are differentiable (the scatter is an ``index_put``; the gradient gathers back).
Grid indices are in tensor-stride units: voxel ``(b, x, y, z)`` lands at
``((x, y, z) - min_coord) / stride``; ``spatial_shape`` counts cells of that size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...tensor import SparseTensor

__all__ = ["to_dense", "height_collapse"]


def _check(input: SparseTensor, name: str, spatial_shape, min_coord) -> None:
    if not isinstance(input, SparseTensor):
        raise TypeError(f"{name} expects a SparseTensor input, got {type(input).__name__}")
    for field, v in (("spatial_shape", spatial_shape), ("min_coord", min_coord)):
        if v is None:
            continue
        vals = v.tolist() if isinstance(v, torch.Tensor) else v
        try:
            ok = len(vals) == 3 and all(int(a) == a for a in vals)
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(f"{name}: {field} must be 3 ints (x, y, z), got {v!r}")
        if field == "spatial_shape" and any(int(a) < 0 for a in vals):
            raise ValueError(f"{name}: spatial_shape entries must be >= 0, got {v!r}")
    if min_coord is not None and spatial_shape is None and input.coords.shape[0]:
        mn = torch.as_tensor([int(a) for a in min_coord], device=input.coords.device)
        if (input.coords[:, 1:].long() < mn).any():
            raise ValueError(f"{name}: coordinates below min_coord {list(min_coord)}")


def to_dense(input: SparseTensor, spatial_shape: Optional[Sequence[int]] = None,
             min_coord: Optional[Sequence[int]] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Scatter into a dense grid (wraps :meth:`SparseTensor.dense`).

    Args:
        input: SparseTensor, feats ``[N, C]``.
        spatial_shape: (X, Y, Z) cells; default: the extent of the coordinates.
        min_coord: (x, y, z) of cell 0 in input-voxel units; default: per-axis minimum
            (rounded down to a multiple of the stride).
        batch_size: B; default ``max(coords[:, 0]) + 1``.
    Returns:
        ``[B, C, X, Y, Z]`` tensor, zeros where no voxel exists.
    Raises:
        ValueError if a voxel falls outside the grid.
    """
    _check(input, "to_dense", spatial_shape, min_coord)
    return input.dense(spatial_shape, min_coord, batch_size)


def height_collapse(input: SparseTensor, spatial_shape: Optional[Sequence[int]] = None,
                    min_coord: Optional[Sequence[int]] = None, batch_size: Optional[int] = None) -> torch.Tensor:
    """Bird's-eye-view map with the height (z) axis folded into channels.

    This is SECOND / BEVFusion ``HeightCompression``: the dense ``[B, C, X, Y, Z]`` grid
    is permuted to ``[B, C, Z, X, Y]`` and reshaped, so output channel ``c * D + z``
    holds input channel ``c`` at height cell ``z`` (D = Z, the number of height cells).

    Args: as :func:`to_dense`.
    Returns:
        ``[B, C * D, X, Y]`` tensor.
    """
    _check(input, "height_collapse", spatial_shape, min_coord)
    d = input.dense(spatial_shape, min_coord, batch_size)
    B, C, X, Y, Z = d.shape
    return d.permute(0, 1, 4, 2, 3).reshape(B, C * Z, X, Y)
