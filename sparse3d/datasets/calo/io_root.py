"""ROOT I/O (uproot + awkward) with NanoML-like jagged branches, streamed in chunks.

Tree ``Events``; one entry per event:

=============================================  =========  ==================================
branch                                         type       meaning
=============================================  =========  ==================================
``nRecHitHGC``                                 int32      hits in the event (counter)
``RecHitHGC_{x,y,z}``                          float32[]  hit position (cm)
``RecHitHGC_energy`` / ``RecHitHGC_time``      float32[]  GeV / ns
``RecHitHGC_layer``                            int32[]    1..50
``RecHitHGC_MergedSimClusterBestMatchIdx``     int32[]    truth particle index, -1 noise
``RecHitHGC_MergedSimClusterBestMatchFrac``    float32[]  its share of the hit's true energy
``nMergedSimCluster``                          int32      truth particles (counter)
``MergedSimCluster_{energy,eta,phi}``          float32[]  true particle kinematics (GeV)
``MergedSimCluster_pdgId``                     int32[]    22, +-11, +-211
``MergedSimCluster_isPU``                      bool[]     pileup particle
``MergedSimCluster_recEnergy``                 float32[]  sum of its hits' energies
=============================================  =========  ==================================

Reading checks that every required branch exists (the error names the first missing
one), that the jagged hit branches agree in length per entry, and applies
:func:`~sparse3d.datasets.calo.event.validate_event` (NaN -> error, negative energies ->
``negative=`` rule, empty events pass through).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np

from .event import CaloEvent, validate_event

__all__ = ["HIT_BRANCHES", "TRUTH_BRANCHES", "PARTICLE_BRANCHES", "RootChunk", "RootWriter", "write_root",
           "iterate_root", "read_root", "check_branches", "events_to_branches"]

HIT_BRANCHES = {k: f"RecHitHGC_{k}" for k in ("x", "y", "z", "energy", "time", "layer")}
TRUTH_BRANCHES = {"truth_idx": "RecHitHGC_MergedSimClusterBestMatchIdx",
                  "truth_frac": "RecHitHGC_MergedSimClusterBestMatchFrac"}
PARTICLE_BRANCHES = {"energy": "MergedSimCluster_energy", "eta": "MergedSimCluster_eta",
                     "phi": "MergedSimCluster_phi", "pdgid": "MergedSimCluster_pdgId",
                     "is_pu": "MergedSimCluster_isPU", "rec_energy": "MergedSimCluster_recEnergy"}
_HIT_FIELD = {"x": "x", "y": "y", "z": "z", "energy": "energy", "time": "time", "layer": "layer",
              "truth_idx": "MergedSimClusterBestMatchIdx", "truth_frac": "MergedSimClusterBestMatchFrac"}
_PART_FIELD = {k: v.split("_", 1)[1] for k, v in PARTICLE_BRANCHES.items()}


def _imports():
    try:
        import awkward as ak
        import uproot
    except ImportError as e:   # pragma: no cover - exercised only without the extras
        raise ImportError("ROOT I/O needs 'uproot>=5' and 'awkward>=2' (pip install uproot awkward)") from e
    return uproot, ak


def _jagged(ak, arrays: List[np.ndarray], dtype):
    counts = np.array([a.shape[0] for a in arrays], np.int64)
    flat = np.concatenate([np.asarray(a, dtype) for a in arrays]) if arrays else np.zeros(0, dtype)
    return ak.unflatten(flat.astype(dtype, copy=False), counts)


def events_to_branches(events: List[CaloEvent], hit_extras: Optional[Dict[str, list]] = None,
                       records: Optional[Dict[str, Dict[str, list]]] = None) -> dict:
    """Awkward records ``{"RecHitHGC": ..., "MergedSimCluster": ..., **records}`` for the writer.

    Args:
        events: events of one chunk. hit_extras: extra per-hit fields (name -> list of
            ``[N_i]`` arrays), written as ``RecHitHGC_<name>`` sharing ``nRecHitHGC``.
        records: extra jagged collections (name -> field -> list of per-event arrays),
            written as ``<name>_<field>`` with counter ``n<name>``.
    """
    _, ak = _imports()
    hit_extras = hit_extras or {}
    hits = {}
    for key, fld in _HIT_FIELD.items():
        arrs = [getattr(e, key) for e in events]
        if key.startswith("truth") and any(a is None for a in arrs):
            if all(a is None for a in arrs):
                continue
            raise ValueError(f"cannot write '{key}': some events have truth and some do not")
        dt = np.int32 if key in ("layer", "truth_idx") else np.float32
        hits[fld] = _jagged(ak, arrs, dt)
    for name, arrs in hit_extras.items():
        if len(arrs) != len(events):
            raise ValueError(f"hit_extras['{name}'] has {len(arrs)} entries for {len(events)} events")
        for i, (a, e) in enumerate(zip(arrs, events)):
            if np.shape(a)[0] != e.n_hits:
                raise ValueError(f"hit_extras['{name}'] of event {i} has {np.shape(a)[0]} values for {e.n_hits} hits")
        hits[name] = _jagged(ak, arrs, np.asarray(arrs[0]).dtype if arrs else np.float32)
    out = {"RecHitHGC": ak.zip(hits)}
    if events[0].has_truth:
        out["MergedSimCluster"] = ak.zip({
            fld: _jagged(ak, [e.particles[k] for e in events], e0dt)
            for (k, fld), e0dt in zip(_PART_FIELD.items(),
                                      (np.float32, np.float32, np.float32, np.int32, np.bool_, np.float32))})
    for name, fields_ in (records or {}).items():
        out[name] = ak.zip({f: _jagged(ak, arrs, np.asarray(arrs[0]).dtype if len(arrs) else np.float32)
                            for f, arrs in fields_.items()})
    return out


class RootWriter:
    """Chunked writer: ``with RootWriter(path) as w: w.write(events_chunk, ...)``.

    Each :meth:`write` call appends one basket per branch; the branch set is fixed by the
    first call.
    """

    def __init__(self, path, tree: str = "Events"):
        self.path, self.tree_name = os.fspath(path), tree
        self._file = None
        self._tree = None

    def __enter__(self):
        uproot, _ = _imports()
        self._file = uproot.recreate(self.path)
        return self

    def write(self, events: List[CaloEvent], hit_extras=None, records=None) -> None:
        """Append ``events`` (with optional per-hit ``hit_extras`` and extra ``records``)."""
        if not events:
            return
        data = events_to_branches(events, hit_extras, records)
        if self._tree is None:
            self._tree = self._file.mktree(
                self.tree_name, {k: v.type.content for k, v in data.items()},
                counter_name=lambda c: "n" + c, field_name=lambda outer, inner: f"{outer}_{inner}")
        self._tree.extend(data)

    def __exit__(self, *exc):
        self._file.close()
        return False


def write_root(path, events: Iterable[CaloEvent], tree: str = "Events", chunk_size: int = 500) -> int:
    """Write events (any iterable, consumed in chunks of ``chunk_size``). Returns the count."""
    n = 0
    buf: List[CaloEvent] = []
    with RootWriter(path, tree) as w:
        for ev in events:
            buf.append(ev)
            if len(buf) >= chunk_size:
                w.write(buf)
                n += len(buf)
                buf = []
        w.write(buf)
        n += len(buf)
    return n


def check_branches(path, tree: str = "Events", truth: bool = True) -> List[str]:
    """Names of the branches to read; raises ``ValueError`` naming a missing tree/branch."""
    uproot, _ = _imports()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ROOT file not found: {path}")
    with uproot.open(path) as f:
        if tree not in f:
            raise ValueError(f"{path}: no tree '{tree}' (found: {sorted(k.split(';')[0] for k in f.keys())})")
        keys = set(f[tree].keys())
    need = list(HIT_BRANCHES.values())
    if truth:
        need += [TRUTH_BRANCHES["truth_idx"]] + list(PARTICLE_BRANCHES.values())
    for b in need:
        if b not in keys:
            raise ValueError(f"{path}: tree '{tree}' is missing the branch '{b}'")
    if truth and TRUTH_BRANCHES["truth_frac"] in keys:
        need.append(TRUTH_BRANCHES["truth_frac"])
    return need


@dataclass
class RootChunk:
    """One streamed chunk: ``events`` (validated) starting at ``entry_start``; ``arrays`` holds
    all branches of the chunk as read (an awkward record array) when asked for."""

    entry_start: int
    events: List[CaloEvent]
    arrays: object = None


def _split(ak, arr, name, path, entry_start):
    try:
        counts = np.asarray(ak.num(arr, axis=1), np.int64)
    except Exception as e:  # noqa: BLE001 - awkward raises several types for flat arrays
        raise ValueError(f"{path}: branch '{name}' is not jagged (one list per event expected)") from e
    flat = ak.to_numpy(ak.flatten(arr, axis=1))
    return counts, flat


def _chunk_to_events(ak, arrays, branches, path, entry_start, truth, negative) -> List[CaloEvent]:
    cols = {}
    for group in ([b for b in branches if b.startswith("RecHitHGC_")],
                  [b for b in branches if b.startswith("MergedSimCluster_")]):
        ref = None
        for b in group:
            counts, flat = _split(ak, arrays[b], b, path, entry_start)
            if ref is None:
                ref = (b, counts)
            elif not np.array_equal(counts, ref[1]):
                bad = int(np.flatnonzero(counts != ref[1])[0])
                raise ValueError(f"{path}: jagged length mismatch in entry {entry_start + bad}: "
                                 f"'{b}' has {counts[bad]} values but '{ref[0]}' has {ref[1][bad]}")
            cols[b] = (np.r_[0, np.cumsum(counts)], flat)
    n_ev = len(arrays)
    events = []
    for i in range(n_ev):
        def get(b):
            off, flat = cols[b]
            return flat[off[i]:off[i + 1]]
        kw = {k: get(b) for k, b in HIT_BRANCHES.items()}
        parts = None
        if truth:
            kw["truth_idx"] = get(TRUTH_BRANCHES["truth_idx"])
            if TRUTH_BRANCHES["truth_frac"] in cols:
                kw["truth_frac"] = get(TRUTH_BRANCHES["truth_frac"])
            parts = {k: get(b) for k, b in PARTICLE_BRANCHES.items()}
        ev = CaloEvent(**kw, particles=parts) if parts is not None else CaloEvent(**kw)
        events.append(validate_event(ev, negative=negative, where=f"{path} entry {entry_start + i}"))
    return events


def iterate_root(path, step_size: int = 200, tree: str = "Events", truth: bool = True, negative: str = "clip",
                 all_branches: bool = False) -> Iterator[RootChunk]:
    """Stream a file in chunks of ``step_size`` events (``uproot.iterate``).

    Args:
        path: ROOT file. step_size: events per chunk. tree: tree name.
        truth: also read (and require) the truth branches.
        negative: negative-energy rule (``"clip" | "drop" | "raise"``).
        all_branches: also return every branch of the chunk in ``RootChunk.arrays``
            (to copy input branches to an output file).

    Yields:
        :class:`RootChunk` per chunk.
    """
    uproot, ak = _imports()
    if step_size < 1:
        raise ValueError(f"step_size must be >= 1, got {step_size}")
    branches = check_branches(path, tree, truth)
    path = os.fspath(path)
    start = 0
    for arrays in uproot.iterate(f"{path}:{tree}", None if all_branches else branches, step_size=step_size,
                                 library="ak"):
        events = _chunk_to_events(ak, arrays, branches, path, start, truth, negative)
        yield RootChunk(start, events, arrays if all_branches else None)
        start += len(arrays)


def read_root(path, tree: str = "Events", truth: bool = True, negative: str = "clip",
              entry_start: Optional[int] = None, entry_stop: Optional[int] = None) -> List[CaloEvent]:
    """All events (or entries ``[entry_start, entry_stop)``) of a file as a list."""
    uproot, ak = _imports()
    branches = check_branches(path, tree, truth)
    path = os.fspath(path)
    with uproot.open(path) as f:
        arrays = f[tree].arrays(branches, entry_start=entry_start, entry_stop=entry_stop, library="ak")
    return _chunk_to_events(ak, arrays, branches, path, entry_start or 0, truth, negative)
