"""Stateful sparse layers (mirrors ``torch.nn``)."""
from .activation import LeakyReLU, ReLU, SiLU
from .conv import Conv3d
from .norm import BatchNorm

__all__ = ["Conv3d", "BatchNorm", "ReLU", "LeakyReLU", "SiLU"]
