"""Stateful sparse layers (mirrors ``torch.nn``)."""
from .activation import LeakyReLU, ReLU, SiLU
from .conv import Conv3d
from .dense import ToBEV, ToDense
from .norm import BatchNorm, GroupNorm, InstanceNorm
from .pooling import AvgPool3d, GlobalAvgPool, GlobalMaxPool, MaxPool3d

__all__ = ["Conv3d", "BatchNorm", "GroupNorm", "InstanceNorm", "ReLU", "LeakyReLU", "SiLU",
           "MaxPool3d", "AvgPool3d", "GlobalAvgPool", "GlobalMaxPool", "ToDense", "ToBEV"]
