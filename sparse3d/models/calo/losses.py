r"""Losses of the calorimeter clustering models (stateless functions).

- :func:`semantic_loss`: cross-entropy of the signal/noise logits.
- :func:`offset_loss`: L1 regression of the per-hit vector to its cluster's energy-weighted
  centre (the DS-Net / calo-cluster offset head; calo-cluster uses the box centre), optionally
  measured in a clustering space (:func:`cluster_space`).
- :func:`object_condensation_loss`: attractive, repulsive and beta terms of object
  condensation (Kieseler, EPJC 80 (2020) 886, https://arxiv.org/abs/2002.03605), in the
  paper's form: charge ``q = artanh^2(beta) + q_min``; per event with ``N`` hits and
  objects ``k`` with condensation points ``alpha_k = argmax_{i in k} q_i``

  .. math::
      L_V = \frac{1}{N} \sum_j q_j \sum_k q_{\alpha_k} \big(M_{jk} \|x_j - x_{\alpha_k}\|^2
            + (1 - M_{jk}) \max(0, 1 - \|x_j - x_{\alpha_k}\|)\big),\qquad
      L_\beta = \frac{1}{K} \sum_k (1 - \beta_{\alpha_k}) + s_B \frac{1}{N_B} \sum_{i \in noise} \beta_i

  with ``M_jk = 1`` iff hit ``j`` belongs to object ``k``; noise hits belong to no object
  (repulsion only). :math:`L_V` is returned as its attractive and repulsive parts.
  Every term is computed per event and averaged over the events that have hits; an event
  without objects contributes 0 to the attractive/repulsive/signal-beta terms, an event
  without noise 0 to the noise term.

Targets come from the batch of :mod:`sparse3d.datasets.calo.module`: ``cluster_idx``
``[P]`` int64 (-1 = noise, unique within an event), ``offsets [B + 1]`` event boundaries.
"""
from __future__ import annotations

from typing import Dict, Tuple

import torch
import torch.nn.functional as F

__all__ = ["instance_ids", "cluster_centres", "cluster_space", "semantic_loss", "offset_loss",
           "object_condensation_loss", "CLUSTER_SPACES", "Z_REF", "Z_MIN"]

CLUSTER_SPACES = ("cartesian", "projective")
Z_REF = 350.0   # cm: reference depth of the projective space (mid HGCAL CE-E/CE-H)
Z_MIN = 100.0   # cm: |z| floor inside the projection (keeps it finite for wild predictions)


def _event_index(offsets: torch.Tensor, device) -> torch.Tensor:
    counts = (offsets[1:] - offsets[:-1]).to(device)
    return torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)


def instance_ids(cluster_idx: torch.Tensor, offsets: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Batch-wide object ids from per-event cluster indices.

    Args:
        cluster_idx: ``[P]`` int64, -1 = noise, unique within an event. offsets: ``[B + 1]`` int64.
    Returns:
        ``obj [P]`` int64 in ``[-1, K)`` (objects numbered by (event, cluster_idx)), and
        ``obj_event [K]`` int64, the event of each object (non-decreasing).
    """
    P = cluster_idx.shape[0]
    ev = _event_index(offsets, cluster_idx.device)
    obj = torch.full((P,), -1, dtype=torch.long, device=cluster_idx.device)
    sig = cluster_idx >= 0
    if not bool(sig.any()):
        return obj, torch.zeros(0, dtype=torch.long, device=cluster_idx.device)
    span = int(cluster_idx.max()) + 1
    keys = ev[sig] * span + cluster_idx[sig]
    ukeys, inv = torch.unique(keys, sorted=True, return_inverse=True)
    obj[sig] = inv
    return obj, torch.div(ukeys, span, rounding_mode="floor")


def cluster_centres(xyz: torch.Tensor, energy: torch.Tensor, cluster_idx: torch.Tensor,
                    offsets: torch.Tensor) -> torch.Tensor:
    """Energy-weighted centre of each hit's cluster.

    Args:
        xyz: ``[P, 3]`` float hit positions (cm). energy: ``[P]`` float (negative values count
            as 0; a cluster whose energies sum to 0 uses the plain mean).
        cluster_idx: ``[P]`` int64 (-1 noise). offsets: ``[B + 1]`` int64.
    Returns:
        ``[P, 3]`` in xyz's dtype; noise hits get their own position (zero offset).
    """
    obj, obj_event = instance_ids(cluster_idx, offsets)
    out = xyz.clone()
    K = obj_event.numel()
    if K == 0:
        return out
    sig = obj >= 0
    o = obj[sig]
    w = energy[sig].to(xyz.dtype).clamp(min=0)
    ws = xyz.new_zeros(K).index_add_(0, o, w)
    cnt = xyz.new_zeros(K).index_add_(0, o, torch.ones_like(w))
    w = torch.where(ws[o] > 0, w, torch.ones_like(w))
    ws = torch.where(ws > 0, ws, cnt)
    c = xyz.new_zeros((K, 3)).index_add_(0, o, xyz[sig] * w.unsqueeze(1)) / ws.unsqueeze(1)
    out[sig] = c[o]
    return out


def cluster_space(p: torch.Tensor, space: str = "cartesian", scale=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """Map positions ``p [P, 3]`` (cm) to a clustering space, then divide by ``scale`` per axis.

    ``"cartesian"``: ``p``. ``"projective"``: ``(x Z_REF / |z|, y Z_REF / |z|, z)`` with
    ``|z|`` floored at ``Z_MIN``: points on one ray from the interaction point (a shower axis)
    share ``(u, v)``, so an error along the axis moves only the third coordinate.
    Differentiable; ``[P, 3]`` in p's dtype.
    """
    if space not in CLUSTER_SPACES:
        raise ValueError(f"space must be one of {CLUSTER_SPACES}, got {space!r}")
    if space == "projective":
        r = Z_REF / p[:, 2:3].abs().clamp(min=Z_MIN)
        p = torch.cat([p[:, :2] * r, p[:, 2:3]], 1)
    return p / p.new_tensor(scale)


def semantic_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; ``logits [P, C]`` float, ``target [P]`` int64. 0 (with grad) if ``P = 0``."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target)


def offset_loss(offset: torch.Tensor, xyz: torch.Tensor, energy: torch.Tensor, cluster_idx: torch.Tensor,
                offsets: torch.Tensor, scale: float = 1.0, space: str = "cartesian",
                axis_scale=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """L1 offset regression over signal hits, in a clustering space.

    ``mean_i sum_c |f(x_i + o_i)_c - f(centre_i)_c| / scale`` with
    ``f = cluster_space(., space, axis_scale)``; for the defaults this is the plain
    ``mean_i sum_c |o_ic - (centre_ic - x_ic)|``.

    Args:
        offset: ``[P, 3]`` predicted hit -> centre vectors (cm). xyz, energy, cluster_idx,
            offsets: as in :func:`cluster_centres`. scale: loss unit (in clustering units).
        space, axis_scale: see :func:`cluster_space`.
    Returns:
        Scalar; 0 (with grad) when the batch has no signal hit.
    """
    sig = cluster_idx >= 0
    if not bool(sig.any()):
        return offset.sum() * 0.0
    xyz = xyz.to(offset.dtype)
    centre = cluster_centres(xyz, energy, cluster_idx, offsets)
    pred = cluster_space(xyz[sig] + offset[sig], space, axis_scale)
    target = cluster_space(centre[sig], space, axis_scale)
    return (pred - target).abs().sum(1).mean() / scale


def object_condensation_loss(embed: torch.Tensor, beta: torch.Tensor, cluster_idx: torch.Tensor,
                             offsets: torch.Tensor, q_min: float = 0.1, s_b: float = 1.0,
                             beta_max: float = 1.0 - 1e-4) -> Dict[str, torch.Tensor]:
    """Object condensation loss terms (module docstring).

    Args:
        embed: ``[P, D]`` float clustering coordinates x. beta: ``[P]`` float in ``[0, 1]``.
        cluster_idx: ``[P]`` int64 (-1 noise, unique per event). offsets: ``[B + 1]`` int64.
        q_min: minimal charge. s_b: weight of the noise beta term. beta_max: beta is clamped
            to ``[0, beta_max]`` inside ``artanh`` (finite charges).
    Returns:
        ``{"att", "rep", "beta", "beta_sig", "beta_noise"}`` scalars, averaged over events
        with hits (``beta = beta_sig + s_b * beta_noise``); zeros with grad if there are none.
    """
    zero = embed.sum() * 0.0 + beta.sum() * 0.0
    P = embed.shape[0]
    out = {k: zero for k in ("att", "rep", "beta", "beta_sig", "beta_noise")}
    if P == 0:
        return out
    q = torch.atanh(beta.clamp(0.0, beta_max)) ** 2 + q_min
    obj, obj_event = instance_ids(cluster_idx, offsets)
    K = obj_event.numel()
    alpha = None
    if K:
        sig = obj >= 0
        qd = q.detach()
        qmax = qd.new_full((K,), -1.0).scatter_reduce(0, obj[sig], qd[sig], "amax")
        is_max = sig & (qd == qmax[obj.clamp(min=0)])
        rows = torch.arange(P, device=embed.device)
        alpha = rows.new_full((K,), P).scatter_reduce(0, obj[is_max], rows[is_max], "amin")
        kstart = torch.searchsorted(obj_event, torch.arange(offsets.numel(), device=obj_event.device))
    att, rep, bsig, bnoise = [], [], [], []
    off = offsets.tolist()
    for e in range(len(off) - 1):
        s, t = off[e], off[e + 1]
        if t == s:
            continue
        qe, be, oe = q[s:t], beta[s:t], obj[s:t]
        if K and int(kstart[e + 1]) > int(kstart[e]):
            k0, k1 = int(kstart[e]), int(kstart[e + 1])
            a = alpha[k0:k1]
            d2 = ((embed[s:t].unsqueeze(1) - embed[a].unsqueeze(0)) ** 2).sum(-1)      # [n, K_e]
            member = oe.unsqueeze(1) == torch.arange(k0, k1, device=oe.device).unsqueeze(0)
            qq = qe.unsqueeze(1) * q[a].unsqueeze(0)
            att.append((qq * d2 * member).sum() / (t - s))
            hinge = torch.relu(1.0 - torch.sqrt(d2 + 1e-12))
            rep.append((qq * hinge * ~member).sum() / (t - s))
            bsig.append((1.0 - beta[a]).mean())
        else:
            att.append(zero)
            rep.append(zero)
            bsig.append(zero)
        noise = oe < 0
        bnoise.append(be[noise].mean() if bool(noise.any()) else zero)
    if not att:
        return out
    out = {"att": torch.stack(att).mean(), "rep": torch.stack(rep).mean(),
           "beta_sig": torch.stack(bsig).mean(), "beta_noise": torch.stack(bnoise).mean()}
    out["beta"] = out["beta_sig"] + s_b * out["beta_noise"]
    return out
