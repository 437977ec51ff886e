"""Stateless sparse ops (mirrors ``torch.nn.functional``)."""
from .conv import conv3d, set_autotune, sparse_conv
from .kmap import KernelMap, build_kernel_map, get_kernel_map, get_transposed_kernel_map
from .pointops import (avg_voxelize, devoxelize, initial_voxelize, point_to_voxel, scatter_mean,
                       trilinear_devoxelize, voxel_to_point)

__all__ = ["conv3d", "sparse_conv", "set_autotune", "KernelMap", "build_kernel_map", "get_kernel_map",
           "get_transposed_kernel_map", "initial_voxelize", "point_to_voxel", "voxel_to_point",
           "avg_voxelize", "trilinear_devoxelize", "scatter_mean", "devoxelize"]
