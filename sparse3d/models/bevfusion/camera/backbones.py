r"""Image backbones for the camera branch: torchvision ResNet-18/50 and Swin-T returning multi-scale features.

Random initialisation; nothing is downloaded. ``pretrained=<path>`` loads a local checkpoint:
a torchvision state dict (``resnet18-*.pth``, ``swin_t-*.pth``; the classifier ``fc.*`` / ``head.*``
and Swin's final ``norm.*`` are ignored) or a state dict saved from this module (optionally under
``state_dict``/``model`` and with a ``backbone.``/``module.`` prefix). Any missing, unexpected or
mis-shaped key raises a ValueError listing them.

``forward(images [B*N, 3, H, W]) -> list`` of ``[B*N, C_i, H / s_i, W / s_i]`` for the ``out_indices``
stages (stage ``i`` has stride ``s_i = 4 * 2**i``); ``out_channels`` lists ``C_i``.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torchvision
from torch import nn

__all__ = ["ResNetBackbone", "SwinTBackbone", "load_pretrained"]

_RESNET_CHANNELS = {18: (64, 128, 256, 512), 34: (64, 128, 256, 512), 50: (256, 512, 1024, 2048)}


def _extract_state(obj) -> Dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if k in obj and isinstance(obj[k], dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError("checkpoint does not hold a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_pretrained(module: nn.Module, path, ignore_prefixes: Iterable[str] = (),
                    optional_prefixes: Iterable[str] = ()) -> None:
    """Load a local checkpoint into ``module`` strictly, with a clear error.

    Args:
        path: local file (``torch.load`` with ``weights_only=True``).
        ignore_prefixes: checkpoint keys to drop (e.g. a classifier head).
        optional_prefixes: module keys that may be absent from the checkpoint (keep their init).
    Raises:
        FileNotFoundError if ``path`` does not exist; ValueError on missing/unexpected/mis-shaped keys.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path!r} (weights are never downloaded; "
                                f"pass a local file or pretrained=None)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the path
        raise ValueError(f"pretrained checkpoint {path!r} could not be read: {e}") from e
    state = _extract_state(raw)
    ign = tuple(ignore_prefixes)
    state = {k: v for k, v in state.items() if not k.startswith(ign)} if ign else state
    own = module.state_dict()
    opt = tuple(optional_prefixes)
    missing = [k for k in own if k not in state and not (opt and k.startswith(opt))]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def head(xs):
            return ", ".join(xs[:8]) + (f", ... ({len(xs)} total)" if len(xs) > 8 else "")
        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {head(shapes)}")
        raise ValueError(f"pretrained checkpoint {path!r} does not match {type(module).__name__}: "
                         + "; ".join(parts))
    module.load_state_dict(state, strict=False)


def _check_indices(out_indices: Sequence[int], n: int) -> tuple:
    idx = tuple(int(i) for i in out_indices)
    if not idx or any(not 0 <= i < n for i in idx) or list(idx) != sorted(set(idx)):
        raise ValueError(f"out_indices must be increasing stage indices in [0, {n}), got {tuple(out_indices)}")
    return idx


class ResNetBackbone(nn.Module):
    """torchvision ResNet (``depth`` 18, 34 or 50) without the classifier.

    Parameter names equal torchvision's (``conv1``, ``bn1``, ``layer1``..``layer4``), so torchvision
    checkpoints load directly. Stages 0..3 have strides 4, 8, 16, 32; default ``out_indices=(1, 2, 3)``
    gives 128/256/512 channels (ResNet-18) or 512/1024/2048 (ResNet-50).
    """

    def __init__(self, depth: int = 18, out_indices: Sequence[int] = (1, 2, 3), pretrained: Optional[str] = None):
        super().__init__()
        if depth not in _RESNET_CHANNELS:
            raise ValueError(f"depth must be one of {sorted(_RESNET_CHANNELS)}, got {depth!r}")
        net = getattr(torchvision.models, f"resnet{depth}")(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.depth = depth
        self.out_indices = _check_indices(out_indices, 4)
        self.out_channels: List[int] = [_RESNET_CHANNELS[depth][i] for i in self.out_indices]
        self.strides: List[int] = [4 * 2 ** i for i in self.out_indices]
        if pretrained is not None:
            load_pretrained(self, pretrained, ignore_prefixes=("fc.",))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B*N, 3, H, W], got {list(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4)):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= self.out_indices[-1]:
                break
        return outs


class SwinTBackbone(nn.Module):
    """torchvision Swin-T (embed 96, depths [2, 2, 6, 2], heads [3, 6, 12, 24], window 7) without the head.

    ``features`` keeps torchvision's parameter names; like mmdet's Swin, every returned stage gets its
    own LayerNorm (``out_norms``, optional in a checkpoint). Stages 0..3: 96/192/384/768 channels at
    strides 4/8/16/32; BEVFusion uses ``out_indices=(1, 2, 3)``. Sizes need not be multiples of 32 x 7
    (torchvision pads the windows).
    """

    def __init__(self, out_indices: Sequence[int] = (1, 2, 3), pretrained: Optional[str] = None,
                 drop_path_rate: float = 0.2):
        super().__init__()
        net = torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=96, depths=[2, 2, 6, 2],
                                                 num_heads=[3, 6, 12, 24], window_size=[7, 7],
                                                 stochastic_depth_prob=float(drop_path_rate))
        self.features = net.features
        self.out_indices = _check_indices(out_indices, 4)
        dims = (96, 192, 384, 768)
        self.out_channels: List[int] = [dims[i] for i in self.out_indices]
        self.strides: List[int] = [4 * 2 ** i for i in self.out_indices]
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels)
        if pretrained is not None:
            load_pretrained(self, pretrained, ignore_prefixes=("head.", "norm."), optional_prefixes=("out_norms.",))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be [B*N, 3, H, W], got {list(x.shape)}")
        outs = []
        for stage in range(4):
            if stage > 0:
                x = self.features[2 * stage](x)  # patch merging
            else:
                x = self.features[0](x)  # patch embedding
            x = self.features[2 * stage + 1](x)  # [B, H, W, C]
            if stage in self.out_indices:
                j = self.out_indices.index(stage)
                outs.append(self.out_norms[j](x).permute(0, 3, 1, 2).contiguous())
            if stage >= self.out_indices[-1]:
                break
        return outs
