r"""GeneralizedLSSFPN: BEVFusion's camera neck (``mmdet3d/models/necks/generalized_lss.py``).

Top-down over the levels ``start_level .. end_level``: the coarser map is upsampled (bilinear,
``align_corners=True``) to the finer one, concatenated with it, then a 1x1 and a 3x3
conv (+BN+ReLU) give ``out_channels``. Level ``i`` uses the *raw* coarser input for the coarsest
pair and the already-fused coarser output for the others, exactly as upstream. Outputs
``num_levels - 1`` maps, finest first (BEVFusion uses only ``outs[0]``, stride 8).
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GeneralizedLSSFPN"]


def _conv(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class GeneralizedLSSFPN(nn.Module):
    """Args:
        in_channels: channels of the backbone outputs (finest first), e.g. ``[192, 384, 768]``.
        out_channels: channels of every output (256 in BEVFusion).
        num_outs: kept for config compatibility; the number of outputs is ``end_level - start_level``.
        start_level, end_level: the input levels used (``end_level=-1``: the last one).

    ``forward(list of [B, C_i, H_i, W_i]) -> list of [B, out_channels, H_i, W_i]`` for
    ``i = start_level .. end_level - 1``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int = 3, start_level: int = 0,
                 end_level: int = -1):
        super().__init__()
        self.in_channels = [int(c) for c in in_channels]
        n = len(self.in_channels)
        if n < 2:
            raise ValueError(f"in_channels needs at least 2 levels, got {in_channels}")
        self.start_level = int(start_level)
        self.end_level = n - 1 if end_level == -1 else int(end_level)
        if not 0 <= self.start_level < self.end_level <= n - 1:
            raise ValueError(f"need 0 <= start_level < end_level <= {n - 1}, got {start_level}, {end_level}")
        self.out_channels = int(out_channels)
        self.num_outs = int(num_outs)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(self.start_level, self.end_level):
            coarse = self.in_channels[i + 1] if i == self.end_level - 1 else self.out_channels
            self.lateral_convs.append(_conv(self.in_channels[i] + coarse, self.out_channels, 1))
            self.fpn_convs.append(_conv(self.out_channels, self.out_channels, 3))

    def forward(self, inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(inputs)}")
        for i, (x, c) in enumerate(zip(inputs, self.in_channels)):
            if x.dim() != 4 or x.shape[1] != c:
                raise ValueError(f"inputs[{i}] must be [B, {c}, H, W], got {list(x.shape)}")
        lat = list(inputs[self.start_level:self.end_level + 1])
        for j in range(len(lat) - 2, -1, -1):
            up = F.interpolate(lat[j + 1], size=lat[j].shape[2:], mode="bilinear", align_corners=True)
            lat[j] = self.fpn_convs[j](self.lateral_convs[j](torch.cat([lat[j], up], 1)))
        return lat[:-1]
