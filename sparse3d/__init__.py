"""sparse3d: exact, CPU-fast, trainable sparse convolution for 3D perception."""
from ._backend import is_deterministic, set_deterministic
from .tensor import PointTensor, SparseTensor
from .utils.collate import sparse_collate, sparse_collate_fn
from .utils.quantize import sparse_quantize

__version__ = "0.1.0"

__all__ = [
    "SparseTensor", "PointTensor", "sparse_quantize", "sparse_collate", "sparse_collate_fn",
    "set_deterministic", "is_deterministic", "__version__",
]
