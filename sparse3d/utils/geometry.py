"""Small rigid-transform helpers shared by the synthetic data generators."""
from __future__ import annotations

import numpy as np

__all__ = ["rot_x", "rot_y", "rot_z"]


def rot_z(a: float) -> np.ndarray:
    """``[3, 3]`` rotation by ``a`` radians about +z."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_y(a: float) -> np.ndarray:
    """``[3, 3]`` rotation by ``a`` radians about +y."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rot_x(a: float) -> np.ndarray:
    """``[3, 3]`` rotation by ``a`` radians about +x."""
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
