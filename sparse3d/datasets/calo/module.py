r"""Calorimeter data module: the embedded synthetic set, per-hit features, collate and loaders.

``CaloDataModule`` is what ``configs/dataset/calo_synth.yaml`` instantiates. Construction touches
no files; :meth:`CaloDataModule.prepare_data` generates the default set on first use.

**Files** (under ``root``; a generated set also has ``synth_meta.json``)::

    train.root    training events                        (seed s,     no pileup)
    val.root      validation events (model selection)    (seed s + 1, no pileup)
    test.root     held-out test events                   (seed s + 2, no pileup)
    test_pu.root  held-out pileup variant                (seed s + 3, Poisson(pileup) PU particles)

The set is regenerated when ``synth_meta.json`` records other parameters, another resolved
:class:`~sparse3d.datasets.calo.generator.CaloGenConfig` or another generator source (hash of
``generator.py``, ``showers.py``, ``geometry.py``). Generation goes to a temporary sibling folder
renamed into place, so DDP ranks and interrupted runs never see a partial set. With
``synthetic=None`` the split files are taken as given (``files=`` maps a split to a ROOT file or a
folder of cms-pepr npz files).

**Per-hit input features** (``feats [P, F]`` float32, in the order of ``features``):

=========  ==========================================================  =====================
name       value                                                       typical range
=========  ==========================================================  =====================
energy     ``log(1 + E / energy_scale) / 5``, ``energy_scale`` = 1 MIP   0.14 (1 MIP) .. ~1.5
           of the CE-E silicon (0.0085 GeV)
time       ``asinh(t / time_scale) / 5``, ``time_scale`` = 0.1 ns       +-0.1 prompt, ~1 late
           (linear at the 50 ps resolution, logarithmic for late hits)
layer      ``layer / n_layers`` (1-based layer, ``n_layers`` = 50)       0.02 .. 1
x, y       ``x / 100 cm``, ``y / 100 cm``                                 -1.6 .. 1.6
z          ``sign(z) (|z| - 322.1 cm) / 100 cm``                         +-(0 .. 2)
eta        ``eta / 3``                                                   +-(0.5 .. 1)
=========  ==========================================================  =====================

The default is ``("energy", "time", "layer")`` (F = 3); positions reach the models through
``points``. Energies entering the features are the validated ones (negative energies clipped to
0 by default, see :func:`~sparse3d.datasets.calo.event.validate_event`).

**Batch** (see :meth:`CaloCollate.__call__`): ``points [P, 4]`` float32 ``(b, x, y, z)`` cm,
``feats [P, F]``, ``energy [P]`` GeV, ``layer [P]`` int64, ``time [P]`` ns, ``cluster_idx [P]`` int64
(truth particle index, -1 noise; pileup particles -1 when ``pileup_as_noise``), ``semantic [P]``
int64 (0 noise, 1 signal), ``offsets [B + 1]`` int64, ``event_id`` list of str, ``particles`` list
of per-event dicts of numpy arrays (true ``energy``, ``pdgid``, ``is_pu``, ...).

**Training augmentation** (torch RNG, so runs follow ``torch.manual_seed``): a rotation about
the beam axis by a uniform angle (``rotate``) and a swap of the endcaps ``z -> -z`` with
probability 1/2 (``flip_endcap``). Both keep cluster labels.

**Sampling**: training uses a ``DistributedSampler`` (also with one process, so the order depends
only on ``seed`` and the epoch); under DDP it pads the last round by repeating events so every
rank takes the same number of steps. Validation and test shard events ``rank::world_size``
without padding (every event is scored exactly once).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ...engine import distributed as D
from ...engine.seed import seed_worker
from ..kitti_module import ShardSampler
from .event import NEGATIVE_RULES, CaloEvent

__all__ = ["CaloDataModule", "CaloEventDataset", "CaloCollate", "HitFeatures", "ensure_calo_synth",
           "load_events", "SPLITS", "SPLIT_FILES", "FEATURES", "DEFAULT_SYNTHETIC"]

SPLITS = ("train", "val", "test", "test_pu")
SPLIT_FILES = {s: f"{s}.root" for s in SPLITS}
_COUNT_KEYS = {"train": "n_train", "val": "n_val", "test": "n_test", "test_pu": "n_test_pileup"}
FEATURES = ("energy", "time", "layer", "x", "y", "z", "eta")
DEFAULT_SYNTHETIC = dict(seed=1000, n_train=400, n_val=48, n_test=200, n_test_pileup=100, pileup=40.0,
                         generator={})
_META = "synth_meta.json"
_FORMAT_VERSION = 1
_Z_FRONT = 322.1


# ----------------------------------------------------------------------------- generation

def _generator_hash() -> str:
    here = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for name in ("generator.py", "showers.py", "geometry.py"):
        h.update((here / name).read_bytes())
    return h.hexdigest()[:16]


def _synth_params(seed, n_train, n_val, n_test, n_test_pileup, pileup, generator) -> dict:
    from .generator import CaloGenConfig

    for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("n_test_pileup", n_test_pileup)):
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"synthetic.{k} must be an int >= 0, got {v!r}")
    if not (isinstance(seed, int) and seed >= 0):
        raise ValueError(f"synthetic.seed must be an int >= 0, got {seed!r}")
    if not pileup >= 0:
        raise ValueError(f"synthetic.pileup must be >= 0, got {pileup!r}")
    gen = dict(generator or {})
    if "pileup" in gen:
        raise ValueError("set the pileup of the test_pu split with synthetic.pileup, not synthetic.generator.pileup")
    try:
        base = CaloGenConfig(**gen)
    except TypeError as e:
        raise ValueError(f"synthetic.generator: {e}") from e
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(base).items()}
    return {"format": _FORMAT_VERSION, "generator_hash": _generator_hash(), "seed": seed, "n_train": n_train,
            "n_val": n_val, "n_test": n_test, "n_test_pileup": n_test_pileup, "pileup": float(pileup),
            "generator": cfg}


def _write_split(path: Path, cfg, seed: int, n: int, chunk: int = 100) -> dict:
    from .generator import generate_event
    from .geometry import default_geometry
    from .io_root import RootWriter

    geom = default_geometry()
    hits, parts = 0, 0
    with RootWriter(path) as w:
        for c0 in range(0, n, chunk):
            evs = [generate_event(cfg, seed, i, geom) for i in range(c0, min(n, c0 + chunk))]
            hits += sum(e.n_hits for e in evs)
            parts += sum(int((~e.particles["is_pu"]).sum()) for e in evs)
            w.write(evs)
    return {"events": n, "hits_mean": hits / max(n, 1), "particles_mean": parts / max(n, 1)}


def ensure_calo_synth(root: Union[str, os.PathLike] = "data/calo_synth", seed: int = 1000, n_train: int = 400,
                      n_val: int = 48, n_test: int = 200, n_test_pileup: int = 100, pileup: float = 40.0,
                      generator: Optional[Dict[str, Any]] = None, verbose: bool = False) -> Path:
    """Return ``root``, generating the four split files first if missing or made otherwise.

    Args:
        root: output folder. seed: split ``k`` of ``(train, val, test, test_pu)`` uses the
            generator stream ``seed + k`` (event ``i``: ``numpy.random.default_rng([seed + k, i])``).
        n_train / n_val / n_test / n_test_pileup: events per split.
        pileup: mean number of pileup particles per event of ``test_pu`` (the other splits have none).
        generator: :class:`~sparse3d.datasets.calo.generator.CaloGenConfig` overrides for every split.
        verbose: print one line per split.

    Raises:
        ValueError: bad parameters, or ``root`` exists with other content and no ``synth_meta.json``.
    """
    from .generator import CaloGenConfig

    root = Path(root)
    params = _synth_params(seed, n_train, n_val, n_test, n_test_pileup, pileup, generator)
    meta_path = root / _META

    def current() -> bool:
        return meta_path.exists() and json.loads(meta_path.read_text()).get("params") == params

    if current():
        return root
    if not meta_path.exists() and root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not a generated calorimeter set (no {_META}); "
                         "choose another folder or remove it")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        gen = dict(generator or {})
        stats = {}
        for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test, n_test_pileup))):
            cfg = CaloGenConfig(**gen, pileup=float(pileup) if split == "test_pu" else 0.0)
            stats[split] = _write_split(tmp / SPLIT_FILES[split], cfg, seed + k, n)
            if verbose:
                print(f"[calo_synth] {split}: {n} events, {stats[split]['hits_mean']:.0f} hits/event", flush=True)
        (tmp / _META).write_text(json.dumps({"params": params, "stats": stats}, indent=2) + "\n")
        if current():   # a concurrent caller made it meanwhile
            return root
        if root.exists():
            shutil.rmtree(root)
        try:
            os.rename(tmp, root)
        except OSError:
            if not current():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


# ----------------------------------------------------------------------------- events and features

def load_events(source, negative: str = "clip", truth: bool = True) -> List[CaloEvent]:
    """Events of a ROOT file, a cms-pepr npz file, or a folder of npz files (validated)."""
    from .io_npz import iterate_npz_dir, read_npz
    from .io_root import read_root

    p = Path(source)
    if p.is_dir():
        return list(iterate_npz_dir(p, truth=truth, negative=negative))
    if not p.exists():
        raise FileNotFoundError(f"calorimeter event file not found: {p}")
    if p.suffix == ".npz":
        return [read_npz(p, truth=truth, negative=negative)]
    return read_root(p, truth=truth, negative=negative)


class HitFeatures:
    """Per-hit input features of an event (definitions in the module docstring).

    Args:
        names: feature names from ``FEATURES``, in output order.
        energy_scale: GeV of one unit inside the energy log (default 1 CE-E MIP, 0.0085 GeV).
        time_scale: ns of the linear region of the time ``asinh``. n_layers: layer normalization.
    """

    def __init__(self, names: Sequence[str] = ("energy", "time", "layer"), energy_scale: float = 0.0085,
                 time_scale: float = 0.1, n_layers: int = 50) -> None:
        names = tuple(names)
        bad = [n for n in names if n not in FEATURES]
        if bad or not names:
            raise ValueError(f"features must be a non-empty list from {FEATURES}, got {list(names)}")
        if not (energy_scale > 0 and time_scale > 0 and n_layers > 0):
            raise ValueError("energy_scale, time_scale and n_layers must be > 0")
        self.names, self.energy_scale, self.time_scale, self.n_layers = names, float(energy_scale), \
            float(time_scale), int(n_layers)

    @property
    def dim(self) -> int:
        return len(self.names)

    def __call__(self, ev: CaloEvent) -> np.ndarray:
        """``[N, F]`` float32."""
        cols = []
        for n in self.names:
            if n == "energy":
                c = np.log1p(np.maximum(ev.energy.astype(np.float64), 0.0) / self.energy_scale) / 5.0
            elif n == "time":
                c = np.arcsinh(ev.time.astype(np.float64) / self.time_scale) / 5.0
            elif n == "layer":
                c = ev.layer.astype(np.float64) / self.n_layers
            elif n in ("x", "y"):
                c = getattr(ev, n).astype(np.float64) / 100.0
            elif n == "z":
                z = ev.z.astype(np.float64)
                c = np.sign(z) * (np.abs(z) - _Z_FRONT) / 100.0
            else:   # eta
                x, y, z = (getattr(ev, k).astype(np.float64) for k in "xyz")
                c = np.arcsinh(np.divide(z, np.hypot(x, y), out=np.zeros_like(z), where=np.hypot(x, y) > 0)) / 3.0
            cols.append(c)
        return np.stack(cols, 1).astype(np.float32) if ev.n_hits else np.zeros((0, len(cols)), np.float32)


class CaloEventDataset(Dataset):
    """Events of one split held in memory; item ``i`` is ``{"event": CaloEvent, "event_id": str}``.

    Args:
        source: ROOT file, npz file / folder, or a list of :class:`CaloEvent`.
        name: prefix of the event ids (``"<name>/<index>"``).
        rotate / flip_endcap: training augmentation (module docstring).
        negative: negative-energy rule of the readers. truth: read the truth branches.
    """

    def __init__(self, source, name: str = "events", rotate: bool = False, flip_endcap: bool = False,
                 negative: str = "clip", truth: bool = True) -> None:
        if negative not in NEGATIVE_RULES:
            raise ValueError(f"negative must be one of {NEGATIVE_RULES}, got {negative!r}")
        if isinstance(source, (list, tuple)):
            bad = [type(e).__name__ for e in source if not isinstance(e, CaloEvent)]
            if bad:
                raise TypeError(f"source list must hold CaloEvent objects, got {bad[0]}")
            self.events = list(source)
        else:
            self.events = load_events(source, negative=negative, truth=truth)
        self.name, self.rotate, self.flip_endcap = name, rotate, flip_endcap

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, i: int) -> dict:
        ev = self.events[i]
        if self.rotate or self.flip_endcap:
            from dataclasses import replace
            x, y, z = ev.x, ev.y, ev.z
            if self.rotate:
                a = 2 * math.pi * float(torch.rand((), dtype=torch.float64))
                c, s = math.cos(a), math.sin(a)
                x64, y64 = x.astype(np.float64), y.astype(np.float64)
                x, y = (c * x64 - s * y64).astype(np.float32), (s * x64 + c * y64).astype(np.float32)
            if self.flip_endcap and float(torch.rand(())) < 0.5:
                z = -z
            ev = replace(ev, x=x, y=y, z=z)
        return {"event": ev, "event_id": f"{self.name}/{i}"}


class CaloCollate:
    """DataLoader ``collate_fn``: a list of ``{"event", "event_id"}`` items -> the batch dict.

    Args:
        features: :class:`HitFeatures`. pileup_as_noise: label pileup particles' hits -1.
    """

    def __init__(self, features: Optional[HitFeatures] = None, pileup_as_noise: bool = True) -> None:
        self.features = features or HitFeatures()
        self.pileup_as_noise = pileup_as_noise

    def events(self, events: Sequence[CaloEvent], event_ids: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """Batch of plain events (ids default to ``"0", "1", ...``)."""
        ids = [str(i) for i in range(len(events))] if event_ids is None else list(event_ids)
        return self([{"event": e, "event_id": i} for e, i in zip(events, ids)])

    def __call__(self, items: Sequence[dict]) -> Dict[str, Any]:
        """Returns ``points [P, 4]`` float32, ``feats [P, F]`` float32, ``energy [P]`` float32,
        ``time [P]`` float32, ``layer [P]`` int64, ``cluster_idx [P]`` int64, ``semantic [P]`` int64,
        ``offsets [B + 1]`` int64, ``event_id`` list, ``particles`` list of dicts, ``has_truth`` bool."""
        evs = [it["event"] for it in items]
        counts = np.array([e.n_hits for e in evs], np.int64)
        offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
        b = np.repeat(np.arange(len(evs), dtype=np.float32), counts)

        def cat(fn, dtype):
            return np.concatenate([np.asarray(fn(e), dtype) for e in evs]) if evs else np.zeros(0, dtype)

        xyz = np.stack([cat(lambda e: e.x, np.float32), cat(lambda e: e.y, np.float32),
                        cat(lambda e: e.z, np.float32)], 1)
        feats = np.concatenate([self.features(e) for e in evs]) if evs else np.zeros((0, self.features.dim), np.float32)
        has_truth = all(e.has_truth for e in evs)
        if has_truth:
            lab = cat(lambda e: e.labels(self.pileup_as_noise), np.int64)
        else:
            lab = np.full(int(offsets[-1]), -1, np.int64)
        return {
            "points": torch.from_numpy(np.concatenate([b[:, None], xyz], 1)),
            "feats": torch.from_numpy(feats),
            "energy": torch.from_numpy(cat(lambda e: e.energy, np.float32)),
            "time": torch.from_numpy(cat(lambda e: e.time, np.float32)),
            "layer": torch.from_numpy(cat(lambda e: e.layer, np.int64)),
            "cluster_idx": torch.from_numpy(lab),
            "semantic": torch.from_numpy((lab >= 0).astype(np.int64)),
            "offsets": torch.from_numpy(offsets),
            "event_id": [str(it["event_id"]) for it in items],
            "particles": [e.particles for e in evs],
            "has_truth": has_truth,
        }


# ----------------------------------------------------------------------------- data module

class CaloDataModule:
    r"""Datasets and loaders for calorimeter clustering.

    Args:
        root: folder of the split files (``train.root``, ``val.root``, ``test.root``, ``test_pu.root``).
        synthetic: keyword arguments of :func:`ensure_calo_synth` (``seed``, ``n_train``, ``n_val``,
            ``n_test``, ``n_test_pileup``, ``pileup``, ``generator``); missing keys take
            ``DEFAULT_SYNTHETIC``. None: ``root`` / ``files`` are real data and must exist.
        files: per-split overrides ``{split: ROOT file | npz file | npz folder}``.
        batch_size / val_batch_size: events per batch and rank.
        num_workers: DataLoader workers (seeded through ``seed_worker``).
        seed: shuffle seed (the per-epoch order is ``seed + epoch``).
        features / energy_scale / time_scale: :class:`HitFeatures`.
        pileup_as_noise: pileup particles' hits are labelled -1 (noise) in ``cluster_idx``.
        rotate / flip_endcap: training augmentation. negative: negative-energy rule (``"clip"``
            keeps the hit at 0 GeV, ``"drop"`` removes it, ``"raise"`` fails).

    Attributes:
        class_names: None (clustering has no class table). num_classes: 2 semantic classes
        (0 noise, 1 signal). in_channels: F.
    """

    def __init__(self, root: Union[str, os.PathLike] = "data/calo_synth", synthetic: Optional[Dict[str, Any]] = None,
                 files: Optional[Dict[str, str]] = None, batch_size: int = 4, val_batch_size: int = 4,
                 num_workers: int = 0, seed: int = 0, features: Sequence[str] = ("energy", "time", "layer"),
                 energy_scale: float = 0.0085, time_scale: float = 0.1, pileup_as_noise: bool = True,
                 rotate: bool = True, flip_endcap: bool = True, negative: str = "clip") -> None:
        for name, v in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if negative not in NEGATIVE_RULES:
            raise ValueError(f"negative must be one of {NEGATIVE_RULES}, got {negative!r}")
        self.root = Path(root)
        if synthetic is not None:
            unknown = set(synthetic) - set(DEFAULT_SYNTHETIC)
            if unknown:
                raise ValueError(f"unknown synthetic keys {sorted(unknown)} (allowed: {sorted(DEFAULT_SYNTHETIC)})")
            synthetic = {**DEFAULT_SYNTHETIC, **dict(synthetic)}
            synthetic["generator"] = dict(synthetic.get("generator") or {})
        self.synthetic = synthetic
        files = dict(files or {})
        bad = set(files) - set(SPLITS)
        if bad:
            raise ValueError(f"files keys must be splits {SPLITS}, got {sorted(bad)}")
        self.files = files
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.seed = int(seed)
        self.hit_features = HitFeatures(features, energy_scale, time_scale)
        self.pileup_as_noise, self.rotate, self.flip_endcap, self.negative = pileup_as_noise, rotate, flip_endcap, negative
        self.collate = CaloCollate(self.hit_features, pileup_as_noise)
        self.class_names = None
        self.num_classes = 2
        self._cache: Dict[str, List[CaloEvent]] = {}

    @property
    def in_channels(self) -> int:
        return self.hit_features.dim

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> Path:
        """Generate the synthetic set if configured and missing / stale; check the split files."""
        if self.synthetic is not None:
            ensure_calo_synth(self.root, **self.synthetic)
        for s in ("train", "val"):
            p = self.split_path(s)
            if not p.exists():
                raise FileNotFoundError(f"no {s} events: {p} does not exist")
        return self.root

    def split_path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return Path(self.files[split]) if split in self.files else self.root / SPLIT_FILES[split]

    def events(self, split: str) -> List[CaloEvent]:
        """The validated events of a split (read once, then cached; a generated empty split: [])."""
        if split not in self._cache:
            path = self.split_path(split)
            if self.synthetic is not None:
                self.prepare_data()
            if self.synthetic is not None and split not in self.files and self.synthetic[_COUNT_KEYS[split]] == 0:
                self._cache[split] = []   # written without a tree
            else:
                self._cache[split] = load_events(path, negative=self.negative)
        return self._cache[split]

    def dataset(self, split: str, train: bool = False) -> CaloEventDataset:
        return CaloEventDataset(self.events(split), name=split, rotate=train and self.rotate,
                                flip_endcap=train and self.flip_endcap)

    def train_dataset(self) -> CaloEventDataset:
        return self.dataset("train", train=True)

    def val_dataset(self) -> CaloEventDataset:
        return self.dataset("val")

    def test_dataset(self, pileup: bool = False) -> CaloEventDataset:
        return self.dataset("test_pu" if pileup else "test")

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds, batch_size: int, sampler: Sampler) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=self.collate, worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0)

    @staticmethod
    def _rank_world(distributed, rank, world_size):
        if rank is not None or world_size is not None:
            return int(rank or 0), int(world_size or 1)
        if distributed is None:
            distributed = D.is_distributed()
        return (D.get_rank(), D.get_world_size()) if distributed else (0, 1)

    def train_dataloader(self, distributed: Optional[bool] = None, rank: Optional[int] = None,
                         world_size: Optional[int] = None) -> DataLoader:
        """Shuffled training loader; call ``loader.sampler.set_epoch(epoch)`` each epoch.
        ``rank`` / ``world_size`` override the process group's (for tests)."""
        rank, world = self._rank_world(distributed, rank, world_size)
        ds = self.train_dataset()
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=False)
        return self._loader(ds, self.batch_size, sampler)

    def val_dataloader(self, distributed: Optional[bool] = None, rank: Optional[int] = None,
                       world_size: Optional[int] = None) -> DataLoader:
        """Validation loader in event order, sharded over ranks without padding."""
        rank, world = self._rank_world(distributed, rank, world_size)
        ds = self.val_dataset()
        return self._loader(ds, self.val_batch_size, ShardSampler(len(ds), rank, world))

    def test_dataloader(self, pileup: bool = False, batch_size: int = 1, distributed: Optional[bool] = False,
                        rank: Optional[int] = None, world_size: Optional[int] = None) -> DataLoader:
        """Held-out test events (``pileup=True``: the pileup variant) in order."""
        rank, world = self._rank_world(distributed, rank, world_size)
        ds = self.test_dataset(pileup)
        return self._loader(ds, batch_size, ShardSampler(len(ds), rank, world))
