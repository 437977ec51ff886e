"""Kernel-map (neighbour search) kernels: coordinate packing, hashing, output coordinates."""
from .common import PackParams, kernel_offsets, pack_params

__all__ = ["PackParams", "kernel_offsets", "pack_params"]
