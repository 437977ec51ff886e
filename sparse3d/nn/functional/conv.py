"""Sparse 3D convolution: autograd Function, dataflows and the dataflow heuristic.

Dataflows (all exact up to float rounding, all with the same backward semantics):

``"gather_gemm_scatter"``
    Offsets are grouped adaptively (TorchSparse MLSys'22): sorted by pair count,
    a group grows while its padding overhead ``(G*max - sum)/sum`` stays <= ``eps``;
    each group is one ``bmm`` (one ``mm`` for singletons). The submanifold centre
    offset is a plain ``mm`` with no gather. On the CPU (float32/64) the gather is a
    parallel numba kernel into a padded, reused workspace and the scatter is an
    output-stationary numba reduction (deterministic, no atomics); elsewhere
    (CUDA, half/bfloat16) it is ``index_select`` / ``bmm`` / ``index_add_``.
``"fused"``  (numba, CPU, float32/float64)
    Output-stationary: each output row accumulates its neighbours directly from
    ``nbmap``; no gathered matrix is materialized and no scatter races exist.

Heuristic (:func:`choose_dataflow`), from measurements on the real scan (94k voxels,
subm 3x3x3, 2 threads, median of 7): gather-GEMM-scatter beat the fused kernel at every
width (Cin->Cout 4->32: 11.3 vs 13.6 ms; 16->16: 10.7 vs 15.7; 32->32: 17.1 vs 27.0;
64->64: 42 vs 60; 128->128: 125 vs 264), because BLAS reaches 2-3x the FLOP rate of the
numba inner loop and the numba gather/scatter are cheap. So on the CPU:
``fused`` for tiny layers (fewer than ``2**21`` multiply-adds: no workspace, no torch
call overhead) and when the gathered workspace would exceed ``FUSED_WORKSPACE_BYTES``
(the fused kernel never materializes it); ``gather_gemm_scatter`` otherwise and on
other devices/dtypes. ``set_autotune(True)`` instead times both once per (kernel map,
Cin, Cout, dtype) and keeps the faster; deterministic mode disables autotuning.
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Sequence

import torch

from sparse3d.ops.conv import reference as cref

from ..._backend import HAS_NUMBA, is_deterministic
from ...tensor import SparseTensor
from ...utils.args import IntOr3, triple
from ...utils.threads import sync_numba_threads
from .kmap import KernelMap, get_kernel_map, get_transposed_kernel_map

__all__ = ["conv3d", "sparse_conv", "Conv3dFunction", "choose_dataflow", "set_autotune", "DATAFLOWS",
           "FUSED_WORKSPACE_BYTES"]

DATAFLOWS = ("gather_gemm_scatter", "fused")
FUSED_WORKSPACE_BYTES = 1 << 30
FUSED_MAX_MACS = 1 << 21
GROUP_EPS = 0.3
_AUTOTUNE = False
_TUNED: Dict[tuple, str] = {}


def set_autotune(flag: bool = True) -> None:
    """Time both dataflows once per layer shape and keep the faster one."""
    global _AUTOTUNE
    _AUTOTUNE = bool(flag)
    _TUNED.clear()


def _numba_ok(x: torch.Tensor) -> bool:
    return HAS_NUMBA and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)


_HALF = (torch.bfloat16, torch.float16)


def _numba_gather_ok(x: torch.Tensor) -> bool:
    """The numba gather/scatter also serve 16-bit floats (moved as int16 bits, summed in fp32)."""
    return HAS_NUMBA and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64, *_HALF)


def _bits(t: torch.Tensor):
    """numpy view for numba: 16-bit floats as their int16 bit patterns (numba has no bf16)."""
    return t.view(torch.int16).numpy() if t.dtype in _HALF else t.numpy()


def choose_dataflow(km: KernelMap, cin: int, cout: int, x: torch.Tensor) -> str:
    """Pick a dataflow for one layer (see module docstring)."""
    if not _numba_ok(x):
        return "gather_gemm_scatter"
    if _AUTOTUNE and not is_deterministic():
        key = (id(km), cin, cout, x.dtype)
        if key not in _TUNED:
            w = torch.randn(km.kernel_volume, cin, cout, dtype=x.dtype)
            xs = torch.randn(km.n_in, cin, dtype=x.dtype)
            best = None
            for df in DATAFLOWS:
                _forward(xs, w, km, df)  # warm-up (numba compile, caches)
                t0 = time.perf_counter()
                _forward(xs, w, km, df)
                dt = time.perf_counter() - t0
                if best is None or dt < best[0]:
                    best = (dt, df)
            _TUNED[key] = best[1]
        return _TUNED[key]
    key = ("dataflow", cin, cout, x.element_size())
    df = km.extras.get(key)
    if df is None:
        macs = km.num_pairs * cin * cout
        workspace = km.num_pairs * (cin + cout) * x.element_size()
        df = "fused" if macs < FUSED_MAX_MACS or workspace > FUSED_WORKSPACE_BYTES else "gather_gemm_scatter"
        km.extras[key] = df
    return df


# ----------------------------------------------------------------------------- grouping
def _plan_groups(sizes: Sequence[int], center: int, eps: float = GROUP_EPS) -> List[List[int]]:
    order = sorted((k for k, n in enumerate(sizes) if n and k != center), key=lambda k: -sizes[k])
    groups, cur, tot = [], [], 0
    for k in order:
        n = sizes[k]
        if cur:
            mx = sizes[cur[0]]
            if (mx * (len(cur) + 1) - (tot + n)) > eps * (tot + n):
                groups.append(cur)
                cur, tot = [], 0
        cur.append(k)
        tot += n
    if cur:
        groups.append(cur)
    return groups


def _group_index(km: KernelMap, eps: float = GROUP_EPS):
    """Padded ``[G, n]`` index pairs per group (pads: input row 0, output dump row ``n_out``)."""
    key = ("groups", eps)
    if key not in km.extras:
        plan = []
        dev = km.in_idx.device
        for ks in _plan_groups(km.sizes, km.center, eps):
            n = km.sizes[ks[0]]
            if len(ks) == 1:
                i, o = km.pairs(ks[0])
                plan.append((ks, i, o, None))
                continue
            ii = torch.zeros((len(ks), n), dtype=torch.long, device=dev)
            oo = torch.full((len(ks), n), km.n_out, dtype=torch.long, device=dev)
            for g, k in enumerate(ks):
                i, o = km.pairs(k)
                ii[g, : i.numel()] = i
                oo[g, : o.numel()] = o
            plan.append((ks, ii.view(-1), oo.view(-1), n))
        km.extras[key] = plan
    return km.extras[key]


def _ggs_forward(x: torch.Tensor, w: torch.Tensor, km: KernelMap) -> torch.Tensor:
    cout = w.shape[2]
    out = x.new_empty((km.n_out + 1, cout))
    if km.center >= 0 and km.sizes[km.center] == km.n_out == km.n_in:
        torch.mm(x, w[km.center], out=out[: km.n_out])
        out[km.n_out].zero_()
    else:
        out.zero_()
        if km.center >= 0:
            i, o = km.pairs(km.center)
            out.index_add_(0, o, x.index_select(0, i) @ w[km.center])
    for ks, ii, oo, n in _group_index(km):
        if n is None:
            out.index_add_(0, oo, x.index_select(0, ii) @ w[ks[0]])
        else:
            xg = x.index_select(0, ii).view(len(ks), n, -1)
            yg = torch.bmm(xg, w[ks])
            out.index_add_(0, oo, yg.view(-1, cout))
    return out[: km.n_out]


_WORKSPACE = threading.local()   # per thread: convs may run concurrently (sparse3d.utils.threads.concurrent_map)


def _workspace(slot: str, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
    """A reusable ``[rows, cols]`` scratch buffer (avoids page-faulting fresh 10-100 MB blocks per call).

    Only used for gathered/product matrices that die within one kernel call. One set of buffers per
    thread, so convolutions running side by side in several threads never share one.
    """
    bufs = getattr(_WORKSPACE, "bufs", None)
    if bufs is None:
        bufs = _WORKSPACE.bufs = {}
    key = (slot, dtype)
    buf = bufs.get(key)
    n = rows * cols
    if buf is None or buf.numel() < n:
        buf = torch.empty(max(n, 1 << 16), dtype=dtype)
        bufs[key] = buf
    return buf[:n].view(rows, cols)


def _numba_plan(km: KernelMap, eps: float = GROUP_EPS):
    """Padded row plan for the numba-assisted gather-GEMM-scatter (cached on the map and its transpose)."""
    key = ("nplan", eps)
    if key in km.extras:
        return km.extras[key]
    t = km._t
    if t is not None and key in t.extras:
        groups, ns, row0, gin, gout, pos, posT = t.extras[key]
        plan = (groups, ns, row0, gout, gin, posT, pos)
    else:
        from sparse3d.ops.conv.numba_cpu import plan_rows
        groups = _plan_groups(km.sizes, km.center, eps)
        ns = [max(km.sizes[k] for k in ks) for ks in groups]
        gin, gout, pos, posT, row0 = plan_rows(km.in_idx.numpy(), km.out_idx.numpy(), km.sizes, groups,
                                               km.n_in, km.n_out)
        plan = (groups, ns, row0, gin, gout, pos, posT)
    km.extras[key] = plan
    return plan


def _grouped_mm(G: torch.Tensor, w: torch.Tensor, groups, ns, row0, Y: torch.Tensor) -> None:
    """``Y[rows of group] = G[rows of group] @ w[k]`` per offset, one bmm per group."""
    for ks, n, r0 in zip(groups, ns, row0):
        g = len(ks)
        if g == 1:
            torch.mm(G[r0:r0 + n], w[ks[0]], out=Y[r0:r0 + n])
        else:
            torch.bmm(G[r0:r0 + g * n].view(g, n, -1), w[ks], out=Y[r0:r0 + g * n].view(g, n, -1))


def _numba_ggs_forward(x: torch.Tensor, w: torch.Tensor, km: KernelMap) -> torch.Tensor:
    from sparse3d.ops.conv.numba_cpu import gather_rows, scatter_rows
    groups, ns, row0, gin, gout, pos, posT = _numba_plan(km)
    sync_numba_threads()
    R = gin.shape[0]
    G = _workspace("gather", R, x.shape[1], x.dtype)
    gather_rows(_bits(x), gin, _bits(G))
    Y = _workspace("product", R, w.shape[2], x.dtype)
    _grouped_mm(G, w, groups, ns, row0, Y)
    center = km.center >= 0 and km.sizes[km.center] == km.n_out == km.n_in
    if x.dtype in _HALF:  # sum the offsets in fp32, round once
        Yf = _workspace("product_f32", R, w.shape[2], torch.float32)
        Yf.copy_(Y)
        out = (x @ w[km.center]).float() if center else torch.empty((km.n_out, w.shape[2]))
        scatter_rows(Yf.numpy(), pos, out.numpy(), center)
        return out.to(x.dtype)
    out = x @ w[km.center] if center else torch.empty((km.n_out, w.shape[2]), dtype=x.dtype)
    scatter_rows(Y.numpy(), pos, out.numpy(), center)
    return out


def _numba_weight_grad(x: torch.Tensor, g: torch.Tensor, km: KernelMap) -> torch.Tensor:
    from sparse3d.ops.conv.numba_cpu import gather_rows
    groups, ns, row0, gin, gout, pos, posT = _numba_plan(km)
    sync_numba_threads()
    dw = x.new_zeros((km.kernel_volume, x.shape[1], g.shape[1]))
    if km.center >= 0 and km.sizes[km.center] == km.n_out == km.n_in:
        dw[km.center] = x.t() @ g
    R = gin.shape[0]
    Gi = _workspace("gather", R, x.shape[1], x.dtype)
    Go = _workspace("product", R, g.shape[1], x.dtype)
    gather_rows(_bits(x), gin, _bits(Gi))
    gather_rows(_bits(g), gout, _bits(Go))
    for ks, n, r0 in zip(groups, ns, row0):
        m = len(ks)
        dw[ks] = torch.bmm(Gi[r0:r0 + m * n].view(m, n, -1).transpose(1, 2), Go[r0:r0 + m * n].view(m, n, -1))
    return dw


def _numba_ggs_backward(x: torch.Tensor, w: torch.Tensor, g: torch.Tensor, km: KernelMap):
    """Input and weight gradients sharing one gather of ``grad_out`` (3 gathers instead of 4).

    ``Go = g[gout]`` feeds both ``dX = scatter_T(Go @ w[k]^T)`` and ``dW[k] = x[gin]^T @ Go``.
    """
    from sparse3d.ops.conv.numba_cpu import gather_rows, scatter_rows
    groups, ns, row0, gin, gout, pos, posT = _numba_plan(km)
    sync_numba_threads()
    R = gin.shape[0]
    cin, cout = x.shape[1], g.shape[1]
    wt = w.transpose(1, 2).contiguous()
    Go = _workspace("grad_gather", R, cout, x.dtype)
    gather_rows(_bits(g), gout, _bits(Go))
    # weight gradient
    dw = x.new_zeros((km.kernel_volume, cin, cout))
    center = km.center >= 0 and km.sizes[km.center] == km.n_out == km.n_in
    if center:
        dw[km.center] = x.t() @ g
    Gi = _workspace("gather", R, cin, x.dtype)
    gather_rows(_bits(x), gin, _bits(Gi))
    for ks, n, r0 in zip(groups, ns, row0):
        m = len(ks)
        dw[ks] = torch.bmm(Gi[r0:r0 + m * n].view(m, n, -1).transpose(1, 2), Go[r0:r0 + m * n].view(m, n, -1))
    # input gradient
    Y = _workspace("product", R, cin, x.dtype)
    _grouped_mm(Go, wt, groups, ns, row0, Y)
    if x.dtype in _HALF:
        Yf = _workspace("product_f32", R, cin, torch.float32)
        Yf.copy_(Y)
        gx = (g @ wt[km.center]).float() if center else torch.empty((km.n_in, cin))
        scatter_rows(Yf.numpy(), posT, gx.numpy(), center)
        return gx.to(x.dtype), dw
    gx = g @ wt[km.center] if center else torch.empty((km.n_in, cin), dtype=x.dtype)
    scatter_rows(Y.numpy(), posT, gx.numpy(), center)
    return gx, dw


def _fused_forward(x: torch.Tensor, w: torch.Tensor, km: KernelMap) -> torch.Tensor:
    from sparse3d.ops.conv.numba_cpu import fused_conv
    sync_numba_threads()
    out = fused_conv(x.detach().contiguous().numpy(), w.detach().contiguous().numpy(), km.nbmap.numpy())
    return torch.from_numpy(out)


def _forward(x: torch.Tensor, w: torch.Tensor, km: KernelMap, dataflow: str) -> torch.Tensor:
    if km.n_out == 0 or x.shape[0] == 0:
        return x.new_zeros((km.n_out, w.shape[2]))
    if dataflow == "fused":
        return _fused_forward(x, w, km)
    if dataflow == "gather_gemm_scatter":
        if _numba_gather_ok(x) and w.dtype == x.dtype:
            return _numba_ggs_forward(x, w.contiguous(), km)
        return _ggs_forward(x, w, km)
    if dataflow == "reference":
        return cref.conv_pairs(x, w, km.in_idx, km.out_idx, km.sizes, km.n_out)
    raise ValueError(f"unknown dataflow {dataflow!r}; choose from {DATAFLOWS + ('reference',)}")


def _weight_grad(x: torch.Tensor, g: torch.Tensor, km: KernelMap) -> torch.Tensor:
    if _numba_gather_ok(x) and g.dtype == x.dtype and km.num_pairs:
        return _numba_weight_grad(x.contiguous(), g.contiguous(), km)
    K = km.kernel_volume
    dw = x.new_zeros((K, x.shape[1], g.shape[1]))
    if km.num_pairs == 0:
        return dw
    if km.center >= 0 and km.sizes[km.center] == km.n_out == km.n_in:
        dw[km.center] = x.t() @ g
    elif km.center >= 0:
        i, o = km.pairs(km.center)
        dw[km.center] = x.index_select(0, i).t() @ g.index_select(0, o)
    gpad = None
    for ks, ii, oo, n in _group_index(km):
        if n is None:
            dw[ks[0]] = x.index_select(0, ii).t() @ g.index_select(0, oo)
        else:
            if gpad is None:
                gpad = torch.cat([g, g.new_zeros((1, g.shape[1]))])
            xg = x.index_select(0, ii).view(len(ks), n, -1)
            gg = gpad.index_select(0, oo).view(len(ks), n, -1)
            dw[ks] = torch.bmm(xg.transpose(1, 2), gg)
    return dw


class Conv3dFunction(torch.autograd.Function):
    """``out [M, Cout] = sparse_conv(feats [N, Cin], weight [K, Cin, Cout], kmap)``."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, km: KernelMap, dataflow: str) -> torch.Tensor:
        ctx.km, ctx.dataflow = km, dataflow
        ctx.save_for_backward(feats, weight)
        return _forward(feats, weight, km, dataflow)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        km, dataflow = ctx.km, ctx.dataflow
        grad_out = grad_out.contiguous()
        gx = gw = None
        if (dataflow == "gather_gemm_scatter" and ctx.needs_input_grad[0] and ctx.needs_input_grad[1]
                and _numba_gather_ok(feats) and grad_out.dtype == feats.dtype == weight.dtype and km.num_pairs):
            gx, gw = _numba_ggs_backward(feats, weight, grad_out, km)
            return gx, gw, None, None
        if ctx.needs_input_grad[0]:
            gx = _forward(grad_out, weight.transpose(1, 2).contiguous(), km.transpose(), dataflow)
        if ctx.needs_input_grad[1]:
            gw = _weight_grad(feats, grad_out, km)
        return gx, gw, None, None


def sparse_conv(feats: torch.Tensor, weight: torch.Tensor, km: KernelMap,
                dataflow: Optional[str] = None) -> torch.Tensor:
    """Apply a kernel map: ``[N, Cin] x [K, Cin, Cout] -> [M, Cout]`` (autograd-aware)."""
    if weight.dim() != 3 or weight.shape[0] != km.kernel_volume:
        raise ValueError(f"weight must be [K={km.kernel_volume}, Cin, Cout], got {tuple(weight.shape)}")
    if feats.shape[1] != weight.shape[1]:
        raise ValueError(f"feats have {feats.shape[1]} channels but weight expects Cin={weight.shape[1]}")
    if feats.shape[0] != km.n_in:
        raise ValueError(f"feats have {feats.shape[0]} rows but the kernel map expects {km.n_in}")
    dev = feats.device.type
    if torch.is_autocast_enabled(dev):
        # autocast: run the conv in the autocast dtype (as torch does for mm/conv) with
        # autocast off inside, so gathers, GEMMs and scatters all see one dtype
        dtype = torch.get_autocast_dtype(dev)
        with torch.autocast(dev, enabled=False):
            return sparse_conv(feats.to(dtype), weight.to(dtype), km, dataflow)
    if weight.dtype != feats.dtype:
        weight = weight.to(feats.dtype)
    feats = feats.contiguous()
    if dataflow is None:
        dataflow = choose_dataflow(km, weight.shape[1], weight.shape[2], feats)
    elif dataflow == "fused" and not _numba_ok(feats):
        dataflow = "gather_gemm_scatter"
    if not (torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad)):
        return _forward(feats, weight, km, dataflow)   # inference: no autograd node (~20 us a layer)
    return Conv3dFunction.apply(feats, weight, km, dataflow)


def conv3d(input: SparseTensor, weight: torch.Tensor, kernel_size: IntOr3 = 3, bias: Optional[torch.Tensor] = None,
           stride: IntOr3 = 1, dilation: IntOr3 = 1, transposed: bool = False,
           dataflow: Optional[str] = None) -> SparseTensor:
    """Sparse 3D convolution (MinkowskiEngine / TorchSparse<=2.0 coordinate semantics).

    Args:
        input: SparseTensor with feats ``[N, Cin]`` at tensor stride ``t``.
        weight: ``[K, Cin, Cout]``, K = prod(kernel_size), offsets ordered x fastest
            (see :func:`sparse3d.ops.kmap.kernel_offsets`).
        stride: 1 = submanifold (output coords = input coords); s > 1 downsamples to
            ``floor(c / (s*t)) * (s*t)``; with ``transposed`` it upsamples back to the
            cached coords at stride ``t / s``.
    Returns:
        SparseTensor with feats ``[M, Cout]`` sharing ``input``'s cache.
    """
    if not isinstance(input, SparseTensor):
        raise TypeError(f"conv3d expects a SparseTensor, got {type(input).__name__}")
    ks, st, dil = triple(kernel_size, "kernel_size"), triple(stride, "stride"), triple(dilation, "dilation")
    if ks == (1, 1, 1) and st == (1, 1, 1):
        # pointwise: a plain GEMM on the same coordinates, no kernel map needed
        if weight.dim() != 3 or weight.shape[0] != 1:
            raise ValueError(f"weight must be [1, Cin, Cout] for kernel_size 1, got {tuple(weight.shape)}")
        if input.feats.shape[1] != weight.shape[1]:
            raise ValueError(f"feats have {input.feats.shape[1]} channels but weight expects Cin={weight.shape[1]}")
        feats = input.feats @ weight[0].to(input.feats.dtype)
        if bias is not None:
            feats = feats + bias.to(feats.dtype)
        return input.replace(feats)
    if transposed and st != (1, 1, 1):
        km, coords, out_stride = get_transposed_kernel_map(input, ks, st, dil)
    else:
        km, coords, out_stride = get_kernel_map(input, ks, st, dil)
        if transposed:
            km = km.transpose()
    feats = sparse_conv(input.feats, weight, km, dataflow)
    if bias is not None:
        feats = feats + bias.to(feats.dtype)
    return SparseTensor(feats, coords, out_stride, cache=input._caches, check=False)
