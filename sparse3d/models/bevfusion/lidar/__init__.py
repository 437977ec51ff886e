"""BEVFusion LiDAR branch: mean-of-points voxelization and a sparse SECOND encoder collapsed to BEV."""
from .motion import MotionEncoder
from .sparse_encoder import LidarEncoder, SparseEncoder
from .voxelize import Voxelization, grid_size, voxelize

__all__ = ["Voxelization", "voxelize", "grid_size", "SparseEncoder", "LidarEncoder", "MotionEncoder"]
