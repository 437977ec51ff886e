r"""SemanticKITTI: label tables, file readers and a ``Dataset`` (Behley et al., ICCV 2019).

Layout read (the official one)::

    root/sequences/XX/velodyne/NNNNNN.bin   float32 [N, 4] (x, y, z, remission), sensor frame
    root/sequences/XX/labels/NNNNNN.label   uint32  [N]: raw semantic id in the lower 16 bits,
                                                         instance id in the upper 16 bits
    root/sequences/XX/calib.txt             "P0: 12 floats" ... "Tr: 12 floats" (velodyne -> cam0)
    root/sequences/XX/poses.txt             one 3x4 row-major cam0 pose per scan

Label convention (documented once, used by the whole package):

* ``LEARNING_MAP`` / ``LEARNING_MAP_INV`` are the official ``semantic-kitti.yaml`` tables:
  raw id -> 0..19 with 0 = unlabeled (``learning_ignore[0]``), and 0..19 -> raw id.
* Training ids (what :class:`SemanticKITTI` returns in ``sample["labels"]``) are
  ``LEARNING_MAP[raw] - 1`` in 0..18 (order of ``CLASS_NAMES``) and ``IGNORE_INDEX = 255``
  for unlabeled, i.e. the convention of ``CrossEntropyLoss(ignore_index=255)`` in spvnas.
  ``train_to_raw`` inverts it for submissions (255 -> raw 0).
  Unlike the spvnas map, bus / on-rails / lane-marking keep their official targets.
* A raw id that is not a key of ``LEARNING_MAP`` is an error (the official API would map it to 0
  silently).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Dataset

__all__ = [
    "LABELS", "LEARNING_MAP", "LEARNING_MAP_INV", "CLASS_NAMES", "NUM_CLASSES", "IGNORE_INDEX",
    "SPLITS", "raw_to_train", "train_to_raw", "read_points", "read_labels", "read_calib",
    "read_poses", "lidar_poses", "list_scans", "SemanticKITTI",
]

PathLike = Union[str, os.PathLike]

LABELS: Dict[int, str] = {
    0: "unlabeled", 1: "outlier", 10: "car", 11: "bicycle", 13: "bus", 15: "motorcycle",
    16: "on-rails", 18: "truck", 20: "other-vehicle", 30: "person", 31: "bicyclist",
    32: "motorcyclist", 40: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
    50: "building", 51: "fence", 52: "other-structure", 60: "lane-marking", 70: "vegetation",
    71: "trunk", 72: "terrain", 80: "pole", 81: "traffic-sign", 99: "other-object",
    252: "moving-car", 253: "moving-bicyclist", 254: "moving-person", 255: "moving-motorcyclist",
    256: "moving-on-rails", 257: "moving-bus", 258: "moving-truck", 259: "moving-other-vehicle",
}

#: Official ``learning_map`` (semantic-kitti-api ``config/semantic-kitti.yaml``).
LEARNING_MAP: Dict[int, int] = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8,
    40: 9, 44: 10, 48: 11, 49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17,
    80: 18, 81: 19, 99: 0, 252: 1, 253: 7, 254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}

#: Official ``learning_map_inv``: 0..19 -> raw id.
LEARNING_MAP_INV: Dict[int, int] = {
    0: 0, 1: 10, 2: 11, 3: 15, 4: 18, 5: 20, 6: 30, 7: 31, 8: 32, 9: 40, 10: 44, 11: 48,
    12: 49, 13: 50, 14: 51, 15: 70, 16: 71, 17: 72, 18: 80, 19: 81,
}

#: The 19 training classes, indexed by training id 0..18.
CLASS_NAMES: Tuple[str, ...] = tuple(LABELS[LEARNING_MAP_INV[i]] for i in range(1, 20))
NUM_CLASSES = 19
IGNORE_INDEX = 255

#: Official sequence split.
SPLITS: Dict[str, Tuple[int, ...]] = {
    "train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10),
    "val": (8,),
    "test": tuple(range(11, 22)),
}

_TRAIN_LUT = np.full(1 << 16, -1, dtype=np.int64)
for _raw, _lm in LEARNING_MAP.items():
    _TRAIN_LUT[_raw] = IGNORE_INDEX if _lm == 0 else _lm - 1
_INV_LUT = np.array([LEARNING_MAP_INV[i + 1] for i in range(NUM_CLASSES)], dtype=np.uint32)


def raw_to_train(raw: np.ndarray, source: str = "labels") -> np.ndarray:
    """Map raw semantic ids to training ids.

    Args:
        raw: ``[N]`` integer raw ids (already ``& 0xFFFF``).
        source: name of the file/array, used in the error message.

    Returns:
        ``[N]`` int64 in 0..18, or ``IGNORE_INDEX`` (255) for unlabeled/outlier/other-*.

    Raises:
        ValueError: naming ``source`` and the ids when some are absent from ``LEARNING_MAP``.
    """
    raw = np.asarray(raw)
    if raw.size and (raw.min() < 0 or raw.max() >= (1 << 16)):
        raise ValueError(f"{source}: raw semantic ids must be in [0, 65535]")
    out = _TRAIN_LUT[raw.astype(np.int64)]
    bad = out < 0
    if bad.any():
        ids = np.unique(raw[bad]).tolist()
        raise ValueError(f"{source}: label ids {ids[:20]} ({int(bad.sum())} points) are not in "
                         "the SemanticKITTI learning_map")
    return out


def train_to_raw(train_ids: np.ndarray) -> np.ndarray:
    """Training ids (0..18, 255 = ignore) -> raw ids ``uint32`` via ``LEARNING_MAP_INV``."""
    t = np.asarray(train_ids).astype(np.int64)
    bad = (t < 0) | ((t >= NUM_CLASSES) & (t != IGNORE_INDEX))
    if bad.any():
        raise ValueError(f"train ids must be in 0..{NUM_CLASSES - 1} or {IGNORE_INDEX}, "
                         f"got {np.unique(t[bad])[:10].tolist()}")
    out = np.zeros(t.shape, dtype=np.uint32)
    ok = t != IGNORE_INDEX
    out[ok] = _INV_LUT[t[ok]]
    return out


def _check_bin_size(path: Path, nbytes: int) -> int:
    if nbytes == 0:
        raise ValueError(f"empty scan: {path} has 0 points")
    if nbytes % 16:
        raise ValueError(f"{path}: size {nbytes} bytes is not a multiple of 16 "
                         "(4 float32 per point: x, y, z, remission)")
    return nbytes // 16


def read_points(path: PathLike) -> np.ndarray:
    """Read a velodyne scan. Returns ``[N, 4]`` float32 (x, y, z, remission), N >= 1.

    Raises ValueError (naming the file) for a size that is not a multiple of 16 bytes, an empty
    scan, or non-finite coordinates.
    """
    path = Path(path)
    n = _check_bin_size(path, path.stat().st_size)
    pts = np.fromfile(path, dtype=np.float32).reshape(n, 4)
    finite = np.isfinite(pts).all(axis=1)
    if not finite.all():
        raise ValueError(f"{path}: {int((~finite).sum())} points have NaN/inf values "
                         f"(first at row {int(np.argmin(finite))})")
    return pts


def read_labels(path: PathLike, num_points: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Read a ``.label`` file. Returns ``(semantic [N] uint16 raw ids, instance [N] uint16)``.

    Raises ValueError (naming the file) when the size is not a multiple of 4 bytes or the count
    differs from ``num_points``.
    """
    path = Path(path)
    nbytes = path.stat().st_size
    if nbytes % 4:
        raise ValueError(f"{path}: size {nbytes} bytes is not a multiple of 4 (one uint32 per point)")
    if num_points is not None and nbytes // 4 != num_points:
        raise ValueError(f"{path}: {nbytes // 4} labels but the scan has {num_points} points")
    lab = np.fromfile(path, dtype=np.uint32)
    return (lab & 0xFFFF).astype(np.uint16), (lab >> 16).astype(np.uint16)


def read_calib(path: PathLike) -> Dict[str, np.ndarray]:
    """Parse ``calib.txt`` into ``{key: [3, 4] float64}`` (P0..P3, Tr); ``Tr`` maps velodyne -> cam0."""
    path = Path(path)
    out: Dict[str, np.ndarray] = {}
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        key, sep, vals = line.partition(":")
        try:
            v = np.array([float(x) for x in vals.split()], dtype=np.float64)
        except ValueError:
            v = np.empty(0)
        if not sep or v.size != 12:
            raise ValueError(f"{path}:{i + 1}: expected 'KEY: 12 numbers', got {line[:60]!r}")
        out[key.strip()] = v.reshape(3, 4)
    if "Tr" not in out:
        raise ValueError(f"{path}: no 'Tr' (velodyne -> camera) entry")
    return out


def read_poses(path: PathLike) -> np.ndarray:
    """Parse ``poses.txt``: ``[S, 4, 4]`` float64 cam0 poses in the first cam0 frame."""
    path = Path(path)
    rows = [ln for ln in path.read_text().splitlines() if ln.strip()]
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    for i, ln in enumerate(rows):
        v = ln.split()
        if len(v) != 12:
            raise ValueError(f"{path}:{i + 1}: expected 12 numbers, got {len(v)}")
        poses[i, :3] = np.array(v, dtype=np.float64).reshape(3, 4)
    return poses


def lidar_poses(cam_poses: np.ndarray, tr: np.ndarray) -> np.ndarray:
    """Velodyne poses ``inv(Tr) @ P @ Tr`` (as semantic-kitti-api ``parse_poses``): ``[S, 4, 4]``."""
    t = np.eye(4)
    t[:3] = np.asarray(tr)[:3]
    return np.linalg.inv(t) @ cam_poses @ t


def _seq_dir(root: Path, seq: Union[int, str]) -> Path:
    name = f"{int(seq):02d}" if not isinstance(seq, str) else seq
    return root / "sequences" / name


def list_scans(root: PathLike, sequences: Iterable[Union[int, str]],
               require_labels: bool = True) -> List[Tuple[str, Path, Optional[Path]]]:
    """List ``(scan_id "XX/NNNNNN", bin_path, label_path or None)`` and check the file sizes.

    Nothing is skipped: a missing sequence or velodyne folder raises FileNotFoundError; a
    sequence without scans, a ``.bin`` of bad size, a missing label file (when
    ``require_labels``), a label whose count differs from the point count, or a label file with
    no scan raises ValueError naming the file.
    """
    root = Path(root)
    out = []
    for seq in sequences:
        sdir = _seq_dir(root, seq)
        if not sdir.is_dir():
            raise FileNotFoundError(f"sequence folder not found: {sdir}")
        vdir, ldir = sdir / "velodyne", sdir / "labels"
        if not vdir.is_dir():
            raise FileNotFoundError(f"velodyne folder not found: {vdir}")
        bins = sorted(vdir.glob("*.bin"))
        if not bins:
            raise ValueError(f"sequence {sdir} has no .bin scans in {vdir}")
        if require_labels and not ldir.is_dir():
            raise FileNotFoundError(f"labels folder not found: {ldir}")
        if ldir.is_dir():
            stems = {b.stem for b in bins}
            orphans = [p.name for p in sorted(ldir.glob("*.label")) if p.stem not in stems]
            if orphans:
                raise ValueError(f"{ldir}: label files without a scan: {orphans[:5]}")
        for b in bins:
            n = _check_bin_size(b, b.stat().st_size)
            lab: Optional[Path] = ldir / (b.stem + ".label")
            if lab.exists():
                size = lab.stat().st_size
                if size % 4:
                    raise ValueError(f"{lab}: size {size} bytes is not a multiple of 4 (one uint32 per point)")
                if size != 4 * n:
                    raise ValueError(f"{lab}: {size // 4} labels but {b} has {n} points")
            elif require_labels:
                raise ValueError(f"missing label file {lab} for scan {b}")
            else:
                lab = None
            out.append((f"{sdir.name}/{b.stem}", b, lab))
    return out


class SemanticKITTI(Dataset):
    """SemanticKITTI scans as dict samples.

    Args:
        root: folder containing ``sequences/``.
        split: ``"train"``, ``"val"`` or ``"test"`` (official sequences), ignored if
            ``sequences`` is given.
        sequences: explicit sequence numbers.
        transform: callable applied to each sample dict (e.g. ``transforms.Compose``).
        require_labels: default True except for the test split.

    A sample (before ``transform``) is ``{"points": [N, 4] float32, "labels": [N] int64 training
    ids (0..18, 255 ignore; absent without labels), "scan_id": "XX/NNNNNN"}``.
    File sizes are checked at construction; label ids are checked when a scan is read.
    """

    def __init__(self, root: PathLike, split: str = "train", sequences: Optional[Sequence[int]] = None,
                 transform: Optional[Callable[[dict], dict]] = None,
                 require_labels: Optional[bool] = None) -> None:
        if sequences is None:
            if split not in SPLITS:
                raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
            sequences = SPLITS[split]
        if require_labels is None:
            require_labels = split != "test"
        self.root = Path(root)
        self.sequences = [int(s) for s in sequences]
        self.transform = transform
        self.scans = list_scans(self.root, self.sequences, require_labels)

    def __len__(self) -> int:
        return len(self.scans)

    def read(self, i: int) -> dict:
        scan_id, bin_path, label_path = self.scans[i]
        pts = read_points(bin_path)
        sample = {"points": pts, "scan_id": scan_id}
        if label_path is not None:
            sem, _ = read_labels(label_path, len(pts))
            sample["labels"] = raw_to_train(sem, str(label_path))
        return sample

    def __getitem__(self, i: int) -> dict:
        sample = self.read(i)
        return self.transform(sample) if self.transform is not None else sample

    def calib(self, seq: int) -> Dict[str, np.ndarray]:
        """``calib.txt`` of a sequence (FileNotFoundError if absent)."""
        return read_calib(_seq_dir(self.root, seq) / "calib.txt")

    def poses(self, seq: int) -> np.ndarray:
        """Velodyne poses ``[S, 4, 4]`` of a sequence from ``poses.txt`` and ``calib.txt``."""
        return lidar_poses(read_poses(_seq_dir(self.root, seq) / "poses.txt"), self.calib(seq)["Tr"])
