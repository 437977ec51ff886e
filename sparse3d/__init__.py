"""sparse3d: exact, CPU-fast, trainable sparse convolution for 3D perception."""
import os as _os
import sys as _sys

# sparse3d interleaves numba parallel kernels with torch/MKL OpenMP regions. With GNU
# OpenMP's default spin-waiting, idle torch threads burn the cores numba needs (and vice
# versa): a MinkUNet training step ran 2.6x slower on 2 cores. Passive waiting fixes it,
# but libgomp reads the setting once, when torch is loaded, so import sparse3d first.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _OMP_POLICY_SET = True
else:
    _OMP_POLICY_SET = _os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
from ._backend import HAS_NUMBA as _HAS_NUMBA, is_deterministic, set_deterministic

# Start numba's thread pool now: its start resets torch's intra-op thread count through the shared
# libgomp, so a later ``torch.set_num_threads(n)`` would not hold (ops/_numba.py).
if _HAS_NUMBA:
    from .ops import _numba as _ops_numba  # noqa: F401
from .tensor import PointTensor, SparseTensor
from .utils.collate import sparse_collate, sparse_collate_fn
from .utils.quantize import sparse_quantize

__version__ = "0.1.0"

__all__ = [
    "SparseTensor", "PointTensor", "sparse_quantize", "sparse_collate", "sparse_collate_fn",
    "set_deterministic", "is_deterministic", "__version__",
]
