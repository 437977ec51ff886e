"""BEV pooling (the LSS "splat"): sum point features into the cells of a BEV grid.

A point with integer cell ``geom = (x, y, z)`` in sample ``b`` adds its features to
``out[b, :, z, x, y]``. The work is split like BEVFusion's CUDA op, but runs on the CPU:

1. **plan** (:class:`BEVPoolPlan`): flat rank ``((b*Z + z)*X + x)*Y + y`` per point ->
   sort (numba: counting sort) -> intervals of equal rank (ordered by their first point). It depends only on the geometry, so when
   calibration and augmentation are fixed it is built once and reused (:class:`BEVPoolCache`).
2. **interval reduction**: each occupied cell is the sum of one contiguous interval of the
   sorted points; backward is a gather (every point receives its cell's gradient).

``impl="numba"`` (CPU float32/float64, the default there) uses ``sparse3d.ops.bev_pool.numba_cpu``;
``impl="torch"`` (any device/dtype) uses ``sparse3d.ops.bev_pool.reference``. Both are deterministic.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch.autograd.function import once_differentiable

from sparse3d.ops.bev_pool import reference as bref

from ..._backend import HAS_NUMBA
from ...utils.threads import sync_numba_threads

__all__ = ["bev_pool", "bev_pool_with_plan", "bev_pool_depth", "BEVPoolPlan", "BEVPoolCache", "BEVPoolFunction",
           "DepthPoolFunction", "BEV_POOL_IMPLS"]

BEV_POOL_IMPLS = ("numba", "torch")
_FLOATS = (torch.float32, torch.float64)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


def _check_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


def _check_int_tensor(name: str, t: Any, shape: Sequence[Optional[int]]) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor (cell indices), got {t.dtype}")
    if t.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, t.shape)):
        want = "[" + ", ".join("M" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name} must have shape {want}, got {list(t.shape)}")


class BEVPoolPlan:
    """Precomputed BEV-pooling geometry: ranks, sort order and intervals for one set of points.

    Attributes (torch tensors on the geometry's device):
        ranks: ``[M]`` int64 flat cell ``((b*Z + z)*X + x)*Y + y`` per point, -1 = skipped.
        order: ``[K]`` int64 kept points grouped by cell (increasing index within a cell).
        starts: ``[I + 1]`` int64 interval boundaries into ``order``; cells: ``[I]`` int64 (distinct).
        Intervals are ordered by their first point index, for memory locality (see
        ``sparse3d.ops.bev_pool.reference.build_intervals``).
        B, X, Y, Z: grid; ``n_points`` = M (rows the features must have).

    Build with :meth:`build`; reuse it with :func:`bev_pool_with_plan` /
    :func:`bev_pool_depth` as long as the geometry is unchanged.
    """

    def __init__(self, ranks: torch.Tensor, order: torch.Tensor, starts: torch.Tensor, cells: torch.Tensor,
                 B: int, X: int, Y: int, Z: int):
        self.ranks, self.order, self.starts, self.cells = ranks, order, starts, cells
        self.B, self.X, self.Y, self.Z = B, X, Y, Z
        self._chunks: Optional[np.ndarray] = None
        self._pix: dict = {}

    @classmethod
    def build(cls, geom: torch.Tensor, batch_idx: torch.Tensor, B: int, X: int, Y: int, Z: int,
              valid: Optional[torch.Tensor] = None, impl: Optional[str] = None) -> "BEVPoolPlan":
        """Plan for ``geom [M, 3]`` int (x, y, z) cells and ``batch_idx [M]`` int samples.

        Without ``valid`` every point must lie in the grid (ValueError otherwise: the caller
        filters); with ``valid [M]`` bool the ``False`` points are skipped (zero gradient), which
        lets the caller keep its features unfiltered (no copy of the kept rows).
        """
        B, X, Y, Z = (_check_int(n, v) for n, v in zip("BXYZ", (B, X, Y, Z)))
        _check_int_tensor("geom", geom, (None, 3))
        _check_int_tensor("batch_idx", batch_idx, (geom.shape[0],))
        if valid is not None:
            if not isinstance(valid, torch.Tensor) or valid.dtype != torch.bool or valid.shape != (geom.shape[0],):
                raise ValueError(f"valid must be a bool tensor of shape [{geom.shape[0]}], got "
                                 f"{getattr(valid, 'dtype', type(valid))} {list(getattr(valid, 'shape', []))}")
        if impl is None:
            impl = "numba" if HAS_NUMBA and geom.device.type == "cpu" else "torch"
        if impl not in BEV_POOL_IMPLS:
            raise ValueError(f"impl must be one of {BEV_POOL_IMPLS}, got {impl!r}")
        if impl == "numba" and (not HAS_NUMBA or geom.device.type != "cpu"):
            raise ValueError(f"impl='numba' needs numba and CPU tensors, got geom on {geom.device}")
        if impl == "numba":
            from sparse3d.ops.bev_pool import numba_cpu
            sync_numba_threads()
            ranks = numba_cpu.compute_ranks(_np(geom), _np(batch_idx), B, X, Y, Z,
                                            None if valid is None else _np(valid))
            order, starts, cells = numba_cpu.build_intervals(ranks, B * Z * X * Y)
            t = torch.from_numpy
            return cls(t(ranks), t(order), t(starts), t(cells), B, X, Y, Z)
        ranks = bref.flat_ranks(geom, batch_idx, B, X, Y, Z, valid)
        order, starts, cells = bref.build_intervals(ranks)
        return cls(ranks, order, starts, cells, B, X, Y, Z)

    @property
    def n_points(self) -> int:
        return int(self.ranks.shape[0])

    @property
    def n_kept(self) -> int:
        return int(self.order.shape[0])

    @property
    def n_intervals(self) -> int:
        return int(self.cells.shape[0])

    @property
    def ncell(self) -> int:
        """Cells per sample, ``Z * X * Y``."""
        return self.Z * self.X * self.Y

    @property
    def device(self) -> torch.device:
        return self.ranks.device

    def chunks(self) -> np.ndarray:
        """Interval boundaries of the load-balanced parallel chunks (numba; cached)."""
        if self._chunks is None:
            from sparse3d.ops.bev_pool import numba_cpu
            n = max(1, min(256, 16 * sync_numba_threads(), self.n_intervals))
            self._chunks = numba_cpu.balance_chunks(self.starts.numpy(), n)
        return self._chunks

    def pixel_index(self, D: int, HW: int) -> np.ndarray:
        """``[K]`` int64 context row of every sorted point for frustum layout ``[BN, D, HW]`` (numba; cached)."""
        key = (int(D), int(HW))
        if key not in self._pix:
            from sparse3d.ops.bev_pool import numba_cpu
            sync_numba_threads()
            self._pix[key] = numba_cpu.pixel_of(self.order.numpy(), D, HW)
        return self._pix[key]

    def to(self, device) -> "BEVPoolPlan":
        d = torch.device(device)
        if d == self.device:
            return self
        return BEVPoolPlan(self.ranks.to(d), self.order.to(d), self.starts.to(d), self.cells.to(d),
                           self.B, self.X, self.Y, self.Z)

    def __repr__(self) -> str:
        return (f"BEVPoolPlan(B={self.B}, X={self.X}, Y={self.Y}, Z={self.Z}, points={self.n_points}, "
                f"kept={self.n_kept}, intervals={self.n_intervals}, device={self.device})")


class BEVPoolCache:
    """Reuses a value (e.g. a :class:`BEVPoolPlan`) while its key tensors are unchanged.

    The key is a tuple of tensors (e.g. camera2lidar, intrinsics, img_aug, lidar_aug matrices)
    compared exactly (``torch.equal``, same shapes/dtypes/devices). Holds ``max_entries``
    (default 1: the last geometry), evicting the oldest.
    """

    def __init__(self, max_entries: int = 1):
        self.max_entries = _check_int("max_entries", max_entries)
        self._entries: list = []
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
        return len(a) == len(b) and all(
            x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y)
            for x, y in zip(a, b))

    def get(self, key: Sequence[torch.Tensor]) -> Optional[Any]:
        for k, v in self._entries:
            if self._same(k, key):
                self.hits += 1
                return v
        self.misses += 1
        return None

    def put(self, key: Sequence[torch.Tensor], value: Any) -> None:
        self._entries.append((tuple(t.detach().clone() for t in key), value))
        del self._entries[:-self.max_entries]

    def clear(self) -> None:
        self._entries.clear()


def _pick_impl(plan: BEVPoolPlan, t: torch.Tensor, impl: Optional[str]) -> str:
    ok = HAS_NUMBA and t.device.type == "cpu" and t.dtype in _FLOATS
    if impl is None:
        return "numba" if ok else "torch"
    if impl not in BEV_POOL_IMPLS:
        raise ValueError(f"impl must be one of {BEV_POOL_IMPLS}, got {impl!r}")
    if impl == "numba" and not ok:
        raise ValueError(f"impl='numba' needs float32/float64 CPU tensors and numba; got {t.dtype} on {t.device}")
    return impl


class BEVPoolFunction(torch.autograd.Function):
    """``feats [M, C] -> [B, C, Z, X, Y]`` over a plan; backward gathers the cell gradients."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, plan: BEVPoolPlan, impl: str) -> torch.Tensor:
        ctx.plan, ctx.impl = plan, impl
        p = plan
        if impl == "numba":
            from sparse3d.ops.bev_pool import numba_cpu
            sync_numba_threads()
            out = torch.from_numpy(numba_cpu.interval_pool(_np(feats), p.order.numpy(), p.starts.numpy(),
                                                           p.cells.numpy(), p.chunks(), p.B, p.ncell))
        else:
            out = bref.interval_pool(feats, p.order, p.starts, p.cells, p.B, p.ncell)
        return out.view(p.B, feats.shape[1], p.Z, p.X, p.Y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        p = ctx.plan
        g = grad.reshape(p.B, grad.shape[1], p.ncell)
        if ctx.impl == "numba":
            from sparse3d.ops.bev_pool import numba_cpu
            sync_numba_threads()
            gin = torch.from_numpy(numba_cpu.interval_pool_backward(_np(g), p.ranks.numpy()))
        else:
            gin = bref.interval_pool_backward(g, p.ranks)
        return gin, None, None


class DepthPoolFunction(torch.autograd.Function):
    """Fused LSS pooling: ``depth [BN, D, HW]``, ``context [BN, HW, C]`` -> ``[B, C, Z, X, Y]``."""

    @staticmethod
    def forward(ctx, depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan, impl: str) -> torch.Tensor:
        ctx.plan, ctx.impl = plan, impl
        p = plan
        if impl == "numba":
            from sparse3d.ops.bev_pool import numba_cpu
            sync_numba_threads()
            d, c = _np(depth), _np(context)
            pix = p.pixel_index(d.shape[1], d.shape[2])
            out = torch.from_numpy(numba_cpu.depth_pool(d, c, p.order.numpy(), pix, p.starts.numpy(),
                                                        p.cells.numpy(), p.chunks(), p.B, p.ncell))
        else:
            out = bref.depth_pool(depth, context, p.order, p.starts, p.cells, p.B, p.ncell)
        ctx.save_for_backward(depth, context)
        return out.view(p.B, context.shape[2], p.Z, p.X, p.Y)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        p = ctx.plan
        nd, nc = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad.reshape(p.B, grad.shape[1], p.ncell)
        if ctx.impl == "numba":
            from sparse3d.ops.bev_pool import numba_cpu
            depth, context = ctx.saved_tensors
            sync_numba_threads()
            gd, gc = numba_cpu.depth_pool_backward(_np(g), p.ranks.numpy(), _np(depth), _np(context), nd, nc)
            return (None if gd is None else torch.from_numpy(gd)), (None if gc is None else torch.from_numpy(gc)), \
                None, None
        depth, context = ctx.saved_tensors
        BN, D, HW = depth.shape
        C = context.shape[2]
        gfeat = bref.interval_pool_backward(g, p.ranks)  # [BN*D*HW, C]
        pix = bref.frustum_pixel_index(BN * D * HW, D, HW, depth.device)
        ctx2 = context.reshape(BN * HW, C)
        gd = (gfeat * ctx2.index_select(0, pix)).sum(1).view(BN, D, HW) if nd else None
        gc = (ctx2.new_zeros(ctx2.shape).index_add_(0, pix, gfeat * depth.reshape(-1, 1)).view(BN, HW, C)
              if nc else None)
        return gd, gc, None, None


def _check_feats(name: str, t: Any, dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {list(t.shape)}")


def bev_pool_with_plan(feats: torch.Tensor, plan: BEVPoolPlan, impl: Optional[str] = None) -> torch.Tensor:
    """Pool ``feats [M, C]`` (row i = point i of the plan) into ``[B, C, Z, X, Y]`` (autograd-aware)."""
    if not isinstance(plan, BEVPoolPlan):
        raise TypeError(f"plan must be a BEVPoolPlan, got {type(plan).__name__}")
    _check_feats("feats", feats, 2)
    if feats.shape[0] != plan.n_points:
        raise ValueError(f"feats has {feats.shape[0]} rows but the plan was built for {plan.n_points} points")
    if feats.device != plan.device:
        raise ValueError(f"feats is on {feats.device} but the plan is on {plan.device}; use plan.to(device)")
    impl = _pick_impl(plan, feats, impl)
    return BEVPoolFunction.apply(feats.contiguous(), plan, impl)


def bev_pool(feats: torch.Tensor, geom: torch.Tensor, batch_idx: torch.Tensor, B: int, X: int, Y: int, Z: int,
             impl: Optional[str] = None) -> torch.Tensor:
    """Sum point features into BEV cells.

    Args:
        feats: ``[M, C]`` float32/float64 (any float on the torch path).
        geom: ``[M, 3]`` int32/int64 (x, y, z) cell indices, already filtered to the grid
            (``0 <= x < X`` etc.; ValueError otherwise).
        batch_idx: ``[M]`` int sample index in ``[0, B)``.
        B, X, Y, Z: batch size and grid size.
        impl: ``"numba"`` (CPU float32/64, default there) or ``"torch"`` (any device).
    Returns:
        ``[B, C, Z, X, Y]`` with ``out[b, :, z, x, y] = sum of feats of the points in that cell``
        (collapse Z into channels with ``out.flatten(1, 2)``). The plan is built on every call;
        build a :class:`BEVPoolPlan` once and use :func:`bev_pool_with_plan` to reuse it.
    """
    _check_feats("feats", feats, 2)
    _check_int_tensor("geom", geom, (feats.shape[0], 3))
    plan_impl = None if impl is None else ("numba" if impl == "numba" else "torch")
    if plan_impl == "numba" and feats.dtype not in _FLOATS:
        raise ValueError(f"impl='numba' needs float32/float64 feats, got {feats.dtype}")
    plan = BEVPoolPlan.build(geom, batch_idx, B, X, Y, Z, impl=plan_impl)
    return bev_pool_with_plan(feats, plan, impl)


def bev_pool_depth(depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan,
                   impl: Optional[str] = None) -> torch.Tensor:
    """Fused LSS pooling without building the ``[BN*D*HW, C]`` outer product (cf. BEVPoolv2).

    Args:
        depth: ``[BN, D, HW]`` float depth probabilities; frustum point ``p`` is its flat index
            (the plan must be built over these ``BN*D*HW`` points, in this order).
        context: ``[BN, HW, C]`` float context features (same dtype/device as ``depth``).
        plan: :class:`BEVPoolPlan` over the frustum points.
    Returns:
        ``[B, C, Z, X, Y]`` equal to ``bev_pool_with_plan(depth[..., None] * context[:, None], plan)``
        (feats row ``p`` = ``depth[bn, d, hw] * context[bn, hw]``); autograd-aware in both inputs.
    """
    if not isinstance(plan, BEVPoolPlan):
        raise TypeError(f"plan must be a BEVPoolPlan, got {type(plan).__name__}")
    _check_feats("depth", depth, 3)
    _check_feats("context", context, 3)
    BN, D, HW = depth.shape
    if context.shape[0] != BN or context.shape[1] != HW:
        raise ValueError(f"context must be [BN={BN}, HW={HW}, C], got {list(context.shape)}")
    if context.dtype != depth.dtype or context.device != depth.device:
        raise ValueError(f"depth and context must share dtype/device, got {depth.dtype}/{depth.device} and "
                         f"{context.dtype}/{context.device}")
    if depth.numel() != plan.n_points:
        raise ValueError(f"depth has {depth.numel()} frustum points but the plan was built for {plan.n_points}")
    if depth.device != plan.device:
        raise ValueError(f"depth is on {depth.device} but the plan is on {plan.device}; use plan.to(device)")
    impl = _pick_impl(plan, depth, impl)
    return DepthPoolFunction.apply(depth.contiguous(), context.contiguous(), plan, impl)
