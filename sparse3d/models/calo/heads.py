"""Per-hit heads shared by :class:`CaloSPVCNN` and :class:`GravNetOC`, with their loss and clustering.

:class:`CaloHeads` maps per-hit features ``[P, C]`` to the model outputs of the calorimeter
contract (``semantic_logits [P, 2]`` plus ``offset [P, 3]`` or ``embed [P, D]`` and
``beta [P]``), computes the training loss from a batch and turns outputs into clusters.
:func:`check_batch` validates the batch dict of :mod:`sparse3d.datasets.calo.module`.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...clustering.condensation import condensation_events
from ...clustering.meanshift import mean_shift_events
from .losses import CLUSTER_SPACES, cluster_space, object_condensation_loss, offset_loss, semantic_loss

__all__ = ["INSTANCE_MODES", "CaloHeads", "CaloHeadsMixin", "check_batch", "check_targets"]

INSTANCE_MODES = ("offset", "condensation")


def check_batch(batch, in_channels: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate the model inputs of a calo batch.

    Args:
        batch: dict with ``points [P, 4]`` float (batch index, x, y, z in cm), ``feats
            [P, in_channels]`` float, ``offsets [B + 1]`` int64 (events contiguous, in order).
    Returns:
        ``(points, feats, offsets)``; ``offsets`` on the CPU.
    Raises:
        TypeError / ValueError naming the field.
    """
    if not isinstance(batch, dict):
        raise TypeError(f"batch must be a dict, got {type(batch).__name__}")
    for key in ("points", "feats", "offsets"):
        if key not in batch:
            raise ValueError(f"batch has no '{key}' field")
        if not isinstance(batch[key], torch.Tensor):
            raise TypeError(f"batch['{key}'] must be a torch.Tensor, got {type(batch[key]).__name__}")
    pts, feats, off = batch["points"], batch["feats"], batch["offsets"]
    if pts.dim() != 2 or pts.shape[1] != 4:
        raise ValueError(f"batch['points'] must be [P, 4] (batch, x, y, z), got {tuple(pts.shape)}")
    if not pts.is_floating_point():
        raise TypeError(f"batch['points'] must be floating point, got {pts.dtype}")
    if feats.dim() != 2 or feats.shape[1] != in_channels:
        raise ValueError(f"batch['feats'] must be [P, {in_channels}] (in_channels), got {tuple(feats.shape)}")
    if not feats.is_floating_point():
        raise TypeError(f"batch['feats'] must be floating point, got {feats.dtype}")
    if feats.shape[0] != pts.shape[0]:
        raise ValueError(f"batch['feats'] has {feats.shape[0]} rows but batch['points'] has {pts.shape[0]}")
    if off.dtype not in (torch.int32, torch.int64) or off.dim() != 1 or off.numel() < 1:
        raise ValueError(f"batch['offsets'] must be a 1-D int64 tensor [B + 1], got {off.dtype} {tuple(off.shape)}")
    off = off.long().cpu()
    P = pts.shape[0]
    if int(off[0]) != 0 or int(off[-1]) != P or bool((off[1:] < off[:-1]).any()):
        raise ValueError(f"batch['offsets'] must be non-decreasing from 0 to P={P}, got {off.tolist()[:6]}...")
    if P:
        if not bool(torch.isfinite(pts).all()):
            raise ValueError("batch['points'] contains NaN or inf")
        if not bool(torch.isfinite(feats).all()):
            raise ValueError("batch['feats'] contains NaN or inf")
        ev = torch.repeat_interleave(torch.arange(off.numel() - 1), off[1:] - off[:-1]).to(pts.device)
        if not bool((pts[:, 0] == ev.to(pts.dtype)).all()):
            raise ValueError("batch['points'][:, 0] (batch index) disagrees with batch['offsets']")
    return pts, feats, off


def check_targets(batch, P: int) -> None:
    """Check the training targets ``cluster_idx``, ``semantic`` ``[P]`` int64 and ``energy [P]`` float."""
    for key, floating in (("cluster_idx", False), ("semantic", False), ("energy", True)):
        if key not in batch:
            raise ValueError(f"batch has no '{key}' field (needed by the loss)")
        t = batch[key]
        if not isinstance(t, torch.Tensor) or t.shape != (P,):
            raise ValueError(f"batch['{key}'] must be a [{P}] tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.is_floating_point() != floating:
            raise TypeError(f"batch['{key}'] must be {'floating point' if floating else 'int64'}, got {t.dtype}")


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(True), nn.Linear(hidden, cout))


class CaloHeads(nn.Module):
    r"""Semantic (signal/noise) head plus one instance head, their loss and their clustering.

    Args:
        in_dim: per-hit feature width C. instance_mode: ``"offset"`` (variant a: hit -> cluster
            centre vector, clustered by mean-shift per predicted class) or ``"condensation"``
            (variant b: embedding + beta, condensation-point clustering).
        embed_dim: clustering-space dimension D (condensation). hidden: MLP width of each head.
        offset_scale: cm per unit of the offset head's raw output (and of the offset loss).
        cluster_space: ``"projective"`` (default) or ``"cartesian"``: the space where
            ``hit + offset`` is clustered by mean-shift and where the offset L1 is measured
            (:func:`~sparse3d.models.calo.losses.cluster_space`). Projective: ``(x, y) * 350 cm /
            |z|`` and ``z``, so showers (rays from the interaction point) are told apart by
            direction and an error along the shower axis costs little.
        cluster_scale: ``(sx, sy, sz)`` divides the clustering-space axes. The default
            ``(1, 1, 5)`` weighs depth 5x less than the transverse position.
        sem_weight, offset_weight, oc_weight: loss weights (OC weight multiplies att + rep + beta).
        q_min, s_b: object-condensation charge floor and noise beta weight. The paper uses
            q_min = 0.1, whose potentials on low-beta hits are weak in short trainings:
            GravNet+OC trained 10 CPU-minutes on 400 events reached validation PQ 0.05 / 0.12 /
            0.37 with q_min = 0.1 / 0.5 / 1.0 (default). With few events and a high learning
            rate, q_min = 1.0 can collapse beta to 0 everywhere (the potentials outweigh the
            beta term early on); lower q_min if ``loss_beta`` stays near 1.
        bandwidth: mean-shift radius on ``hit + offset`` (clustering units: cm transverse).
        min_count: minimal mode intensity of mean-shift (hits within ``bandwidth``); weaker
            modes do not become clusters (their hits join the nearest kept mode).
        max_iter: mean-shift steps. bin_seeding: seed mean-shift from the occupied cells of a
            grid of side ``bandwidth`` (default; scikit-learn's option) instead of from every hit
            (calo-cluster): same PQ on validation events, ~9x less clustering time.
        t_beta, t_d: condensation threshold and claim radius (embedding units); 0.3 / 0.7 were
            the best of a small grid on validation events for both models (paper: 0.1 / 1.0).
        min_hits: condensation clusters with fewer hits are dissolved (-1).
        mask_noise: clustering leaves hits predicted as noise (class 0) unassigned.
    """

    def __init__(self, in_dim: int, instance_mode: str = "offset", embed_dim: int = 4, hidden: int = 32,
                 offset_scale: float = 10.0, cluster_space: str = "projective",
                 cluster_scale: Sequence[float] = (1.0, 1.0, 5.0),
                 sem_weight: float = 1.0, offset_weight: float = 1.0, oc_weight: float = 1.0, q_min: float = 1.0,
                 s_b: float = 1.0, bandwidth: float = 3.0, min_count: int = 20, max_iter: int = 300,
                 bin_seeding: bool = True, t_beta: float = 0.3, t_d: float = 0.7, min_hits: int = 10,
                 mask_noise: bool = True) -> None:
        super().__init__()
        if instance_mode not in INSTANCE_MODES:
            raise ValueError(f"instance_mode must be one of {INSTANCE_MODES}, got {instance_mode!r}")
        if int(embed_dim) < 1 or int(hidden) < 1 or int(in_dim) < 1:
            raise ValueError(f"in_dim, embed_dim and hidden must be >= 1, got {in_dim}, {embed_dim}, {hidden}")
        for name, v in (("offset_scale", offset_scale), ("bandwidth", bandwidth), ("t_d", t_d)):
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        try:
            cscale = tuple(float(v) for v in cluster_scale)
        except TypeError:
            raise ValueError(f"cluster_scale must be 3 positive numbers, got {cluster_scale!r}") from None
        if len(cscale) != 3 or not all(np.isfinite(v) and v > 0 for v in cscale):
            raise ValueError(f"cluster_scale must be 3 positive numbers, got {cluster_scale!r}")
        if cluster_space not in CLUSTER_SPACES:
            raise ValueError(f"cluster_space must be one of {CLUSTER_SPACES}, got {cluster_space!r}")
        if int(min_count) < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count!r}")
        if not 0 < q_min:
            raise ValueError(f"q_min must be > 0, got {q_min!r}")
        self.instance_mode, self.embed_dim = instance_mode, int(embed_dim)
        self.offset_scale, self.sem_weight, self.offset_weight, self.oc_weight = \
            float(offset_scale), float(sem_weight), float(offset_weight), float(oc_weight)
        self.cluster_space, self.cluster_scale, self.min_count = cluster_space, cscale, int(min_count)
        self.bin_seeding = bool(bin_seeding)
        self.q_min, self.s_b, self.bandwidth, self.max_iter = float(q_min), float(s_b), float(bandwidth), int(max_iter)
        if int(min_hits) < 1:
            raise ValueError(f"min_hits must be >= 1, got {min_hits!r}")
        self.t_beta, self.t_d, self.min_hits = float(t_beta), float(t_d), int(min_hits)
        self.mask_noise = bool(mask_noise)
        self.semantic = _mlp(in_dim, hidden, 2)
        if instance_mode == "offset":
            self.instance = _mlp(in_dim, hidden, 3)
        else:
            self.instance = _mlp(in_dim, hidden, self.embed_dim + 1)

    def forward(self, h: torch.Tensor) -> Dict[str, torch.Tensor]:
        """``h [P, C]`` -> ``semantic_logits [P, 2]`` and ``offset [P, 3]`` (cm) or ``embed [P, D]``, ``beta [P]``."""
        out = {"semantic_logits": self.semantic(h)}
        y = self.instance(h)
        if self.instance_mode == "offset":
            out["offset"] = y * self.offset_scale
        else:
            out["embed"] = y[:, :self.embed_dim]
            out["beta"] = torch.sigmoid(y[:, self.embed_dim])
        return out

    def loss(self, outputs: Dict[str, torch.Tensor], batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        """Weighted sum of CE and the instance loss of this head; ``(scalar, {name: float})``."""
        logits = outputs["semantic_logits"]
        P = logits.shape[0]
        check_targets(batch, P)
        off = batch["offsets"].long().cpu()
        cl, sem = batch["cluster_idx"].long(), batch["semantic"].long()
        ce = semantic_loss(logits, sem)
        logs = {"loss_ce": float(ce.detach())}
        total = self.sem_weight * ce
        if self.instance_mode == "offset":
            o = outputs["offset"]
            lo = offset_loss(o, batch["points"][:, 1:], batch["energy"], cl, off, scale=self.offset_scale,
                             space=self.cluster_space, axis_scale=self.cluster_scale)
            logs["loss_offset"] = float(lo.detach())
            total = total + self.offset_weight * lo
        else:
            oc = object_condensation_loss(outputs["embed"], outputs["beta"], cl, off, q_min=self.q_min, s_b=self.s_b)
            logs.update({f"loss_{k}": float(oc[k].detach()) for k in ("att", "rep", "beta")})
            total = total + self.oc_weight * (oc["att"] + oc["rep"] + oc["beta"])
        logs["loss"] = float(total.detach())
        return total, logs

    @torch.no_grad()
    def cluster(self, outputs: Dict[str, torch.Tensor], batch) -> List[np.ndarray]:
        """Per event, ``[n_b]`` int64 cluster ids (-1 = noise / unassigned)."""
        off = batch["offsets"].long().cpu()
        cls = outputs["semantic_logits"].argmax(1).cpu()
        if self.instance_mode == "offset":
            pts = cluster_space(batch["points"][:, 1:].double().cpu() + outputs["offset"].double().cpu(),
                                self.cluster_space, self.cluster_scale)
            ignore = (0,) if self.mask_noise else ()
            classes = cls if self.mask_noise else None
            return mean_shift_events(pts, off, classes, bandwidth=self.bandwidth, ignore_classes=ignore,
                                     max_iter=self.max_iter, min_count=self.min_count,
                                     bin_seeding=self.bin_seeding)
        mask = (cls != 0) if self.mask_noise else None
        return condensation_events(outputs["embed"].cpu(), outputs["beta"].cpu(), off, self.t_beta, self.t_d, mask,
                                   self.min_hits)


class CaloHeadsMixin:
    """``forward`` / ``loss`` / ``cluster`` of a calorimeter model from its ``hit_features(batch) -> [P, C]``
    and its :class:`CaloHeads` ``self.heads`` (shared by :class:`CaloSPVCNN` and :class:`GravNetOC`)."""

    def forward(self, batch) -> Dict[str, torch.Tensor]:
        return self.heads(self.hit_features(batch))

    def loss(self, outputs: Dict[str, torch.Tensor], batch) -> Tuple[torch.Tensor, Dict[str, float]]:
        return self.heads.loss(outputs, batch)

    def cluster(self, outputs: Dict[str, torch.Tensor], batch) -> List[np.ndarray]:
        return self.heads.cluster(outputs, batch)
