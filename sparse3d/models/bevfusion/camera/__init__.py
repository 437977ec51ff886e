"""BEVFusion camera branch: image backbone -> GeneralizedLSSFPN -> LSS view transform -> BEV ``[B, C, X, Y]``."""
from .backbones import ResNetBackbone, SwinTBackbone, load_pretrained
from .encoder import CameraEncoder
from .neck import GeneralizedLSSFPN
from .perspective import PerspectiveHead, box_lattice, perspective_targets
from .vtransform import (BaseTransform, DepthLSSTransform, LSSTransform, create_frustum, frustum_geometry,
                         geometry_to_cells, grid_size, lidar_depth_map,
                         points_to_image)

__all__ = ["CameraEncoder", "ResNetBackbone", "SwinTBackbone", "load_pretrained", "GeneralizedLSSFPN", "PerspectiveHead",
           "box_lattice", "perspective_targets", "BaseTransform",
           "LSSTransform", "DepthLSSTransform", "create_frustum", "frustum_geometry", "geometry_to_cells",
           "grid_size", "lidar_depth_map", "points_to_image"]
