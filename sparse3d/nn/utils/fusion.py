r"""Fold eval-mode batch norms into the preceding convolution or linear layer (inference only).

Like ``torch.nn.utils.fusion.fuse_conv_bn_eval``: with frozen statistics,
``BN(conv(x)) = conv'(x)`` where ``conv'`` has weight ``W[k, :, o] * s[o]`` and bias
``(b[o] - mean[o]) * s[o] + beta[o]``, ``s = gamma / sqrt(var + eps)``. A sparse
:class:`~sparse3d.nn.Conv3d` weight is ``[K, Cin, Cout]``, so the scale runs along the last axis;
the per-row arithmetic is torch's ``fuse_linear_bn_weights`` on the ``[Cout, K * Cin]`` view.

On small inputs (a calorimeter event of ~1k hits) a network is dominated by per-layer fixed
cost, and each folded norm removes one module call and one pass over the features.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_linear_bn_eval, fuse_linear_bn_weights

from ..modules.conv import Conv3d

__all__ = ["fuse_conv_bn_eval", "fuse_bn_eval"]


def fuse_conv_bn_eval(conv: Conv3d, bn: nn.BatchNorm1d) -> Conv3d:
    """A new :class:`Conv3d` (with bias) equal to ``bn(conv(x))`` for eval-mode ``bn``.

    Args:
        conv: sparse Conv3d, weight ``[K, Cin, Cout]`` (transposed or not, any stride).
        bn: a BatchNorm over ``Cout`` channels with running statistics, in eval mode.
    Raises:
        ValueError: either module in training mode, no running statistics, or channel mismatch.
    """
    if conv.training or bn.training:
        raise ValueError("fuse_conv_bn_eval is for eval mode only: call .eval() on the model first")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fuse_conv_bn_eval needs a BatchNorm with running statistics (track_running_stats=True)")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"BatchNorm has {bn.num_features} channels but the conv outputs {conv.out_channels}")
    fused = copy.deepcopy(conv)
    K, cin, cout = conv.weight.shape
    w2 = conv.weight.detach().permute(2, 0, 1).reshape(cout, K * cin)
    b = conv.bias.detach() if conv.bias is not None else torch.zeros(cout, dtype=w2.dtype, device=w2.device)
    gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(b)
    w2, b2 = fuse_linear_bn_weights(w2, b, bn.running_mean, bn.running_var, bn.eps, gamma, beta)
    fused.weight = nn.Parameter(w2.detach().reshape(cout, K, cin).permute(1, 2, 0).contiguous(), requires_grad=False)
    fused.bias = nn.Parameter(b2.detach(), requires_grad=False)
    return fused


def _fuse_pair(a: nn.Module, b: nn.Module):
    if not isinstance(b, nn.BatchNorm1d) or not b.track_running_stats:
        return None
    if isinstance(a, Conv3d):
        return fuse_conv_bn_eval(a, b)
    if type(a) is nn.Linear and b.num_features == a.out_features:
        return fuse_linear_bn_eval(a, b)
    return None


def fuse_bn_eval(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fold every ``(Conv3d | Linear) -> BatchNorm`` pair that sits consecutively in an ``nn.Sequential``.

    The norm is replaced by ``nn.Identity`` (module names and indices stay as they were, so code
    that indexes ``seq[i]`` keeps working). Other modules are untouched. ``model`` must be in eval
    mode; the result is for inference only (its fused parameters do not require grad).

    Returns the fused model (a deep copy unless ``inplace``) and leaves ``model.training`` False.
    """
    if model.training:
        raise ValueError("fuse_bn_eval is for eval mode only: call .eval() on the model first")
    if not inplace:
        model = copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for i in range(len(names) - 1):
            a, b = seq._modules[names[i]], seq._modules[names[i + 1]]
            fused = _fuse_pair(a, b)
            if fused is not None:
                seq._modules[names[i]] = fused
                seq._modules[names[i + 1]] = nn.Identity()
    return model
