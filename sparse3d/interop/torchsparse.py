"""Conversion of TorchSparse conv weights and state dicts to sparse3d and back.

TorchSparse (v2.1, also v2.0 and v1.4; see ``torchsparse/nn/utils/kernel.py``) stores a
conv kernel as ``kernel [K, Cin, Cout]``, or ``[Cin, Cout]`` when ``K == 1`` (v2.1: only
for stride 1; v2.0/v1.4: for every ``K == 1``). Its offset order depends on the kernel
volume:

* odd volume (every axis odd): x fastest, ``k = ix + Kx * (iy + Ky * iz)``, the same as
  sparse3d, offsets ``(i - K//2) * d * t``: the weight is used as is;
* even volume (some axis even): **z fastest**, ``k = iz + Kz * (iy + Ky * ix)``, so the
  K axis is reordered. Per axis TorchSparse uses offsets ``arange(-K//2 + 1, K//2 + 1)``,
  which equals sparse3d's ``i`` (MinkowskiEngine) for K = 1, 2 and every odd K, but not for
  even K >= 4 (``-1..2`` vs ``0..3``): such kernels raise ``ValueError``.

The same offset ``k`` is used by transposed convs in both libraries, so transposed
weights convert the same way. TorchSparse's *downsampling coordinates* can differ from
sparse3d's (v2.1's default ``downsample_mode="spconv"`` for ``k3 s2``), which a weight
conversion cannot change; ``k2 s2`` and submanifold layers match. Modules are assumed
to be named alike in both models, with TorchSparse's parameter ``kernel`` becoming
sparse3d's ``weight``; BatchNorm entries are copied unchanged.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, NamedTuple, Optional, Tuple, Union

import torch
from torch import nn

from ..utils.args import IntOr3, triple

__all__ = [
    "ConvSpec", "conv_specs", "weight_from_torchsparse", "weight_to_torchsparse",
    "state_dict_from_torchsparse", "state_dict_to_torchsparse", "load_torchsparse_state_dict",
]


class ConvSpec(NamedTuple):
    """What a weight conversion needs to know about one conv layer (xyz tuples)."""
    kernel_size: Tuple[int, int, int]
    stride: Tuple[int, int, int] = (1, 1, 1)


Specs = Union[nn.Module, Mapping[str, Union[IntOr3, ConvSpec]]]


def _check_ts_offsets(ks: Tuple[int, int, int]) -> None:
    if any(k % 2 == 0 and k >= 4 for k in ks):
        raise ValueError(
            f"kernel_size {ks}: TorchSparse centres even kernels of size >= 4 at arange(-K//2+1, K//2+1) while "
            "sparse3d uses 0..K-1; there is no equivalent sparse3d kernel")


def weight_from_torchsparse(w: torch.Tensor, kernel_size: IntOr3) -> torch.Tensor:
    """TorchSparse ``kernel [K, Cin, Cout]`` or ``[Cin, Cout]`` -> sparse3d ``[K, Cin, Cout]``.

    Args:
        kernel_size: xyz kernel size of the layer (only needed to reorder even-volume kernels).
    """
    ks = triple(kernel_size, "kernel_size")
    kx, ky, kz = ks
    K = kx * ky * kz
    if not isinstance(w, torch.Tensor) or w.dim() not in (2, 3):
        raise ValueError("torchsparse kernel must be [K, Cin, Cout] or [Cin, Cout], got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    if w.dim() == 2:
        if K != 1:
            raise ValueError(f"a [Cin, Cout] torchsparse kernel means kernel_size 1, got kernel_size {ks}")
        return w.unsqueeze(0).contiguous()
    if w.shape[0] != K:
        raise ValueError(f"kernel has {w.shape[0]} offsets but kernel_size {ks} has {K}")
    _check_ts_offsets(ks)
    if K % 2 == 1:
        return w.contiguous()
    cin, cout = w.shape[1], w.shape[2]
    return w.reshape(kx, ky, kz, cin, cout).permute(2, 1, 0, 3, 4).reshape(K, cin, cout).contiguous()


def weight_to_torchsparse(w: torch.Tensor, kernel_size: IntOr3, stride: IntOr3 = 1) -> torch.Tensor:
    """sparse3d ``[K, Cin, Cout]`` -> TorchSparse v2.1 ``kernel`` (``[Cin, Cout]`` for K=1, stride 1).

    For v2.0/v1.4 checkpoints, where every ``K == 1`` kernel is 2-D, pass ``stride=1``.
    """
    ks = triple(kernel_size, "kernel_size")
    st = triple(stride, "stride")
    kx, ky, kz = ks
    K = kx * ky * kz
    if not isinstance(w, torch.Tensor) or w.dim() != 3 or w.shape[0] != K:
        raise ValueError(f"weight must be [K={K}, Cin, Cout] for kernel_size {ks}, got "
                         f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
    _check_ts_offsets(ks)
    if K == 1:
        return (w[0] if st == (1, 1, 1) else w).contiguous()
    if K % 2 == 1:
        return w.contiguous()
    cin, cout = w.shape[1], w.shape[2]
    return w.reshape(kz, ky, kx, cin, cout).permute(2, 1, 0, 3, 4).reshape(K, cin, cout).contiguous()


def _prefix(p: str) -> str:
    return p if (p == "" or p.endswith(".")) else p + "."


def conv_specs(model: nn.Module) -> Dict[str, ConvSpec]:
    """``{module prefix (with trailing dot): ConvSpec}`` for every sparse3d ``Conv3d`` in ``model``."""
    from ..nn import Conv3d
    return {_prefix(n): ConvSpec(tuple(m.kernel_size), tuple(m.stride))
            for n, m in model.named_modules() if isinstance(m, Conv3d)}


def _specs(specs: Optional[Specs]) -> Dict[str, ConvSpec]:
    if specs is None:
        return {}
    if isinstance(specs, nn.Module):
        return conv_specs(specs)
    out = {}
    for p, v in specs.items():
        if isinstance(v, ConvSpec):
            out[_prefix(p)] = ConvSpec(triple(v.kernel_size, f"{p}.kernel_size"), triple(v.stride, f"{p}.stride"))
        else:
            out[_prefix(p)] = ConvSpec(triple(v, f"kernel_sizes[{p!r}]"))
    return out


def state_dict_from_torchsparse(state_dict: Mapping[str, torch.Tensor],
                                specs: Optional[Specs] = None) -> "OrderedDict[str, torch.Tensor]":
    """Rename every ``<prefix>kernel`` to ``<prefix>weight`` and convert it to ``[K, Cin, Cout]``.

    Args:
        specs: a sparse3d model, or ``{prefix: kernel_size or ConvSpec}``. Only needed for
            even kernel volumes (odd volumes keep their order; a 2-D kernel means K = 1);
            a missing even-volume entry raises ``ValueError`` naming the key.
    """
    sp = _specs(specs)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in state_dict.items():
        head, _, name = k.rpartition(".")
        if name != "kernel":
            out[k] = v
            continue
        p = head + "." if head else ""
        if p in sp:
            ks = sp[p].kernel_size
        elif v.dim() == 2:
            ks = (1, 1, 1)
        elif v.dim() == 3 and v.shape[0] % 2 == 1:
            ks = (v.shape[0], 1, 1)  # any odd factorization has the same (x-fastest) order
        else:
            raise ValueError(f"{k}: kernel {tuple(v.shape)} has an even kernel volume; give its kernel_size "
                             "in specs (the offset order depends on it)")
        out[p + "weight"] = weight_from_torchsparse(v, ks)
    return out


def state_dict_to_torchsparse(state_dict: Mapping[str, torch.Tensor],
                              specs: Specs) -> "OrderedDict[str, torch.Tensor]":
    """Inverse of :func:`state_dict_from_torchsparse`: ``<prefix>weight`` -> ``<prefix>kernel``.

    Args:
        specs: a sparse3d model, or ``{prefix: kernel_size or ConvSpec}`` (the stride decides
            whether a K = 1 kernel becomes ``[Cin, Cout]``). Weights of other modules are copied.
    """
    sp = _specs(specs)
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    for k, v in state_dict.items():
        head, _, name = k.rpartition(".")
        p = head + "." if head else ""
        if name == "weight" and p in sp:
            out[p + "kernel"] = weight_to_torchsparse(v, sp[p].kernel_size, sp[p].stride)
        else:
            out[k] = v
    return out


def load_torchsparse_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True):
    """Convert a TorchSparse checkpoint with ``model``'s conv specs and load it into ``model``."""
    return model.load_state_dict(state_dict_from_torchsparse(state_dict, model), strict=strict)
