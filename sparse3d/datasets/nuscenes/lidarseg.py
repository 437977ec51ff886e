"""nuScenes-lidarseg for the segmentation models, read through ``nuscenes-devkit``.

Labels: the 32 ``category.json`` classes are merged by the devkit's ``LidarsegClassMapper`` into the 16
evaluation classes (coarse index 1..16, 0 = ignore); training ids are ``coarse - 1`` (0..15) and ignored points
get 255, so the segmentation models, transforms and metrics are shared with SemanticKITTI. Predictions go back to
1..16 with :func:`sparse3d.evaluation.nuscenes_lidarseg_submission.train_to_lidarseg`. mIoU follows the nuScenes
convention (classes absent from both targets and predictions are skipped).

A sample is ``{"points": [N, 4] float32 (x, y, z, intensity), "labels": [N] int64, "scan_id": sample token,
"lidar_token": LIDAR_TOP sample_data token}`` (keyframe only: lidarseg labels exist for keyframes).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Union

import numpy as np
from torch.utils.data import Dataset

from ..kitti_module import SemanticKITTIDataModule

__all__ = ["LIDARSEG_TRAIN_CLASSES", "NuScenesLidarSeg", "NuScenesLidarSegDataModule", "ensure_synthetic_nuscenes"]

#: training id i <-> nuScenes-lidarseg class index i + 1
LIDARSEG_TRAIN_CLASSES = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian", "traffic_cone",
    "trailer", "truck", "driveable_surface", "other_flat", "sidewalk", "terrain", "manmade", "vegetation",
)
IGNORE_INDEX = 255


def ensure_synthetic_nuscenes(root: Union[str, os.PathLike], **params: Any) -> Path:
    """Write the synthetic nuScenes set (:func:`~sparse3d.datasets.nuscenes.write_nuscenes_synth` with ``params``)
    unless ``root/synth_meta.json`` already records the same parameters; returns ``root``."""
    import json
    import shutil

    from .writer import write_nuscenes_synth
    root = Path(root)
    meta = root / "synth_meta.json"
    if meta.is_file():
        have = json.loads(meta.read_text())
        keymap = {"n_scenes": "n_scenes", "n_keyframes": "n_keyframes", "n_sweeps": "n_sweeps", "seed": "seed",
                  "azimuth_steps": "azimuth_steps", "n_objects": "n_objects", "version": "version"}
        same = all(have.get(keymap[k]) == v for k, v in params.items() if k in keymap)
        if "image_size" in params:
            same &= list(have.get("image_size", [])) == list(params["image_size"])
        if same:
            return root
        if have.get("generator") != "sparse3d.datasets.nuscenes":
            raise FileExistsError(f"{root} holds a dataset that is not a generated synthetic set; refusing to overwrite")
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} exists, is not empty and has no synth_meta.json; refusing to overwrite")
    write_nuscenes_synth(root, **params)
    return root


class NuScenesLidarSeg(Dataset):
    """Keyframes of one split with their lidarseg labels.

    Args:
        dataroot, version: the nuScenes folder and table version (``v1.0-mini``, ``v1.0-trainval``).
        split: a devkit split (``mini_train``, ``train``, ``val`` ...) or a ``splits.json`` key.
        transform: callable applied to each sample dict.
        require_labels: False for the test split (points only).
    """

    def __init__(self, dataroot, version: str = "v1.0-mini", split: str = "mini_train",
                 transform: Optional[Callable[[dict], dict]] = None, require_labels: bool = True) -> None:
        from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

        from .loader import NuScenesDataError, NuScenesLoader
        self.loader = NuScenesLoader(dataroot, version, nsweeps=0, load_images=False)
        self.split, self.transform, self.require_labels = split, transform, require_labels
        self.tokens = self.loader.split_tokens(split)
        if require_labels:
            if not hasattr(self.loader.nusc, "lidarseg"):
                raise NuScenesDataError(f"{dataroot}/{version}: no lidarseg.json table (nuScenes-lidarseg labels)")
            fine2coarse = LidarsegClassMapper(self.loader.nusc).get_fine_idx_2_coarse_idx()
            lut = np.full(256, IGNORE_INDEX, np.int64)
            for fine, coarse in fine2coarse.items():
                lut[int(fine)] = coarse - 1 if coarse > 0 else IGNORE_INDEX
            self.lut = lut
            self._known = np.zeros(256, bool)
            self._known[list(fine2coarse)] = True

    def __len__(self) -> int:
        return len(self.tokens)

    def read(self, i: int) -> Dict[str, Any]:
        from .loader import LIDAR, NuScenesDataError
        token = self.tokens[i]
        sample = self.loader.nusc.get("sample", token)
        lidar_token = sample["data"][LIDAR]
        if self.require_labels:
            pts, labels = self.loader.load_lidarseg(token)
            bad = ~self._known[labels]
            if bad.any():
                raise NuScenesDataError(f"lidarseg of sample {token!r}: label ids {sorted(set(labels[bad].tolist()))} "
                                        "are not in category.json")
            out = {"labels": self.lut[labels]}
        else:
            from .loader import _read_points
            sd = self.loader.nusc.get("sample_data", lidar_token)
            pts = _read_points(Path(self.loader.dataroot) / sd["filename"], lidar_token)
            out = {}
        if len(pts) == 0:
            raise NuScenesDataError(f"sample {token!r} (LIDAR_TOP {lidar_token!r}) has an empty point cloud")
        out.update(points=np.ascontiguousarray(pts[:, :4], np.float32), scan_id=token, lidar_token=lidar_token)
        return out

    def __getitem__(self, i: int) -> Dict[str, Any]:
        s = self.read(i)
        return self.transform(s) if self.transform is not None else s


class NuScenesLidarSegDataModule(SemanticKITTIDataModule):
    """:class:`~sparse3d.datasets.kitti_module.SemanticKITTIDataModule` (transforms, voxelization, loaders, DDP
    sampling) over :class:`NuScenesLidarSeg`.

    Args:
        root: the nuScenes dataroot. version: table version.
        synthetic: parameters of :func:`ensure_synthetic_nuscenes` (None: ``root`` must exist).
        train_split / val_split: devkit split names or ``splits.json`` keys.
        Remaining args as the parent (16 classes, ignore 255, nuScenes mIoU convention by default).
    """

    def __init__(self, root, version: str = "v1.0-mini", synthetic: Optional[Dict[str, Any]] = None,
                 train_split: str = "mini_train", val_split: str = "mini_val", voxel_size: float = 0.1,
                 max_voxels: Optional[int] = None, batch_size: int = 2, val_batch_size: int = 1, num_workers: int = 0,
                 rotate: bool = True, scale: Optional[Sequence[float]] = (0.95, 1.05), flip: bool = False,
                 jitter: float = 0.0, seed: int = 0, miou_convention: str = "nuscenes", num_classes: int = 16,
                 ignore_index: int = IGNORE_INDEX, tta_views: int = 1, balance_ranks: bool = False) -> None:
        if (int(num_classes), int(ignore_index)) != (len(LIDARSEG_TRAIN_CLASSES), IGNORE_INDEX):
            raise ValueError(f"nuScenes-lidarseg has 16 classes with ignore 255, got num_classes={num_classes}, "
                             f"ignore_index={ignore_index}")
        super().__init__(root, None, None, None, voxel_size, max_voxels, batch_size, val_batch_size, num_workers,
                         rotate, scale, flip, jitter, seed, num_classes=len(LIDARSEG_TRAIN_CLASSES),
                         ignore_index=IGNORE_INDEX, class_names=LIDARSEG_TRAIN_CLASSES, miou_convention=miou_convention,
                         tta_views=tta_views, balance_ranks=balance_ranks)
        self.nus_synthetic = dict(synthetic) if synthetic is not None else None
        self.version, self.train_split, self.val_split = version, train_split, val_split

    def prepare_data(self) -> Path:
        if self.nus_synthetic is not None:
            ensure_synthetic_nuscenes(self.root, version=self.version, **self.nus_synthetic)
        from .loader import check_dataroot
        check_dataroot(self.root, self.version)
        return self.root

    def train_dataset(self) -> NuScenesLidarSeg:
        self.prepare_data()
        return NuScenesLidarSeg(self.root, self.version, self.train_split, self.train_transform())

    def val_dataset(self) -> NuScenesLidarSeg:
        self.prepare_data()
        return NuScenesLidarSeg(self.root, self.version, self.val_split, self.val_transform())

    def class_counts(self) -> np.ndarray:
        if getattr(self, "_class_counts", None) is None:
            ds = NuScenesLidarSeg(self.root, self.version, self.train_split) if self.prepare_data() else None
            counts = np.zeros(self.num_classes, np.int64)
            for i in range(len(ds)):
                t = ds.read(i)["labels"]
                counts += np.bincount(t[t != IGNORE_INDEX], minlength=self.num_classes)[: self.num_classes]
            self._class_counts = counts
        return self._class_counts
