"""Matplotlib PNG plots for calorimeter clustering (no pyplot global state; Agg canvas).

- :func:`plot_response_resolution`: response ``<E_reco/E_true>`` and ``sigma/E`` vs ``E_true``
  with the ``a/sqrt(E) (+) b/E (+) c`` fit;
- :func:`plot_efficiency`: efficiency vs ``E_true`` and fake rate vs ``E_reco``;
- :func:`plot_event_display`: hits in ``(z, r)`` and ``(x, y)`` coloured by cluster (noise grey),
  marker area growing with energy.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

__all__ = ["plot_response_resolution", "plot_efficiency", "plot_event_display"]


def _figure(ncols: int, width: float = 5.0, height: float = 4.0):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:   # pragma: no cover
        raise ImportError("plots need 'matplotlib' (pip install matplotlib)") from e
    fig = Figure(figsize=(width * ncols, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _log_x(ax) -> None:
    """Log x axis with plain major labels and no minor labels; a panel without data (e.g. a model that
    matched nothing) stays linear and says so instead of failing on an empty log scale."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    x0, x1 = ax.dataLim.x0, ax.dataLim.x1
    if not (ax.has_data() and np.isfinite(x0) and np.isfinite(x1) and x0 > 0):
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    ax.set_xscale("log")
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(NullFormatter())


def _save(fig, path) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_response_resolution(summaries, path, labels: Optional[Sequence[str]] = None, title: str = "") -> str:
    """Two panels: response and resolution vs ``E_true``.

    Args:
        summaries: one ``ResponseMetric.compute()`` dict or a list of them (one per method).
        path: output PNG. labels: legend names per summary.
    """
    from .calo_response import resolution_model

    if isinstance(summaries, dict):
        summaries = [summaries]
    labels = list(labels) if labels is not None else [f"method {i}" for i in range(len(summaries))]
    fig, (ax_r, ax_s) = _figure(2)
    for s, lab in zip(summaries, labels):
        ok = np.isfinite(s["response"])
        ax_r.errorbar(s["e_mean"][ok], s["response"][ok], yerr=s["response_err"][ok], fmt="o", label=lab)
        h = ax_s.errorbar(s["e_mean"][ok], s["resolution"][ok], yerr=s["resolution_err"][ok], fmt="o")
        f = s.get("fit", {})
        if ok.any() and np.isfinite(f.get("a", np.nan)):
            e = np.geomspace(max(np.nanmin(s["e_mean"][ok]), 0.1), np.nanmax(s["e_mean"][ok]), 100)
            ax_s.plot(e, resolution_model(e, f["a"], f["b"], f["c"]), color=h[0].get_color(),
                      label=f"{lab}: {f['a']:.2f}/sqrt(E) + {f['b']:.2f}/E + {f['c']:.3f}")
        else:
            h[0].set_label(lab)
    ax_r.axhline(1.0, color="grey", lw=0.8, ls="--")
    return _finish(fig, path, title, ((ax_r, "E_true [GeV]", "<E_reco / E_true>"), (ax_s, "E_true [GeV]", "sigma / E")))


def _finish(fig, path, title: str, axes, ylim=None) -> str:
    """Log x, labels, grid and legend on each ``(ax, xlabel, ylabel)``; title; save."""
    for ax, xl, yl in axes:
        _log_x(ax)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.set_xlabel(xl)
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_efficiency(summaries, path, labels: Optional[Sequence[str]] = None, title: str = "") -> str:
    """Efficiency vs ``E_true`` and fake rate vs ``E_reco`` (bin centres, log x). The fake rate does not
    depend on a true particle type, so identical fake-rate curves (per-type summaries) are drawn once."""
    if isinstance(summaries, dict):
        summaries = [summaries]
    labels = list(labels) if labels is not None else [f"method {i}" for i in range(len(summaries))]
    fig, (ax_e, ax_f) = _figure(2)
    drawn = []   # the fake rate uses every predicted cluster (no true type): draw each distinct curve once
    for s, lab in zip(summaries, labels):
        c = np.maximum(s["e_center"], 0.25)
        panels = [(ax_e, "efficiency")]
        fr = np.asarray(s["fake_rate"], np.float64)
        if not any(np.array_equal(fr, d, equal_nan=True) for d in drawn):
            drawn.append(fr)
            panels.append((ax_f, "fake_rate"))
        for ax, k in panels:
            ok = np.isfinite(s[k])
            ax.errorbar(c[ok], s[k][ok], yerr=s[k + "_err"][ok], fmt="o-", label=lab)
    return _finish(fig, path, title, ((ax_e, "E_true [GeV]", "efficiency"), (ax_f, "E_reco [GeV]", "fake rate")),
                   ylim=(-0.02, 1.05))


def plot_event_display(x, y, z, labels, path, energy=None, title: str = "", side: Optional[int] = None) -> str:
    """Event display: ``(z, r)`` and ``(x, y)`` views, hits coloured by cluster label.

    Args:
        x, y, z: ``[N]`` cm. labels: ``[N]`` int (-1 noise: small grey dots).
        path: output PNG. energy: ``[N]`` GeV for marker sizes (optional).
        side: +1 / -1 to show one endcap only (default: the endcap with more energy).
    """
    x, y, z = (np.asarray(a, np.float64).reshape(-1) for a in (x, y, z))
    lab = np.asarray(labels).astype(np.int64).reshape(-1)
    if not (x.size == y.size == z.size == lab.size):
        raise ValueError(f"x, y, z, labels must have equal lengths, got {x.size}, {y.size}, {z.size}, {lab.size}")
    e = np.ones_like(x) if energy is None else np.asarray(energy, np.float64).reshape(-1)
    if side is None:
        side = 1 if e[z >= 0].sum() >= e[z < 0].sum() else -1
    sel = (z >= 0) if side > 0 else (z < 0)
    x, y, z, lab, e = x[sel], y[sel], np.abs(z[sel]), lab[sel], e[sel]
    size = 2.0 + 40.0 * np.sqrt(np.clip(e / max(e.max(), 1e-9), 0, 1)) if e.size else e
    fig, (ax_zr, ax_xy) = _figure(2, 6.0, 5.0)
    try:
        from matplotlib import colormaps
        tab10, tab20 = colormaps["tab10"], colormaps["tab20"]
        cmap = (lambda k: tab10(k % 10) if k < 10 else tab20(k % 20))
    except ImportError:  # pragma: no cover
        cmap = None
    noise = lab < 0
    for ax, (a, b) in ((ax_zr, (z, np.hypot(x, y))), (ax_xy, (x, y))):
        ax.scatter(a[noise], b[noise], s=2, c="lightgrey")
        ids = np.unique(lab[~noise])
        for k, cid in enumerate(ids):
            m = lab == cid
            ax.scatter(a[m], b[m], s=size[m], color=cmap(k) if cmap else None, alpha=0.8, linewidths=0)
        ax.grid(alpha=0.3)
    ax_zr.set_xlabel("|z| [cm]")
    ax_zr.set_ylabel("r [cm]")
    ax_xy.set_xlabel("x [cm]")
    ax_xy.set_ylabel("y [cm]")
    ax_xy.set_aspect("equal", adjustable="datalim")
    n_cl = int(np.unique(lab[~noise]).size)
    fig.suptitle((title + ": " if title else "") + f"{'+' if side > 0 else '-'}z endcap, {lab.size} hits, "
                 f"{n_cl} clusters (grey: noise / unclustered)")
    return _save(fig, path)
