r"""Calo-SPVCNN: the SPVCNN sparse point-voxel backbone for calorimeter hit clustering.

After ``calo_cluster/models/spvcnn_offset.py`` (mit-han-lab/calo-cluster; SPVCNN of Tang et
al., ECCV 2020, https://arxiv.org/abs/2007.16100): the hits are the points of the point
branch and their voxels the input of the MinkUNet18 voxel branch; the per-hit outputs feed a
semantic (signal/noise) head and an offset or object-condensation instance head
(:class:`~sparse3d.models.calo.heads.CaloHeads`).
"""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from torch import nn

from ...nn.functional import initial_voxelize, point_to_voxel, voxel_to_point
from ...tensor import PointTensor, SparseTensor
from ...utils.threads import small_input_threads
from ..spvnas.blocks import sparse_cat
from ..spvnas.minkunet import add_unet_backbone, init_batchnorm, minkunet_channels
from .heads import CaloHeads, CaloHeadsMixin, check_batch

__all__ = ["CaloSPVCNN"]


def _linear_bn_relu(inc: int, outc: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inc, outc), nn.BatchNorm1d(outc), nn.ReLU(True))


def _voxel_size3(voxel_size) -> Tuple[float, float, float]:
    if isinstance(voxel_size, (int, float)) and not isinstance(voxel_size, bool):
        voxel_size = (voxel_size,) * 3
    try:
        vs = tuple(float(v) for v in voxel_size)
    except TypeError:
        raise ValueError(f"voxel_size must be a number or 3 numbers (cm), got {voxel_size!r}") from None
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"voxel_size must be a positive number or 3 positive numbers (cm), got {voxel_size!r}")
    return vs


class CaloSPVCNN(CaloHeadsMixin, nn.Module):
    r"""SPVCNN on calorimeter hits with per-hit semantic and instance heads.

    **Voxelization.** Hit ``(x, y, z)`` in cm is divided by ``voxel_size = (vx, vy, vz)``
    (anisotropic: the default 1.5 x 1.5 cm transverse roughly matches the CE-E/CE-H silicon
    cells, 3 cm along z groups about three CE-E layers and keeps consecutive CE-H layers,
    4.5-7 cm apart, in neighbouring voxels). The voxels (``floor`` of the scaled position;
    several hits may share one) get the mean of their hits' inputs and run through the
    MinkUNet18 U-Net of SPVCNN (stem, 4 stride-2 down and 4 up stages, widths
    ``[32, 32, 64, 128, 256, 256, 128, 96, 96] x cr``).

    **Per-hit outputs.** The point branch lives on the hits: point features start as the
    stem output read at each hit (``voxel_to_point``, trilinear or nearest) **plus** a per-hit
    MLP (Linear + BN + ReLU) of the hit's own inputs, so hits sharing a voxel differ; they are
    fused with the voxel branch three times as in SPVCNN (after the encoder, ``up2`` and
    ``up4``; ``point_to_voxel`` scatter-mean + dropout back to the voxels). The hit inputs are
    ``feats`` plus the hit's position inside its voxel (``xyz / voxel_size - floor - 0.5``).

    Args:
        in_channels: width F of ``batch["feats"]``.
        cr: channel ratio of the backbone (0.25-0.5 is enough for these events).
        voxel_size: cm per voxel, one number or ``(vx, vy, vz)``.
        res_blocks: residual blocks per U-Net stage, 2 (MinkUNet18, as SPVCNN) or 1 (a lighter
            backbone with half the residual convolutions: same stages, strides and widths).
        devoxelize: ``"trilinear"`` (SPVCNN's ``voxel_to_point``) or ``"nearest"`` (each hit
            reads its own voxel; cheaper, the per-hit MLP still tells hits in a voxel apart).
        dropout: dropout on the voxel features after each point-to-voxel fusion (SPVCNN: 0.3).
        instance_mode: ``"offset"`` or ``"condensation"``. embed_dim: OC clustering dimension.
        head_hidden: hidden width of the heads.
        **head_kwargs: loss weights and clustering parameters of
            :class:`~sparse3d.models.calo.heads.CaloHeads` (``offset_scale``, ``cluster_space``,
            ``cluster_scale``, ``sem_weight``, ``offset_weight``, ``oc_weight``, ``q_min``, ``s_b``,
            ``bandwidth``, ``min_count``, ``max_iter``, ``bin_seeding``, ``t_beta``, ``t_d``, ``min_hits``,
            ``mask_noise``).

    **Speed vs accuracy** (default generator events, ~1200 hits; forward ms per event at batch
    1 / batch 8, 2 threads, quiet 2-core machine; validation PQ on 48 events after 10 CPU-minutes
    of training on 400 events, offset head): ``cr=0.5`` MinkUNet18 + trilinear: 103 / 27 ms,
    PQ 0.74; ``cr=0.25, res_blocks=1, devoxelize="nearest"``: 50 / 15 ms, PQ 0.76 (it fits
    twice the epochs into the budget). GravNetOC: 84 / 71 ms, PQ 0.38. At 1 thread the light
    model takes 35 / 12 ms and GravNetOC 99 / 104 ms.
    """

    def __init__(self, in_channels: int = 3, cr: float = 0.5,
                 voxel_size: Union[float, Sequence[float]] = (1.5, 1.5, 3.0), res_blocks: int = 2,
                 devoxelize: str = "trilinear", dropout: float = 0.0, instance_mode: str = "offset",
                 embed_dim: int = 4, head_hidden: int = 32, **head_kwargs) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if res_blocks not in (1, 2):
            raise ValueError(f"res_blocks must be 1 or 2, got {res_blocks!r}")
        if devoxelize not in ("trilinear", "nearest"):
            raise ValueError(f"devoxelize must be 'trilinear' or 'nearest', got {devoxelize!r}")
        cs = minkunet_channels(cr)
        self.in_channels, self.cr, self.channels = in_channels, cr, cs
        self.voxel_size = _voxel_size3(voxel_size)
        self.res_blocks, self.nearest = int(res_blocks), devoxelize == "nearest"
        pin = in_channels + 3
        add_unet_backbone(self, pin, cs)
        if res_blocks == 1:   # drop the second residual block of every stage
            for i in range(1, 5):
                getattr(self, f"stage{i}")[2] = nn.Sequential()
                getattr(self, f"up{i}")[1][1] = nn.Sequential()
        self.point_stem = _linear_bn_relu(pin, cs[0])
        self.point_transforms = nn.ModuleList([
            _linear_bn_relu(cs[0], cs[4]),
            _linear_bn_relu(cs[4], cs[6]),
            _linear_bn_relu(cs[6], cs[8]),
        ])
        self.dropout = nn.Dropout(dropout)
        self.heads = CaloHeads(cs[8], instance_mode=instance_mode, embed_dim=embed_dim, hidden=head_hidden,
                               **head_kwargs)
        self.instance_mode = self.heads.instance_mode
        init_batchnorm(self)

    def _up(self, j: int, y: SparseTensor, skip: SparseTensor) -> SparseTensor:
        up = getattr(self, f"up{j}")
        return up[1](sparse_cat([up[0](y), skip]))

    def _v2p(self, x: SparseTensor, z: PointTensor) -> PointTensor:
        return voxel_to_point(x, z, nearest=self.nearest)

    def hit_features(self, batch) -> torch.Tensor:
        """Backbone features per hit, ``[P, cs[8]]`` (checks the batch)."""
        pts, feats, _ = check_batch(batch, self.in_channels)
        if pts.shape[0] == 0:
            return feats.new_zeros((0, self.channels[8]))
        with small_input_threads(pts.shape[0]):   # ~1k-hit events: one torch thread (sparse3d.utils.threads)
            return self._hit_features(pts, feats)

    def _hit_features(self, pts: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        vs = torch.tensor(self.voxel_size, dtype=pts.dtype, device=pts.device)
        xyz = pts[:, 1:] / vs
        pin = torch.cat([feats, (xyz - torch.floor(xyz) - 0.5).to(feats.dtype)], 1)
        z = PointTensor(pin, torch.cat([pts[:, :1], xyz], 1))

        x0 = self.stem(initial_voxelize(z))
        z0 = self._v2p(x0, z)
        z0 = z0.replace(z0.feats + self.point_stem(pin))

        x1 = self.stage1(point_to_voxel(x0, z0))
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        z1 = z0.replace(self._v2p(x4, z0).feats + self.point_transforms[0](z0.feats))

        y1 = point_to_voxel(x4, z1)
        y1 = y1.replace(self.dropout(y1.feats))
        y2 = self._up(2, self._up(1, y1, x3), x2)
        z2 = z1.replace(self._v2p(y2, z1).feats + self.point_transforms[1](z1.feats))

        y3 = point_to_voxel(y2, z2)
        y3 = y3.replace(self.dropout(y3.feats))
        y4 = self._up(4, self._up(3, y3, x1), x0)
        return self._v2p(y4, z2).feats + self.point_transforms[2](z2.feats)
