"""Pointwise activations on SparseTensor features."""
from __future__ import annotations

from torch import nn

from ...tensor import SparseTensor

__all__ = ["ReLU", "LeakyReLU", "SiLU"]


class _Pointwise:
    def forward(self, input: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return input.replace(super().forward(input.feats))


class ReLU(_Pointwise, nn.ReLU):
    """``nn.ReLU`` on ``feats [N, C]``."""


class LeakyReLU(_Pointwise, nn.LeakyReLU):
    """``nn.LeakyReLU`` on ``feats [N, C]``."""


class SiLU(_Pointwise, nn.SiLU):
    """``nn.SiLU`` on ``feats [N, C]``."""
