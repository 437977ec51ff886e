"""Sparse neural-network layers; ``sparse3d.nn.functional`` holds the stateless ops."""
from . import functional
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _mod_all

__all__ = ["functional", *_mod_all]
