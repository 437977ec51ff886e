"""Parametrised shower development: longitudinal profiles per layer and lateral energy spots.

All functions are vectorised over showers ``S`` and layers ``L`` (numpy). Depths are
measured *along the shower axis* (the slab edges are divided by ``|cos theta|``).

EM showers (PDG EM cascades; Grindhammer-Peters / GFLASH, hep-ex/0001020):
    dE/dt = E beta^alpha t^(alpha-1) e^(-beta t) / Gamma(alpha), t in X0, with
    <T_max> = -1.396 + 1.007 ln y, <alpha> = -0.0433 + 0.540 ln y, y = E / E_c (E_c = 5.36 MeV),
    sigma(ln T) = 1 / (-2.506 + 1.245 ln y), sigma(ln alpha) = 1 / (-0.08442 + 0.7904 ln y),
    rho = 0.7858 - 0.0232 ln y, beta = (alpha - 1) / T. Photons convert after an extra
    Exp(9/7 X0) depth. Lateral: GFLASH core + tail
    f(r) = p 2r Rc^2 / (r^2 + Rc^2)^2 + (1 - p) 2r Rt^2 / (r^2 + Rt^2)^2 in units of R_M = 2.3 cm.

Hadronic showers (Fabjan & Gianotti 2003): first interaction at Exp(1 lambda_I) (a MIP
track before it for charged pions), EM fraction f_em = 1 - (E / 1 GeV)^-0.18 with
Gaussian spread, the EM part as 1 + Poisson(0.5 ln E) pi0 sub-showers displaced
laterally (sub-clusters), the hadronic part as a Gamma profile in lambda_I with
t_max = 0.2 ln E + 0.7 lambda_I, a broad core+tail lateral profile, h/e < 1, and a
fraction of late (neutron) hits with delayed times.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import gammainc

__all__ = [
    "Deposits", "R_MOLIERE", "E_CRITICAL", "gp_parameters", "gflash_lateral", "slab_fractions",
    "sample_core_tail", "spots", "em_deposits", "hadron_deposits",
]

R_MOLIERE = 2.3      # cm, HGCAL average medium
E_CRITICAL = 0.00536  # GeV
Z_EFF = 82.0         # effective Z (Pb) of the CE-E absorber for the GFLASH lateral parameters
C_LIGHT = 29.9792458  # cm / ns


@dataclass
class Deposits:
    """Energy spots before cell quantization (all ``[M]``).

    Attributes:
        layer: int64 0-based layer index. side: int8 +1/-1 endcap.
        x, y: float64 cm. e: float64 GeV (calibrated). t: float64 ns delay w.r.t. prompt.
        owner: int64 particle index in the event (-1 noise).
    """

    layer: np.ndarray
    side: np.ndarray
    x: np.ndarray
    y: np.ndarray
    e: np.ndarray
    t: np.ndarray
    owner: np.ndarray

    @staticmethod
    def empty() -> "Deposits":
        f, i = np.zeros(0), np.zeros(0, np.int64)
        return Deposits(i, np.zeros(0, np.int8), f, f, f, f, i)

    @staticmethod
    def cat(parts) -> "Deposits":
        parts = [p for p in parts if p.e.size]
        if not parts:
            return Deposits.empty()
        return Deposits(*(np.concatenate([getattr(p, k) for p in parts])
                          for k in ("layer", "side", "x", "y", "e", "t", "owner")))


def gp_parameters(energy, rng, fluctuate: bool = True):
    """Grindhammer-Peters longitudinal parameters.

    Args:
        energy: ``[S]`` GeV. rng: numpy Generator. fluctuate: draw correlated
            ``(ln T, ln alpha)`` per shower, else use the means.

    Returns:
        ``(T [S], alpha [S], beta [S])`` with T the shower maximum in X0.
    """
    ln_y = np.log(np.maximum(np.asarray(energy, np.float64), 0.05) / E_CRITICAL)
    t_mean = np.maximum(-1.396 + 1.007 * ln_y, 0.5)
    a_mean = np.maximum(-0.0433 + 0.540 * ln_y, 1.2)
    ln_t, ln_a = np.log(t_mean), np.log(a_mean)
    if fluctuate:
        s_t = 1.0 / np.maximum(-2.506 + 1.245 * ln_y, 1.5)
        s_a = 1.0 / np.maximum(-0.08442 + 0.7904 * ln_y, 1.5)
        rho = np.clip(0.7858 - 0.0232 * ln_y, -0.99, 0.99)
        z1, z2 = rng.standard_normal((2, ln_y.size))
        ln_t = ln_t + s_t * z1
        ln_a = ln_a + s_a * (rho * z1 + np.sqrt(1 - rho**2) * z2)
    t = np.exp(ln_t)
    alpha = np.maximum(np.exp(ln_a), 1.05)
    return t, alpha, (alpha - 1.0) / t


def gflash_lateral(energy, tau, z_eff: float = Z_EFF):
    """GFLASH core/tail radii (units of R_M) and core probability at relative depth ``tau = t / T``.

    Args:
        energy: GeV, broadcastable with ``tau``. tau: depth over shower maximum.

    Returns:
        ``(r_core, r_tail, p_core)`` arrays of the broadcast shape.
    """
    ln_e = np.log(np.maximum(energy, 0.05))
    r_core = 0.0251 + 0.00319 * ln_e + (0.1162 - 0.000381 * z_eff) * tau
    k1, k2, k3, k4 = 0.659 - 0.00309 * z_eff, 0.645, -2.59, 0.3585 + 0.0421 * ln_e
    r_tail = k1 * (np.exp(k3 * (tau - k2)) + np.exp(k4 * (tau - k2)))
    p1, p2, p3 = 2.632 - 0.00094 * z_eff, 0.401 + 0.00187 * z_eff, 1.313 - 0.0686 * ln_e
    q = (p2 - tau) / p3
    p_core = np.clip(p1 * np.exp(q - np.exp(q)), 0.0, 1.0)
    return np.maximum(r_core, 1e-3), np.maximum(r_tail, r_core), p_core


def slab_fractions(edges, start, shape, rate):
    """Fraction of a Gamma(shape, rate) profile starting at ``start`` in each slab.

    Args:
        edges: ``[S, L+1]`` slab edges along the axis. start, shape, rate: ``[S]``.

    Returns:
        ``[S, L]`` float64 fractions (they sum to < 1 when the shower leaks).
    """
    d = np.maximum(edges - start[:, None], 0.0)
    cdf = gammainc(shape[:, None], rate[:, None] * d)
    return np.diff(cdf, axis=1)


def sample_core_tail(r_core, r_tail, p_core, rng):
    """Radii from ``p 2rRc^2/(r^2+Rc^2)^2 + (1-p) 2rRt^2/(r^2+Rt^2)^2`` (same shapes as inputs)."""
    u = rng.random(r_core.shape)
    big_r = np.where(rng.random(r_core.shape) < p_core, r_core, r_tail)
    u = np.minimum(u, 0.9999)
    return big_r * np.sqrt(u / (1.0 - u))


def spots(e_sl, e_spot, rng, max_spots: int = 4000):
    """Split per-(shower, layer) energies into equal spots.

    Args:
        e_sl: ``[S, L]`` GeV. e_spot: ``[L]`` nominal spot energy per layer.

    Returns:
        ``(cell [M], e [M])``: ``cell`` indexes the flattened non-empty ``(s, l)`` pairs
        returned third, as ``(s [K], l [K])``.
    """
    s, l = np.nonzero(e_sl > 0.05 * e_spot[None, :])
    ev = e_sl[s, l]
    n = np.clip(np.rint(ev / e_spot[l]), 1, max_spots).astype(np.int64)
    cell = np.repeat(np.arange(s.size), n)
    return cell, (ev / n)[cell], (s, l)


def _axis(geom, side, vtx, direction, disp, layer):
    """Axis position ``([K], [K])`` at ``layer [K]`` for straight lines from ``vtx [K, 3]``."""
    z = side * geom.z[layer]
    step = (z - vtx[:, 2]) / direction[:, 2]
    return vtx[:, 0] + step * direction[:, 0] + disp[:, 0], vtx[:, 1] + step * direction[:, 1] + disp[:, 1]


def _place(geom, e_sl, spot_frac, rng, side, vtx, direction, disp, radii, owner, delay=None):
    """Turn per-(shower, layer) energies into Deposits with core+tail lateral spreading."""
    cell, e, (s, l) = spots(e_sl, spot_frac * geom.mip_gev, rng)
    if cell.size == 0:
        return Deposits.empty()
    r_core, r_tail, p_core = (np.broadcast_to(r, e_sl.shape)[s, l][cell] for r in radii)
    r = sample_core_tail(r_core, r_tail, p_core, rng)
    phi = rng.uniform(0.0, 2 * np.pi, r.shape)
    ax, ay = _axis(geom, side[s], vtx[s], direction[s], disp[s], l)
    x = ax[cell] + r * np.cos(phi)
    y = ay[cell] + r * np.sin(phi)
    t = np.zeros_like(e) if delay is None else delay(e.shape)
    return Deposits(l[cell], side[s][cell].astype(np.int8), x, y, e, t, owner[s][cell])


def _fluctuate(e_sl, stochastic, rng):
    """Sampling fluctuations: Gamma with mean E and variance ``stochastic^2 E`` per layer."""
    out = np.zeros_like(e_sl)
    m = e_sl > 0
    k = e_sl[m] / stochastic**2
    out[m] = rng.gamma(k, stochastic**2)
    return out


def em_deposits(geom, energy, is_photon, side, vtx, direction, owner, rng, *, start=None, disp=None,
                stochastic: float = 0.22, spot_mip: float = 0.25, fluctuate: bool = True):
    """EM showers (gamma / e / pi0 sub-showers).

    Args:
        geom: HGCalGeometry. energy: ``[S]`` GeV. is_photon: ``[S]`` bool (adds the
            conversion depth). side: ``[S]`` +1/-1. vtx: ``[S, 3]`` cm. direction: ``[S, 3]``
            unit vectors. owner: ``[S]`` particle index. start: ``[S]`` extra start depth
            (X0 along the axis). disp: ``[S, 2]`` lateral axis displacement (cm).
        stochastic: sampling term (GeV^1/2). spot_mip: spot energy in MIPs.
        fluctuate: longitudinal (GP) and sampling fluctuations on/off.

    Returns:
        Deposits of all showers.
    """
    s_n = energy.size
    if s_n == 0:
        return Deposits.empty()
    start = np.zeros(s_n) if start is None else start
    disp = np.zeros((s_n, 2)) if disp is None else disp
    if fluctuate:
        start = start + np.where(is_photon, rng.exponential(9.0 / 7.0, s_n), 0.0)
    t_max, alpha, beta = gp_parameters(energy, rng, fluctuate)
    cos_t = np.abs(direction[:, 2])
    edges = geom.x0_edges[None, :] / cos_t[:, None]
    e_sl = energy[:, None] * slab_fractions(edges, start, alpha, beta)
    if fluctuate:
        e_sl = _fluctuate(e_sl, stochastic, rng)
    centre = 0.5 * (edges[:, 1:] + edges[:, :-1]) - start[:, None]
    tau = np.maximum(centre, 0.0) / t_max[:, None]
    rc, rt, pc = gflash_lateral(energy[:, None], tau)
    radii = (rc * R_MOLIERE, rt * R_MOLIERE, pc)
    return _place(geom, e_sl, spot_mip, rng, side, vtx, direction, disp, radii, owner)


def hadron_deposits(geom, energy, side, vtx, direction, owner, rng, *, h_over_e: float = 0.8,
                    stochastic: float = 0.6, stochastic_em: float = 0.22, late_fraction: float = 0.1,
                    late_tau_ns: float = 3.0, subcluster_spread: float = 3.0, spot_mip: float = 0.25,
                    had_spot_mip: float = 1.5, r_core: float = 3.0, r_tail: float = 10.0, p_core: float = 0.55):
    """Charged-pion showers: MIP track, pi0 sub-showers, hadronic core, late neutron hits.

    Args:
        energy, side, vtx, direction, owner: as in :func:`em_deposits`.
        h_over_e: visible fraction of the non-EM energy (non-compensation).
        late_fraction: share of the visible hadronic energy in late, sparse hits.
        late_tau_ns: mean delay of late hits (ns).
        subcluster_spread: lateral sigma (cm) of the pi0 sub-shower axes.
        spot_mip: spot energy (MIPs) of the EM sub-showers. had_spot_mip: spot energy of the
            hadronic part (larger: hadronic deposits are clumpy, track-like).
        r_core, r_tail, p_core: hadronic lateral profile (cm).

    Returns:
        Deposits of all showers.
    """
    s_n = energy.size
    if s_n == 0:
        return Deposits.empty()
    cos_t = np.abs(direction[:, 2])
    lam_edges = geom.lambda_edges[None, :] / cos_t[:, None]
    lam0 = rng.exponential(1.0, s_n)
    parts = []
    # MIP track in the slabs fully before the first interaction
    before = lam_edges[:, 1:] <= lam0[:, None]
    mip = np.where(before, geom.mip_gev[None, :] / cos_t[:, None], 0.0)
    mip = mip * rng.gamma(6.0, 1 / 6.0, mip.shape)
    s, l = np.nonzero(mip > 0)
    if s.size:
        ax, ay = _axis(geom, side[s], vtx[s], direction[s], np.zeros((s.size, 2)), l)
        parts.append(Deposits(l, side[s].astype(np.int8), ax, ay, mip[s, l],
                              np.zeros(s.size), owner[s]))
    f_em = np.clip(1.0 - np.maximum(energy, 1.0) ** -0.18 + 0.12 * rng.standard_normal(s_n), 0.0, 0.95)
    # EM part: pi0 sub-showers starting just after the interaction point
    n_sub = 1 + rng.poisson(0.5 * np.log(np.maximum(energy, 1.0)))
    sub_owner = np.repeat(np.arange(s_n), n_sub)
    frac = rng.gamma(1.0, 1.0, sub_owner.size)
    frac /= np.bincount(sub_owner, frac, s_n)[sub_owner]
    e_sub = (f_em * energy)[sub_owner] * frac
    lam_start = lam0[sub_owner] + rng.exponential(0.05, sub_owner.size)
    cs = cos_t[sub_owner]
    x0_start = np.interp(lam_start * cs, geom.lambda_edges, geom.x0_edges,
                         right=geom.x0_edges[-1] * 2) / cs
    disp = subcluster_spread * rng.standard_normal((sub_owner.size, 2))
    keep = e_sub > 0.05
    k = sub_owner[keep]
    parts.append(em_deposits(geom, e_sub[keep], np.zeros(k.size, bool), side[k], vtx[k], direction[k],
                             owner[k], rng, start=x0_start[keep], disp=disp[keep], stochastic=stochastic_em,
                             spot_mip=spot_mip))
    # hadronic part: Gamma profile in lambda_I
    e_had = (1.0 - f_em) * energy * h_over_e
    t_h = 0.2 * np.log(np.maximum(energy, 1.0)) + 0.7
    rate = np.full(s_n, 1.2)
    shape = 1.0 + rate * t_h
    prof = slab_fractions(lam_edges, lam0, shape, rate)
    e_sl = _fluctuate(e_had[:, None] * prof, stochastic, rng)
    prompt, late = (1.0 - late_fraction) * e_sl, late_fraction * e_sl
    zeros = np.zeros((s_n, 2))
    radii = (np.float64(r_core), np.float64(r_tail), np.float64(p_core))
    parts.append(_place(geom, prompt, had_spot_mip, rng, side, vtx, direction, zeros, radii, owner))
    # late neutron hits: few, sparse, energetic spots (about 3 MIP) far from the axis, delayed
    late_radii = (np.float64(2 * r_tail), np.float64(2 * r_tail), np.float64(1.0))
    parts.append(_place(geom, late, 3.0, rng, side, vtx, direction, zeros, late_radii, owner,
                        delay=lambda shp: rng.exponential(late_tau_ns, shp)))
    return Deposits.cat(parts)
