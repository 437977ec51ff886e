"""Write scans, ``calib.txt`` and ``poses.txt`` in the SemanticKITTI layout."""
from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["CALIB", "write_scan", "write_calib", "write_poses"]

_P = np.array([[718.856, 0.0, 607.1928, 0.0], [0.0, 718.856, 185.2157, 0.0], [0.0, 0.0, 1.0, 0.0]])


def _p(tx: float) -> np.ndarray:
    p = _P.copy()
    p[0, 3] = tx
    return p


#: KITTI-like calibration: P0..P3 camera projections, Tr = velodyne -> cam0 (x right, y down, z forward).
CALIB = {
    "P0": _p(0.0), "P1": _p(-386.1448), "P2": _p(45.38225), "P3": _p(-337.2877),
    "Tr": np.array([[0.0, -1.0, 0.0, -0.01], [0.0, 0.0, -1.0, -0.06], [1.0, 0.0, 0.0, -0.27]]),
}


def write_scan(seq_dir: Path, index: int, points: np.ndarray, semantic: np.ndarray, instance: np.ndarray) -> None:
    """``velodyne/NNNNNN.bin`` (float32 x4) and ``labels/NNNNNN.label`` (uint32 inst << 16 | raw id)."""
    (seq_dir / "velodyne").mkdir(parents=True, exist_ok=True)
    (seq_dir / "labels").mkdir(parents=True, exist_ok=True)
    np.ascontiguousarray(points, dtype=np.float32).tofile(seq_dir / "velodyne" / f"{index:06d}.bin")
    lab = (instance.astype(np.uint32) << 16) | semantic.astype(np.uint32)
    lab.tofile(seq_dir / "labels" / f"{index:06d}.label")


def _fmt(m: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(m).reshape(-1)[:12])


def write_calib(seq_dir: Path) -> None:
    seq_dir.mkdir(parents=True, exist_ok=True)
    (seq_dir / "calib.txt").write_text("".join(f"{k}: {_fmt(v)}\n" for k, v in CALIB.items()))


def write_poses(seq_dir: Path, lidar_world: np.ndarray) -> None:
    """``poses.txt``: cam0 poses in the first cam0 frame, ``P_i = Tr @ inv(L_0) @ L_i @ inv(Tr)``
    for world-from-lidar poses ``L_i`` (so that ``inv(Tr) @ P_i @ Tr`` gives lidar poses)."""
    tr = np.eye(4)
    tr[:3] = CALIB["Tr"]
    rel = np.linalg.inv(lidar_world[0]) @ lidar_world
    cam = tr @ rel @ np.linalg.inv(tr)
    (seq_dir / "poses.txt").write_text("".join(_fmt(c[:3]) + "\n" for c in cam))
