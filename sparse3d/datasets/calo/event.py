"""One calorimeter event: reconstructed hits plus optional truth, and input validation.

Bad-input rules (applied by every reader through :func:`validate_event`):

- per-hit arrays of different lengths -> ``ValueError`` naming both fields;
- NaN / inf in any float hit field -> ``ValueError`` naming the field and the event;
- an event with zero hits is valid (it passes through and yields no clusters);
- **negative energies** (``negative=``):
  ``"clip"`` (default) sets them to 0 and keeps the hit, so hit indices and truth stay
  aligned (a 0-energy hit adds nothing to any energy sum or density);
  ``"drop"`` removes those hits; ``"raise"`` raises ``ValueError``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Optional

import numpy as np

__all__ = ["CaloEvent", "validate_event", "HIT_FIELDS", "PARTICLE_FIELDS", "NEGATIVE_RULES"]

HIT_FIELDS = ("x", "y", "z", "energy", "time", "layer")
PARTICLE_FIELDS = ("energy", "eta", "phi", "pdgid", "is_pu", "rec_energy")
NEGATIVE_RULES = ("clip", "drop", "raise")
_HIT_DTYPES = {"x": np.float32, "y": np.float32, "z": np.float32, "energy": np.float32,
               "time": np.float32, "layer": np.int32, "truth_idx": np.int32, "truth_frac": np.float32}
_PART_DTYPES = {"energy": np.float32, "eta": np.float32, "phi": np.float32, "pdgid": np.int32,
                "is_pu": np.bool_, "rec_energy": np.float32}


def _empty_particles():
    return {k: np.zeros(0, d) for k, d in _PART_DTYPES.items()}


@dataclass
class CaloEvent:
    """Hits of one event (all ``[N]``) and the truth particles (all ``[P]``).

    Attributes:
        x, y, z: float32 hit position (cm); ``z < 0`` in the negative endcap.
        energy: float32 calibrated hit energy (GeV). time: float32 (ns, after
            time-of-flight correction; prompt hits are ~0).
        layer: int32 layer number 1..50 (1-28 CE-E).
        truth_idx: int32 index of the particle that deposited most of the hit's
            energy, -1 for noise; ``None`` when the input has no truth.
        truth_frac: float32 that particle's share of the hit's true energy (noise: 1).
        particles: dict of ``[P]`` arrays ``energy`` (GeV, true), ``eta``, ``phi``,
            ``pdgid`` (int32), ``is_pu`` (bool), ``rec_energy`` (sum of the hit energy
            assigned to the particle).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    energy: np.ndarray
    time: np.ndarray
    layer: np.ndarray
    truth_idx: Optional[np.ndarray] = None
    truth_frac: Optional[np.ndarray] = None
    particles: dict = field(default_factory=_empty_particles)

    @property
    def n_hits(self) -> int:
        return int(self.energy.shape[0])

    @property
    def n_particles(self) -> int:
        return int(self.particles["energy"].shape[0]) if self.particles else 0

    @property
    def has_truth(self) -> bool:
        return self.truth_idx is not None

    def labels(self, pileup_as_noise: bool = False) -> np.ndarray:
        """``[N]`` int64 instance label per hit (-1 noise); PU particles -> -1 if asked."""
        if self.truth_idx is None:
            raise ValueError("event has no truth (truth_idx is None)")
        lab = self.truth_idx.astype(np.int64)
        if pileup_as_noise and self.n_particles:
            is_pu = np.asarray(self.particles["is_pu"], bool)
            lab = np.where((lab >= 0) & is_pu[np.maximum(lab, 0)], -1, lab)
        return lab

    def pepr_features(self) -> np.ndarray:
        """cms-pepr ``recHitFeatures`` ``[N, 9]`` float32:
        (energy, eta, 0 = track flag, theta, R, x, y, z, time)."""
        x, y, z = (a.astype(np.float64) for a in (self.x, self.y, self.z))
        r3 = np.sqrt(x * x + y * y + z * z)
        theta = np.arccos(np.divide(z, r3, out=np.ones_like(z), where=r3 > 0))
        eta = np.arcsinh(np.divide(z, np.hypot(x, y), out=np.zeros_like(z), where=np.hypot(x, y) > 0))
        cols = [self.energy, eta, np.zeros_like(x), theta, r3, x, y, z, self.time]
        return np.stack([np.asarray(c, np.float32) for c in cols], axis=1) if x.size else np.zeros((0, 9), np.float32)

    def subset(self, mask) -> "CaloEvent":
        """Event with only the hits selected by ``mask`` (bool ``[N]`` or indices)."""
        kw = {k: getattr(self, k)[mask] for k in HIT_FIELDS}
        if self.truth_idx is not None:
            kw["truth_idx"] = self.truth_idx[mask]
            kw["truth_frac"] = None if self.truth_frac is None else self.truth_frac[mask]
        return replace(self, **kw)


def validate_event(ev: CaloEvent, *, negative: str = "clip", where: str = "event") -> CaloEvent:
    """Check and normalise one event (dtypes, lengths, NaN, negative energies).

    Args:
        ev: the event. negative: ``"clip" | "drop" | "raise"`` (module docstring).
        where: text naming the event in error messages (e.g. ``"file.root entry 12"``).

    Returns:
        The event with contiguous arrays of the documented dtypes.

    Raises:
        ValueError: length mismatch, NaN/inf, negative energy with ``negative="raise"``,
            unknown rule, truth index out of range.
    """
    if negative not in NEGATIVE_RULES:
        raise ValueError(f"negative must be one of {NEGATIVE_RULES}, got {negative!r}")
    kw = {}
    n = None
    for f in fields(ev):
        if f.name == "particles":
            continue
        a = getattr(ev, f.name)
        if a is None:
            kw[f.name] = None
            continue
        a = np.ascontiguousarray(np.asarray(a).reshape(-1), dtype=_HIT_DTYPES[f.name])
        if n is None:
            n = a.shape[0]
        elif a.shape[0] != n:
            raise ValueError(f"{where}: hit field '{f.name}' has {a.shape[0]} entries but 'x' has {n}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            bad = int(np.flatnonzero(~np.isfinite(a))[0])
            raise ValueError(f"{where}: hit field '{f.name}' has NaN/inf (first at hit {bad})")
        kw[f.name] = a
    if kw["truth_idx"] is not None and kw["truth_frac"] is None:
        kw["truth_frac"] = np.ones(n, np.float32)
    parts = {k: np.ascontiguousarray(np.asarray(ev.particles.get(k, np.zeros(0))).reshape(-1), dtype=d)
             for k, d in _PART_DTYPES.items()} if ev.particles else _empty_particles()
    n_p = parts["energy"].shape[0]
    for k, a in parts.items():
        if a.shape[0] != n_p:
            raise ValueError(f"{where}: particle field '{k}' has {a.shape[0]} entries but 'energy' has {n_p}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise ValueError(f"{where}: particle field '{k}' has NaN/inf")
    out = CaloEvent(**kw, particles=parts)
    if out.truth_idx is not None and n and (out.truth_idx.min() < -1 or out.truth_idx.max() >= n_p):
        raise ValueError(f"{where}: hit field 'truth_idx' out of range [-1, {n_p - 1}] "
                         f"(got {int(out.truth_idx.min())}..{int(out.truth_idx.max())})")
    neg = out.energy < 0
    if neg.any():
        if negative == "raise":
            raise ValueError(f"{where}: hit field 'energy' has {int(neg.sum())} negative values "
                             f"(first at hit {int(np.flatnonzero(neg)[0])}); use negative='clip' or 'drop'")
        if negative == "clip":
            out.energy = np.where(neg, np.float32(0), out.energy)
        else:
            out = out.subset(~neg)
    return out
