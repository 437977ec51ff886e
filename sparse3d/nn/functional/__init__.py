"""Stateless sparse ops (mirrors ``torch.nn.functional``)."""
from .conv import conv3d, set_autotune, sparse_conv
from .kmap import KernelMap, build_kernel_map, get_kernel_map, get_transposed_kernel_map

__all__ = ["conv3d", "sparse_conv", "set_autotune", "KernelMap", "build_kernel_map", "get_kernel_map",
           "get_transposed_kernel_map"]
