"""Utilities on sparse3d modules (cf. ``torch.nn.utils``)."""
from .fusion import fuse_bn_eval, fuse_conv_bn_eval

__all__ = ["fuse_bn_eval", "fuse_conv_bn_eval"]
