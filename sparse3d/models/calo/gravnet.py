r"""GravNet with object condensation (the baseline of Calo-SPVCNN).

GravNet: Qasim, Kieseler, Iiyama, Pierini, "Learning representations of irregular
particle-detector geometry with distance-weighted graph networks", EPJC 79 (2019) 608,
https://arxiv.org/abs/1902.07987. Block layout as in the paper's model (quoted in
cms-pepr ``torch_cmspepr/gravnet_model.py``): per block, the per-event feature mean is
concatenated to every hit ("global exchange"), 3 x Dense(64, tanh), then the GravNet layer
(learned space S = 4, features F_LR = 22, k = 40 neighbours in S within the event,
weights ``exp(-10 d^2)`` as PyG / cms-pepr ``GravNetConv``, mean and max aggregation,
concatenated with the layer input, Dense to F_OUT = 48), then batch norm. The block
outputs are concatenated, passed through Dense(128, ReLU) and the shared
:class:`~sparse3d.models.calo.heads.CaloHeads` (object condensation by default;
Kieseler, EPJC 80 (2020) 886).
"""
from __future__ import annotations

import torch
from torch import nn

from sparse3d.ops.knn import knn, knn_distances

from .heads import CaloHeads, CaloHeadsMixin, check_batch

__all__ = ["GravNetConv", "GravNetBlock", "GravNetOC", "segment_mean"]


def segment_mean(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Per-event mean of ``x [P, C]`` broadcast back to the rows: ``[P, C]`` (``offsets [B + 1]`` int64, CPU)."""
    counts = offsets[1:] - offsets[:-1]
    B = counts.numel()
    ev = torch.repeat_interleave(torch.arange(B), counts).to(x.device)
    s = x.new_zeros((B, x.shape[1])).index_add_(0, ev, x)
    return (s / counts.clamp(min=1).to(x.device, x.dtype).unsqueeze(1))[ev]


class GravNetConv(nn.Module):
    r"""One GravNet layer.

    ``s = W_s x`` (space, ``space_dim``), ``h = W_h x`` (features, ``prop_dim``); for each hit
    the ``k`` nearest hits of its event in ``s`` (itself included) send ``w_ij h_j`` with
    ``w_ij = exp(-weight_scale |s_i - s_j|^2)``; the mean and max over the neighbours are
    concatenated with ``x`` and mapped to ``out_dim``. Gradients reach ``W_s`` through the
    weights (the neighbour indices are constants).

    Input ``x [P, C]``, ``offsets [B + 1]`` int64 (CPU); output ``[P, out_dim]``.
    """

    def __init__(self, in_dim: int, space_dim: int = 4, prop_dim: int = 22, out_dim: int = 48, k: int = 40,
                 weight_scale: float = 10.0) -> None:
        super().__init__()
        self.k, self.weight_scale = int(k), float(weight_scale)
        self.space = nn.Linear(in_dim, space_dim)
        self.prop = nn.Linear(in_dim, prop_dim)
        self.out = nn.Linear(in_dim + 2 * prop_dim, out_dim)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        s, h = self.space(x), self.prop(x)
        idx, _ = knn(s, offsets, self.k)
        w = torch.exp(-self.weight_scale * knn_distances(s, idx))           # [P, k]
        valid = idx >= 0
        j = torch.where(valid, idx, torch.arange(x.shape[0], device=x.device).unsqueeze(1))
        msg = h[j] * w.unsqueeze(-1)                                          # [P, k, F]
        # padding (events with < k hits) repeats the hit itself, which is always a neighbour
        # then: it leaves the max unchanged and is masked out of the mean
        mean = (msg * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        mx = msg.amax(1)
        return self.out(torch.cat([x, mean, mx], 1))


class GravNetBlock(nn.Module):
    """Global exchange -> 3 x (Linear(hidden), tanh) -> :class:`GravNetConv` -> BatchNorm1d."""

    def __init__(self, in_dim: int, hidden: int = 64, space_dim: int = 4, prop_dim: int = 22, out_dim: int = 48,
                 k: int = 40, weight_scale: float = 10.0) -> None:
        super().__init__()
        self.dense = nn.Sequential(nn.Linear(2 * in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                   nn.Linear(hidden, hidden), nn.Tanh())
        self.conv = GravNetConv(hidden, space_dim, prop_dim, out_dim, k, weight_scale)
        self.bn = nn.BatchNorm1d(out_dim)

    def forward(self, x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        x = self.dense(torch.cat([x, segment_mean(x, offsets)], 1))
        return self.bn(self.conv(x, offsets))


class GravNetOC(CaloHeadsMixin, nn.Module):
    r"""GravNet (4 blocks, Qasim et al. 2019) + object condensation, for calorimeter hits.

    The per-hit input is ``feats`` concatenated with ``(x, y, z) / coord_scale`` (GravNet has
    no other access to positions), batch-normalized.

    Args:
        in_channels: width F of ``batch["feats"]``. n_blocks: GravNet blocks (4).
        space_dim (S), prop_dim (F_LR), out_dim (F_OUT), k: GravNet layer sizes (4, 22, 48, 40).
        hidden: width of the 3 dense layers per block (64). post_dim: Dense after the concat (128).
        weight_scale: ``a`` in ``exp(-a d^2)`` (10, PyG / cms-pepr). coord_scale: cm per input unit.
        instance_mode: ``"condensation"`` (default) or ``"offset"``. embed_dim: OC clustering dim.
        head_hidden: hidden width of the heads. **head_kwargs: see :class:`CaloHeads`.

    ``forward(batch) -> dict`` with the same keys and conventions as :class:`CaloSPVCNN`.
    """

    def __init__(self, in_channels: int = 3, n_blocks: int = 4, space_dim: int = 4, prop_dim: int = 22,
                 out_dim: int = 48, k: int = 40, hidden: int = 64, post_dim: int = 128, weight_scale: float = 10.0,
                 coord_scale: float = 100.0, instance_mode: str = "condensation", embed_dim: int = 4,
                 head_hidden: int = 32, **head_kwargs) -> None:
        super().__init__()
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        for name, v in (("n_blocks", n_blocks), ("space_dim", space_dim), ("prop_dim", prop_dim),
                        ("out_dim", out_dim), ("k", k), ("hidden", hidden), ("post_dim", post_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not coord_scale > 0:
            raise ValueError(f"coord_scale must be > 0, got {coord_scale!r}")
        self.in_channels, self.coord_scale = in_channels, float(coord_scale)
        cin = in_channels + 3
        self.input_bn = nn.BatchNorm1d(cin)
        blocks, c = [], cin
        for _ in range(n_blocks):
            blocks.append(GravNetBlock(c, hidden, space_dim, prop_dim, out_dim, k, weight_scale))
            c = out_dim
        self.blocks = nn.ModuleList(blocks)
        self.post = nn.Sequential(nn.Linear(n_blocks * out_dim, post_dim), nn.ReLU(True))
        self.post_dim = post_dim
        self.heads = CaloHeads(post_dim, instance_mode=instance_mode, embed_dim=embed_dim, hidden=head_hidden,
                               **head_kwargs)
        self.instance_mode = self.heads.instance_mode

    def hit_features(self, batch) -> torch.Tensor:
        """Per-hit features before the heads, ``[P, post_dim]`` (checks the batch)."""
        pts, feats, off = check_batch(batch, self.in_channels)
        if pts.shape[0] == 0:
            return feats.new_zeros((0, self.post_dim))
        x = self.input_bn(torch.cat([feats, (pts[:, 1:] / self.coord_scale).to(feats.dtype)], 1))
        outs = []
        for blk in self.blocks:
            x = blk(x, off)
            outs.append(x)
        return self.post(torch.cat(outs, 1))
