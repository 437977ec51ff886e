"""BEV decoder: ``SECOND`` backbone and ``SECONDFPN`` neck (mmdet3d ``backbones/second.py``, ``necks/second_fpn.py``).

BEVFusion's fusion config: ``SECOND(256, [128, 256], layer_nums=[5, 5], layer_strides=[1, 2])`` +
``SECONDFPN([128, 256], [256, 256], upsample_strides=[1, 2], use_conv_for_no_stride=True)`` -> 512
channels at the input resolution. BatchNorm uses mmdet3d's ``eps=1e-3, momentum=0.01``.
"""
from __future__ import annotations

from fractions import Fraction
from typing import List, Sequence

import torch
from torch import nn

__all__ = ["SECOND", "SECONDFPN"]


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def _check_lists(name: str, **lists) -> None:
    lens = {k: len(v) for k, v in lists.items()}
    if len(set(lens.values())) != 1 or 0 in lens.values():
        raise ValueError(f"{name}: {', '.join(lens)} must be non-empty and of equal length, got lengths {lens}")


class SECOND(nn.Module):
    r"""SECOND 2D backbone (https://doi.org/10.3390/s18103337): a stack of conv stages.

    Stage i: ``Conv2d(3×3, stride layer_strides[i]) + BN + ReLU`` then ``layer_nums[i]`` ×
    ``(Conv2d(3×3) + BN + ReLU)``, all convs without bias.

    Args:
        in_channels: input channels (128 in mmdet3d, 256 in BEVFusion).
        out_channels: channels per stage ([128, 128, 256]).
        layer_nums: extra 3×3 convs per stage ([3, 5, 5]).
        layer_strides: stride of each stage's first conv ([2, 2, 2]).

    ``forward(x [B, in_channels, X, Y]) -> list of [B, out_channels[i], X / s_i, Y / s_i]`` with
    ``s_i`` the cumulative stride (each strided conv gives ``ceil(n / 2)`` cells).
    """

    def __init__(self, in_channels: int = 128, out_channels: Sequence[int] = (128, 128, 256),
                 layer_nums: Sequence[int] = (3, 5, 5), layer_strides: Sequence[int] = (2, 2, 2)) -> None:
        super().__init__()
        _check_lists("SECOND", out_channels=out_channels, layer_nums=layer_nums, layer_strides=layer_strides)
        self.in_channels = int(in_channels)
        self.out_channels = [int(c) for c in out_channels]
        in_filters = [self.in_channels, *self.out_channels[:-1]]
        blocks = []
        for i, n in enumerate(layer_nums):
            cin, c = in_filters[i], self.out_channels[i]
            layers: List[nn.Module] = [nn.Conv2d(cin, c, 3, stride=int(layer_strides[i]), padding=1, bias=False),
                                       _bn(c), nn.ReLU(True)]
            for _ in range(int(n)):
                layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), _bn(c), nn.ReLU(True)]
            blocks.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SECOND expects x of shape [B, {self.in_channels}, X, Y], got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        outs = []
        for block in self.blocks:
            x = block(x)
            outs.append(x)
        return outs


class SECONDFPN(nn.Module):
    r"""SECOND FPN neck: bring every backbone level to one resolution and concatenate.

    Level i goes through ``ConvTranspose2d(k = s, stride s)`` (``s = upsample_strides[i] > 1``, or
    ``s == 1`` without ``use_conv_for_no_stride``) or ``Conv2d(k = 1/s, stride 1/s)`` (``s < 1``, or
    ``s == 1`` with ``use_conv_for_no_stride``), then BN + ReLU; no biases.

    Args:
        in_channels: channels of each level ([128, 128, 256]).
        out_channels: channels per level after upsampling ([256, 256, 256]).
        upsample_strides: per level (may be fractions such as 0.5) ([1, 2, 4]).
        use_conv_for_no_stride: use a 1×1 conv instead of a 1×1 deconv at stride 1 (BEVFusion: True).

    ``forward(list of [B, in_channels[i], X_i, Y_i]) -> [B, sum(out_channels), X', Y']``; all
    levels must reach the same X', Y' (ValueError otherwise).
    """

    def __init__(self, in_channels: Sequence[int] = (128, 128, 256), out_channels: Sequence[int] = (256, 256, 256),
                 upsample_strides: Sequence[float] = (1, 2, 4), use_conv_for_no_stride: bool = False) -> None:
        super().__init__()
        _check_lists("SECONDFPN", in_channels=in_channels, out_channels=out_channels,
                     upsample_strides=upsample_strides)
        self.in_channels = [int(c) for c in in_channels]
        self.out_channels = sum(int(c) for c in out_channels)
        deblocks = []
        for cin, c, s in zip(self.in_channels, out_channels, upsample_strides):
            s = Fraction(s).limit_denominator(64)
            if s <= 0:
                raise ValueError(f"SECONDFPN: upsample_strides must be > 0, got {list(upsample_strides)}")
            if s > 1 or (s == 1 and not use_conv_for_no_stride):
                if s.denominator != 1:
                    raise ValueError(f"SECONDFPN: upsample stride {float(s)} must be an integer")
                up = nn.ConvTranspose2d(cin, int(c), int(s), stride=int(s), bias=False)
            else:
                k = 1 / s
                if k.denominator != 1:
                    raise ValueError(f"SECONDFPN: downsample stride 1/{float(k)} must be 1/integer")
                up = nn.Conv2d(cin, int(c), int(k), stride=int(k), bias=False)
            deblocks.append(nn.Sequential(up, _bn(int(c)), nn.ReLU(True)))
        self.deblocks = nn.ModuleList(deblocks)

    def forward(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(x, torch.Tensor) or len(x) != len(self.deblocks):
            raise ValueError(f"SECONDFPN expects a list of {len(self.deblocks)} feature maps")
        ups = []
        for i, (f, deblock) in enumerate(zip(x, self.deblocks)):
            if f.dim() != 4 or f.shape[1] != self.in_channels[i]:
                raise ValueError(f"SECONDFPN: x[{i}] must be [B, {self.in_channels[i]}, X, Y], got {tuple(f.shape)}")
            ups.append(deblock(f))
        sizes = [tuple(u.shape[2:]) for u in ups]
        if len(set(sizes)) != 1:
            raise ValueError(f"SECONDFPN: upsampled levels have different sizes {sizes}; the BEV grid must be "
                             "divisible by the total SECOND stride")
        return torch.cat(ups, dim=1) if len(ups) > 1 else ups[0]
