"""SPVNAS-family segmentation networks (cf. mit-han-lab/spvnas ``core/models/semantic_kitti``)."""
from .blocks import BasicConvolutionBlock, BasicDeconvolutionBlock, ResidualBlock, sparse_cat
from .minkunet import MinkUNet

__all__ = ["MinkUNet", "BasicConvolutionBlock", "BasicDeconvolutionBlock", "ResidualBlock", "sparse_cat"]
from .spvcnn import SPVCNN  # noqa: E402

__all__ += ["SPVCNN"]
