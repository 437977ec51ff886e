r"""Synthetic SemanticKITTI: procedural urban streets scanned by a simulated HDL-64E.

Every sequence is one procedural street scene with all 19 SemanticKITTI evaluation classes (road,
parking, sidewalk, other-ground medians, terrain, buildings, fences, trees = vegetation + trunk,
poles, traffic signs, cars, trucks, other vehicles (buses, trailers, caravans), parked bicycles and
motorcycles, persons, bicyclists and motorcyclists); the ego vehicle drives along its main street
and takes one scan every ``spacing`` metres. Output is
the exact SemanticKITTI format (``velodyne/*.bin``, ``labels/*.label`` with raw ids in the lower
16 bits and instance ids in the upper 16, ``calib.txt``, ``poses.txt``), readable by
:class:`sparse3d.datasets.SemanticKITTI`. Everything is drawn from ``numpy`` generators seeded by
``(seed, sequence[, scan])``, so a set is byte-identical for the same arguments.

Classes differ by geometry only: remission depends on per-object material albedo, incidence,
range and noise, and the albedo ranges of different classes overlap.

Default set (``ensure_synthetic_kitti(root)``): 48 training scans spread over the ten official
training sequences 00-07, 09, 10 (4-5 scans per street scene, so ``split="train"`` works) and 16
validation scans in sequence 08. Smaller sets use the first ``n_train`` training sequences; pass
``sequences=`` to the reader then.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, Union

import numpy as np

from .semantic_kitti import SPLITS
from .synth.common import SYNTH_RAW_IDS
from .synth.scene import build_scene
from .synth.sensor import HDL64E, scan
from .synth.writer import write_calib, write_poses, write_scan

__all__ = ["SYNTH_RAW_IDS", "GENERATOR_VERSION", "HDL64E", "generate_sequence",
           "generate_synthetic_kitti", "ensure_synthetic_kitti"]

#: Bumped whenever the generated content changes, so ``ensure_synthetic_kitti`` regenerates stale sets
#: (2: all 19 classes: medians, motorcycles, other vehicles, bicyclists, motorcyclists; 3: stronger
#: geometric cues: raised parking bays with markings, grass roughness on terrain, stepped truck
#: profiles, trams, larger signs, denser fences, more signs / pedestrians / riders per scan;
#: 4: broad parking edge line, fewer parked vehicles so that more bay surface is visible).
GENERATOR_VERSION = 4
_META = "synth_meta.json"


def generate_sequence(root: Union[str, os.PathLike], seq: int, n_scans: int, seed: int = 0,
                      azimuth_steps: int = 2000, spacing: float = 10.0) -> Dict:
    """Generate ``root/sequences/<seq>/`` with ``n_scans`` scans of one street scene.

    Returns ``{"histogram": {raw id: points}, "points": total, "scan_seconds": [...],
    "scene_seconds": float}``.
    """
    if n_scans < 1:
        raise ValueError(f"n_scans must be >= 1, got {n_scans}")
    sdir = Path(root) / "sequences" / f"{seq:02d}"
    t0 = time.perf_counter()
    scene = build_scene(np.random.default_rng(np.random.SeedSequence([seed, seq])), n_scans, spacing)
    t_scene = time.perf_counter() - t0
    sensor = HDL64E(azimuth_steps=azimuth_steps)
    hist = np.zeros(1 << 16, np.int64)
    times = []
    for i, pose in enumerate(scene.poses):
        t0 = time.perf_counter()
        rng = np.random.default_rng(np.random.SeedSequence([seed, seq, 1000 + i]))
        pts, sem, inst = scan(scene.prims, scene.layout, pose, rng, sensor)
        times.append(time.perf_counter() - t0)
        if len(pts) == 0:
            raise RuntimeError(f"sequence {seq:02d} scan {i}: the simulated scan is empty")
        write_scan(sdir, i, pts, sem, inst)
        hist += np.bincount(sem, minlength=1 << 16)
    write_calib(sdir)
    write_poses(sdir, scene.poses)
    nz = np.nonzero(hist)[0]
    return {"histogram": {int(k): int(hist[k]) for k in nz}, "points": int(hist.sum()),
            "scan_seconds": times, "scene_seconds": t_scene}


def _plan(n_train: int, n_val: int) -> Dict[int, int]:
    """Sequence -> scan count: training scans spread evenly over the official train sequences
    (all ten of them once ``n_train >= 10``, so ``split="train"`` finds every folder), val in 08."""
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ValueError(f"need n_train, n_val >= 0 and at least one scan, got {n_train}, {n_val}")
    seqs = SPLITS["train"][: min(n_train, len(SPLITS["train"]))]
    plan = {s: n_train // len(seqs) + (i < n_train % len(seqs)) for i, s in enumerate(seqs)}
    if n_val:
        plan[SPLITS["val"][0]] = n_val
    return plan


def generate_synthetic_kitti(root: Union[str, os.PathLike], seed: int = 0, n_train: int = 48, n_val: int = 16,
                             azimuth_steps: int = 2000, spacing: float = 10.0, verbose: bool = False) -> Dict:
    """Generate a full set under ``root`` (overwriting its sequences) and write ``synth_meta.json``.

    Returns the metadata dict: parameters, per-split raw-id histograms, seconds per scan.
    """
    root = Path(root)
    plan = _plan(n_train, n_val)
    params = {"version": GENERATOR_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
              "azimuth_steps": azimuth_steps, "spacing": spacing}
    hist = {"train": {}, "val": {}}
    times = []
    for seq, n in plan.items():
        st = generate_sequence(root, seq, n, seed, azimuth_steps, spacing)
        split = "val" if seq in SPLITS["val"] else "train"
        for k, v in st["histogram"].items():
            hist[split][k] = hist[split].get(k, 0) + v
        times += st["scan_seconds"]
        if verbose:
            print(f"sequence {seq:02d}: {n} scans, {st['points'] / n:.0f} points/scan, "
                  f"{np.mean(st['scan_seconds']):.3f} s/scan, scene {st['scene_seconds']:.2f} s", flush=True)
    meta = {"params": params, "sequences": {f"{s:02d}": n for s, n in plan.items()},
            "histogram": {sp: {str(k): v for k, v in sorted(h.items())} for sp, h in hist.items()},
            "seconds_per_scan": float(np.mean(times))}
    (root / _META).write_text(json.dumps(meta, indent=1))
    return meta


def ensure_synthetic_kitti(root: Union[str, os.PathLike] = "data/semantickitti_synth", seed: int = 0,
                           n_train: int = 48, n_val: int = 16, verbose: bool = False, **kwargs) -> Path:
    """Return ``root``, generating the synthetic set first if it is missing or was made with
    other parameters (or an older generator version). ``kwargs``: ``azimuth_steps``, ``spacing``.

    Generation goes to a temporary sibling folder that is renamed into place, so concurrent
    callers (e.g. DDP ranks) and interrupted runs never see a partial set. An existing ``root``
    that was not made by this generator is left untouched (ValueError).
    """
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "seed": seed, "n_train": n_train, "n_val": n_val,
              "azimuth_steps": kwargs.get("azimuth_steps", 2000), "spacing": kwargs.get("spacing", 10.0)}
    meta_path = root / _META
    if meta_path.exists():
        if json.loads(meta_path.read_text()).get("params") == params:
            return root
    elif root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not a generated synthetic set (no {_META}); "
                         "choose another folder or remove it")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        generate_synthetic_kitti(tmp, seed, n_train, n_val, verbose=verbose, **kwargs)
        if meta_path.exists():  # our own set with other parameters: replace it
            if json.loads(meta_path.read_text()).get("params") == params:  # a concurrent caller made it
                return root
            shutil.rmtree(root)
        elif root.exists():
            root.rmdir()
        try:
            os.rename(tmp, root)
        except OSError:
            if not ((root / _META).exists() and json.loads((root / _META).read_text()).get("params") == params):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root

