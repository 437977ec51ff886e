"""SPVCNN (spvnas ``core/models/semantic_kitti/spvcnn.py``): MinkUNet18 + a fused point branch.

Parameter counts: 5.45M / 8.79M / 21.78M at ``cr`` = 0.5 / 0.64 / 1.0, i.e. MinkUNet18
plus the three ``point_transforms`` (Linear + BatchNorm1d), ~0.055M at cr 1.0.
Module names match spvnas, so its state dicts map one to one.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...nn.functional import initial_voxelize, point_to_voxel, voxel_to_point
from ...tensor import PointTensor, SparseTensor
from ...utils.threads import small_input_threads
from .blocks import sparse_cat
from .minkunet import add_unet_backbone, init_batchnorm, minkunet_channels

__all__ = ["SPVCNN"]


def _linear_bn_relu(inc: int, outc: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inc, outc), nn.BatchNorm1d(outc), nn.ReLU(True))


class SPVCNN(nn.Module):
    r"""Sparse point-voxel CNN (Tang et al., "Searching Efficient 3D Architectures with Sparse
    Point-Voxel Convolution", ECCV 2020, https://arxiv.org/abs/2007.16100).

    Voxel branch: the MinkUNet18 backbone (stem, 4 down stages, 4 up stages). Point branch:
    ``point_transforms`` = Linear + BN1d + ReLU mapping ``cs[0] -> cs[4] -> cs[6] -> cs[8]``
    (32 -> 256 -> 128 -> 96 times ``cr``). The branches are fused three times (after the
    stem/encoder, after ``up2`` and after ``up4``) by ``voxel_to_point`` (renormalized
    trilinear) + point transform; fused points return to the voxels by ``point_to_voxel``
    (scatter-mean) followed by dropout. The classifier ``Linear(cs[8], num_classes)`` runs
    on the points.

    As in spvnas with ``pres == vres``, the points are the input voxels themselves
    (``PointTensor(x.feats, x.coords.float())``), so ``initial_voxelize`` is an identity
    re-quantization and there is one output row per input voxel.

    Args:
        in_channels: input feature width (4: xyz + remission in SPVNAS).
        num_classes: number of output logits.
        cr: channel ratio; widths ``int(cr * c)`` (see :func:`minkunet_channels`).
        dropout: dropout probability on the voxel features after each point-to-voxel fusion.
        voxel_size: metres per voxel unit of the input coords (metadata for data pipelines
            and configs; the network works in voxel units).
        input_norm: standardize each input feature over the batch's voxels first (a non-affine
            BatchNorm, no parameters: raw x, y in metres have ~50x the spread of remission).

    Input: SparseTensor, feats ``[N, in_channels]`` float, coords ``[N, 4]`` int32, stride 1.
    Output: logits ``[N, num_classes]`` in feats' dtype, rows in input order.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 19, cr: float = 1.0, dropout: float = 0.3,
                 voxel_size: float = 0.05, input_norm: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if not (isinstance(voxel_size, (int, float)) and math.isfinite(voxel_size) and voxel_size > 0):
            raise ValueError(f"voxel_size must be a positive number, got {voxel_size!r}")
        cs = minkunet_channels(cr)
        self.in_channels, self.num_classes, self.cr, self.channels = in_channels, num_classes, cr, cs
        self.voxel_size = float(voxel_size)

        self.input_norm = nn.BatchNorm1d(in_channels, affine=False) if input_norm else None
        add_unet_backbone(self, in_channels, cs)
        self.classifier = nn.Sequential(nn.Linear(cs[8], num_classes))
        self.point_transforms = nn.ModuleList([
            _linear_bn_relu(cs[0], cs[4]),
            _linear_bn_relu(cs[4], cs[6]),
            _linear_bn_relu(cs[6], cs[8]),
        ])
        self.dropout = nn.Dropout(dropout)
        self.weight_initialization()

    def weight_initialization(self) -> None:
        init_batchnorm(self)

    def _up(self, j: int, y: SparseTensor, skip: SparseTensor) -> SparseTensor:
        up = getattr(self, f"up{j}")
        return up[1](sparse_cat([up[0](y), skip]))

    def forward(self, x: SparseTensor) -> torch.Tensor:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"SPVCNN expects a SparseTensor, got {type(x).__name__}")
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(
                f"x.feats has {x.feats.shape[1]} channels, SPVCNN expects in_channels={self.in_channels}")
        if x.stride != (1, 1, 1):
            raise ValueError(f"SPVCNN expects an input at tensor stride 1, got x.stride={x.stride}")
        if len(x) == 0:
            raise ValueError("SPVCNN got an empty SparseTensor (0 voxels)")
        with small_input_threads(len(x)):     # small inputs: one torch thread (sparse3d.utils.threads)
            return self._forward(x)

    def _forward(self, x: SparseTensor) -> torch.Tensor:
        feats = x.feats if self.input_norm is None else self.input_norm(x.feats)
        z = PointTensor(feats, x.coords.float())

        x0 = initial_voxelize(z)
        x0 = self.stem(x0)
        z0 = voxel_to_point(x0, z)

        x1 = self.stage1(point_to_voxel(x0, z0))
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        z1 = z0.replace(voxel_to_point(x4, z0).feats + self.point_transforms[0](z0.feats))

        y1 = point_to_voxel(x4, z1)
        y1 = y1.replace(self.dropout(y1.feats))
        y2 = self._up(2, self._up(1, y1, x3), x2)
        z2 = z1.replace(voxel_to_point(y2, z1).feats + self.point_transforms[1](z1.feats))

        y3 = point_to_voxel(y2, z2)
        y3 = y3.replace(self.dropout(y3.feats))
        y4 = self._up(4, self._up(3, y3, x1), x0)
        z3 = z2.replace(voxel_to_point(y4, z2).feats + self.point_transforms[2](z2.feats))

        return self.classifier(z3.feats)
