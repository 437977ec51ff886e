r"""BEVFusion (`arXiv:2205.13542 <https://arxiv.org/abs/2205.13542>`_) built by composition on sparse3d.

BEV maps are ``[B, C, X, Y]`` (dim 2 = LiDAR x from ``xbound[0]``, dim 3 = LiDAR y).
"""
from .camera import (CameraEncoder, DepthLSSTransform, GeneralizedLSSFPN, LSSTransform, ResNetBackbone,
                     SwinTBackbone)

from .bevfusion import BEVFusion

__all__ = ["BEVFusion", "CameraEncoder", "ResNetBackbone", "SwinTBackbone", "GeneralizedLSSFPN", "LSSTransform",
           "DepthLSSTransform"]
