"""Multiply-accumulate (MAC) counter that counts the real pairs of every sparse conv.

Convention (the one behind the spvnas model-zoo "MACs", often mislabelled FLOPs): only the
matrix products of convolutions and linear layers are counted, one MAC per multiply-add;
normalization, activations, pooling, point-voxel interpolation and bias adds are not.

* ``sparse3d.nn.Conv3d``: ``pairs * Cin * Cout``, where ``pairs`` is the number of
  (input row, output row, offset) triples in the layer's kernel map on the given input
  (:func:`~sparse3d.nn.functional.get_kernel_map`, or the transposed map of an upsampling
  conv); ``pairs = N`` for a 1x1x1 stride-1 conv.
* ``nn.Linear``: ``rows * in * out`` (``rows`` = product of the leading input dims).
* dense ``nn.Conv{1,2,3}d``: ``output elements * (Cin / groups) * prod(kernel)``;
  ``nn.ConvTranspose{1,2,3}d``: ``input elements * (Cout / groups) * prod(kernel)``.

Run as ``python -m sparse3d.utils.macs [scan.bin]`` to print the MACs of MinkUNet18 and SPVCNN
(cr 1.0) on a SemanticKITTI scan voxelized at 0.05 m.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torch import nn

from ..nn.functional.kmap import get_kernel_map, get_transposed_kernel_map
from ..nn.modules.conv import Conv3d
from ..tensor import SparseTensor

__all__ = ["LayerMacs", "MacsReport", "count_macs", "sparse_conv_pairs", "scan_macs"]

_DENSE_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DENSE_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass
class LayerMacs:
    """One call of one layer: ``macs`` multiply-adds; ``pairs`` for sparse convs (else None);
    ``rows_in``/``rows_out``: voxels (sparse), rows (linear) or batch size (dense conv)."""

    name: str
    kind: str
    macs: int
    in_channels: int
    out_channels: int
    rows_in: int
    rows_out: int
    pairs: Optional[int] = None


@dataclass
class MacsReport:
    """Per-layer MACs of one forward pass, in call order."""

    layers: List[LayerMacs]

    @property
    def total(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def by_kind(self) -> Dict[str, int]:
        out: Dict[str, int] = {}
        for layer in self.layers:
            out[layer.kind] = out.get(layer.kind, 0) + layer.macs
        return out

    def table(self) -> str:
        """Fixed-width per-layer table with a total line."""
        rows = [("layer", "kind", "Cin", "Cout", "rows in", "rows out", "pairs", "MACs")]
        for L in self.layers:
            rows.append((L.name, L.kind, str(L.in_channels), str(L.out_channels), str(L.rows_in),
                         str(L.rows_out), "-" if L.pairs is None else str(L.pairs), f"{L.macs:,}"))
        rows.append(("total", "", "", "", "", "", "", f"{self.total:,}  ({self.total / 1e9:.3f} G)"))
        w = [max(len(r[i]) for r in rows[:-1]) for i in range(len(rows[0]))]
        fmt = lambda r: "  ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
        return "\n".join([fmt(rows[0]), "-" * len(fmt(rows[0]))] + [fmt(r) for r in rows[1:-1]]
                         + ["-" * len(fmt(rows[0])), "  ".join(c for c in rows[-1] if c)])

    def __str__(self) -> str:
        return self.table()


def sparse_conv_pairs(module: Conv3d, x: SparseTensor) -> int:
    """Number of (input, output, offset) pairs of ``module`` applied to ``x`` (kernel maps are
    taken from, or added to, ``x``'s cache)."""
    if not isinstance(module, Conv3d):
        raise TypeError(f"module must be a sparse3d.nn.Conv3d, got {type(module).__name__}")
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    ks, st, dil = module.kernel_size, module.stride, module.dilation
    if ks == (1, 1, 1) and st == (1, 1, 1):
        return len(x)
    if module.transposed and st != (1, 1, 1):
        km = get_transposed_kernel_map(x, ks, st, dil)[0]
    else:
        km = get_kernel_map(x, ks, st, dil)[0]
    return int((km.nbmap >= 0).sum())


def _record(name: str, module: nn.Module, args, output) -> Optional[LayerMacs]:
    x = args[0] if args else None
    if isinstance(module, Conv3d):
        if not isinstance(x, SparseTensor) or not isinstance(output, SparseTensor):
            return None
        pairs = sparse_conv_pairs(module, x)
        return LayerMacs(name, "sparse_conv3d", pairs * module.in_channels * module.out_channels,
                         module.in_channels, module.out_channels, len(x), len(output), pairs)
    if not isinstance(x, torch.Tensor) or not isinstance(output, torch.Tensor):
        return None
    if isinstance(module, nn.Linear):
        rows = x.numel() // module.in_features if module.in_features else 0
        return LayerMacs(name, "linear", rows * module.in_features * module.out_features,
                         module.in_features, module.out_features, rows, rows)
    if isinstance(module, _DENSE_CONV):
        k = math.prod(module.kernel_size)
        macs = output.numel() * (module.in_channels // module.groups) * k
        kind = f"conv{len(module.kernel_size)}d"
    elif isinstance(module, _DENSE_CONVT):
        k = math.prod(module.kernel_size)
        macs = x.numel() * (module.out_channels // module.groups) * k
        kind = f"conv_transpose{len(module.kernel_size)}d"
    else:
        return None
    batch = x.shape[0] if x.dim() == len(module.kernel_size) + 2 else 1
    return LayerMacs(name, kind, macs, module.in_channels, module.out_channels, batch, batch)


_COUNTED = (Conv3d, nn.Linear) + _DENSE_CONV + _DENSE_CONVT


def count_macs(model: nn.Module, *inputs, **kwargs) -> MacsReport:
    """Run ``model(*inputs, **kwargs)`` once and count the MACs of every conv/linear call.

    The pass runs under ``torch.no_grad()`` with the model temporarily in eval mode (so
    BatchNorm running statistics are not updated); the modes are restored afterwards.

    Args:
        model: any ``nn.Module``; layers reused several times get one row per call
            (``name#2``, ...).
        inputs: the forward arguments (e.g. one SparseTensor).
    Returns:
        :class:`MacsReport` (``.total``, ``.layers``, ``.table()``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers: List[LayerMacs] = []
    calls: Dict[str, int] = {}

    def make_hook(name: str):
        def hook(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            rec = _record(name if calls[name] == 1 else f"{name}#{calls[name]}", module, args, output)
            if rec is not None:
                layers.append(rec)
        return hook

    handles = [m.register_forward_hook(make_hook(n or type(m).__name__))
               for n, m in model.named_modules() if isinstance(m, _COUNTED)]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return MacsReport(layers)


def scan_macs(path: str, voxel_size: float = 0.05, cr: float = 1.0) -> Dict[str, MacsReport]:
    """MACs of MinkUNet18 and SPVCNN (``cr``) on one SemanticKITTI ``.bin`` scan.

    The scan is voxelized as in spvnas (one representative point per voxel; feats = its
    x, y, z, remission). Returns ``{"voxels": int, "MinkUNet": report, "SPVCNN": report}``.
    """
    import numpy as np

    from ..models.spvnas import MinkUNet
    from ..models.spvnas.spvcnn import SPVCNN
    from .quantize import sparse_quantize

    raw = np.fromfile(path, dtype=np.float32)
    if raw.size == 0 or raw.size % 4:
        raise ValueError(f"{path}: expected a non-empty float32 x4 SemanticKITTI scan, got {raw.size} floats")
    pts = raw.reshape(-1, 4)
    coords, index = sparse_quantize(pts[:, :3], voxel_size, return_index=True)
    coords = np.concatenate([np.zeros((len(coords), 1), np.int32), coords], 1)
    x = SparseTensor(torch.from_numpy(pts[index]), torch.from_numpy(coords))
    out: Dict[str, object] = {"voxels": len(x)}
    for name, cls in (("MinkUNet", MinkUNet), ("SPVCNN", SPVCNN)):
        out[name] = count_macs(cls(in_channels=4, num_classes=19, cr=cr), x)
    return out


def _main(argv=None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scan", nargs="?", default="../shared/data/semantickitti/sequences/08/velodyne/000000.bin")
    p.add_argument("--voxel-size", type=float, default=0.05)
    p.add_argument("--cr", type=float, default=1.0)
    p.add_argument("--table", action="store_true", help="print the per-layer tables")
    a = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    res = scan_macs(a.scan, a.voxel_size, a.cr)
    print(f"{a.scan}: {res['voxels']} voxels at {a.voxel_size} m, cr {a.cr}")
    for name in ("MinkUNet", "SPVCNN"):
        rep = res[name]
        if a.table:
            print(f"\n{name}\n{rep.table()}\n")
        print(f"{name:9s} {rep.total / 1e9:8.3f} GMACs  " +
              "  ".join(f"{k}={v / 1e9:.3f}G" for k, v in rep.by_kind().items()))


if __name__ == "__main__":
    _main()
