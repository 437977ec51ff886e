r"""nuScenes-lidarseg leaderboard files: writer and validator.

Layout (nuscenes-devkit ``eval/lidarseg/README.md``)::

    <results>/lidarseg/<split>/<lidar_sample_data_token>_lidarseg.bin   uint8 [N], class indices 1..16 (no 0)
    <results>/<split>/submission.json   {"meta": {"use_camera": bool, "use_lidar": bool, "use_radar": bool,
                                                  "use_map": bool, "use_external": bool}}

:func:`validate_nuscenes_lidarseg_submission` applies the checks of the devkit's
``eval/lidarseg/validate_submission.py`` (folders, the exact meta keys with bool values, one file
per LiDAR keyframe of the split, one prediction per point, values in 1..16) against a
``{token: number of points}`` table, so it needs no devkit; :func:`expected_points_from_nuscenes`
builds that table from a devkit ``NuScenes`` object exactly as the devkit validator does. Files
that are not an expected prediction are also reported (the devkit ignores them).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Dict, Mapping, Union

import numpy as np

from .semantic_kitti_submission import SubmissionError

__all__ = [
    "LIDARSEG_CLASSES", "META_KEYS", "train_to_lidarseg", "write_nuscenes_lidarseg_prediction",
    "write_nuscenes_submission_meta", "validate_nuscenes_lidarseg_submission", "expected_points_from_nuscenes",
]

PathLike = Union[str, os.PathLike]

#: The 16 nuScenes-lidarseg classes, index 1..16 (0 = ignore/noise is not a valid prediction).
LIDARSEG_CLASSES = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian", "traffic_cone",
    "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade", "vegetation",
)
META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")
_TOKEN = re.compile(r"^[0-9A-Za-z_-]+$")


def train_to_lidarseg(train_ids: np.ndarray) -> np.ndarray:
    """Training ids 0..15 (class order of :data:`LIDARSEG_CLASSES`) -> uint8 lidarseg indices 1..16."""
    t = np.asarray(train_ids.cpu() if hasattr(train_ids, "cpu") else train_ids)
    if t.dtype.kind not in "iu":
        raise TypeError(f"training ids must be integers, got dtype {t.dtype}")
    if t.size and (t.min() < 0 or t.max() >= len(LIDARSEG_CLASSES)):
        raise ValueError(f"training ids must be in 0..{len(LIDARSEG_CLASSES) - 1}, got "
                         f"{np.unique(t[(t < 0) | (t >= len(LIDARSEG_CLASSES))])[:10].tolist()}")
    return (t + 1).astype(np.uint8)


def _check_name(value: str, field: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise ValueError(f"{field} must be a non-empty token of letters, digits, '_' or '-', got {value!r}")
    return value


def write_nuscenes_lidarseg_prediction(results_dir: PathLike, split: str, lidar_token: str,
                                       pred: np.ndarray) -> Path:
    """Write ``results_dir/lidarseg/<split>/<lidar_token>_lidarseg.bin``.

    Args:
        results_dir: submission folder.
        split: evaluation set (``"test"``, ``"val"``, ``"mini_val"`` ...).
        lidar_token: the ``LIDAR_TOP`` sample_data token of the keyframe.
        pred: ``[N]`` integer lidarseg class indices 1..16, one per point (see :func:`train_to_lidarseg`).
    """
    _check_name(split, "split")
    _check_name(lidar_token, "lidar_token")
    p = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred)
    if p.ndim != 1:
        raise ValueError(f"{lidar_token}: predictions must be 1-D, got shape {p.shape}")
    if p.dtype.kind not in "iu":
        raise TypeError(f"{lidar_token}: predictions must be integer class indices, got dtype {p.dtype}")
    if p.size and (p.min() < 1 or p.max() > len(LIDARSEG_CLASSES)):
        raise ValueError(f"{lidar_token}: predictions must be in 1..{len(LIDARSEG_CLASSES)}, got "
                         f"{np.unique(p[(p < 1) | (p > len(LIDARSEG_CLASSES))])[:10].tolist()}")
    path = Path(results_dir) / "lidarseg" / split / f"{lidar_token}_lidarseg.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    p.astype(np.uint8).tofile(path)
    return path


def write_nuscenes_submission_meta(results_dir: PathLike, split: str, *, use_camera: bool = False,
                                   use_lidar: bool = True, use_radar: bool = False, use_map: bool = False,
                                   use_external: bool = False) -> Path:
    """Write ``results_dir/<split>/submission.json`` with the 5 ``meta`` flags."""
    _check_name(split, "split")
    meta = dict(use_camera=use_camera, use_lidar=use_lidar, use_radar=use_radar, use_map=use_map,
                use_external=use_external)
    for k, v in meta.items():
        if not isinstance(v, bool):
            raise TypeError(f"{k} must be a bool, got {type(v).__name__}")
    path = Path(results_dir) / split / "submission.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta}, indent=2) + "\n")
    return path


def validate_nuscenes_lidarseg_submission(results_dir: PathLike, split: str,
                                          expected_points: Mapping[str, int]) -> Dict[str, object]:
    """Check a nuScenes-lidarseg results folder.

    Args:
        results_dir: the folder holding ``lidarseg/<split>/`` and ``<split>/submission.json``.
        split: the evaluation set.
        expected_points: ``{lidar sample_data token: number of points}`` for every keyframe of
            the split (e.g. from :func:`expected_points_from_nuscenes`).

    Returns:
        ``{"files": int, "points": int, "meta": dict}``.

    Raises:
        SubmissionError naming the folder or file that breaks a rule.
    """
    root = Path(results_dir)
    meta_dir, bin_dir = root / split, root / "lidarseg" / split
    if not meta_dir.is_dir():
        raise SubmissionError(f"the folder containing submission.json ({meta_dir}) does not exist")
    meta_path = meta_dir / "submission.json"
    if not meta_path.is_file():
        raise SubmissionError(f"submission.json ({meta_path}) does not exist")
    if not bin_dir.is_dir():
        raise SubmissionError(f"the folder containing the .bin files ({bin_dir}) does not exist")
    try:
        doc = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{meta_path} is not valid JSON: {e}") from e
    meta = doc.get("meta") if isinstance(doc, dict) else None
    if not isinstance(meta, dict) or set(meta) != set(META_KEYS):
        raise SubmissionError(f"{meta_path} must contain {{'meta': {{...}}}} with exactly the keys {list(META_KEYS)}")
    for k in META_KEYS:
        if not isinstance(meta[k], bool):
            raise SubmissionError(f"{meta_path}: value for {k} should be bool, not {type(meta[k]).__name__}")
    points = 0
    for token, n in expected_points.items():
        path = bin_dir / f"{token}_lidarseg.bin"
        if not path.is_file():
            raise SubmissionError(f"the prediction .bin file {path} does not exist")
        pred = np.fromfile(path, dtype=np.uint8)
        if len(pred) != int(n):
            raise SubmissionError(f"{path}: {len(pred)} predictions for lidar sample_data token {token} "
                                  f"but the point cloud has {int(n)} points")
        bad = (pred < 1) | (pred > len(LIDARSEG_CLASSES))
        if bad.any():
            raise SubmissionError(f"{path}: predictions must be in 1..{len(LIDARSEG_CLASSES)}, found "
                                  f"{np.unique(pred[bad]).tolist()} ({int(bad.sum())} points)")
        points += len(pred)
    names = {f"{t}_lidarseg.bin" for t in expected_points}
    extra = sorted(p.name for p in bin_dir.iterdir() if p.name not in names)
    if extra:
        raise SubmissionError(f"{bin_dir} contains files that are not predictions for the {split!r} keyframes, "
                              f"e.g. {extra[:5]}")
    return {"files": len(expected_points), "points": points, "meta": meta}


def expected_points_from_nuscenes(nusc, split: str) -> Dict[str, int]:
    """``{LIDAR_TOP sample_data token: point count}`` for the keyframes of ``split``, counted as the devkit
    validator does: from the ground-truth lidarseg file when the dataset has lidarseg labels, otherwise
    from the point-cloud file (5 float32 per point)."""
    from nuscenes.utils import splits as nus_splits

    # the devkit's get_samples_in_eval_set, tolerant of split scenes that the dataset does not hold
    # (a partial or synthetic set named after the mini/trainval scene lists)
    if nus_splits.is_predefined_split(split):
        names = set(nus_splits.create_splits_scenes()[split])
    else:
        names = set(nus_splits.get_scenes_of_custom_split(split, nusc))
    samples = [s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in names]
    out: Dict[str, int] = {}
    has_gt = len(getattr(nusc, "lidarseg", [])) > 0
    for sample_token in samples:
        sd_token = nusc.get("sample", sample_token)["data"]["LIDAR_TOP"]
        if has_gt:
            path = Path(nusc.dataroot) / nusc.get("lidarseg", sd_token)["filename"]
            item = 1
        else:
            path = Path(nusc.dataroot) / nusc.get("sample_data", sd_token)["filename"]
            item = 20
        if not path.is_file():
            raise FileNotFoundError(f"{'lidarseg label' if has_gt else 'point cloud'} file {path} "
                                    f"(sample_data {sd_token}) does not exist")
        out[sd_token] = path.stat().st_size // item
    return out
