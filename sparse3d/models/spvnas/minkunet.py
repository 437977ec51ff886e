"""MinkUNet18 as in SPVNAS (``core/models/semantic_kitti/minkunet.py``; TorchSparse "MinkUNet18C").

Parameter counts (no biases in convs; BN = 2C; classifier = Linear(cs[8], 19)):
5.44M / 8.77M / 21.72M at ``cr`` = 0.5 / 0.64 / 1.0.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn

from ... import nn as spnn
from ...tensor import SparseTensor
from ...utils.threads import small_input_threads
from .blocks import BasicConvolutionBlock, BasicDeconvolutionBlock, ResidualBlock, sparse_cat

__all__ = ["add_unet_backbone", "init_batchnorm", "MinkUNet", "minkunet_channels"]

BASE_CHANNELS = (32, 32, 64, 128, 256, 256, 128, 96, 96)


def minkunet_channels(cr: float = 1.0) -> List[int]:
    """Channel widths ``[int(cr * c) for c in (32, 32, 64, 128, 256, 256, 128, 96, 96)]`` (spvnas truncation)."""
    if not isinstance(cr, (int, float)) or not cr > 0:
        raise ValueError(f"cr must be a positive number, got {cr!r}")
    cs = [int(cr * c) for c in BASE_CHANNELS]
    if min(cs) < 1:
        raise ValueError(f"cr={cr} gives a zero-width layer: {cs}")
    return cs


def init_batchnorm(module: nn.Module) -> None:
    """spvnas init: every (affine) BatchNorm weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d) and m.affine:
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)


def add_unet_backbone(module: nn.Module, in_channels: int, cs: List[int]) -> None:
    """Attach the MinkUNet18 voxel backbone to ``module`` (shared by MinkUNet and SPVCNN).

    Adds ``stem``, ``stage1..4`` (k2 s2 down block + 2 residual blocks) and ``up1..4``
    (``ModuleList[k2 s2 transposed block, 2 residual blocks on the concat]``) with the
    spvnas module names, so spvnas-style state dicts line up.
    """
    module.stem = nn.Sequential(
        spnn.Conv3d(in_channels, cs[0], kernel_size=3, stride=1),
        spnn.BatchNorm(cs[0]), spnn.ReLU(True),
        spnn.Conv3d(cs[0], cs[0], kernel_size=3, stride=1),
        spnn.BatchNorm(cs[0]), spnn.ReLU(True),
    )
    for i in range(1, 5):
        setattr(module, f"stage{i}", nn.Sequential(
            BasicConvolutionBlock(cs[i - 1], cs[i - 1], ks=2, stride=2, dilation=1),
            ResidualBlock(cs[i - 1], cs[i], ks=3, stride=1, dilation=1),
            ResidualBlock(cs[i], cs[i], ks=3, stride=1, dilation=1),
        ))
    for j in range(1, 5):
        i, skip = 4 + j, cs[4 - j]
        setattr(module, f"up{j}", nn.ModuleList([
            BasicDeconvolutionBlock(cs[i - 1], cs[i], ks=2, stride=2),
            nn.Sequential(
                ResidualBlock(cs[i] + skip, cs[i], ks=3, stride=1, dilation=1),
                ResidualBlock(cs[i], cs[i], ks=3, stride=1, dilation=1),
            ),
        ]))


class MinkUNet(nn.Module):
    r"""Sparse U-Net for voxel-wise semantic segmentation (MinkUNet18).

    Stem: two 3x3x3 submanifold Conv3d + BN + ReLU. Four down stages: k2 s2 conv
    block + 2 residual blocks. Four up stages: k2 s2 transposed conv block, concat
    with the encoder skip (upsampled feats first), 2 residual blocks. Classifier:
    ``Linear(cs[8], num_classes)`` on voxels.

    Args:
        in_channels: input feature width (4: xyz + remission in SPVNAS).
        num_classes: number of output logits.
        cr: channel ratio; widths ``int(cr * c)``.
        input_norm: standardize each input feature over the batch's voxels first (a non-affine
            BatchNorm, no parameters).

    Input: SparseTensor with feats ``[N, in_channels]`` float, stride 1.
    Output: logits ``[N, num_classes]`` (same dtype as feats), rows in input order.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 19, cr: float = 1.0, input_norm: bool = False) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        cs = minkunet_channels(cr)
        self.in_channels, self.num_classes, self.cr, self.channels = in_channels, num_classes, cr, cs

        self.input_norm = nn.BatchNorm1d(in_channels, affine=False) if input_norm else None
        add_unet_backbone(self, in_channels, cs)
        self.classifier = nn.Sequential(nn.Linear(cs[8], num_classes))
        self.weight_initialization()

    def weight_initialization(self) -> None:
        init_batchnorm(self)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        if not isinstance(x, SparseTensor):
            raise TypeError(f"MinkUNet expects a SparseTensor, got {type(x).__name__}")
        if x.feats.shape[1] != self.in_channels:
            raise ValueError(
                f"x.feats has {x.feats.shape[1]} channels, MinkUNet expects in_channels={self.in_channels}")
        with small_input_threads(len(x)):     # small inputs: one torch thread (sparse3d.utils.threads)
            return self._forward(x)

    def _forward(self, x: SparseTensor) -> torch.Tensor:
        if self.input_norm is not None:
            x = x.replace(self.input_norm(x.feats))
        x0 = self.stem(x)
        x1 = self.stage1(x0)
        x2 = self.stage2(x1)
        x3 = self.stage3(x2)
        x4 = self.stage4(x3)
        y = x4
        for up, skip in zip((self.up1, self.up2, self.up3, self.up4), (x3, x2, x1, x0)):
            y = up[1](sparse_cat([up[0](y), skip]))
        return self.classifier(y.feats)
