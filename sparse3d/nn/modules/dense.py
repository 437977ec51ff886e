"""Sparse -> dense modules: ``ToDense`` (full grid) and ``ToBEV`` (height folded into channels)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ...tensor import SparseTensor
from ..functional.dense import height_collapse, to_dense

__all__ = ["ToDense", "ToBEV"]


class _ToGrid(nn.Module):
    def __init__(self, spatial_shape: Optional[Sequence[int]] = None, min_coord: Optional[Sequence[int]] = None,
                 batch_size: Optional[int] = None) -> None:
        super().__init__()
        self.spatial_shape = None if spatial_shape is None else tuple(int(v) for v in spatial_shape)
        self.min_coord = None if min_coord is None else tuple(int(v) for v in min_coord)
        self.batch_size = batch_size

    def extra_repr(self) -> str:
        return f"spatial_shape={self.spatial_shape}, min_coord={self.min_coord}"


class ToDense(_ToGrid):
    """``SparseTensor -> [B, C, X, Y, Z]`` dense grid (see :func:`sparse3d.nn.functional.dense.to_dense`).

    Args:
        spatial_shape: (X, Y, Z) cells in tensor-stride units; None = the coordinates' extent.
        min_coord: (x, y, z) of cell 0 in input-voxel units; None = the per-axis minimum.
        batch_size: B; None = ``max(coords[:, 0]) + 1``.
    """

    def forward(self, input: SparseTensor) -> torch.Tensor:
        return to_dense(input, self.spatial_shape, self.min_coord, self.batch_size)


class ToBEV(_ToGrid):
    """``SparseTensor -> [B, C * D, X, Y]`` BEV map, channel ``c * D + z`` (SECOND/BEVFusion
    ``HeightCompression``; see :func:`sparse3d.nn.functional.dense.height_collapse`).

    Args as :class:`ToDense`; D = Z = ``spatial_shape[2]``.
    """

    def forward(self, input: SparseTensor) -> torch.Tensor:
        return height_collapse(input, self.spatial_shape, self.min_coord, self.batch_size)
