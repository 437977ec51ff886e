"""PVCNN: point-voxel convolution networks (cf. mit-han-lab/pvcnn), CPU-capable."""
from .pvcnn import PVCNN
from .pvconv import PVConv, SharedMLP, Voxelization, normalize_coords

__all__ = ["PVCNN", "PVConv", "SharedMLP", "Voxelization", "normalize_coords"]
