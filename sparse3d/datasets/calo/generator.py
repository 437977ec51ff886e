"""Synthetic HGCAL-like events: several overlapping gamma / e / pi+- showers, noise, pileup.

Deterministic by seed: event ``i`` of seed ``s`` uses ``numpy.random.default_rng([s, i])``,
so an event does not depend on how many events are made or in which chunks.

Per event:

1. ``n_particles`` hard particles (uniform in the configured range) in 1..``max_groups``
   "jets": each jet picks an endcap, ``eta`` and ``phi``; its particles lie within
   ``spread_dr`` of the jet axis in (eta, phi), so showers overlap. Types gamma / e+- /
   pi+- by ``p_gamma, p_electron`` (rest pions); energy log-uniform in ``energy_range``.
2. Optional pileup: Poisson(``pileup``) soft particles (60 % photons, 40 % pions,
   E = 0.3 GeV + Exp(``pileup_energy``)) anywhere in the acceptance, from vertices with
   z ~ N(0, 5 cm), t ~ N(0, 0.18 ns). They are truth particles with ``is_pu = True``.
3. Showers (:mod:`.showers`) -> energy spots -> acceptance cut -> square cells.
4. Cell energy = sum of spots + N(0, ``noise_mip`` MIP); kept if > ``threshold_mip`` MIP.
   Hit time = energy-weighted spot delay + TOF difference from the vertex, smeared by
   ``sqrt(time_resolution^2 + (time_noise / E[MIP])^2)`` (50 ps for large hits).
5. Poisson(``noise_hits``) noise-only hits at random cells in the acceptance with
   energies from the Gaussian noise tail above threshold (about 1 MIP), truth -1.

Truth per hit: the particle with the largest true energy in the cell and its share.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from scipy.special import ndtr, ndtri

from .event import CaloEvent
from .geometry import HGCalGeometry, default_geometry, theta_of_eta
from .showers import C_LIGHT, Deposits, em_deposits, hadron_deposits

__all__ = ["CaloGenConfig", "generate_event", "generate_events", "generate_single_showers",
           "PDG_GAMMA", "PDG_ELECTRON", "PDG_PION"]

PDG_GAMMA, PDG_ELECTRON, PDG_PION = 22, 11, 211


@dataclass
class CaloGenConfig:
    """Generator settings (defaults: the embedded default data set).

    Attributes:
        n_particles: inclusive range of hard particles per event.
        max_groups: up to this many jets per event. spread_dr: jet radius in (eta, phi).
        p_gamma, p_electron: type probabilities (pions get the rest).
        energy_range: GeV, log-uniform. eta_range: ``|eta|`` range of the particles.
        pileup: mean number of pileup particles (0 = none). pileup_energy: GeV.
        noise_hits: mean number of noise-only hits per event.
        noise_mip: cell noise sigma in MIPs. threshold_mip: hit threshold in MIPs.
        time_resolution: constant time term (ns). time_noise: ns x MIP term.
        stochastic_em, stochastic_had: sampling terms (GeV^1/2). h_over_e: hadronic
            response. late_fraction, late_tau_ns: late neutron hits. spot_mip: spot energy.
        fluctuations: shower and sampling fluctuations on/off.
    """

    n_particles: Tuple[int, int] = (2, 6)
    max_groups: int = 2
    spread_dr: float = 0.2
    p_gamma: float = 0.35
    p_electron: float = 0.30
    energy_range: Tuple[float, float] = (2.0, 100.0)
    eta_range: Tuple[float, float] = (1.6, 2.9)
    pileup: float = 0.0
    pileup_energy: float = 1.5
    noise_hits: float = 200.0
    noise_mip: float = 0.25
    threshold_mip: float = 1.0
    time_resolution: float = 0.05
    time_noise: float = 0.2
    stochastic_em: float = 0.22
    stochastic_had: float = 0.6
    h_over_e: float = 0.8
    late_fraction: float = 0.1
    late_tau_ns: float = 3.0
    spot_mip: float = 0.25
    fluctuations: bool = True

    def __post_init__(self):
        lo, hi = self.n_particles
        if not (0 <= lo <= hi):
            raise ValueError(f"n_particles must be a range 0 <= lo <= hi, got {self.n_particles}")
        if not (0 < self.energy_range[0] <= self.energy_range[1]):
            raise ValueError(f"energy_range must be 0 < lo <= hi GeV, got {self.energy_range}")
        if not (1.5 <= self.eta_range[0] <= self.eta_range[1] <= 3.0):
            raise ValueError(f"eta_range must lie in [1.5, 3.0], got {self.eta_range}")
        for k in ("pileup", "noise_hits", "noise_mip", "threshold_mip", "spread_dr"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.p_gamma < 0 or self.p_electron < 0 or self.p_gamma + self.p_electron > 1:
            raise ValueError("p_gamma, p_electron must be >= 0 with p_gamma + p_electron <= 1")


def _directions(eta, phi):
    th = theta_of_eta(eta)
    return np.stack([np.sin(th) * np.cos(phi), np.sin(th) * np.sin(phi), np.cos(th)], axis=1)


def _hard_particles(cfg: CaloGenConfig, rng):
    n = int(rng.integers(cfg.n_particles[0], cfg.n_particles[1] + 1))
    n_g = int(rng.integers(1, max(cfg.max_groups, 1) + 1))
    lo, hi = cfg.eta_range
    margin = min(cfg.spread_dr, 0.5 * (hi - lo))
    g_side = rng.choice([-1.0, 1.0], n_g)
    g_eta = rng.uniform(lo + margin, hi - margin, n_g)
    g_phi = rng.uniform(-np.pi, np.pi, n_g)
    g = rng.integers(0, n_g, n)
    rad = cfg.spread_dr * np.sqrt(rng.random(n))
    ang = rng.uniform(0, 2 * np.pi, n)
    eta = g_side[g] * np.clip(g_eta[g] + rad * np.cos(ang), lo, hi)
    phi = np.mod(g_phi[g] + rad * np.sin(ang) + np.pi, 2 * np.pi) - np.pi
    u = rng.random(n)
    charge = rng.choice([-1, 1], n)
    pdg = np.where(u < cfg.p_gamma, PDG_GAMMA,
                   np.where(u < cfg.p_gamma + cfg.p_electron, PDG_ELECTRON * charge, PDG_PION * charge))
    e_lo, e_hi = np.log(cfg.energy_range[0]), np.log(cfg.energy_range[1])
    energy = np.exp(rng.uniform(e_lo, e_hi, n))
    return energy, eta, phi, pdg, np.zeros((n, 3)), np.zeros(n)


def _pileup_particles(cfg: CaloGenConfig, rng):
    n = int(rng.poisson(cfg.pileup)) if cfg.pileup > 0 else 0
    eta = rng.choice([-1.0, 1.0], n) * rng.uniform(1.5, 3.0, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    pdg = np.where(rng.random(n) < 0.6, PDG_GAMMA, PDG_PION * rng.choice([-1, 1], n))
    energy = 0.3 + rng.exponential(cfg.pileup_energy, n)
    vtx = np.zeros((n, 3))
    vtx[:, 2] = rng.normal(0.0, 5.0, n)
    return energy, eta, phi, pdg, vtx, rng.normal(0.0, 0.18, n)


def _showers(cfg, geom, energy, eta, phi, pdg, vtx, rng) -> Deposits:
    direction = _directions(eta, phi)
    side = np.sign(eta)
    owner = np.arange(energy.size)
    apdg = np.abs(pdg)
    em = apdg != PDG_PION
    parts = [em_deposits(geom, energy[em], apdg[em] == PDG_GAMMA, side[em], vtx[em], direction[em], owner[em],
                         rng, stochastic=cfg.stochastic_em, spot_mip=cfg.spot_mip, fluctuate=cfg.fluctuations)]
    had = ~em
    if had.any():
        parts.append(hadron_deposits(geom, energy[had], side[had], vtx[had], direction[had], owner[had], rng,
                                     h_over_e=cfg.h_over_e, stochastic=cfg.stochastic_had,
                                     stochastic_em=cfg.stochastic_em, late_fraction=cfg.late_fraction,
                                     late_tau_ns=cfg.late_tau_ns, spot_mip=cfg.spot_mip))
    return Deposits.cat(parts)


def _tail_sample(k, n, rng):
    """``n`` draws of a standard normal conditioned on ``> k``."""
    return -ndtri(rng.random(n) * ndtr(-k))


def _digitize(cfg, geom, dep: Deposits, n_part: int, t_vtx, vtx, rng):
    """Cells from spots: energies, truth, times, noise, threshold. Returns hit arrays."""
    keep = geom.in_acceptance(dep.layer, dep.x, dep.y)
    dep = Deposits(*(getattr(dep, k)[keep] for k in ("layer", "side", "x", "y", "e", "t", "owner")))
    key, cx, cy = geom.cell_of(dep.layer, dep.side, dep.x, dep.y)
    ukey, first, inv = np.unique(key, return_index=True, return_inverse=True)
    n_c = ukey.size
    z_dep = dep.side * geom.z[dep.layer]
    if n_part:   # time of flight from the particle's vertex minus the nominal one from the origin
        v = vtx[dep.owner]
        d_v = np.sqrt((dep.x - v[:, 0]) ** 2 + (dep.y - v[:, 1]) ** 2 + (z_dep - v[:, 2]) ** 2)
        t_dep = dep.t + t_vtx[dep.owner] + (d_v - np.sqrt(dep.x**2 + dep.y**2 + z_dep**2)) / C_LIGHT
    else:
        t_dep = dep.t
    e_true = np.bincount(inv, dep.e, n_c)
    t_cell = np.bincount(inv, dep.e * t_dep, n_c) / np.maximum(e_true, 1e-30)
    pair = inv * max(n_part, 1) + dep.owner
    upair, pinv = np.unique(pair, return_inverse=True)
    pe = np.bincount(pinv, dep.e, upair.size)
    pc, po = upair // max(n_part, 1), upair % max(n_part, 1)
    order = np.lexsort((pe, pc))
    last = np.r_[np.flatnonzero(np.diff(pc[order])), order.size - 1] if order.size else np.zeros(0, np.int64)
    best = order[last]
    owner, frac = po[best], pe[best] / np.maximum(e_true, 1e-30)
    layer, side = dep.layer[first], dep.side[first]
    mip = geom.mip_gev[layer]
    e_meas = e_true + (cfg.noise_mip * mip * rng.standard_normal(n_c) if cfg.noise_mip > 0 else 0.0)
    sel = e_meas > cfg.threshold_mip * mip
    hits = dict(key=ukey[sel], layer=layer[sel], side=side[sel], x=cx[first][sel], y=cy[first][sel],
                e=e_meas[sel], t=t_cell[sel], owner=owner[sel].astype(np.int64), frac=frac[sel])
    noise = _noise_hits(cfg, geom, rng, hits["key"])
    hits = {k: np.concatenate([hits[k], noise[k]]) for k in hits}
    mip_h = geom.mip_gev[hits["layer"]]
    sigma_t = np.sqrt(cfg.time_resolution**2 + (cfg.time_noise * mip_h / np.maximum(hits["e"], 1e-9)) ** 2)
    hits["t"] = hits["t"] + sigma_t * rng.standard_normal(sigma_t.size)
    return hits


def _noise_hits(cfg, geom, rng, taken):
    n = int(rng.poisson(cfg.noise_hits)) if cfg.noise_hits > 0 and cfg.noise_mip > 0 else 0
    layer = rng.integers(0, geom.n_layers, n)
    side = rng.choice(np.array([-1, 1], np.int8), n)
    r_lo, r_hi = geom.r_range(geom.z[layer])
    r = np.sqrt(rng.uniform(r_lo**2, r_hi**2))
    ph = rng.uniform(-np.pi, np.pi, n)
    key, cx, cy = geom.cell_of(layer, side, r * np.cos(ph), r * np.sin(ph))
    _, first = np.unique(key, return_index=True)
    ok = np.zeros(n, bool)
    ok[first] = True
    ok &= ~np.isin(key, taken) & geom.in_acceptance(layer, cx, cy)
    k = cfg.threshold_mip / cfg.noise_mip if cfg.noise_mip > 0 else 0.0
    e = cfg.noise_mip * geom.mip_gev[layer] * _tail_sample(k, n, rng)
    t = rng.uniform(-2.0, 2.0, n)
    return dict(key=key[ok], layer=layer[ok], side=side[ok], x=cx[ok], y=cy[ok], e=e[ok], t=t[ok],
                owner=np.full(int(ok.sum()), -1, np.int64), frac=np.ones(int(ok.sum())))


def generate_event(config: Optional[CaloGenConfig] = None, seed: int = 0, index: int = 0,
                   geometry: Optional[HGCalGeometry] = None) -> CaloEvent:
    """Generate event ``index`` of the stream with ``seed`` (see module docstring).

    Returns:
        A :class:`CaloEvent` with truth (hits shuffled; particles: hard ones first, then PU).
    """
    cfg = config or CaloGenConfig()
    geom = geometry or default_geometry()
    rng = np.random.default_rng([int(seed), int(index)])
    hard = _hard_particles(cfg, rng)
    pu = _pileup_particles(cfg, rng)
    energy, eta, phi, pdg, vtx, t_vtx = (np.concatenate([a, b]) for a, b in zip(hard, pu))
    n_part = energy.size
    dep = _showers(cfg, geom, energy, eta, phi, pdg, vtx, rng)
    h = _digitize(cfg, geom, dep, n_part, t_vtx, vtx, rng)
    perm = rng.permutation(h["e"].size)
    h = {k: v[perm] for k, v in h.items()}
    rec = np.bincount(h["owner"][h["owner"] >= 0], h["e"][h["owner"] >= 0], n_part) if n_part else np.zeros(0)
    is_pu = np.r_[np.zeros(hard[0].size, bool), np.ones(pu[0].size, bool)]
    return CaloEvent(
        x=h["x"].astype(np.float32), y=h["y"].astype(np.float32),
        z=(h["side"] * geom.z[h["layer"]]).astype(np.float32), energy=h["e"].astype(np.float32),
        time=h["t"].astype(np.float32), layer=(h["layer"] + 1).astype(np.int32),
        truth_idx=h["owner"].astype(np.int32), truth_frac=h["frac"].astype(np.float32),
        particles=dict(energy=energy.astype(np.float32), eta=eta.astype(np.float32), phi=phi.astype(np.float32),
                       pdgid=pdg.astype(np.int32), is_pu=is_pu, rec_energy=rec.astype(np.float32)))


def generate_events(n_events: int, config: Optional[CaloGenConfig] = None, seed: int = 0, start: int = 0):
    """List of events ``start .. start + n_events - 1`` of the stream with ``seed``."""
    geom = default_geometry()
    return [generate_event(config, seed, i, geom) for i in range(start, start + int(n_events))]


def generate_single_showers(n_showers: int, particle: str = "electron", energy_range=(1.0, 1000.0), seed: int = 0,
                            r_edges=(0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 10.0, 20.0), n_alpha: int = 16,
                            config: Optional[CaloGenConfig] = None, batch: int = 32):
    """Single showers at normal incidence, voxelised CaloChallenge-style (no noise, no threshold).

    Args:
        n_showers: number of showers. particle: ``"electron" | "photon" | "pion"``.
        energy_range: GeV, log-uniform. r_edges: radial bin edges (cm) around the axis.
        n_alpha: angular bins.

    Returns:
        ``(incident_energies [N, 1] float32 MeV, showers [N, L * n_alpha * n_r] float32 MeV)``;
        voxel index ``(layer * n_alpha + alpha) * n_r + r`` (radial fastest, then angular, then layer).
    """
    kinds = {"electron": PDG_ELECTRON, "photon": PDG_GAMMA, "pion": PDG_PION}
    if particle not in kinds:
        raise ValueError(f"particle must be one of {sorted(kinds)}, got {particle!r}")
    cfg = config or CaloGenConfig()
    geom = default_geometry()
    edges = np.asarray(r_edges, np.float64)
    if edges.ndim != 1 or edges.size < 2 or (np.diff(edges) <= 0).any() or edges[0] < 0:
        raise ValueError(f"r_edges must be increasing and >= 0, got {r_edges}")
    n_r, n_l = edges.size - 1, geom.n_layers
    rng = np.random.default_rng([int(seed), 1 << 20])
    e_lo, e_hi = np.log(energy_range[0]), np.log(energy_range[1])
    energy = np.exp(rng.uniform(e_lo, e_hi, n_showers))
    showers = np.zeros((n_showers, n_l * n_alpha * n_r), np.float64)
    r0 = 90.0   # the axis: normal incidence at x = 90 cm, y = 0 (|eta| ~ 2)
    for b0 in range(0, n_showers, batch):
        e = energy[b0:b0 + batch]
        s = e.size
        vtx = np.tile([r0, 0.0, 0.0], (s, 1))
        direction = np.tile([0.0, 0.0, 1.0], (s, 1))
        own, side = np.arange(s), np.ones(s)
        if particle == "pion":
            dep = hadron_deposits(geom, e, side, vtx, direction, own, rng, h_over_e=cfg.h_over_e,
                                  stochastic=cfg.stochastic_had, stochastic_em=cfg.stochastic_em,
                                  late_fraction=cfg.late_fraction, late_tau_ns=cfg.late_tau_ns)
        else:
            dep = em_deposits(geom, e, np.full(s, particle == "photon"), side, vtx, direction, own, rng,
                              stochastic=cfg.stochastic_em, fluctuate=cfg.fluctuations)
        dx, dy = dep.x - r0, dep.y
        rb = np.searchsorted(edges, np.hypot(dx, dy), side="right") - 1
        ab = np.minimum((np.mod(np.arctan2(dy, dx), 2 * np.pi) / (2 * np.pi) * n_alpha).astype(np.int64),
                        n_alpha - 1)
        ok = (rb >= 0) & (rb < n_r)
        vox = (dep.layer * n_alpha + ab) * n_r + rb
        n_vox = showers.shape[1]
        flat = dep.owner[ok] * n_vox + vox[ok]
        showers[b0:b0 + s] = np.bincount(flat, dep.e[ok] * 1e3, s * n_vox).reshape(s, n_vox)
    return (energy[:, None] * 1e3).astype(np.float32), showers.astype(np.float32)
