r"""SemanticKITTI leaderboard files: writer, zipper and validator.

Layout (CodaLab semantic segmentation task)::

    sequences/XX/predictions/NNNNNN.label   uint32 [N] raw label ids (``learning_map_inv``), one per point
    description.txt                         optional free text (method, paper, code link)

:func:`validate_semantic_kitti_submission` implements the rules of the official
``semantic-kitti-api/validate_submission.py`` (a ``.zip`` name, the ``sequences/``,
``sequences/XX/`` and ``sequences/XX/predictions/`` directory entries, one ``.label`` per scan of
every sequence of the split, ``label bytes / 4 == bin bytes / 16``) and is stricter where the
official script is silent: every label must be one of the 19 raw ids of ``learning_map_inv``
(lower 16 bits; the upper 16 bits, instance ids, are not checked), and files that are neither a
needed prediction nor ``description.txt`` are errors (the official completion-task rule).
"""
from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..datasets.semantic_kitti import LEARNING_MAP_INV, NUM_CLASSES, SPLITS, train_to_raw

__all__ = [
    "SubmissionError", "VALID_RAW_IDS", "prediction_path", "write_semantic_kitti_labels",
    "write_description", "zip_semantic_kitti_submission", "validate_semantic_kitti_submission",
]

PathLike = Union[str, os.PathLike]

#: The 19 raw ids a prediction may contain (``learning_map_inv`` of classes 1..19).
VALID_RAW_IDS: Tuple[int, ...] = tuple(sorted(LEARNING_MAP_INV[i] for i in range(1, NUM_CLASSES + 1)))
_SCAN_ID = re.compile(r"^(\d{2})/(\d{6})$")
_VALID_LUT = np.zeros(1 << 16, dtype=bool)
_VALID_LUT[list(VALID_RAW_IDS)] = True


class SubmissionError(ValueError):
    """A submission that breaks the leaderboard rules; the message names the file or folder."""


def _split_scan_id(scan_id: str) -> Tuple[str, str]:
    m = _SCAN_ID.match(str(scan_id))
    if not m:
        raise ValueError(f"scan_id must look like 'XX/NNNNNN' (2-digit sequence, 6-digit scan), got {scan_id!r}")
    return m.group(1), m.group(2)


def prediction_path(root: PathLike, scan_id: str) -> Path:
    """``root/sequences/XX/predictions/NNNNNN.label`` for ``scan_id = "XX/NNNNNN"``."""
    seq, scan = _split_scan_id(scan_id)
    return Path(root) / "sequences" / seq / "predictions" / f"{scan}.label"


def write_semantic_kitti_labels(root: PathLike, scan_id: str, train_pred: np.ndarray) -> Path:
    """Write one scan's predictions as raw ids.

    Args:
        root: submission folder (gets ``sequences/XX/predictions/``).
        scan_id: ``"XX/NNNNNN"`` (the ``scan_id`` of :class:`~sparse3d.datasets.semantic_kitti.SemanticKITTI`).
        train_pred: ``[N]`` integer training ids 0..18 (one per point of the scan; torch or numpy).

    Returns:
        The written path; the file holds ``N`` uint32 raw ids (``learning_map_inv``).
    """
    pred = np.asarray(train_pred.cpu() if hasattr(train_pred, "cpu") else train_pred)
    if pred.ndim != 1 or pred.size == 0:
        raise ValueError(f"{scan_id}: predictions must be a non-empty 1-D array, got shape {pred.shape}")
    if pred.dtype.kind not in "iu":
        raise TypeError(f"{scan_id}: predictions must be integer training ids, got dtype {pred.dtype}")
    if pred.min() < 0 or pred.max() >= NUM_CLASSES:
        raise ValueError(f"{scan_id}: predictions must be training ids 0..{NUM_CLASSES - 1}, got "
                         f"{np.unique(pred[(pred < 0) | (pred >= NUM_CLASSES)])[:10].tolist()}")
    path = prediction_path(root, scan_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    train_to_raw(pred).astype("<u4").tofile(path)
    return path


def write_description(root: PathLike, text: str) -> Path:
    """Write ``root/description.txt`` (method name, paper, code link, ...)."""
    path = Path(root) / "description.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text.endswith("\n") else text + "\n")
    return path


def zip_semantic_kitti_submission(root: PathLike, zip_path: Optional[PathLike] = None) -> Path:
    """Zip a submission folder with explicit directory entries (the official validator looks for
    ``sequences/``, ``sequences/XX/`` and ``sequences/XX/predictions/`` entries).

    Only ``description.txt`` and ``sequences/**`` are included; returns the zip path
    (default ``<root>.zip``).
    """
    root = Path(root)
    if not (root / "sequences").is_dir():
        raise FileNotFoundError(f"no sequences/ folder in submission folder {root}")
    zip_path = Path(zip_path) if zip_path is not None else root.with_suffix(".zip")
    if zip_path.suffix != ".zip":
        raise ValueError(f"zip_path must end with '.zip', got {zip_path}")
    tmp = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        if (root / "description.txt").is_file():
            zf.write(root / "description.txt", "description.txt")
        for dirpath, dirnames, filenames in os.walk(root / "sequences"):
            dirnames.sort()
            rel = Path(dirpath).relative_to(root).as_posix()
            zf.write(dirpath, rel + "/")
            for f in sorted(filenames):
                zf.write(Path(dirpath) / f, f"{rel}/{f}")
    os.replace(tmp, zip_path)
    return zip_path


class _Source:
    """Uniform view of a zip file or a folder: ``dirs`` (names ending '/'), ``files`` {name: bytes}."""

    def __init__(self, path: Path) -> None:
        self.path, self.zf = path, None
        if path.is_dir():
            self.dirs, self.files = set(), {}
            for dirpath, _, filenames in os.walk(path):
                rel = Path(dirpath).relative_to(path).as_posix()
                if rel != ".":
                    self.dirs.add(rel + "/")
                for f in filenames:
                    name = f if rel == "." else f"{rel}/{f}"
                    self.files[name] = (Path(dirpath) / f).stat().st_size
        elif path.is_file():
            if path.suffix != ".zip":
                raise SubmissionError(f'competition bundle must end with ".zip": {path}')
            try:
                self.zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise SubmissionError(f"{path} is not a valid zip file: {e}") from e
            infos = self.zf.infolist()
            self.dirs = {i.filename for i in infos if i.filename.endswith("/")}
            self.files = {i.filename: i.file_size for i in infos if not i.filename.endswith("/")}
        else:
            raise FileNotFoundError(f"submission not found: {path}")

    def read(self, name: str) -> np.ndarray:
        data = self.zf.read(name) if self.zf is not None else (self.path / name).read_bytes()
        return np.frombuffer(data, dtype="<u4")

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.zf is not None else str(self.path / name)

    def close(self) -> None:
        if self.zf is not None:
            self.zf.close()


def _expected_scans(dataset_root: Path, sequences: Iterable[int]) -> List[Tuple[str, Path]]:
    """``[(label name in the submission, bin path)]`` for every scan of ``sequences``."""
    out = []
    for seq in sequences:
        vdir = dataset_root / "sequences" / f"{int(seq):02d}" / "velodyne"
        if not vdir.parent.is_dir():
            raise FileNotFoundError(f"sequence folder not found: {vdir.parent}")
        if not vdir.is_dir():
            raise FileNotFoundError(f"velodyne folder not found: {vdir}")
        bins = sorted(vdir.glob("*.bin"))
        if not bins:
            raise ValueError(f"sequence {vdir.parent} has no .bin scans in {vdir}")
        out += [(f"sequences/{int(seq):02d}/predictions/{b.stem}.label", b) for b in bins]
    return out


def validate_semantic_kitti_submission(zip_or_dir: PathLike, dataset_root: PathLike, split: str = "test",
                                       sequences: Optional[Sequence[int]] = None,
                                       check_label_ids: bool = True) -> Dict[str, object]:
    """Check a SemanticKITTI segmentation submission (a ``.zip`` or an unpacked folder).

    Args:
        zip_or_dir: the bundle, or a folder with the same layout.
        dataset_root: folder with ``sequences/XX/velodyne/*.bin`` of the split (the point counts).
        split: ``"test"`` (11..21, the leaderboard), ``"val"`` (08) or ``"train"``.
        sequences: explicit sequence numbers instead of the split's.
        check_label_ids: also require every label to be one of :data:`VALID_RAW_IDS`.

    Returns:
        ``{"sequences": [...], "scans": int, "points": int, "description": bool}``.

    Raises:
        SubmissionError (a ValueError) naming the file or folder that breaks a rule;
        FileNotFoundError for a missing submission or dataset sequence/velodyne folder.
    """
    if sequences is None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        sequences = SPLITS[split]
    sequences = [int(s) for s in sequences]
    expected = _expected_scans(Path(dataset_root), sequences)
    src = _Source(Path(zip_or_dir))
    try:
        if "sequences/" not in src.dirs:
            raise SubmissionError(f'directory "sequences" missing in {src.path}')
        for seq in sequences:
            for d in (f"sequences/{seq:02d}/", f"sequences/{seq:02d}/predictions/"):
                if d not in src.dirs:
                    raise SubmissionError(f'directory "{d}" missing in {src.path}')
        points = 0
        for name, bin_path in expected:
            n_points = bin_path.stat().st_size // 16
            if name not in src.files:
                raise SubmissionError(f'"{name}" is missing in {src.path} (scan {bin_path})')
            size = src.files[name]
            if size != 4 * n_points:
                raise SubmissionError(f"label file {src.where(name)} should have {n_points} labels (uint32), "
                                      f"but has {size / 4:g} ({size} bytes)")
            if check_label_ids:
                sem = src.read(name) & 0xFFFF
                bad = ~_VALID_LUT[sem]
                if bad.any():
                    raise SubmissionError(f"label file {src.where(name)}: raw ids "
                                          f"{np.unique(sem[bad])[:10].tolist()} ({int(bad.sum())} points) are not "
                                          f"in learning_map_inv {list(VALID_RAW_IDS)}")
            points += n_points
        needed = {name for name, _ in expected} | {"description.txt"}
        extra = sorted(f for f in src.files if f not in needed)
        if extra:
            raise SubmissionError(f"{src.path} contains unneeded files, e.g. {extra[:10]}")
        return {"sequences": sequences, "scans": len(expected), "points": points,
                "description": "description.txt" in src.files}
    finally:
        src.close()
