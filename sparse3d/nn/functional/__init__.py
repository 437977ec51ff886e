"""Stateless sparse ops (mirrors ``torch.nn.functional``)."""
from .bev_pool import BEVPoolCache, BEVPoolPlan, bev_pool, bev_pool_depth, bev_pool_with_plan
from .conv import conv3d, set_autotune, sparse_conv
from .dense import height_collapse, to_dense
from .loss import class_weights, lovasz_softmax
from .kmap import KernelMap, build_kernel_map, get_kernel_map, get_transposed_kernel_map
from .norm import group_norm, instance_norm
from .pointops import (avg_voxelize, devoxelize, initial_voxelize, point_to_voxel, scatter_mean,
                       trilinear_devoxelize, voxel_to_point)
from .pooling import avg_pool3d, global_avg_pool, global_max_pool, max_pool3d, sparse_avg_pool, sparse_max_pool

__all__ = ["conv3d", "sparse_conv", "set_autotune", "KernelMap", "build_kernel_map", "get_kernel_map",
           "get_transposed_kernel_map", "initial_voxelize", "point_to_voxel", "voxel_to_point",
           "avg_voxelize", "trilinear_devoxelize", "scatter_mean", "devoxelize", "height_collapse", "to_dense",
           "group_norm", "instance_norm", "avg_pool3d", "max_pool3d", "global_avg_pool", "global_max_pool",
           "sparse_avg_pool", "sparse_max_pool", "lovasz_softmax", "class_weights", "bev_pool", "bev_pool_depth", "bev_pool_with_plan",
           "BEVPoolPlan", "BEVPoolCache"]
