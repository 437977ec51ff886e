"""cms-pepr-style npz files, one event per file (as read by ``torch_cmspepr.dataset.TauDataset``).

Keys written (``N`` hits, ``P`` particles):

- ``recHitFeatures`` ``[N, 9]`` float32: energy, eta, 0 (track flag), theta, R, x, y, z, time;
- ``recHitTruthClusterIdx`` ``[N, 1]`` int32 (-1 noise);
- ``recHitTruthEnergy`` ``[N, 1]``, ``recHitTruthPosition`` ``[N, 2]`` (the particle's impact
  x, y at the front face), ``recHitTruthTime`` ``[N, 1]``, ``recHitTruthID`` ``[N, 1]`` (pdgId),
  all 0 for noise hits;
- extras for a lossless round trip: ``recHitLayer`` ``[N]`` int32, ``recHitTruthFraction`` ``[N]``
  float32 and ``particle{Energy,Eta,Phi,PdgId,IsPU,RecEnergy}`` ``[P]``.

Files without the extras still read: the layer is taken from the nearest geometry
layer in ``|z|`` and the particle table is rebuilt from the per-hit truth.
"""
from __future__ import annotations

import glob
import os
from typing import Iterable, Iterator, List, Optional

import numpy as np

from .event import CaloEvent, validate_event
from .geometry import default_geometry, theta_of_eta

__all__ = ["write_npz", "read_npz", "write_npz_dir", "iterate_npz_dir", "NPZ_PARTICLE_KEYS"]

NPZ_PARTICLE_KEYS = {"energy": "particleEnergy", "eta": "particleEta", "phi": "particlePhi",
                     "pdgid": "particlePdgId", "is_pu": "particleIsPU", "rec_energy": "particleRecEnergy"}


def write_npz(path, event: CaloEvent, compressed: bool = False) -> None:
    """Write one event to ``path`` (keys in the module docstring)."""
    feats = event.pepr_features()
    out = {"recHitFeatures": feats, "recHitLayer": event.layer.astype(np.int32)}
    if event.has_truth:
        idx = event.truth_idx.astype(np.int32)
        p = event.particles
        has = idx >= 0
        j = np.where(has, idx, 0)
        z0 = default_geometry().z[0]
        th = theta_of_eta(np.abs(p["eta"].astype(np.float64))) if event.n_particles else np.zeros(0)
        r0 = z0 * np.tan(th)
        px, py = (r0 * np.cos(p["phi"]), r0 * np.sin(p["phi"])) if event.n_particles else (np.zeros(0),) * 2

        def per_hit(v):
            return np.where(has, v[j], 0).astype(np.float32)[:, None] if event.n_particles else \
                np.zeros((idx.size, 1), np.float32)

        out.update(
            recHitTruthClusterIdx=idx[:, None], recHitTruthEnergy=per_hit(p["energy"]),
            recHitTruthPosition=np.concatenate([per_hit(px), per_hit(py)], axis=1),
            recHitTruthTime=np.zeros((idx.size, 1), np.float32), recHitTruthID=per_hit(p["pdgid"]),
            recHitTruthFraction=event.truth_frac.astype(np.float32))
        out.update({key: p[k] for k, key in NPZ_PARTICLE_KEYS.items()})
    (np.savez_compressed if compressed else np.savez)(path, **out)


def _layer_from_z(z):
    zs = default_geometry().z
    i = np.clip(np.searchsorted(zs, np.abs(z)), 1, zs.size - 1)
    i = np.where(np.abs(np.abs(z) - zs[i - 1]) < np.abs(zs[i] - np.abs(z)), i - 1, i)
    return (i + 1).astype(np.int32)


def read_npz(path, truth: bool = True, negative: str = "clip") -> CaloEvent:
    """Read one event.

    Raises:
        ValueError: a missing key (named), ``recHitFeatures`` not ``[N, 9]``, a truth array
            of a different length, NaN values, negative energies with ``negative="raise"``.
    """
    path = os.fspath(path)
    with np.load(path) as d:
        if "recHitFeatures" not in d:
            raise ValueError(f"{path}: missing key 'recHitFeatures'")
        f = d["recHitFeatures"]
        if f.ndim != 2 or f.shape[1] != 9:
            raise ValueError(f"{path}: 'recHitFeatures' must be [N, 9], got {f.shape}")
        layer = d["recHitLayer"] if "recHitLayer" in d else _layer_from_z(f[:, 7])
        kw = dict(x=f[:, 5], y=f[:, 6], z=f[:, 7], energy=f[:, 0], time=f[:, 8], layer=layer)
        parts = None
        if truth:
            if "recHitTruthClusterIdx" not in d:
                raise ValueError(f"{path}: missing key 'recHitTruthClusterIdx'")
            idx = d["recHitTruthClusterIdx"].reshape(-1).astype(np.int64)
            if idx.size != f.shape[0]:
                raise ValueError(f"{path}: 'recHitTruthClusterIdx' has {idx.size} entries but "
                                 f"'recHitFeatures' has {f.shape[0]} rows")
            kw["truth_frac"] = d["recHitTruthFraction"] if "recHitTruthFraction" in d else None
            if all(k in d for k in NPZ_PARTICLE_KEYS.values()):
                parts = {k: d[key] for k, key in NPZ_PARTICLE_KEYS.items()}
            else:   # rebuild from the per-hit truth; relabel to 0..P-1
                uniq, inv = np.unique(idx[idx >= 0], return_inverse=True)
                new = np.full(idx.size, -1, np.int64)
                new[idx >= 0] = inv
                first = np.zeros(uniq.size, np.int64)
                first[inv[::-1]] = np.flatnonzero(idx >= 0)[::-1]
                e_t = d["recHitTruthEnergy"].reshape(-1) if "recHitTruthEnergy" in d else np.zeros(idx.size)
                pid = d["recHitTruthID"].reshape(-1) if "recHitTruthID" in d else np.zeros(idx.size)
                eta_h = f[:, 1]
                parts = dict(energy=e_t[first], eta=eta_h[first], phi=np.arctan2(f[first, 6], f[first, 5]),
                             pdgid=pid[first], is_pu=np.zeros(uniq.size, bool),
                             rec_energy=np.bincount(inv, np.maximum(f[idx >= 0, 0], 0), uniq.size))
                idx = new
            kw["truth_idx"] = idx
    ev = CaloEvent(**kw, particles=parts) if parts is not None else CaloEvent(**kw)
    return validate_event(ev, negative=negative, where=path)


def write_npz_dir(directory, events: Iterable[CaloEvent], prefix: str = "event", start: int = 0,
                  compressed: bool = False) -> List[str]:
    """Write ``<directory>/<prefix>_<i:06d>.npz`` per event; returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for i, ev in enumerate(events, start):
        p = os.path.join(os.fspath(directory), f"{prefix}_{i:06d}.npz")
        write_npz(p, ev, compressed)
        paths.append(p)
    return paths


def iterate_npz_dir(directory, truth: bool = True, negative: str = "clip",
                    pattern: Optional[str] = "*.npz") -> Iterator[CaloEvent]:
    """Events of every npz file in ``directory`` (sorted by name)."""
    files = sorted(glob.glob(os.path.join(os.fspath(directory), pattern)))
    if not files:
        raise FileNotFoundError(f"no files matching {pattern!r} in {directory}")
    for p in files:
        yield read_npz(p, truth, negative)
