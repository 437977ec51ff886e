r"""Flat-kernel mean-shift (Comaniciu & Meer 2002; scikit-learn ``MeanShift`` semantics), numba.

Used on ``hit + predicted offset`` per event and per predicted class (calo-cluster's
``MeanShift`` with all points as seeds). Algorithm, for points ``X [n, D]`` and bandwidth ``h``:

1. seeds: every point (``bin_seeding=False``) or the centres of the occupied cells of a
   grid of side ``h`` (scikit-learn ``bin_seeding``);
2. each seed moves to the mean of the points within distance ``<= h`` until it moves by
   less than ``tol * h`` or after ``max_iter`` steps;
3. converged seeds are ranked by their intensity, the number of points within ``h`` (ties:
   the lower seed index first); a seed within ``h`` of a higher-ranked kept mode is dropped,
   and so is a seed with intensity below ``min_count`` (default 1: none; raising it stops
   stray seeds from becoming small fragment clusters; if no seed reaches it, the most
   intense one is kept);
4. each point takes the label of its nearest kept mode (ties: the higher-ranked mode).

Labels are ``0..K-1`` in mode rank order. Neighbour queries scan a window of the points
sorted along their largest-variance axis (exact).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
from numba import njit

__all__ = ["mean_shift", "mean_shift_events"]


@njit(cache=True, nogil=True)
def _window(xs, v, h):
    return np.searchsorted(xs, v - h, side="left"), np.searchsorted(xs, v + h, side="right")


@njit(cache=True, nogil=True)
def _mean_shift(X, seeds, h, max_iter, tol, min_count):
    n, D = X.shape
    S = seeds.shape[0]
    # sort points along the axis of largest variance
    ax = 0
    best = -1.0
    for c in range(D):
        v = np.var(X[:, c])
        if v > best:
            best = v
            ax = c
    order = np.argsort(X[:, ax], kind="mergesort")
    Xs = X[order]
    xs = Xs[:, ax].copy()
    h2 = h * h
    modes = seeds.copy()
    count = np.zeros(S, np.int64)
    acc = np.empty(D)
    for s in range(S):
        cur = modes[s].copy()
        for it in range(max_iter):
            lo, hi = _window(xs, cur[ax], h)
            acc[:] = 0.0
            m = 0
            for j in range(lo, hi):
                d = 0.0
                for c in range(D):
                    t = Xs[j, c] - cur[c]
                    d += t * t
                if d <= h2:
                    m += 1
                    for c in range(D):
                        acc[c] += Xs[j, c]
            if m == 0:
                break
            shift = 0.0
            for c in range(D):
                t = acc[c] / m
                shift += (t - cur[c]) ** 2
                cur[c] = t
            if shift < (tol * h) ** 2:
                break
        modes[s] = cur
        lo, hi = _window(xs, cur[ax], h)
        m = 0
        for j in range(lo, hi):
            d = 0.0
            for c in range(D):
                t = Xs[j, c] - cur[c]
                d += t * t
            if d <= h2:
                m += 1
        count[s] = m
    # rank by intensity (desc), ties by seed index; suppress modes within h of a kept one
    rank = np.argsort(-count, kind="mergesort")
    kept = np.empty(S, np.int64)
    K = 0
    for r in range(S):
        s = rank[r]
        if count[s] == 0 or (count[s] < min_count and K > 0):
            continue
        ok = True
        for q in range(K):
            d = 0.0
            for c in range(D):
                t = modes[s, c] - modes[kept[q], c]
                d += t * t
            if d <= h2:
                ok = False
                break
        if ok:
            kept[K] = s
            K += 1
    centres = np.empty((K, D))
    for q in range(K):
        centres[q] = modes[kept[q]]
    labels = np.full(n, -1, np.int64)
    for i in range(n):
        bd = np.inf
        for q in range(K):
            d = 0.0
            for c in range(D):
                t = X[i, c] - centres[q, c]
                d += t * t
            if d < bd:
                bd = d
                labels[i] = q
    return labels, centres


def _bin_seeds(X: np.ndarray, h: float) -> np.ndarray:
    cells = np.floor(X / h).astype(np.int64)
    u = np.unique(cells, axis=0)
    return (u + 0.5) * h


def mean_shift(points, bandwidth: float, max_iter: int = 300, tol: float = 1e-3,
               bin_seeding: bool = False, min_count: int = 1, return_centres: bool = False):
    """Cluster ``points [n, D]`` (numpy or torch, any float) with a flat kernel of radius ``bandwidth``.

    Returns:
        ``labels [n]`` int64 in ``0..K-1`` (module docstring); with ``return_centres`` also
        ``centres [K, D]`` float64. ``n = 0`` gives empty outputs.
    Raises:
        ValueError: bad shape, non-finite points, bandwidth <= 0, max_iter < 1.
    """
    X = _as_points(points)
    if not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a positive number, got {bandwidth!r}")
    if int(max_iter) < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter!r}")
    if X.shape[0] == 0:
        lab, cen = np.zeros(0, np.int64), np.zeros((0, X.shape[1]))
    else:
        seeds = _bin_seeds(X, float(bandwidth)) if bin_seeding else X.copy()
        lab, cen = _mean_shift(X, np.ascontiguousarray(seeds), float(bandwidth), int(max_iter), float(tol),
                               int(min_count))
    return (lab, cen) if return_centres else lab


def _as_points(points) -> np.ndarray:
    if hasattr(points, "detach"):
        points = points.detach().cpu().numpy()
    X = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    if X.ndim != 2 or X.shape[1] < 1:
        raise ValueError(f"points must be [n, D], got shape {X.shape}")
    if X.size and not np.isfinite(X).all():
        raise ValueError("points contain NaN or inf")
    return X


def mean_shift_events(points, offsets, classes=None, bandwidth: float = 1.0, ignore_classes: Sequence[int] = (0,),
                      max_iter: int = 300, tol: float = 1e-3, bin_seeding: bool = False,
                      min_count: int = 1) -> List[np.ndarray]:
    """Mean-shift per event and per class.

    Args:
        points: ``[P, D]`` (e.g. hit + predicted offset). offsets: ``[B + 1]`` event boundaries.
        classes: ``[P]`` int predicted class per point, or None (one class).
        ignore_classes: classes left unclustered (label -1; 0 = noise).
    Returns:
        One ``[n_b]`` int64 array per event: cluster ids ``0..`` unique within the event
        (classes in increasing order, each numbered by mode rank), -1 for ignored points.
    """
    X = _as_points(points)
    off = np.asarray(offsets.detach().cpu() if hasattr(offsets, "detach") else offsets, dtype=np.int64)
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != X.shape[0] or (np.diff(off) < 0).any():
        raise ValueError(f"offsets must be non-decreasing from 0 to {X.shape[0]}, got {off.tolist()[:8]}...")
    if classes is None:
        cls = np.ones(X.shape[0], np.int64)
    else:
        cls = np.asarray(classes.detach().cpu() if hasattr(classes, "detach") else classes, dtype=np.int64)
        if cls.shape != (X.shape[0],):
            raise ValueError(f"classes must be [{X.shape[0]}], got {cls.shape}")
    ignore = set(int(c) for c in ignore_classes)
    out = []
    for b in range(off.size - 1):
        s, e = int(off[b]), int(off[b + 1])
        lab = np.full(e - s, -1, np.int64)
        nxt = 0
        for c in np.unique(cls[s:e]):
            if int(c) in ignore:
                continue
            m = np.nonzero(cls[s:e] == c)[0]
            sub = mean_shift(X[s:e][m], bandwidth, max_iter, tol, bin_seeding, min_count)
            lab[m] = sub + nxt
            nxt += int(sub.max()) + 1 if sub.size else 0
        out.append(lab)
    return out
