"""Normalization layers on SparseTensor features."""
from __future__ import annotations

from torch import nn

from ...tensor import SparseTensor
from ..functional.norm import group_norm, instance_norm

__all__ = ["BatchNorm", "GroupNorm", "InstanceNorm"]


def _check_input(module: nn.Module, input: SparseTensor, num_channels: int) -> None:
    name = type(module).__name__
    if not isinstance(input, SparseTensor):
        raise TypeError(f"{name} expects a SparseTensor input, got {type(input).__name__}")
    if input.feats.shape[1] != num_channels:
        raise ValueError(f"{name}: input feats have {input.feats.shape[1]} channels, expected {num_channels}")


class BatchNorm(nn.BatchNorm1d):
    """``nn.BatchNorm1d`` over the voxel rows of ``feats [N, C]`` (all samples of the batch pooled)."""

    def forward(self, input: SparseTensor) -> SparseTensor:
        return input.replace(super().forward(input.feats))


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` applied to each batch sample separately (cf. torchsparse ``GroupNorm``).

    Sample ``b`` (rows with ``coords[:, 0] == b``) is normalized like ``feats_b.t()[None]``
    ``[1, C, N_b]``: per group, over all voxels of the sample. Input/output feats ``[N, C]``.
    """

    def forward(self, input: SparseTensor) -> SparseTensor:
        _check_input(self, input, self.num_channels)
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class InstanceNorm(nn.InstanceNorm1d):
    """Per-sample, per-channel normalization over the voxels of each batch sample.

    Args as ``nn.InstanceNorm1d``; running statistics are not supported
    (``track_running_stats`` must be False). Input/output feats ``[N, C]``.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None) -> None:
        if track_running_stats:
            raise ValueError("InstanceNorm: track_running_stats=True is not supported for sparse tensors")
        super().__init__(num_features, eps, momentum, affine, False, device, dtype)

    def forward(self, input: SparseTensor) -> SparseTensor:
        _check_input(self, input, self.num_features)
        return instance_norm(input, self.weight, self.bias, self.eps)
