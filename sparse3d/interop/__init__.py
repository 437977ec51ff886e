"""Interoperability with other sparse-convolution engines.

``sparse3d.interop.spconv``: tensors (``to_spconv`` / ``from_spconv``), weights and state
dicts of spconv 2.x (spconv itself is imported lazily, only when a tensor is converted).
``sparse3d.interop.torchsparse``: TorchSparse kernel layouts and state dicts (pure torch).
"""
from . import spconv, torchsparse

__all__ = ["spconv", "torchsparse"]
