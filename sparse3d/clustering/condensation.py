r"""Condensation-point clustering: the inference step of object condensation.

Kieseler, EPJC 80 (2020) 886 (https://arxiv.org/abs/2002.03605), as in cms-pepr: hits are
visited in decreasing ``beta`` (ties: lower index first); a visited hit with ``beta > t_beta``
that is still unassigned becomes a condensation point and claims every unassigned hit
within distance ``< t_d`` of it in the clustering space. Hits never claimed are -1.
A hit is thus skipped as a candidate exactly when it lies within ``t_d`` of an earlier
condensation point. Optional ``mask`` (e.g. predicted noise) excludes hits entirely.
Cluster ids are ``0..K-1`` in order of creation (decreasing beta).
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
from numba import njit

__all__ = ["condensation_clustering", "condensation_events"]


@njit(cache=True, nogil=True)
def _condense(X, beta, allowed, t_beta, t_d):
    n, D = X.shape
    order = np.argsort(-beta, kind="mergesort")
    labels = np.full(n, -1, np.int64)
    td2 = t_d * t_d
    K = 0
    for r in range(n):
        i = order[r]
        if not beta[i] > t_beta:
            break
        if labels[i] >= 0 or not allowed[i]:
            continue
        labels[i] = K
        for j in range(n):
            if labels[j] >= 0 or not allowed[j]:
                continue
            d = 0.0
            for c in range(D):
                t = X[j, c] - X[i, c]
                d += t * t
            if d < td2:
                labels[j] = K
        K += 1
    return labels


def _np(a, dtype):
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a, dtype=dtype))


def _dissolve(labels: np.ndarray, min_hits: int) -> np.ndarray:
    if min_hits <= 1 or labels.size == 0 or labels.max() < 0:
        return labels
    n = np.bincount(labels[labels >= 0])
    keep = n >= min_hits
    new = np.full(n.size + 1, -1, np.int64)             # slot n.size: label -1 stays -1
    new[:n.size][keep] = np.arange(int(keep.sum()))
    return new[labels]


def condensation_clustering(embed, beta, t_beta: float = 0.1, t_d: float = 1.0, mask=None,
                            min_hits: int = 1) -> np.ndarray:
    """Cluster one event.

    Args:
        embed: ``[n, D]`` clustering coordinates. beta: ``[n]`` condensation scores.
        t_beta: minimal beta of a condensation point. t_d: claim radius (strict ``<``).
        mask: optional ``[n]`` bool, True = hit may be clustered (False -> -1).
        min_hits: smallest cluster kept (smaller ones -> -1, ids renumbered in order).
    Returns:
        ``[n]`` int64 labels (module docstring).
    Raises:
        ValueError: shape mismatch, NaN, ``t_d <= 0``.
    """
    X = _np(embed, np.float64)
    b = _np(beta, np.float64)
    if X.ndim != 2 or b.shape != (X.shape[0],):
        raise ValueError(f"embed must be [n, D] and beta [n]; got {X.shape} and {b.shape}")
    if not (np.isfinite(X).all() and np.isfinite(b).all()):
        raise ValueError("embed / beta contain NaN or inf")
    if not (np.isfinite(t_d) and t_d > 0):
        raise ValueError(f"t_d must be a positive number, got {t_d!r}")
    allowed = np.ones(X.shape[0], np.bool_) if mask is None else _np(mask, np.bool_)
    if allowed.shape != (X.shape[0],):
        raise ValueError(f"mask must be [{X.shape[0]}], got {allowed.shape}")
    if int(min_hits) < 1:
        raise ValueError(f"min_hits must be >= 1, got {min_hits!r}")
    if X.shape[0] == 0:
        return np.zeros(0, np.int64)
    return _dissolve(_condense(X, b, allowed, float(t_beta), float(t_d)), int(min_hits))


def condensation_events(embed, beta, offsets, t_beta: float = 0.1, t_d: float = 1.0, mask=None,
                        min_hits: int = 1) -> List[np.ndarray]:
    """:func:`condensation_clustering` per event (``offsets [B + 1]``); one int64 array per event."""
    X = _np(embed, np.float64)
    b = _np(beta, np.float64)
    off = _np(offsets, np.int64)
    if off.ndim != 1 or off.size < 1 or off[0] != 0 or off[-1] != X.shape[0] or (np.diff(off) < 0).any():
        raise ValueError(f"offsets must be non-decreasing from 0 to {X.shape[0]}")
    m = None if mask is None else _np(mask, np.bool_)
    return [condensation_clustering(X[s:e], b[s:e], t_beta, t_d, None if m is None else m[s:e], min_hits)
            for s, e in zip(off[:-1], off[1:])]
