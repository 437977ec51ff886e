"""``ConvFuser``: concatenate BEV maps of several modalities and mix them with a 3×3 conv (BEVFusion)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["ConvFuser"]


class ConvFuser(nn.Sequential):
    r"""``cat(inputs, dim=1) -> Conv2d(3×3, no bias) -> BatchNorm2d -> ReLU`` (BEVFusion ``models/fusers/conv.py``),
    optionally as a zero-initialized residual on one input.

    Args:
        in_channels: channels of each input map, in the order they are passed (e.g. [camera, lidar]).
        out_channels: output channels.
        residual: optional index of an input with ``out_channels`` channels that is added to the output,
            ``inputs[residual] + BN(conv(cat(inputs)))`` with no ReLU and the BN scale and shift starting at 0, so
            the fuser starts as that input's identity. Fine-tuning a fusion model from a LiDAR-only checkpoint
            (upstream's recipe) then starts exactly at the LiDAR-only model and the camera's share grows from 0;
            with the plain fuser a fresh conv + BN + ReLU sits between the loaded LiDAR encoder and decoder.
            None (default): upstream's plain block.

    ``forward(inputs: list of [B, C_i, X, Y]) -> [B, out_channels, X, Y]``; every input must share
    B, X and Y (dim 2 = LiDAR x).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, residual: Optional[int] = None) -> None:
        in_channels = [int(c) for c in in_channels]
        if not in_channels:
            raise ValueError("ConvFuser: in_channels must list at least one input")
        if residual is not None and not (0 <= int(residual) < len(in_channels)
                                         and in_channels[int(residual)] == int(out_channels)):
            raise ValueError(f"ConvFuser: residual={residual!r} must index an input with out_channels="
                             f"{out_channels} channels (in_channels {in_channels})")
        layers = [nn.Conv2d(sum(in_channels), out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)]
        if residual is None:
            layers.append(nn.ReLU(True))
        super().__init__(*layers)
        if residual is not None:
            nn.init.zeros_(self[1].weight)
            nn.init.zeros_(self[1].bias)
        self.in_channels = in_channels
        self.out_channels = int(out_channels)
        self.residual = None if residual is None else int(residual)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if isinstance(inputs, torch.Tensor) or len(inputs) != len(self.in_channels):
            n = "a tensor" if isinstance(inputs, torch.Tensor) else f"{len(inputs)} maps"
            raise ValueError(f"ConvFuser expects a list of {len(self.in_channels)} BEV maps, got {n}")
        ref = inputs[0]
        for i, (x, c) in enumerate(zip(inputs, self.in_channels)):
            if not isinstance(x, torch.Tensor) or x.dim() != 4:
                raise ValueError(f"ConvFuser: inputs[{i}] must be a [B, C, X, Y] tensor, got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
            if x.shape[1] != c:
                raise ValueError(f"ConvFuser: inputs[{i}] has {x.shape[1]} channels, in_channels[{i}] = {c}")
            if x.shape[0] != ref.shape[0] or x.shape[2:] != ref.shape[2:]:
                raise ValueError(f"ConvFuser: inputs[{i}] has shape {tuple(x.shape)}, inputs[0] {tuple(ref.shape)}; "
                                 "batch size and BEV grid (X, Y) must match")
        out = super().forward(torch.cat(list(inputs), dim=1))
        return out if self.residual is None else inputs[self.residual] + out
