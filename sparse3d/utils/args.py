"""Argument normalization and validation shared by tensors and ops."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

__all__ = ["triple", "IntOr3", "as_vector"]

IntOr3 = Union[int, Sequence[int]]


def triple(value: IntOr3, name: str = "value", positive: bool = True) -> Tuple[int, int, int]:
    """``3 -> (3, 3, 3)``; ``(1, 1, 3)`` is kept. Raises on anything else.

    With ``positive`` (sizes, strides) entries must be >= 1; without, any int (origins).
    """
    if type(value) is tuple and len(value) == 3:   # fast path (called per layer per forward)
        a, b, c = value
        if type(a) is int and type(b) is int and type(c) is int and (not positive or (a >= 1 and b >= 1 and c >= 1)):
            return value
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, int) and not isinstance(value, bool):
        out = (value, value, value)
    else:
        try:
            out = tuple(int(v) for v in value)
        except TypeError:
            raise TypeError(f"{name} must be an int or a sequence of 3 ints, got {value!r}") from None
        if len(out) != 3:
            raise ValueError(f"{name} must have 3 entries (x, y, z), got {value!r}")
    if positive and any(v < 1 for v in out):
        raise ValueError(f"{name} entries must be >= 1, got {value!r}")
    return out


def as_vector(name: str, a, n: int = None, ref: str = "x") -> np.ndarray:
    """``a`` (numpy array, torch tensor or sequence) as a 1-D numpy array ``[N]``, without copying if possible.

    Raises ValueError naming ``name`` if it is not 1-D or (with ``n``) has not ``n`` entries like ``ref``.
    """
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    a = np.asarray(a)
    if a.ndim != 1:
        raise ValueError(f"'{name}' must be 1-D [N], got shape {a.shape}")
    if n is not None and a.shape[0] != n:
        raise ValueError(f"'{name}' has {a.shape[0]} entries but '{ref}' has {n}")
    return a
