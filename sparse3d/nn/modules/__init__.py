"""Stateful sparse layers (mirrors ``torch.nn``)."""
from .conv import Conv3d

__all__ = ["Conv3d"]
