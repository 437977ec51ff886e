"""Sparse local pooling (max / average over a kernel map) and global pooling per batch sample.

Local pooling uses exactly the coordinate semantics of :func:`sparse3d.nn.functional.conv3d`
and the same cached kernel map (key ``(tensor_stride, kernel_size, stride, dilation)``),
so a pool and a conv with the same key share one neighbour search:

* ``stride == 1``: output coords = input coords (submanifold pooling).
* ``stride == s``: output coords ``floor(c / (s*t)) * (s*t)`` (t = input tensor stride),
  neighbours at the conv offsets (``(i - K//2)*d*t`` for odd K, ``i*d*t`` for even K).

Max takes the channel-wise max over the *existing* neighbours; average is the mean over
the existing neighbours only (absent voxels are not counted as zeros, like
``F.avg_pool3d(..., count_include_pad=False)`` on a fully occupied grid). An output with
no neighbour at all (possible only when the kernel does not cover the stride cell,
e.g. kernel 1 with stride 2) gets 0 and passes no gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.autograd.function import once_differentiable

from sparse3d.ops.pool import reference as pref

from ..._backend import HAS_NUMBA
from ...tensor import SparseTensor
from ...utils.args import IntOr3, triple
from ...utils.threads import sync_numba_threads
from .kmap import KernelMap, get_kernel_map

__all__ = ["max_pool3d", "avg_pool3d", "sparse_max_pool", "sparse_avg_pool", "global_max_pool",
           "global_avg_pool", "MaxPoolFunction", "AvgPoolFunction", "POOL_IMPLS"]

POOL_IMPLS = ("numba", "torch")


def _numba_ok(x: torch.Tensor) -> bool:
    return HAS_NUMBA and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


def _np(t: torch.Tensor):
    return t.detach().contiguous().numpy()


def _counts(km: KernelMap) -> torch.Tensor:
    """``[M]`` number of existing neighbours per output row (cached on the map)."""
    if "pool_count" not in km.extras:
        km.extras["pool_count"] = (km.nbmap >= 0).sum(1)
    return km.extras["pool_count"]


def _sum(x: torch.Tensor, km: KernelMap, impl: str) -> torch.Tensor:
    if impl == "numba":
        from sparse3d.ops.pool import numba_cpu
        sync_numba_threads()
        return torch.from_numpy(numba_cpu.sum_pool(_np(x), km.nbmap.numpy()))
    return pref.sum_pool(x, km.in_idx, km.out_idx, km.n_out)


class MaxPoolFunction(torch.autograd.Function):
    """``out [M, C] = max_k feats[nbmap[:, k]]``; saves the argmax ``[M, C]`` for backward."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, km: KernelMap, impl: str) -> torch.Tensor:
        if impl == "numba":
            from sparse3d.ops.pool import numba_cpu
            sync_numba_threads()
            out, arg = numba_cpu.max_pool(_np(feats), km.nbmap.numpy())
            out, arg = torch.from_numpy(out), torch.from_numpy(arg)
        else:
            out, arg = pref.max_pool(feats, km.nbmap)
        ctx.impl, ctx.n_in = impl, feats.shape[0]
        ctx.save_for_backward(arg)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        (arg,) = ctx.saved_tensors
        if ctx.impl == "numba":
            from sparse3d.ops.pool import numba_cpu
            sync_numba_threads()
            gin = torch.from_numpy(numba_cpu.max_pool_backward(_np(grad_out), arg.numpy(), ctx.n_in))
        else:
            gin = pref.max_pool_backward(grad_out.contiguous(), arg, ctx.n_in)
        return gin, None, None


class AvgPoolFunction(torch.autograd.Function):
    """``out [M, C] = sum_k feats[nbmap[:, k]] / count``; backward pools ``grad / count``
    over the transposed map (again output-stationary, no scatter)."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, km: KernelMap, impl: str) -> torch.Tensor:
        ctx.km, ctx.impl = km, impl
        cnt = _counts(km).clamp(min=1).to(feats.dtype).unsqueeze(1)
        return _sum(feats, km, impl) / cnt

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        km = ctx.km
        cnt = _counts(km).clamp(min=1).to(grad_out.dtype).unsqueeze(1)
        return _sum((grad_out / cnt).contiguous(), km.transpose(), ctx.impl), None, None


def _check_pool_args(feats: torch.Tensor, km: KernelMap, impl: Optional[str]) -> str:
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
        raise ValueError(f"feats must be a [N, C] tensor, got {getattr(feats, 'shape', type(feats))}")
    if feats.shape[0] != km.n_in:
        raise ValueError(f"feats have {feats.shape[0]} rows but the kernel map expects {km.n_in}")
    if impl is None:
        return "numba" if _numba_ok(feats) else "torch"
    if impl not in POOL_IMPLS:
        raise ValueError(f"impl must be one of {POOL_IMPLS}, got {impl!r}")
    if impl == "numba" and not _numba_ok(feats):
        raise ValueError(f"impl='numba' needs float32/float64 CPU feats and numba; got {feats.dtype} "
                         f"on {feats.device}")
    return impl


def sparse_max_pool(feats: torch.Tensor, km: KernelMap, impl: Optional[str] = None) -> torch.Tensor:
    """Max over a kernel map: ``[N, C] -> [M, C]`` (autograd-aware).

    ``impl``: ``"numba"`` (CPU float32/64, default there) or ``"torch"`` (any device/dtype).
    """
    impl = _check_pool_args(feats, km, impl)
    return MaxPoolFunction.apply(feats.contiguous(), km, impl)


def sparse_avg_pool(feats: torch.Tensor, km: KernelMap, impl: Optional[str] = None) -> torch.Tensor:
    """Mean over the existing neighbours of a kernel map: ``[N, C] -> [M, C]`` (autograd-aware)."""
    impl = _check_pool_args(feats, km, impl)
    return AvgPoolFunction.apply(feats.contiguous(), km, impl)


def _local_pool(fn, name: str, input: SparseTensor, kernel_size: IntOr3, stride: Optional[IntOr3],
                dilation: IntOr3, impl: Optional[str]) -> SparseTensor:
    if not isinstance(input, SparseTensor):
        raise TypeError(f"{name} expects a SparseTensor input, got {type(input).__name__}")
    ks = triple(kernel_size, "kernel_size")
    st = triple(1 if stride is None else stride, "stride")
    dil = triple(dilation, "dilation")
    km, coords, out_stride = get_kernel_map(input, ks, st, dil)
    feats = fn(input.feats, km, impl)
    return SparseTensor(feats, coords, out_stride, cache=input._caches, check=False)


def max_pool3d(input: SparseTensor, kernel_size: IntOr3, stride: IntOr3 = 1, dilation: IntOr3 = 1,
               impl: Optional[str] = None) -> SparseTensor:
    """Sparse local max pooling (coordinate semantics of ``conv3d``; see module docstring).

    Args:
        input: SparseTensor, feats ``[N, C]`` at tensor stride ``t``.
        kernel_size, stride, dilation: int or (x, y, z).
    Returns:
        SparseTensor, feats ``[M, C]`` (same dtype), stride ``s*t``, sharing ``input``'s cache.
    """
    return _local_pool(sparse_max_pool, "max_pool3d", input, kernel_size, stride, dilation, impl)


def avg_pool3d(input: SparseTensor, kernel_size: IntOr3, stride: IntOr3 = 1, dilation: IntOr3 = 1,
               impl: Optional[str] = None) -> SparseTensor:
    """Sparse local average pooling: mean over the existing neighbours only.

    Same arguments and coordinates as :func:`max_pool3d`.
    """
    return _local_pool(sparse_avg_pool, "avg_pool3d", input, kernel_size, stride, dilation, impl)


def _batch_index(input: SparseTensor, name: str, batch_size: Optional[int]):
    if not isinstance(input, SparseTensor):
        raise TypeError(f"{name} expects a SparseTensor input, got {type(input).__name__}")
    b = input.coords[:, 0].long()
    bs = input.batch_size if batch_size is None else int(batch_size)
    if batch_size is not None and b.numel() and int(b.max()) >= bs:
        raise ValueError(f"batch_size={bs} but coords[:, 0] reaches {int(b.max())}")
    return b, bs


def global_avg_pool(input: SparseTensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Mean of the voxel features of each batch sample.

    Args:
        input: SparseTensor, feats ``[N, C]``; sample = ``coords[:, 0]``.
        batch_size: B (default ``max(coords[:, 0]) + 1``).
    Returns:
        ``[B, C]`` dense tensor; a sample without voxels gives zeros.
    """
    b, bs = _batch_index(input, "global_avg_pool", batch_size)
    x = input.feats
    s = x.new_zeros((bs, x.shape[1])).index_add(0, b, x)
    cnt = torch.bincount(b, minlength=bs).clamp(min=1).to(x.dtype)
    return s / cnt.unsqueeze(1)


def global_max_pool(input: SparseTensor, batch_size: Optional[int] = None) -> torch.Tensor:
    """Channel-wise max of the voxel features of each batch sample: ``[B, C]``.

    A sample without voxels gives zeros; ties share the gradient equally
    (``torch.scatter_reduce`` ``"amax"`` semantics).
    """
    b, bs = _batch_index(input, "global_max_pool", batch_size)
    x = input.feats
    idx = b.unsqueeze(1).expand_as(x)
    return x.new_zeros((bs, x.shape[1])).scatter_reduce(0, idx, x, "amax", include_self=False)
