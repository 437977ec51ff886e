"""Conversion between sparse3d and spconv 2.x (``spconv.pytorch``): tensors, weights, state dicts.

Coordinates. sparse3d keeps ``(b, x, y, z)`` in input-voxel units, multiples of the
tensor stride ``t`` and possibly negative. spconv keeps int32 indices ``(b, i0, i1, i2)``
``>= 0`` in the index space of the current layer (divided by the stride) inside a
``spatial_shape``. The map used here, per spatial axis, is::

    index = (coord - origin) / t          coord = index * t + origin

``origin`` (xyz, input-voxel units, default 0) must be a multiple of ``t``. For the
outputs of a later spconv ``k2 s2`` (``kernel == stride``, no padding) layer to land on
sparse3d's ``floor(c / (s*t)) * (s*t)`` coordinates, ``origin`` must also be a multiple
of every later total stride; :func:`origin_for` picks such an origin.

Axes. By default spconv axis 0/1/2 = x/y/z (``axes="xyz"``). ``axes="zyx"`` matches
code that feeds spconv ``(b, z, y, x)`` indices (OpenPCDet, ``PointToVoxel``).

Weights. spconv 2.x stores ``KRSC = [Cout, k0, k1, k2, Cin]`` (row-major over its
spatial axes, last fastest); sparse3d stores ``[K, Cin, Cout]`` with x fastest,
``k = ix + Kx * (iy + Ky * iz)``. Both are cross-correlations with the same kernel
centre for odd kernels (offset ``(i - K//2) * d``) and offset ``i`` for
``kernel == stride`` downsampling, so submanifold, ``k2 s2`` and inverse convs map
one to one. spconv's padded strided convs (``k3 s2 p1``), kernel-1 strided convs and
generative transposed convs have other output sets and no sparse3d equivalent.
spconv 2.x runs kernel-volume-1 stride-1 convs as ``features @ weight.view(Cin, Cout)``
(a reinterpretation of the KRSC storage, spconv issue #450); the converters reproduce
that by default (``conv1x1``) so converted models compute what spconv computes.

spconv is imported lazily; a clear ``ImportError`` is raised when it is missing.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..tensor import SparseTensor
from ..utils.args import IntOr3, triple

__all__ = [
    "require_spconv", "origin_for", "to_spconv", "from_spconv", "weight_from_spconv", "weight_to_spconv",
    "state_dict_from_spconv", "state_dict_to_spconv", "load_spconv_state_dict", "LAYOUTS",
]

LAYOUTS = ("KRSC", "RSCK", "RSKC")
_DROP = "max_num_voxels_during_training"
KernelSizes = Union[nn.Module, Mapping[str, IntOr3]]


def require_spconv():
    """Import and return ``spconv.pytorch``; raise ``ImportError`` with install hints if absent."""
    try:
        import spconv.pytorch as sp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "sparse3d.interop.spconv needs spconv 2.x: `pip install spconv-cu120` (runs on the CPU with "
            "algo=ConvAlgo.Native) or `pip install spconv` (CPU build)") from e
    return sp


def _axes(axes: str) -> str:
    if axes not in ("xyz", "zyx"):
        raise ValueError(f"axes must be 'xyz' or 'zyx', got {axes!r}")
    return axes


def _perm(axes: str):
    """Column order of spconv's spatial axes in terms of xyz (0=x, 1=y, 2=z)."""
    return [0, 1, 2] if axes == "xyz" else [2, 1, 0]


def origin_for(x: Union[SparseTensor, torch.Tensor], multiple: IntOr3 = 1) -> Tuple[int, int, int]:
    """Largest per-axis origin ``<= min(coords)`` that is a multiple of ``multiple`` (xyz).

    Pass the coarsest total stride of the network (e.g. 8 after three ``s2`` layers)
    so every later downsampling stays aligned with sparse3d's coordinates.
    """
    coords = x.coords if isinstance(x, SparseTensor) else x
    m = triple(multiple, "multiple")
    if coords.shape[0] == 0:
        return (0, 0, 0)
    mn = coords[:, 1:].long().min(0).values.tolist()
    return tuple((v // mi) * mi for v, mi in zip(mn, m))


def to_spconv(x: SparseTensor, spatial_shape: Optional[Sequence[int]] = None, *,
              origin: Optional[Sequence[int]] = None, batch_size: Optional[int] = None,
              shape_multiple: IntOr3 = 1, axes: str = "xyz"):
    """Convert a :class:`SparseTensor` to ``spconv.pytorch.SparseConvTensor``.

    Args:
        x: feats ``[N, C]``, coords ``[N, 4]`` int32 ``(b, x, y, z)`` at tensor stride ``t``.
        spatial_shape: spconv grid shape in index units, in ``axes`` order. Default:
            ``max(index) + 1`` rounded up to a multiple of ``shape_multiple`` (round up to
            the coarsest stride: spconv's ``k2 s2`` drops the last index of an odd extent).
        origin: xyz coordinate of index 0, a multiple of ``t``. Default ``(0, 0, 0)``;
            negative coordinates then raise ``ValueError`` (use :func:`origin_for`).
        batch_size: default ``max(b) + 1`` (at least 1, as spconv requires).
        axes: ``"xyz"`` (indices ``(b, x, y, z)``) or ``"zyx"`` (``(b, z, y, x)``).
    Returns:
        ``SparseConvTensor(features=x.feats, indices [N, 4] int32, spatial_shape, batch_size)``.
    """
    sp = require_spconv()
    if not isinstance(x, SparseTensor):
        raise TypeError(f"to_spconv expects a sparse3d.SparseTensor, got {type(x).__name__}")
    perm = _perm(_axes(axes))
    t = torch.tensor(x.stride, dtype=torch.long, device=x.coords.device)
    org = (0, 0, 0) if origin is None else _triple_any(origin, "origin")
    if any(o % s for o, s in zip(org, x.stride)):
        raise ValueError(f"origin {org} must be a multiple of the tensor stride {x.stride}")
    rel = x.coords[:, 1:].long() - torch.tensor(org, dtype=torch.long, device=x.coords.device)
    if rel.numel() and (rel < 0).any():
        row = int((rel < 0).any(1).nonzero()[0])
        raise ValueError(
            f"spconv indices must be >= 0 but coords row {row} = {x.coords[row].tolist()} lies below origin "
            f"{org}; pass origin=sparse3d.interop.spconv.origin_for(x, multiple) for negative coordinates")
    idx = torch.div(rel, t, rounding_mode="floor")[:, perm]
    mult = [triple(shape_multiple, "shape_multiple")[p] for p in perm]
    need = (idx.max(0).values + 1).tolist() if idx.numel() else [1, 1, 1]
    if spatial_shape is None:
        shape = [-(-n // m) * m for n, m in zip(need, mult)]
    else:
        shape = [int(v) for v in spatial_shape]
        if len(shape) != 3 or any(s < n for s, n in zip(shape, need)):
            raise ValueError(f"spatial_shape {list(spatial_shape)} ({axes}) must have 3 entries covering the "
                             f"indices, which need at least {need}")
    bs = x.batch_size if batch_size is None else int(batch_size)
    bs = max(bs, 1)
    if x.coords.numel() and int(x.coords[:, 0].max()) >= bs:
        raise ValueError(f"batch_size {bs} is smaller than max(batch index) + 1 = {x.batch_size}")
    indices = torch.cat([x.coords[:, :1].long(), idx], 1).to(torch.int32).contiguous()
    return sp.SparseConvTensor(x.feats, indices, shape, bs)


def _triple_any(value: Sequence[int], name: str) -> Tuple[int, int, int]:
    """Like :func:`triple` but allows zero and negative entries (origins)."""
    return triple(value, name, positive=False)


def from_spconv(t, stride: IntOr3 = 1, *, origin: Optional[Sequence[int]] = None,
                axes: str = "xyz") -> SparseTensor:
    """Convert a ``SparseConvTensor`` back to a :class:`SparseTensor`.

    Args:
        t: spconv tensor with ``features [N, C]`` and ``indices [N, 4]`` int32.
        stride: total stride of ``t`` relative to the input voxels (xyz); spconv does not
            track it (e.g. 2 after one ``k2 s2`` conv).
        origin: the ``origin`` given to :func:`to_spconv` (xyz, default 0).
    Returns:
        SparseTensor with coords ``index * stride + origin`` (b first) and stride ``stride``.
    """
    perm = _perm(_axes(axes))
    ind = getattr(t, "indices", None)
    feats = getattr(t, "features", None)
    if not isinstance(ind, torch.Tensor) or not isinstance(feats, torch.Tensor):
        raise TypeError(f"from_spconv expects a spconv SparseConvTensor, got {type(t).__name__}")
    if ind.dim() != 2 or ind.shape[1] != 4:
        raise ValueError(f"indices must be [N, 4] (3D spconv tensor), got {tuple(ind.shape)}")
    st = triple(stride, "stride")
    org = (0, 0, 0) if origin is None else _triple_any(origin, "origin")
    if any(o % s for o, s in zip(org, st)):
        raise ValueError(f"origin {org} must be a multiple of the stride {st}")
    xyz = ind[:, 1:].long()[:, perm]  # perm is its own inverse
    xyz = xyz * torch.tensor(st, device=ind.device) + torch.tensor(org, device=ind.device)
    coords = torch.cat([ind[:, :1].long(), xyz], 1)
    return SparseTensor(feats, coords.to(torch.int32), st)


# ----------------------------------------------------------------------------- weights
def _layout(layout: str) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    return layout


def weight_from_spconv(w: torch.Tensor, *, axes: str = "xyz", layout: str = "KRSC",
                       conv1x1: Optional[bool] = None) -> torch.Tensor:
    """spconv weight ``[Cout, k0, k1, k2, Cin]`` (KRSC; RSCK/RSKC of spconv 1.x also accepted)
    -> sparse3d ``[K, Cin, Cout]`` (x fastest). The kernel size is read from the shape.

    ``conv1x1``: spconv 2.x runs kernel-volume-1 convs with stride 1 (and every such
    submanifold conv) as ``features @ weight.view(Cin, Cout)``, a reinterpretation of the
    KRSC storage rather than its transpose (spconv issue #450). With ``conv1x1`` (default:
    True when the kernel volume is 1 and ``layout == "KRSC"``) that is the matrix returned,
    so converted models compute what spconv computes. Pass ``False`` for a kernel-1 conv
    with stride > 1, which spconv runs with the plain KRSC layout.
    """
    _layout(layout)
    _axes(axes)
    if not isinstance(w, torch.Tensor) or w.dim() != 5:
        raise ValueError(f"spconv 3D weight must be 5-D ({layout}), got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if conv1x1 is None:
        conv1x1 = layout == "KRSC" and w.shape[1] * w.shape[2] * w.shape[3] == 1
    if conv1x1:
        if layout != "KRSC" or w.shape[1] * w.shape[2] * w.shape[3] != 1:
            raise ValueError(f"conv1x1=True needs a KRSC weight with kernel volume 1, got {tuple(w.shape)} {layout}")
        return w.reshape(1, w.shape[4], w.shape[0]).contiguous()
    if layout == "KRSC":
        w = w.permute(1, 2, 3, 4, 0)
    elif layout == "RSKC":
        w = w.permute(0, 1, 2, 4, 3)
    # now RSCK = [k0, k1, k2, Cin, Cout]; we need [kz, ky, kx, Cin, Cout]
    if axes == "xyz":
        w = w.permute(2, 1, 0, 3, 4)
    cin, cout = w.shape[3], w.shape[4]
    return w.reshape(-1, cin, cout).contiguous()


def weight_to_spconv(w: torch.Tensor, kernel_size: IntOr3, *, axes: str = "xyz", layout: str = "KRSC",
                     conv1x1: Optional[bool] = None) -> torch.Tensor:
    """sparse3d ``[K, Cin, Cout]`` -> spconv ``[Cout, k0, k1, k2, Cin]`` (KRSC, or ``layout``).

    ``kernel_size`` is xyz (as in :class:`sparse3d.nn.Conv3d`); ``[Cin, Cout]`` is read as K=1.
    ``conv1x1`` as in :func:`weight_from_spconv` (the inverse storage for spconv's 1x1 path).
    """
    _layout(layout)
    _axes(axes)
    kx, ky, kz = triple(kernel_size, "kernel_size")
    if isinstance(w, torch.Tensor) and w.dim() == 2:
        w = w.unsqueeze(0)
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[0] != kx * ky * kz:
        raise ValueError(f"weight must be [K={kx * ky * kz}, Cin, Cout] for kernel_size {(kx, ky, kz)}, got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    cin, cout = w.shape[1], w.shape[2]
    if conv1x1 is None:
        conv1x1 = layout == "KRSC" and w.shape[0] == 1
    if conv1x1:
        if layout != "KRSC" or w.shape[0] != 1:
            raise ValueError(f"conv1x1=True needs layout KRSC and kernel volume 1, got kernel_size {(kx, ky, kz)}")
        return w.reshape(cout, 1, 1, 1, cin).contiguous()
    w = w.reshape(kz, ky, kx, cin, cout)
    if axes == "xyz":
        w = w.permute(2, 1, 0, 3, 4)  # RSCK in spconv's axis order
    if layout == "KRSC":
        w = w.permute(4, 0, 1, 2, 3)
    elif layout == "RSKC":
        w = w.permute(0, 1, 2, 4, 3)
    return w.contiguous()


# ----------------------------------------------------------------------------- state dicts
def _prefix(p: str) -> str:
    return p if (p == "" or p.endswith(".")) else p + "."


def _sparse3d_convs(model: nn.Module) -> Dict[str, nn.Module]:
    from ..nn import Conv3d
    return {_prefix(n): m for n, m in model.named_modules() if isinstance(m, Conv3d)}


def state_dict_from_spconv(state_dict: Mapping[str, torch.Tensor], convs: Optional[Iterable[str]] = None, *,
                           axes: str = "xyz", layout: str = "KRSC",
                           strided_1x1: Iterable[str] = ()) -> "OrderedDict[str, torch.Tensor]":
    """Convert the sparse-conv weights of a spconv state dict to sparse3d's layout.

    Args:
        convs: module prefixes (``"net.0"``) whose ``weight`` is a spconv conv weight.
            Default: every 5-D floating tensor whose key ends in ``weight`` (so a dense
            ``nn.Conv3d`` in the same model must be excluded by passing ``convs``).
        strided_1x1: prefixes of kernel-volume-1 convs with stride > 1 (they do not take
            spconv's 1x1 fast path; see :func:`weight_from_spconv`).
    Other entries (BatchNorm, biases) are copied; spconv's ``max_num_voxels_during_training``
    buffers are dropped.
    """
    strided = {_prefix(c) + "weight" for c in strided_1x1}
    wanted = None if convs is None else {_prefix(c) + "weight" for c in convs}
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in state_dict.items():
        if k.rsplit(".", 1)[-1] == _DROP:
            continue
        is_conv = (k in wanted) if wanted is not None else (
            k.rsplit(".", 1)[-1] == "weight" and isinstance(v, torch.Tensor) and v.dim() == 5
            and v.is_floating_point())
        if is_conv:
            v = weight_from_spconv(v, axes=axes, layout=layout, conv1x1=False if k in strided else None)
        out[k] = v
    if wanted is not None:
        missing = sorted(wanted - set(state_dict))
        if missing:
            raise ValueError(f"convs names keys missing from the state dict: {missing}")
    return out


def state_dict_to_spconv(state_dict: Mapping[str, torch.Tensor], kernel_sizes: KernelSizes, *,
                         axes: str = "xyz", layout: str = "KRSC") -> "OrderedDict[str, torch.Tensor]":
    """Convert sparse3d conv weights ``[K, Cin, Cout]`` to spconv's layout.

    Args:
        kernel_sizes: a sparse3d model (its :class:`~sparse3d.nn.Conv3d` modules are used, and
            their strides decide spconv's 1x1 storage) or a mapping ``module prefix ->
            kernel_size`` (xyz; kernel-1 entries are stored for spconv's stride-1 1x1 path).
    """
    strided = set()
    if isinstance(kernel_sizes, nn.Module):
        convs = _sparse3d_convs(kernel_sizes)
        ks = {p: m.kernel_size for p, m in convs.items()}
        strided = {p for p, m in convs.items() if tuple(m.stride) != (1, 1, 1)}
    else:
        ks = {_prefix(p): triple(v, f"kernel_sizes[{p!r}]") for p, v in kernel_sizes.items()}
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in state_dict.items():
        p = k[: -len("weight")] if k.endswith("weight") else None
        if p is not None and p in ks:
            v = weight_to_spconv(v, ks[p], axes=axes, layout=layout, conv1x1=False if p in strided else None)
        out[k] = v
    return out


def load_spconv_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True, *,
                           axes: str = "xyz", layout: str = "KRSC"):
    """Load a spconv checkpoint into a sparse3d model whose module names match.

    Every :class:`~sparse3d.nn.Conv3d` of ``model`` takes the spconv weight under the same
    prefix; its kernel size and channels are checked (``ValueError`` naming the key).
    Returns what ``model.load_state_dict`` returns.
    """
    convs = _sparse3d_convs(model)
    sd = OrderedDict((k, v) for k, v in state_dict.items() if k.rsplit(".", 1)[-1] != _DROP)
    for p, m in convs.items():
        key = p + "weight"
        if key not in sd:
            continue
        w = sd[key]
        if not isinstance(w, torch.Tensor) or w.dim() != 5:
            raise ValueError(f"{key}: expected a 5-D spconv weight, got "
                             f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        got = weight_from_spconv(w, axes=axes, layout=layout,
                                 conv1x1=False if tuple(m.stride) != (1, 1, 1) else None)
        expect = tuple(w.shape[1:4]) if layout == "KRSC" else tuple(w.shape[:3])
        ks = tuple(m.kernel_size) if axes == "xyz" else tuple(m.kernel_size[::-1])
        if expect != ks or got.shape[1:] != m.weight.shape[1:]:
            raise ValueError(f"{key}: spconv weight {tuple(w.shape)} ({layout}, {axes}) does not fit "
                             f"{type(m).__name__} kernel_size={m.kernel_size} weight {tuple(m.weight.shape)}")
        sd[key] = got
    return model.load_state_dict(sd, strict=strict)
