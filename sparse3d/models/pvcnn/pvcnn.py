"""PVCNN for room/object-scale segmentation (pvcnn ``models/s3dis/pvcnn.py``, ``models/utils.py``)."""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

from .pvconv import PVConv, SharedMLP

__all__ = ["PVCNN"]

Block = Tuple[int, int, object]


def _linear_bn_relu(inc: int, outc: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inc, outc), nn.BatchNorm1d(outc), nn.ReLU(True))


class PVCNN(nn.Module):
    r"""PVCNN segmentation network, S3DIS variant (Liu et al., NeurIPS 2019,
    https://arxiv.org/abs/1907.03739).

    ``blocks`` = (channels, repeats, voxel resolution or None): each repeat is a
    :class:`PVConv` (kernel 3) at resolution ``int(vr * res)``, or a :class:`SharedMLP` for
    ``None``; channels are ``int(r * c)``. Global feature: max over points of the last block
    -> Linear+BN+ReLU to ``int(r*256)`` and ``int(r*128)``, repeated over the points.
    Head on the concatenation of every block's output and the global feature:
    SharedMLP ``int(r*512)`` -> Dropout 0.3 -> SharedMLP ``int(r*256)`` -> Dropout 0.3 ->
    Conv1d(k1) to ``num_classes``.

    Args:
        num_classes: output logits per point.
        in_channels: input feature width; channels 0..2 are the xyz coordinates (S3DIS: 9 =
            xyz + rgb + room-normalized xyz).
        width_multiplier: ``r``. voxel_resolution_multiplier: ``vr``.
        blocks: default ``((64, 1, 32), (64, 2, 16), (128, 1, 16), (1024, 1, None))``.

    Input: ``[B, in_channels, N]`` float (B >= 2 in training: BatchNorm1d on the global feature).
    Output: logits ``[B, num_classes, N]``.
    """

    blocks: Tuple[Block, ...] = ((64, 1, 32), (64, 2, 16), (128, 1, 16), (1024, 1, None))

    def __init__(self, num_classes: int = 13, in_channels: int = 9, width_multiplier: float = 1.0,
                 voxel_resolution_multiplier: float = 1.0, blocks: Sequence[Block] = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if in_channels < 3:
            raise ValueError(f"in_channels must be >= 3 (xyz first), got {in_channels}")
        if not width_multiplier > 0 or not voxel_resolution_multiplier > 0:
            raise ValueError(f"width_multiplier and voxel_resolution_multiplier must be > 0, got "
                             f"{width_multiplier}, {voxel_resolution_multiplier}")
        r, vr = width_multiplier, voxel_resolution_multiplier
        self.in_channels, self.num_classes = in_channels, num_classes
        if blocks is not None:
            self.blocks = tuple(tuple(b) for b in blocks)

        layers, c, concat = [], in_channels, 0
        for out_channels, repeats, res in self.blocks:
            oc = int(r * out_channels)
            if oc < 1 or (res is not None and int(vr * res) < 1):
                raise ValueError(f"block {(out_channels, repeats, res)} gives zero width or resolution at "
                                 f"width_multiplier={r}, voxel_resolution_multiplier={vr}")
            for _ in range(repeats):
                layers.append(SharedMLP(c, oc) if res is None else
                              PVConv(c, oc, kernel_size=3, resolution=int(vr * res)))
                c = oc
                concat += oc
        self.point_features = nn.ModuleList(layers)
        self.cloud_features = nn.Sequential(_linear_bn_relu(c, int(r * 256)),
                                            _linear_bn_relu(int(r * 256), int(r * 128)))
        self.classifier = nn.Sequential(
            SharedMLP(concat + int(r * 128), int(r * 512)),
            nn.Dropout(0.3),
            SharedMLP(int(r * 512), int(r * 256)),
            nn.Dropout(0.3),
            nn.Conv1d(int(r * 256), num_classes, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"PVCNN expects a Tensor [B, C, N], got {type(inputs).__name__}")
        if inputs.dim() != 3 or inputs.shape[1] != self.in_channels:
            raise ValueError(f"inputs must be [B, {self.in_channels}, N], got {tuple(inputs.shape)}")
        if inputs.shape[2] == 0:
            raise ValueError("inputs has no points (N = 0)")
        coords = inputs[:, :3, :]
        feats, outs = inputs, []
        for layer in self.point_features:
            feats = layer((feats, coords))[0] if isinstance(layer, PVConv) else layer(feats)
            outs.append(feats)
        glob = self.cloud_features(feats.max(dim=-1).values)
        outs.append(glob.unsqueeze(-1).expand(-1, -1, coords.shape[-1]))
        return self.classifier(torch.cat(outs, dim=1))
