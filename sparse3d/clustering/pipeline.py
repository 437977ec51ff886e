r"""Streaming clustering of calorimeter files (the library behind ``tools/cluster.py``).

Input: NanoML-like ROOT files (:mod:`sparse3d.datasets.calo.io_root`) or cms-pepr npz files /
folders (:mod:`sparse3d.datasets.calo.io_npz`), read in chunks of ``step_size`` events (ROOT via
``uproot.iterate``; never the whole file). Clusterer: a ``tools/train.py`` checkpoint of a
calorimeter model (:func:`load_clusterer`, the features are rebuilt from the checkpoint's dataset
config) or CLUE (``algo="clue"``).

Output: one ROOT file, tree ``Events``, with every input branch (ROOT input: copied as read,
jagged collections re-grouped by their ``<prefix>_`` with counter ``n<prefix>``; npz input: the
NanoML branches of the events) plus, for ``name="Cluster"``:

=================================  =========  ================================================
branch                             type       meaning
=================================  =========  ================================================
``RecHitHGC_ClusterIdx``           int32[]    cluster of the hit, -1 = noise / unclustered;
                                              clusters are numbered 0.. by decreasing energy
``RecHitHGC_ClusterEnergy``        float32[]  energy of the hit's cluster (GeV; 0 for -1)
``nCluster``                       int32      clusters in the event
``Cluster_energy``                 float32[]  summed hit energy (GeV)
``Cluster_{x,y,z}``                float32[]  energy-weighted hit position (cm)
``Cluster_nHits``                  int32[]    hits in the cluster
=================================  =========  ================================================

Hits are never removed: negative energies are clipped to 0 (the readers' ``"clip"`` rule) so the
new per-hit branches stay aligned with the copied ones; NaN energies, missing branches and jagged
length mismatches raise ``ValueError`` naming the branch / entry; events without hits pass
through with no clusters.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..utils.threads import concurrent_map

__all__ = ["ClusterSummary", "load_clusterer", "cluster_events", "cluster_table", "cluster_file",
           "input_kind"]

PathLike = Union[str, os.PathLike]


@dataclass
class ClusterSummary:
    """Counts and timings of one :func:`cluster_file` run (seconds)."""

    events: int = 0
    hits: int = 0
    clusters: int = 0
    net_seconds: float = 0.0
    cluster_seconds: float = 0.0
    seconds: float = 0.0
    output: str = ""
    panoptic: Optional[Dict[str, Dict[str, float]]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        ev = max(self.events, 1)
        s = (f"{self.events} events, {self.hits} hits, {self.clusters} clusters "
             f"({self.clusters / ev:.1f}/event) -> {self.output}\n"
             f"time: {self.seconds:.2f} s total ({self.events / max(self.seconds, 1e-9):.1f} events/s); per event "
             f"network {1e3 * self.net_seconds / ev:.2f} ms, clustering {1e3 * self.cluster_seconds / ev:.2f} ms")
        if self.panoptic:
            c, e = self.panoptic["count"], self.panoptic["energy"]
            s += (f"\ntruth found: PQ {100 * c['pq']:.1f} (SQ {100 * c['sq']:.1f}, RQ {100 * c['rq']:.1f}) "
                  f"hit-count IoU; wPQ {100 * e['pq']:.1f} energy-weighted IoU")
        return s


def load_clusterer(checkpoint: Optional[PathLike] = None, algo: Optional[str] = None,
                   clue_params: Optional[Dict[str, Any]] = None, device: Union[str, torch.device] = "cpu"):
    """``(model, collate)`` for a checkpoint or ``algo="clue"``.

    Args:
        checkpoint: a ``tools/train.py`` checkpoint (``state["cfg"]`` rebuilds ``model`` and the
            dataset's feature settings; a CLUE checkpoint holds the tuned parameters).
        algo: ``"clue"`` for CLUE without a checkpoint (parameters ``clue_params`` or the defaults).

    Raises:
        ValueError: neither or both of ``checkpoint`` / ``algo``, an unknown ``algo``, a checkpoint
            without ``model`` / ``cfg``.
    """
    from ..datasets.calo.module import CaloCollate

    if (checkpoint is None) == (algo is None):
        raise ValueError("give exactly one of checkpoint (a trained model) or algo='clue'")
    if algo is not None:
        if algo != "clue":
            raise ValueError(f"algo must be 'clue', got {algo!r}")
        from .clue_model import CLUEClusterer
        return CLUEClusterer(**(clue_params or {})).eval(), CaloCollate()
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..engine.checkpoint import load_checkpoint

    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = load_checkpoint(path, map_location="cpu")
    if not isinstance(state, dict) or "model" not in state or not state.get("cfg"):
        raise ValueError(f"{path}: not a tools/train.py checkpoint (needs 'model' and 'cfg')")
    cfg = OmegaConf.create(state["cfg"])
    model = instantiate(cfg.model)
    model.load_state_dict(state["model"])
    if clue_params:
        if not hasattr(model, "set_params"):
            raise ValueError("clue_params only apply to a CLUE clusterer")
        model.set_params(**clue_params)
    collate = CaloCollate()
    if cfg.get("dataset") is not None:
        dm = instantiate(cfg.dataset)   # construction touches no files
        collate = getattr(dm, "collate", collate)
    from ..nn.utils import fuse_bn_eval
    return fuse_bn_eval(model.to(device).eval(), inplace=True), collate   # BN folded: inference only


@torch.no_grad()
def cluster_events(model, collate, events, device: Union[str, torch.device] = "cpu",
                   batch_size: int = 4, workers: int = 1) -> Tuple[List[np.ndarray], float, float]:
    """Labels per event (``[N_e]`` int64, -1 noise) plus network and clustering seconds.

    ``workers > 1`` (CPU): the batches (network + clustering) run side by side on that many single-thread
    workers (:func:`sparse3d.utils.threads.concurrent_map`); the labels are the same, and the two times are
    then the workers' summed busy time, not wall time."""
    device = torch.device(device)
    if workers > 1 and device.type != "cpu":
        raise ValueError(f"workers > 1 is a CPU mode, got device {device}")

    def run(evs):
        batch = collate.events(evs)
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        t0 = time.perf_counter()
        out = model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        labs = model.cluster(out, batch)
        return labs, t1 - t0, time.perf_counter() - t1

    groups = [events[b0:b0 + batch_size] for b0 in range(0, len(events), batch_size)]
    labels: List[np.ndarray] = []
    t_net = t_cl = 0.0
    for evs, (labs, dn, dc) in zip(groups, concurrent_map(run, groups, workers)):
        t_net, t_cl = t_net + dn, t_cl + dc
        if len(labs) != len(evs):
            raise ValueError(f"model.cluster returned {len(labs)} label arrays for {len(evs)} events")
        for ev, lab in zip(evs, labs):
            lab = np.asarray(lab).reshape(-1).astype(np.int64)
            if lab.shape[0] != ev.n_hits:
                raise ValueError(f"model.cluster gave {lab.shape[0]} labels for an event with {ev.n_hits} hits")
            labels.append(lab)
    return labels, t_net, t_cl


def cluster_table(ev, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """Renumber clusters ``0..K-1`` by decreasing energy.

    Returns:
        ``(hit_idx [N] int32, hit_energy [N] float32, clusters)`` with ``clusters`` a dict of ``[K]``
        arrays ``energy``, ``x``, ``y``, ``z`` (float32, energy-weighted; hit mean for 0-energy
        clusters) and ``nHits`` (int32).
    """
    lab = np.asarray(labels, np.int64)
    e = np.maximum(ev.energy.astype(np.float64), 0.0)
    ids, inv = np.unique(lab[lab >= 0], return_inverse=True)
    k = ids.size
    m = lab >= 0
    esum = np.bincount(inv, e[m], k)
    nh = np.bincount(inv, minlength=k)
    order = np.lexsort((np.arange(k), -esum))   # decreasing energy, ties by old id
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    hit_idx = np.full(lab.shape[0], -1, np.int32)
    hit_idx[m] = rank[inv]
    w = np.where(esum[inv] > 0, e[m], 1.0)
    wsum = np.bincount(inv, w, k)
    pos = {c: (np.bincount(inv, w * getattr(ev, c)[m].astype(np.float64), k) / np.maximum(wsum, 1e-300))[order]
           for c in ("x", "y", "z")}
    hit_e = np.zeros(lab.shape[0], np.float32)
    hit_e[m] = esum[inv].astype(np.float32)
    clusters = {"energy": esum[order].astype(np.float32), **{c: v.astype(np.float32) for c, v in pos.items()},
                "nHits": nh[order].astype(np.int32)}
    return hit_idx, hit_e, clusters


# ----------------------------------------------------------------------------- inputs

def input_kind(paths: Sequence[PathLike]) -> str:
    """``"root"`` or ``"npz"`` for a list of inputs (npz files and/or folders); mixing raises."""
    kinds = set()
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"input not found: {p}")
        kinds.add("npz" if p.is_dir() or p.suffix == ".npz" else "root")
    if len(kinds) != 1:
        raise ValueError(f"inputs must be all ROOT or all npz, got {sorted(kinds)}")
    return kinds.pop()


def _npz_files(paths: Sequence[PathLike]) -> List[Path]:
    files: List[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.npz"))
            if not found:
                raise FileNotFoundError(f"no .npz files in {p}")
            files += found
        else:
            files.append(p)
    return files


def _has_truth(path: PathLike, tree: str) -> bool:
    import uproot

    from ..datasets.calo.io_root import PARTICLE_BRANCHES, TRUTH_BRANCHES
    with uproot.open(os.fspath(path)) as f:
        if tree not in f:
            raise ValueError(f"{path}: no tree '{tree}' (found: {sorted(k.split(';')[0] for k in f.keys())})")
        keys = set(f[tree].keys())
    return all(b in keys for b in [TRUTH_BRANCHES["truth_idx"], *PARTICLE_BRANCHES.values()])


def _num_entries(path: PathLike, tree: str) -> int:
    import uproot
    with uproot.open(os.fspath(path)) as f:
        return int(f[tree].num_entries)


def _chunks(paths, kind: str, step_size: int, tree: str) -> Iterator[Tuple[list, Any]]:
    """``(events, arrays or None)`` per chunk of every input."""
    from ..datasets.calo.io_npz import read_npz
    from ..datasets.calo.io_root import iterate_root

    if kind == "root":
        for p in paths:
            truth = _has_truth(p, tree)
            for ch in iterate_root(p, step_size=step_size, tree=tree, truth=truth, negative="clip",
                                   all_branches=True):
                yield ch.events, ch.arrays
    else:
        files = _npz_files(paths)
        truth = None
        for i in range(0, len(files), step_size):
            evs = []
            for f in files[i:i + step_size]:
                with np.load(f) as d:
                    has = "recHitTruthClusterIdx" in d
                truth = has if truth is None else truth
                if has != truth:
                    raise ValueError(f"{f}: npz inputs must all have truth or all lack it")
                evs.append(read_npz(f, truth=truth, negative="clip"))
            yield evs, None


# ----------------------------------------------------------------------------- output

def _copy_branches(ak, arrays, extra_hits: Dict[str, Any], hit_group: str) -> Dict[str, Any]:
    """Input branches re-grouped for ``mktree`` (records share ``n<prefix>``) plus ``extra_hits``
    fields inside ``hit_group``."""
    groups: Dict[str, List[str]] = {}
    flat: List[str] = []
    for f in arrays.fields:
        a = arrays[f]
        if a.ndim > 2:
            raise ValueError(f"branch '{f}' is nested deeper than one list per event; cannot copy it")
        if a.ndim == 2:
            prefix = f.split("_", 1)[0] if "_" in f else f
            groups.setdefault(prefix, []).append(f)
        else:
            flat.append(f)
    out: Dict[str, Any] = {}
    counters = set()
    for prefix, names in groups.items():
        counts = [np.asarray(ak.num(arrays[n], axis=1)) for n in names]
        same = all(np.array_equal(c, counts[0]) for c in counts)
        if "_" in names[0] and same:
            fields_ = {n.split("_", 1)[1]: arrays[n] for n in names}
            if prefix == hit_group:
                fields_.update(extra_hits)
            out[prefix] = ak.zip(fields_)
            counters.add("n" + prefix)
        else:
            for n in names:
                out[n] = arrays[n]
                counters.add("n" + n)
    if hit_group not in out:
        raise ValueError(f"input has no '{hit_group}_*' hit collection to extend")
    for f in flat:
        if f not in counters:
            out[f] = ak.to_numpy(arrays[f])
    return out


class _TreeWriter:
    def __init__(self, path: PathLike, tree: str = "Events") -> None:
        import uproot
        self.path, self.tree_name = os.fspath(path), tree
        self._file = uproot.recreate(self.path)
        self._tree = None

    def write(self, data: Dict[str, Any]) -> None:
        if self._tree is None:
            types = {k: (v.type.content if hasattr(v, "type") else v.dtype) for k, v in data.items()}
            self._tree = self._file.mktree(self.tree_name, types, counter_name=lambda c: "n" + c,
                                           field_name=lambda outer, inner: f"{outer}_{inner}")
        self._tree.extend(data)

    def close(self) -> None:
        self._file.close()


def cluster_file(inputs: Union[PathLike, Sequence[PathLike]], output: PathLike, model, collate,
                 step_size: int = 200, batch_size: int = 4, device: Union[str, torch.device] = "cpu",
                 name: str = "Cluster", tree: str = "Events", progress: bool = True, workers: int = 1) -> ClusterSummary:
    """Cluster every event of ``inputs`` chunk by chunk and write ``output`` (module docstring).

    Args:
        inputs: ROOT file(s), or npz file(s) / folder(s) (not mixed).
        output: the new ROOT file (must differ from the inputs).
        model, collate: from :func:`load_clusterer`. step_size: events per read/write chunk.
        batch_size: events per model call. name: prefix of the new branches.
        progress: tqdm bar over events. workers: CPU threads running the batches of a chunk side by side,
            one torch/numba thread each (:func:`cluster_events`); same output.

    Returns:
        :class:`ClusterSummary` (with ``panoptic`` when the inputs carry truth).
    """
    import awkward as ak
    from tqdm import tqdm

    from ..datasets.calo.io_root import events_to_branches
    from ..engine.tasks.calo import _pq_vector, panoptic_summary
    from ..metrics.panoptic import PanopticQuality

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise ValueError("no input files")
    if not isinstance(step_size, int) or step_size < 1:
        raise ValueError(f"step_size must be a positive int, got {step_size!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if not name.isidentifier():
        raise ValueError(f"name must be an identifier (branch prefix), got {name!r}")
    kind = input_kind(paths)
    out_path = Path(output)
    for p in paths:
        if Path(p).resolve() == out_path.resolve():
            raise ValueError(f"output {out_path} is also an input")
    total = sum(_num_entries(p, tree) for p in paths) if kind == "root" else len(_npz_files(paths))
    new_hit = {"idx": f"{name}Idx", "energy": f"{name}Energy"}
    summary = ClusterSummary(output=str(out_path))
    pq = PanopticQuality()
    any_truth = False
    t0 = time.perf_counter()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _TreeWriter(out_path, tree)
    bar = tqdm(total=total, desc="clustering", unit="event", disable=not progress, dynamic_ncols=True)
    try:
        for events, arrays in _chunks(paths, kind, step_size, tree):
            if arrays is not None:
                taken = {f"RecHitHGC_{v}" for v in new_hit.values()} | {f"n{name}"}
                clash = sorted(f for f in arrays.fields if f in taken or f.startswith(f"{name}_"))
                if clash:
                    raise ValueError(f"input already has the branch '{clash[0]}'; choose another name (--name)")
            labels, t_net, t_cl = cluster_events(model, collate, events, device, batch_size, workers)
            summary.net_seconds += t_net
            summary.cluster_seconds += t_cl
            hit_idx, hit_e, cl = [], [], {k: [] for k in ("energy", "x", "y", "z", "nHits")}
            for ev, lab in zip(events, labels):
                hi, he, c = cluster_table(ev, lab)
                hit_idx.append(hi)
                hit_e.append(he)
                for k in cl:
                    cl[k].append(c[k])
                summary.hits += ev.n_hits
                summary.clusters += int(c["energy"].size)
                if ev.has_truth:
                    any_truth = True
                    pq.update(lab, ev.labels(pileup_as_noise=True), np.maximum(ev.energy, 0))
            summary.events += len(events)
            if not events:
                continue
            if arrays is not None:
                from ..datasets.calo.io_root import _jagged
                extra = {new_hit["idx"]: _jagged(ak, hit_idx, np.int32), new_hit["energy"]: _jagged(ak, hit_e, np.float32)}
                data = _copy_branches(ak, arrays, extra, "RecHitHGC")
                data[name] = ak.zip({k: _jagged(ak, v, np.int32 if k == "nHits" else np.float32) for k, v in cl.items()})
            else:
                data = events_to_branches(events, hit_extras={new_hit["idx"]: hit_idx, new_hit["energy"]: hit_e},
                                          records={name: cl})
            writer.write(data)
            bar.update(len(events))
    finally:
        bar.close()
        writer.close()
    summary.seconds = time.perf_counter() - t0
    if any_truth:
        summary.panoptic = panoptic_summary(_pq_vector(pq))
    return summary
