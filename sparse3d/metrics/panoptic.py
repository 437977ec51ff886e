r"""Panoptic quality for calorimeter clustering (Kirillov et al., CVPR 2019, arXiv:1801.00868).

Definitions used here (one "thing" class: signal clusters):

- **Instances.** Truth instance ``k``: hits with ``truth == k >= 0``. Predicted instance
  ``m``: hits with ``pred == m >= 0``; ``pred == -1`` means "predicted noise / unclustered".
- **Noise excluded.** Hits with ``truth == -1`` (noise; pileup too when the caller maps it
  to -1) are *void*: they are removed from every predicted segment before IoU, and a
  predicted segment whose weight is more than half void is ignored (neither TP nor FP),
  as in the COCO panoptic API.
- **Two IoUs**, reported side by side:
  ``"count"``: hit-count IoU, ``|P & T| / (|P \ void| + |T| - |P & T|)``;
  ``"energy"``: energy-weighted IoU, the same with every hit weighted by its energy.
- **Matching.** Pairs with IoU > 0.5 are matched; this makes matching unique.
- **Scores.** ``SQ = sum_TP IoU / |TP|``, ``RQ = |TP| / (|TP| + |FP|/2 + |FN|/2)``,
  ``PQ = sum_TP IoU / (|TP| + |FP|/2 + |FN|/2) = SQ x RQ``.
- **Aggregation.** ``pq, sq, rq``: pooled over the whole set (``PQ = SQ x RQ`` exactly).
  ``pq_event, sq_event, rq_event``: computed per event and averaged over the events with
  ``TP + FP + FN > 0`` (``SQ_e = 0`` when ``TP = 0``, as in the COCO API); the per-event
  averages do *not* satisfy ``PQ = SQ x RQ`` in general.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict

import numpy as np

from ..utils.args import as_vector

__all__ = ["contingency", "match_instances", "MatchResult", "PQStats", "event_pq", "PanopticQuality",
           "WEIGHTINGS"]

WEIGHTINGS = ("count", "energy")


def _labels(name, a, n=None):
    a = as_vector(name, a, n, "pred")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError(f"'{name}' contains NaN/inf")
        if name in ("pred", "truth") and (a != np.round(a)).any():
            raise TypeError(f"'{name}' must hold integer labels")
    elif a.dtype.kind not in "iub":
        raise TypeError(f"'{name}' must be numeric, got dtype {a.dtype}")
    if name in ("pred", "truth") and a.size and a.min() < -1:
        raise ValueError(f"'{name}' labels must be >= -1 (-1 = noise), got {a.min()}")
    if name == "weight" and a.size and a.min() < 0:
        raise ValueError("'weight' must be >= 0")
    return a


@dataclass
class MatchResult:
    """Contingency and matching of one event.

    Attributes:
        pred_ids ``[P]``, truth_ids ``[T]``: the original labels of the instances.
        iou ``[P, T]`` float64. pred_area ``[P]``: weight of each prediction without void
        hits. pred_void ``[P]``: its void weight. truth_area ``[T]``.
        pairs ``[M, 2]`` int64 rows ``(p, t)`` into the id arrays with IoU > threshold.
        ignored ``[P]`` bool: predictions ignored as mostly void (or empty without void).
    """

    pred_ids: np.ndarray
    truth_ids: np.ndarray
    iou: np.ndarray
    pred_area: np.ndarray
    pred_void: np.ndarray
    truth_area: np.ndarray
    pairs: np.ndarray
    ignored: np.ndarray

    @property
    def matched_iou(self) -> np.ndarray:
        return self.iou[self.pairs[:, 0], self.pairs[:, 1]] if self.pairs.size else np.zeros(0)


def contingency(pred, truth, weight=None):
    """Intersections of predicted and truth instances.

    Args:
        pred, truth: ``[N]`` int labels (-1 = noise). weight: ``[N]`` float >= 0 or None (counts).

    Returns:
        ``(pred_ids [P], truth_ids [T], inter [P, T], pred_area [P], pred_void [P], truth_area [T])``
        float64 weights; ``pred_area`` excludes void hits.
    """
    pred = _labels("pred", pred).astype(np.int64)
    n = pred.shape[0]
    truth = _labels("truth", truth, n).astype(np.int64)
    w = np.ones(n) if weight is None else _labels("weight", weight, n).astype(np.float64)
    pred_ids, pi = np.unique(pred, return_inverse=True)
    truth_ids, ti = np.unique(truth, return_inverse=True)
    pi, ti = pi.reshape(-1), ti.reshape(-1)
    # drop the -1 entries from the id lists
    if pred_ids.size and pred_ids[0] == -1:
        pred_ids, pi = pred_ids[1:], pi - 1
    if truth_ids.size and truth_ids[0] == -1:
        truth_ids, ti = truth_ids[1:], ti - 1
    p_n, t_n = pred_ids.size, truth_ids.size
    both = (pi >= 0) & (ti >= 0)
    def wsum(idx, m, size):   # float64 even when empty (bincount would give int64)
        return np.bincount(idx[m], w[m], size).astype(np.float64, copy=False)

    inter = wsum(pi * t_n + ti, both, p_n * t_n).reshape(p_n, t_n)
    pred_area = wsum(pi, both, p_n)
    pred_void = wsum(pi, (pi >= 0) & (ti < 0), p_n)
    truth_area = wsum(ti, ti >= 0, t_n)
    return pred_ids, truth_ids, inter, pred_area, pred_void, truth_area


def match_instances(pred, truth, weight=None, threshold: float = 0.5) -> MatchResult:
    """Unique matching at IoU > ``threshold`` (>= 0.5 so that a match is unique)."""
    if not (0.5 <= threshold < 1.0):
        raise ValueError(f"threshold must be in [0.5, 1) for unique matching, got {threshold}")
    pred_ids, truth_ids, inter, pa, pv, ta = contingency(pred, truth, weight)
    union = pa[:, None] + ta[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    p, t = np.nonzero(iou > threshold)
    ignored = (pv > 0.5 * (pa + pv)) | (pa <= 0)
    return MatchResult(pred_ids, truth_ids, iou, pa, pv, ta, np.stack([p, t], 1).astype(np.int64), ignored)


@dataclass
class PQStats:
    """Counts behind PQ: ``tp, fp, fn`` and ``iou_sum`` (sum of matched IoUs)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    def __iadd__(self, o: "PQStats") -> "PQStats":
        self.tp += o.tp
        self.fp += o.fp
        self.fn += o.fn
        self.iou_sum += o.iou_sum
        return self

    @property
    def denom(self) -> float:
        return self.tp + 0.5 * self.fp + 0.5 * self.fn

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        return self.tp / self.denom if self.denom else 0.0

    @property
    def pq(self) -> float:
        return self.iou_sum / self.denom if self.denom else 0.0


def event_pq(pred, truth, weight=None, threshold: float = 0.5) -> PQStats:
    """PQ counts of one event (``weight=None``: hit-count IoU; energies: energy-weighted IoU)."""
    m = match_instances(pred, truth, weight, threshold)
    live_truth = m.truth_area > 0
    tp = m.pairs.shape[0]
    matched_p = np.zeros(m.pred_ids.size, bool)
    matched_p[m.pairs[:, 0]] = True
    matched_t = np.zeros(m.truth_ids.size, bool)
    matched_t[m.pairs[:, 1]] = True
    fp = int((~matched_p & ~m.ignored).sum())
    fn = int((~matched_t & live_truth).sum())
    return PQStats(tp, fp, fn, float(m.matched_iou.sum()))


@dataclass
class PanopticQuality:
    """Accumulates PQ over events, with hit-count and energy-weighted IoU.

    ``update(pred, truth, energy)`` per event; ``compute()`` returns
    ``{"count": {...}, "energy": {...}}`` with keys ``pq, sq, rq`` (pooled over the set),
    ``pq_event, sq_event, rq_event`` (per-event averages), ``tp, fp, fn, n_events``.
    """

    threshold: float = 0.5
    totals: Dict[str, PQStats] = field(default_factory=lambda: {k: PQStats() for k in WEIGHTINGS})
    per_event: Dict[str, list] = field(default_factory=lambda: {k: [] for k in WEIGHTINGS})

    def update(self, pred, truth, energy=None) -> Dict[str, PQStats]:
        """Add one event; ``energy=None`` skips the energy-weighted variant. Returns its stats."""
        out = {"count": event_pq(pred, truth, None, self.threshold)}
        if energy is not None:
            out["energy"] = event_pq(pred, truth, energy, self.threshold)
        for k, s in out.items():
            self.totals[k] += s
            self.per_event[k].append(s)
        return out

    def compute(self) -> Dict[str, dict]:
        res = {}
        for k in WEIGHTINGS:
            tot, evs = self.totals[k], [s for s in self.per_event[k] if s.denom > 0]
            res[k] = dict(pq=tot.pq, sq=tot.sq, rq=tot.rq, tp=tot.tp, fp=tot.fp, fn=tot.fn,
                          n_events=len(self.per_event[k]),
                          pq_event=float(np.mean([s.pq for s in evs])) if evs else 0.0,
                          sq_event=float(np.mean([s.sq for s in evs])) if evs else 0.0,
                          rq_event=float(np.mean([s.rq for s in evs])) if evs else 0.0)
        return res

    def reset(self) -> None:
        self.totals = {k: PQStats() for k in WEIGHTINGS}
        self.per_event = {k: [] for k in WEIGHTINGS}
