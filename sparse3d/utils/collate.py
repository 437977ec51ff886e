"""Batch collation of per-sample dicts into one SparseTensor batch."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ..tensor import PointTensor, SparseTensor

__all__ = ["sparse_collate", "sparse_collate_fn", "CAT_KEYS"]

#: Per-voxel / per-point keys that are always concatenated, even when all samples have equal length.
CAT_KEYS = ("targets", "targets_mapped")


def _as_tensor(x):
    return torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x


def sparse_collate(tensors: Sequence[SparseTensor]) -> SparseTensor:
    """Concatenate per-sample SparseTensors into one batch.

    A single-sample tensor (batch index 0) becomes batch entry ``i`` = the number of entries before it,
    so plain samples get ``0, 1, 2, ...``; a tensor that already holds ``b`` entries (batch indices
    ``0..b-1``, e.g. the views of :class:`sparse3d.datasets.tta.RotationViews`) keeps them, shifted by
    that number. All inputs must share a stride.
    """
    if not tensors:
        raise ValueError("sparse_collate needs at least one tensor")
    stride = tensors[0].stride
    coords, feats, first = [], [], 0
    for i, t in enumerate(tensors):
        if t.stride != stride:
            raise ValueError(f"sample {i} has stride {t.stride}, expected {stride}")
        c = t.coords.clone()
        entries = int(c[:, 0].max()) + 1 if len(c) else 1
        c[:, 0] += first
        first += entries
        coords.append(c)
        feats.append(t.feats)
    return SparseTensor(torch.cat(feats), torch.cat(coords), stride)


def sparse_collate_fn(samples: List[Dict[str, Any]], cat_keys: Sequence[str] = CAT_KEYS) -> Dict[str, Any]:
    """``DataLoader`` collate for dict samples.

    ``SparseTensor`` values are batched with :func:`sparse_collate`; ``PointTensor``
    values get their batch column set and are concatenated; tensors/arrays with a
    matching leading dimension are concatenated when keyed ``*_inverse`` (offset by
    the voxel count of the preceding samples), concatenated when keyed in ``cat_keys``
    (per-voxel/per-point labels) or when lengths differ, and stacked otherwise; other
    values are returned as lists.
    """
    if not samples:
        raise ValueError("empty batch")
    out: Dict[str, Any] = {}
    for key in samples[0]:
        vals = [s[key] for s in samples]
        v0 = vals[0]
        if isinstance(v0, SparseTensor):
            out[key] = sparse_collate(vals)
        elif isinstance(v0, PointTensor):
            cs = []
            for i, p in enumerate(vals):
                c = p.coords.clone()
                c[:, 0] = i
                cs.append(c)
            out[key] = PointTensor(torch.cat([p.feats for p in vals]), torch.cat(cs))
        elif isinstance(v0, (torch.Tensor, np.ndarray)):
            ts = [_as_tensor(v) for v in vals]
            if key.endswith("_inverse"):
                offs, shifted = 0, []
                ref_key = key[: -len("_inverse")]
                for s, t in zip(samples, ts):
                    shifted.append(t + offs)
                    ref = s.get(ref_key)
                    offs += len(ref) if ref is not None else int(t.max()) + 1
                out[key] = torch.cat(shifted)
            elif key not in cat_keys and all(t.shape == ts[0].shape for t in ts):
                out[key] = torch.stack(ts)
            else:
                out[key] = torch.cat(ts)
        else:
            out[key] = vals
    return out
