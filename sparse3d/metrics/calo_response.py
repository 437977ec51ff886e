r"""Physics performance of clusters: efficiency, fake rate, energy response and resolution.

Matching follows calo-cluster's ``ResponseMetric``: a truth particle and a predicted cluster
are matched when their **energy-weighted IoU > 0.5** (unique; noise hits are void, see
:mod:`.panoptic`). Per truth-energy bin:

- efficiency = matched truth / all truth (binomial error);
- fake rate (per reconstructed-energy bin) = unmatched, non-ignored clusters / all clusters;
- response = mean of ``E_reco / E_true`` over matched pairs (error std / sqrt(n));
- resolution = ``sigma / E`` = std(``E_reco / E_true``) / response (error ~ res / sqrt(2 n)).

``E_reco`` is the summed energy of all hits of the predicted cluster; ``E_true`` is the
caller's per-particle true energy (e.g. ``particles["energy"]``) or, by default, the summed
energy of the truth particle's hits ("visible" energy).

The resolution is fitted with ``sigma/E = a/sqrt(E) (+) b/E (+) c`` (quadrature sum) by
``scipy.optimize.curve_fit``, parameters bounded to be >= 0.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import numpy as np

from .panoptic import _labels, match_instances

__all__ = ["DEFAULT_BINS", "ResponseMetric", "resolution_model", "fit_resolution", "binned_response"]

DEFAULT_BINS = (0.0, 0.5, 1.0, 2.0, 3.0, 6.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)


def resolution_model(e, a, b, c):
    """``sqrt((a / sqrt(E))^2 + (b / E)^2 + c^2)`` (E in GeV)."""
    e = np.asarray(e, np.float64)
    return np.sqrt(a * a / e + (b / e) ** 2 + c * c)


def fit_resolution(energy, resolution, error=None):
    """Fit ``sigma/E = a/sqrt(E) (+) b/E (+) c``.

    Args:
        energy: ``[B]`` GeV (> 0). resolution: ``[B]`` sigma/E. error: ``[B]`` or None.

    Returns:
        dict ``a, b, c`` (floats), ``cov`` ``[3, 3]`` and ``n_points``; NaNs if < 3 usable points.
    """
    from scipy.optimize import curve_fit

    e = np.asarray(energy, np.float64)
    r = np.asarray(resolution, np.float64)
    ok = np.isfinite(e) & np.isfinite(r) & (e > 0)
    err = None
    if error is not None:
        err = np.asarray(error, np.float64)
        ok &= np.isfinite(err) & (err > 0)
    if ok.sum() < 3:
        nan = float("nan")
        return dict(a=nan, b=nan, c=nan, cov=np.full((3, 3), nan), n_points=int(ok.sum()))
    p0 = (0.2, 0.1, 0.01)
    popt, pcov = curve_fit(resolution_model, e[ok], r[ok], p0=p0, sigma=None if err is None else err[ok],
                           absolute_sigma=err is not None, bounds=(0.0, np.inf), maxfev=20000)
    return dict(a=float(popt[0]), b=float(popt[1]), c=float(popt[2]), cov=pcov, n_points=int(ok.sum()))


def binned_response(e_true, e_reco, bins=DEFAULT_BINS, min_entries: int = 2):
    """Response and resolution of matched pairs in bins of ``e_true`` (GeV).

    Returns:
        dict of ``[B]`` arrays: ``e_mean`` (mean E_true), ``n``, ``response``, ``response_err``,
        ``resolution``, ``resolution_err`` (NaN where fewer than ``min_entries`` pairs).
    """
    e_true = np.asarray(e_true, np.float64)
    ratio = np.asarray(e_reco, np.float64) / np.where(e_true > 0, e_true, np.nan)
    edges = np.asarray(bins, np.float64)
    nb = edges.size - 1
    out = {k: np.full(nb, np.nan) for k in ("e_mean", "response", "response_err", "resolution", "resolution_err")}
    out["n"] = np.zeros(nb, np.int64)
    b = np.searchsorted(edges, e_true, side="right") - 1
    for i in range(nb):
        m = (b == i) & np.isfinite(ratio)
        out["n"][i] = m.sum()
        if m.sum() < min_entries:
            continue
        r = ratio[m]
        mu, sd = r.mean(), r.std(ddof=1)
        out["e_mean"][i] = e_true[m].mean()
        out["response"][i] = mu
        out["response_err"][i] = sd / np.sqrt(m.sum())
        out["resolution"][i] = sd / mu if mu > 0 else np.nan
        out["resolution_err"][i] = out["resolution"][i] / np.sqrt(2.0 * m.sum())
    return out


@dataclass
class ResponseMetric:
    """Accumulate matched pairs over events; :meth:`compute` bins them.

    ``update(pred, truth, energy, truth_energy=None, truth_group=None)``: ``pred, truth``
    ``[N]`` labels, ``energy`` ``[N]`` hit energies, ``truth_energy`` ``[K]`` true energy per
    truth label (indexed by the label value) or None for the visible energy, ``truth_group``
    ``[K]`` int category per truth label (e.g. ``abs(pdgId)``) for :meth:`compute` ``(group=...)``.
    """

    bins: tuple = DEFAULT_BINS
    threshold: float = 0.5
    true_e: List[np.ndarray] = field(default_factory=list)
    true_matched: List[np.ndarray] = field(default_factory=list)
    true_reco: List[np.ndarray] = field(default_factory=list)
    true_group: List[np.ndarray] = field(default_factory=list)
    pred_e: List[np.ndarray] = field(default_factory=list)
    pred_matched: List[np.ndarray] = field(default_factory=list)

    def update(self, pred, truth, energy, truth_energy=None, truth_group=None) -> None:
        energy = _labels("weight", energy).astype(np.float64)
        m = match_instances(pred, truth, energy, self.threshold)
        pred = np.asarray(pred).astype(np.int64)
        # total energy of every predicted cluster (void hits included)
        e_pred_all = np.bincount(np.searchsorted(m.pred_ids, pred[pred >= 0]), energy[pred >= 0],
                                 m.pred_ids.size).astype(np.float64)
        if truth_energy is None:
            e_true = m.truth_area
        else:
            te = np.asarray(truth_energy, np.float64).reshape(-1)
            if m.truth_ids.size and m.truth_ids.max() >= te.size:
                raise ValueError(f"'truth_energy' has {te.size} entries but truth label {m.truth_ids.max()} is used")
            e_true = te[m.truth_ids]
        if truth_group is None:
            group = np.zeros(m.truth_ids.size, np.int64)
        else:
            tg = np.asarray(truth_group).reshape(-1).astype(np.int64)
            if m.truth_ids.size and m.truth_ids.max() >= tg.size:
                raise ValueError(f"'truth_group' has {tg.size} entries but truth label {m.truth_ids.max()} is used")
            group = tg[m.truth_ids]
        live = m.truth_area > 0
        t_match = np.zeros(m.truth_ids.size, bool)
        t_match[m.pairs[:, 1]] = True
        t_reco = np.full(m.truth_ids.size, np.nan)
        t_reco[m.pairs[:, 1]] = e_pred_all[m.pairs[:, 0]]
        self.true_e.append(e_true[live])
        self.true_matched.append(t_match[live])
        self.true_reco.append(t_reco[live])
        self.true_group.append(group[live])
        p_match = np.zeros(m.pred_ids.size, bool)
        p_match[m.pairs[:, 0]] = True
        keep = ~m.ignored
        self.pred_e.append(e_pred_all[keep])
        self.pred_matched.append(p_match[keep])

    def compute(self, min_entries: int = 2, group=None) -> dict:
        """Binned summary (``[B]`` arrays) plus the resolution fit.

        ``group``: keep only truth particles of this ``truth_group`` value (efficiency,
        response, resolution); the fake rate always uses every predicted cluster.

        Keys: ``bins``, ``e_center``, ``n_true``, ``efficiency``, ``efficiency_err``, ``n_pred``,
        ``fake_rate``, ``fake_rate_err``, everything of :func:`binned_response`, and ``fit``
        (from :func:`fit_resolution`), ``response_mean`` (over all matched pairs).
        """
        cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt))
        te, tm, tr = cat(self.true_e, float), cat(self.true_matched, bool), cat(self.true_reco, float)
        if group is not None:
            keep = cat(self.true_group, np.int64) == group
            te, tm, tr = te[keep], tm[keep], tr[keep]
        pe, pm = cat(self.pred_e, float), cat(self.pred_matched, bool)
        edges = np.asarray(self.bins, np.float64)
        nb = edges.size - 1
        bt = np.searchsorted(edges, te, side="right") - 1
        bp = np.searchsorted(edges, pe, side="right") - 1
        n_true = np.array([(bt == i).sum() for i in range(nb)])
        n_eff = np.array([((bt == i) & tm).sum() for i in range(nb)])
        n_pred = np.array([(bp == i).sum() for i in range(nb)])
        n_fake = np.array([((bp == i) & ~pm).sum() for i in range(nb)])

        def ratio(k, n):
            r = np.divide(k, n, out=np.full(nb, np.nan), where=n > 0)
            err = np.sqrt(np.divide(r * (1 - r), n, out=np.full(nb, np.nan), where=n > 0))
            return r, err

        eff, eff_err = ratio(n_eff, n_true)
        fake, fake_err = ratio(n_fake, n_pred)
        resp = binned_response(te[tm], tr[tm], edges, min_entries)
        fit = fit_resolution(resp["e_mean"], resp["resolution"], resp["resolution_err"])
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio_all = tr[tm] / te[tm]
        return dict(bins=edges, e_center=0.5 * (edges[1:] + edges[:-1]), n_true=n_true, efficiency=eff,
                    efficiency_err=eff_err, n_pred=n_pred, fake_rate=fake, fake_rate_err=fake_err, **resp,
                    fit=fit, response_mean=float(np.nanmean(ratio_all)) if ratio_all.size else float("nan"))
