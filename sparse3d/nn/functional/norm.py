"""Per-sample normalization of SparseTensor features (cf. torchsparse ``GroupNorm``/``InstanceNorm``).

Every batch sample (``coords[:, 0]``) is normalized separately over all of its voxels:
for sample ``b`` the result equals ``F.group_norm(feats_b.t()[None], G, weight, bias, eps)``
with ``feats_b [N_b, C]`` its rows, i.e. statistics over ``N_b * C/G`` values per group,
biased variance. Statistics are gathered with ``index_add`` (no loop over samples);
half/bfloat16 inputs are normalized in float32 and cast back.
"""
from __future__ import annotations

from typing import Optional

import torch

from ...tensor import SparseTensor

__all__ = ["group_norm", "instance_norm"]


def _check(input: SparseTensor, name: str, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor]) -> int:
    if not isinstance(input, SparseTensor):
        raise TypeError(f"{name} expects a SparseTensor input, got {type(input).__name__}")
    C = input.feats.shape[1]
    for pname, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.dim() != 1 or p.shape[0] != C):
            raise ValueError(f"{name}: {pname} must have shape [{C}] (the feats channel count), "
                             f"got {tuple(p.shape)}")
    return C


def _segment_group_norm(x: torch.Tensor, batch: torch.Tensor, num_groups: int, eps: float) -> torch.Tensor:
    """Normalize ``x [N, C]`` per (sample, group); ``batch [N]`` int64 sample index."""
    N, C = x.shape
    B = int(batch.max()) + 1
    G = num_groups
    xg = x.view(N, G, C // G)
    cnt = (torch.bincount(batch, minlength=B).clamp(min=1) * (C // G)).to(x.dtype).unsqueeze(1)  # [B, 1]
    mean = x.new_zeros((B, G)).index_add(0, batch, xg.sum(2)) / cnt
    d = xg - mean.index_select(0, batch).unsqueeze(2)
    var = x.new_zeros((B, G)).index_add(0, batch, (d * d).sum(2)) / cnt
    return (d * torch.rsqrt(var + eps).index_select(0, batch).unsqueeze(2)).view(N, C)


def group_norm(input: SparseTensor, num_groups: int, weight: Optional[torch.Tensor] = None,
               bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> SparseTensor:
    """Group normalization per batch sample (see module docstring).

    Args:
        input: SparseTensor, feats ``[N, C]`` float.
        num_groups: G, must divide C; channels ``[g*C/G, (g+1)*C/G)`` form group g.
        weight, bias: optional ``[C]`` affine parameters.
    Returns:
        SparseTensor with normalized feats ``[N, C]`` (same dtype, coords, cache).
    """
    C = _check(input, "group_norm", weight, bias)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"group_norm: num_groups must be a positive int, got {num_groups!r}")
    if C % num_groups:
        raise ValueError(f"group_norm: num_groups={num_groups} must divide the feats channel count {C}")
    x = input.feats
    if x.shape[0] == 0:
        y = x * 1.0
    else:
        xc = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = _segment_group_norm(xc, input.coords[:, 0].long(), num_groups, eps).to(x.dtype)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return input.replace(y)


def instance_norm(input: SparseTensor, weight: Optional[torch.Tensor] = None,
                  bias: Optional[torch.Tensor] = None, eps: float = 1e-5) -> SparseTensor:
    """Instance normalization: every channel of every batch sample separately (= ``group_norm`` with G = C).

    Matches ``F.instance_norm`` on each sample's ``[1, C, N_b]`` (no running statistics).
    """
    C = _check(input, "instance_norm", weight, bias)
    return group_norm(input, max(C, 1), weight, bias, eps)
