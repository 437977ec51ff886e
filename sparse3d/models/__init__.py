"""Network architectures built from :mod:`sparse3d.nn` layers."""
from .spvnas import MinkUNet

__all__ = ["MinkUNet"]
