r"""nuScenes train/val DataLoaders for BEVFusion (camera + LiDAR + BEV map), built on :class:`NuScenesLoader`.

``NuScenesDataModule`` is what ``configs/dataset/nuscenes_synth.yaml`` instantiates. Per sample it loads the
keyframe LiDAR (+ sweeps), the cameras and the annotations through the devkit, applies

- **image augmentation** (BEVFusion ``ImageAug3D``: resize, bottom-aligned crop, horizontal flip, rotation about the
  crop centre), as one affine warp whose matrix is ``img_aug_matrix``; pixel coordinates are continuous with
  pixel ``i`` covering ``[i, i + 1)`` (PIL's and the synthetic renderer's convention), so the matrix is exact;
- **LiDAR augmentation** (``GlobalRotScaleTrans`` + ``RandomFlip3D``): ``p' = F (s R_z(theta) p + t)``, one
  ``lidar_aug_matrix`` applied to points, boxes (centre, size, yaw, velocity) and the BEV map patch;

and collates the batch format shared by the BEVFusion modules (see :func:`collate_nuscenes`).

Frames: ``camera2lidar`` / ``camera_intrinsics`` are the raw calibration (the view transform applies
``img_aug_matrix`` and ``lidar_aug_matrix`` itself, as BEVFusion's ``get_geometry``); ``lidar2image`` is the full chain
*after* both augmentations: augmented LiDAR ``(x, y, z, 1)`` -> ``(u d, v d, d, 1)`` in augmented-image pixels.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ...engine import distributed as D
from ...engine.seed import seed_worker
from ..kitti_module import ShardSampler
from .augment import (image_aug_matrix, image_aug_params, lidar_aug_matrix, map_masks_augmented, pixel_affine4,
                      random_lidar_aug, transform_boxes, transform_points, warp_image)
from .common import CAMERAS, DETECTION_CLASSES, MAP_CLASSES

__all__ = ["NuScenesDataModule", "NuScenesDataset", "collate_nuscenes", "ensure_nuscenes_synth", "IMAGENET_MEAN",
           "IMAGENET_STD", "image_aug_params", "image_aug_matrix", "warp_image", "lidar_aug_matrix",
           "transform_points", "transform_boxes", "map_masks_augmented"]  # augmentations re-exported from .augment

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SYNTH_KEYS = ("seed", "n_scenes", "n_keyframes", "n_sweeps", "image_size", "azimuth_steps", "n_objects",
               "version", "n_val")


# ---------------------------------------------------------------------------------------------- synthetic set
def ensure_nuscenes_synth(root, version: str = "v1.0-mini", verbose: bool = False, **params) -> Path:
    """Return ``root``, writing the synthetic nuScenes there first (``write_nuscenes_synth(**params)``) when it is
    missing or was written with other parameters or by another ``WRITER_VERSION``. Written to a temporary sibling
    folder and renamed into place, so concurrent callers never see a partial set; a non-empty ``root`` that is not
    a generated set raises."""
    from .writer import WRITER_VERSION, write_nuscenes_synth

    unknown = set(params) - set(_SYNTH_KEYS)
    if unknown:
        raise ValueError(f"synthetic: unknown keys {sorted(unknown)} (allowed: {list(_SYNTH_KEYS)})")
    root = Path(root)
    meta_path = root / "synth_meta.json"

    def matches(meta: dict) -> bool:
        if meta.get("writer_version") != WRITER_VERSION:  # written by an older generator: rewrite
            return False
        want = dict(params, version=version)
        for k, v in want.items():
            if k == "n_val":
                if v is not None and len(meta.get("val_scenes", ())) != int(v):
                    return False
            elif k == "image_size":
                if list(meta.get(k, ())) != [int(x) for x in v]:
                    return False
            elif meta.get(k) != v:
                return False
        return (root / version).is_dir()

    if meta_path.exists():
        if matches(json.loads(meta_path.read_text())):
            return root
    elif root.exists() and any(root.iterdir()):
        raise ValueError(f"{root} exists and is not a generated synthetic nuScenes set (no synth_meta.json); "
                         "choose another dataroot or remove it")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        write_nuscenes_synth(tmp, version=version, verbose=verbose, **params)
        if meta_path.exists():
            if matches(json.loads(meta_path.read_text())):  # a concurrent caller made it
                return root
            shutil.rmtree(root)
        elif root.exists():
            root.rmdir()
        root.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (meta_path.exists() and matches(json.loads(meta_path.read_text()))):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


# ---------------------------------------------------------------------------------------------- dataset
class NuScenesDataset(Dataset):
    """Samples of one split, augmented and converted to tensors (see :func:`collate_nuscenes` for the keys).

    Args:
        loader: a :class:`NuScenesLoader` (shared by the splits).
        tokens: sample tokens, in order. split: the split name (for the devkit evaluation).
        train: random augmentation (else the deterministic test-time resize/crop and no LiDAR aug).
        Other arguments: see :class:`NuScenesDataModule`.
    """

    def __init__(self, loader, tokens: Sequence[str], split: str, train: bool, final_dim, resize_lim, bot_pct_lim,
                 rot_lim, rand_flip, lidar_rot, lidar_scale, lidar_trans_std, lidar_flip, point_cloud_range,
                 map_xbound, map_ybound, map_classes, use_camera=True, generator: Optional[torch.Generator] = None):
        self.loader, self.tokens, self.split, self.train = loader, list(tokens), split, bool(train)
        self.final_dim, self.resize_lim, self.bot_pct_lim = tuple(final_dim), tuple(resize_lim), tuple(bot_pct_lim)
        self.rot_lim, self.rand_flip = tuple(rot_lim), bool(rand_flip)
        self.lidar_rot, self.lidar_scale = tuple(lidar_rot), tuple(lidar_scale)
        self.lidar_trans_std, self.lidar_flip = float(lidar_trans_std), bool(lidar_flip)
        self.pc_range = np.asarray(point_cloud_range, np.float64)
        self.map_xbound, self.map_ybound, self.map_classes = map_xbound, map_ybound, tuple(map_classes)
        self.use_camera = bool(use_camera)
        self.generator = generator

    @property
    def nusc(self):
        return self.loader.nusc

    def __len__(self) -> int:
        return len(self.tokens)

    def _lidar_aug(self) -> dict:
        if not self.train:
            return dict(rotation=0.0, scale=1.0, translation=(0.0, 0.0, 0.0), flip_x=False, flip_y=False)
        return random_lidar_aug(self.lidar_rot, self.lidar_scale, self.lidar_trans_std, self.lidar_flip,
                                self.generator)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        tok = self.tokens[index]
        info = self.loader.load(tok)
        aug = self._lidar_aug()
        L = lidar_aug_matrix(**aug)
        out: Dict[str, Any] = {}
        # ---- LiDAR: points and boxes in the augmented frame, cropped to the point-cloud range
        r = self.pc_range
        pts = transform_points(info["points"], L)
        keep = ((pts[:, 0] >= r[0]) & (pts[:, 0] < r[3]) & (pts[:, 1] >= r[1]) & (pts[:, 1] < r[4])
                & (pts[:, 2] >= r[2]) & (pts[:, 2] < r[5]))
        out["points"] = torch.from_numpy(np.ascontiguousarray(pts[keep], np.float32))
        valid = (info["gt_labels"] >= 0) & info["gt_valid"]
        ann_valid = [t for t, v in zip(info["ann_tokens"], valid) if v]
        boxes = transform_boxes(info["gt_boxes"][valid], L)
        inside = (boxes[:, 0] >= r[0]) & (boxes[:, 0] < r[3]) & (boxes[:, 1] >= r[1]) & (boxes[:, 1] < r[4])
        out["gt_boxes"] = torch.from_numpy(np.ascontiguousarray(boxes[inside], np.float32))
        out["gt_labels"] = torch.from_numpy(info["gt_labels"][valid][inside].astype(np.int64))
        # ---- cameras
        n_cam = len(self.loader.cameras)
        K4 = np.tile(np.eye(4), (n_cam, 1, 1))
        K4[:, :3, :3] = info["cam_intrinsics"]
        img_aug = np.tile(np.eye(4), (n_cam, 1, 1))
        imgs = []
        if self.use_camera and n_cam:
            mean = np.asarray(IMAGENET_MEAN, np.float32) * 255
            std = np.asarray(IMAGENET_STD, np.float32) * 255
            for c in range(n_cam):
                im = info["images"][c]
                resize, _, crop, flip, rot = image_aug_params((im.shape[1], im.shape[0]), self.final_dim,
                                                              self.resize_lim, self.bot_pct_lim, self.rot_lim,
                                                              self.rand_flip, self.train, self.generator)
                img_aug[c] = image_aug_matrix(resize, crop, flip, rot)
                w = warp_image(im, img_aug[c], self.final_dim).astype(np.float32)
                imgs.append(((w - mean) / std).transpose(2, 0, 1))
            out["img"] = torch.from_numpy(np.ascontiguousarray(np.stack(imgs), np.float32))
        lidar2image = np.stack([pixel_affine4(img_aug[c]) for c in range(n_cam)]) @ K4 @ info["lidar2camera"] \
            @ np.linalg.inv(L) if n_cam else np.zeros((0, 4, 4))
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))  # noqa: E731
        out.update(camera_intrinsics=f32(K4), camera2lidar=f32(info["camera2lidar"]),
                   lidar2camera=f32(info["lidar2camera"]), camera2ego=f32(info["camera2ego"]),
                   img_aug_matrix=f32(img_aug), lidar2image=f32(lidar2image), lidar_aug_matrix=f32(L),
                   lidar2ego=f32(info["lidar2ego"]))
        # ---- BEV map
        if self.map_classes:
            m = map_masks_augmented(self.loader, info, self.map_xbound, self.map_ybound, self.map_classes, **aug)
            out["gt_masks_bev"] = torch.from_numpy(m.astype(np.float32))
        out["metas"] = {"token": tok, "scene_name": info["scene_name"], "location": info["location"],
                        "timestamp": info["timestamp"], "lidar2ego": info["lidar2ego"],
                        "ego2global": info["ego2global"], "lidar2global": info["lidar2global"],
                        "lidar_aug_matrix": L, "img_aug_matrix": img_aug, "lidar_aug": aug,
                        "image_paths": info["image_paths"], "cam_channels": info["cam_channels"],
                        "cam_intrinsics": info["cam_intrinsics"], "lidar2camera": info["lidar2camera"],
                        "gt_ann_tokens": [t for t, k in zip(ann_valid, inside) if k]}
        return out


_STACKED = ("img", "camera_intrinsics", "camera2lidar", "lidar2camera", "camera2ego", "img_aug_matrix",
            "lidar2image", "lidar_aug_matrix", "lidar2ego", "gt_masks_bev")
_LISTED = ("points", "gt_boxes", "gt_labels", "metas")


def collate_nuscenes(samples: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Batch of B samples: stacked tensors ``img`` [B, N, 3, H, W] float32 (ImageNet-normalized),
    ``camera_intrinsics`` / ``camera2lidar`` / ``lidar2camera`` / ``camera2ego`` / ``img_aug_matrix`` /
    ``lidar2image`` [B, N, 4, 4], ``lidar_aug_matrix`` / ``lidar2ego`` [B, 4, 4], ``gt_masks_bev`` [B, C_map, X, Y];
    lists ``points`` (B x [P_i, 5] float32, augmented LiDAR frame), ``gt_boxes`` (B x [M_i, 9] float32),
    ``gt_labels`` (B x [M_i] int64), ``metas`` (B dicts: token, poses, augmentation, ``gt_ann_tokens`` of the
    kept boxes)."""
    if not samples:
        raise ValueError("collate_nuscenes: empty batch")
    out: Dict[str, Any] = {}
    for k in _STACKED:
        if k in samples[0]:
            out[k] = torch.stack([s[k] for s in samples])
    for k in _LISTED:
        out[k] = [s[k] for s in samples]
    return out


# ---------------------------------------------------------------------------------------------- data module
class NuScenesDataModule:
    r"""Datasets and loaders of nuScenes-format data for BEVFusion.

    Args:
        dataroot: folder with ``<version>/`` tables, ``samples/``, ``sweeps/``, ``maps/``.
        version: table version (``v1.0-mini`` for the synthetic set).
        synthetic: keyword arguments of :func:`write_nuscenes_synth` (``seed``, ``n_scenes``, ``n_keyframes``,
            ``n_sweeps``, ``image_size``, ``azimuth_steps``, ``n_objects``, ``n_val``); the set is written to
            ``dataroot`` when missing or made with other parameters. None: ``dataroot`` is real data.
        train_split / val_split: devkit split names (``mini_train``/``mini_val``, ``train``/``val``) or keys of
            ``<version>/splits.json``.
        nsweeps: previous LiDAR sweeps merged with each keyframe (Δt is the 5th point feature).
        cameras: camera channels (all 6 by default); ``use_camera=False`` (LiDAR-only models) loads no camera.
        final_dim: network image size ``(H, W)``. resize_lim / bot_pct_lim / rot_lim (deg) / rand_flip: training
            image augmentation ranges (test: mean resize, centred crop).
        lidar_rot (rad) / lidar_scale / lidar_trans_std (m) / lidar_flip: training LiDAR augmentation.
        point_cloud_range: ``[x0, y0, z0, x1, y1, z1]``; points outside and boxes whose centre is outside are dropped.
        map_xbound / map_ybound: ``(min, max, cell)`` of the BEV map labels; map_classes: () to skip the maps.
        batch_size / val_batch_size / num_workers / seed: loaders (the shuffle order is ``seed + epoch``).
        max_train_samples / max_val_samples: keep only the first N samples (quick runs; evaluation fills the
            missing tokens of the split with empty predictions).
    """

    def __init__(self, dataroot, version: str = "v1.0-mini", synthetic: Optional[Dict[str, Any]] = None,
                 train_split: str = "mini_train", val_split: str = "mini_val", nsweeps: int = 0,
                 cameras: Sequence[str] = CAMERAS, use_camera: bool = True,
                 final_dim: Sequence[int] = (128, 224), resize_lim: Sequence[float] = (0.56, 0.64),
                 bot_pct_lim: Sequence[float] = (0.0, 0.0), rot_lim: Sequence[float] = (-5.4, 5.4),
                 rand_flip: bool = True, lidar_rot: Sequence[float] = (-0.785398, 0.785398),
                 lidar_scale: Sequence[float] = (0.9, 1.1), lidar_trans_std: float = 0.5, lidar_flip: bool = True,
                 point_cloud_range: Sequence[float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
                 map_xbound: Sequence[float] = (-50.0, 50.0, 0.5), map_ybound: Sequence[float] = (-50.0, 50.0, 0.5),
                 map_classes: Sequence[str] = MAP_CLASSES, batch_size: int = 2, val_batch_size: int = 1,
                 num_workers: int = 0, seed: int = 0, max_train_samples: Optional[int] = None,
                 max_val_samples: Optional[int] = None) -> None:
        for name, v in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an int >= 0, got {num_workers!r}")
        if int(nsweeps) < 0:
            raise ValueError(f"nsweeps must be >= 0, got {nsweeps!r}")
        for name, v, n in (("final_dim", final_dim, 2), ("resize_lim", resize_lim, 2), ("bot_pct_lim", bot_pct_lim, 2),
                           ("rot_lim", rot_lim, 2), ("lidar_rot", lidar_rot, 2), ("lidar_scale", lidar_scale, 2),
                           ("point_cloud_range", point_cloud_range, 6), ("map_xbound", map_xbound, 3),
                           ("map_ybound", map_ybound, 3)):
            if len(v) != n:
                raise ValueError(f"{name} must have {n} values, got {list(v)!r}")
        if min(final_dim) < 1 or min(resize_lim) <= 0 or min(lidar_scale) <= 0:
            raise ValueError(f"final_dim, resize_lim and lidar_scale must be positive, got {list(final_dim)}, "
                             f"{list(resize_lim)}, {list(lidar_scale)}")
        pcr = list(point_cloud_range)
        if not (pcr[0] < pcr[3] and pcr[1] < pcr[4] and pcr[2] < pcr[5]):
            raise ValueError(f"point_cloud_range must be [x0, y0, z0, x1, y1, z1] with min < max, got {pcr}")
        for name, b in (("map_xbound", map_xbound), ("map_ybound", map_ybound)):
            if not (b[0] < b[1] and b[2] > 0):
                raise ValueError(f"{name} must be (min, max, cell) with min < max and cell > 0, got {list(b)}")
        if lidar_flip and map_classes and (abs(map_xbound[0] + map_xbound[1]) > 1e-9
                                           or abs(map_ybound[0] + map_ybound[1]) > 1e-9):
            raise ValueError("lidar_flip needs map_xbound/map_ybound symmetric about 0, got "
                             f"{list(map_xbound)} / {list(map_ybound)}")
        bad = [c for c in map_classes if c not in MAP_CLASSES]
        if bad:
            raise ValueError(f"map_classes: unknown {bad} (allowed: {list(MAP_CLASSES)})")
        bad = [c for c in cameras if c not in CAMERAS]
        if bad:
            raise ValueError(f"cameras: unknown channels {bad} (allowed: {list(CAMERAS)})")
        self.dataroot, self.version = Path(dataroot), version
        self.synthetic = dict(synthetic) if synthetic is not None else None
        self.train_split, self.val_split = train_split, val_split
        self.nsweeps, self.cameras = int(nsweeps), tuple(cameras)
        self.use_camera = bool(use_camera)
        self.final_dim, self.resize_lim, self.bot_pct_lim = tuple(final_dim), tuple(resize_lim), tuple(bot_pct_lim)
        self.rot_lim, self.rand_flip = tuple(rot_lim), bool(rand_flip)
        self.lidar_rot, self.lidar_scale = tuple(lidar_rot), tuple(lidar_scale)
        self.lidar_trans_std, self.lidar_flip = float(lidar_trans_std), bool(lidar_flip)
        self.point_cloud_range = tuple(float(v) for v in pcr)
        self.map_xbound, self.map_ybound = tuple(map_xbound), tuple(map_ybound)
        self.map_classes = tuple(map_classes)
        self.batch_size, self.val_batch_size, self.num_workers = batch_size, val_batch_size, num_workers
        self.seed = int(seed)
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.class_names = list(DETECTION_CLASSES)
        self._loader = None

    # ------------------------------------------------------------------ data
    def prepare_data(self) -> Path:
        """Write the synthetic set if configured and missing; check the dataroot's tables."""
        if self.synthetic is not None:
            ensure_nuscenes_synth(self.dataroot, version=self.version, **self.synthetic)
        from .loader import check_dataroot
        check_dataroot(self.dataroot, self.version)
        return self.dataroot

    @property
    def loader(self):
        """The shared :class:`NuScenesLoader` (devkit index built on first use)."""
        if self._loader is None:
            self.prepare_data()
            from .loader import NuScenesLoader
            self._loader = NuScenesLoader(self.dataroot, self.version, nsweeps=self.nsweeps,
                                          cameras=self.cameras if self.use_camera else (),
                                          load_images=self.use_camera)
        return self._loader

    def dataset(self, split: str, train: bool = False, limit: Optional[int] = None) -> NuScenesDataset:
        """The samples of a devkit split (or splits.json key), augmented when ``train``, the first ``limit`` only."""
        tokens = self.loader.split_tokens(split)
        if not tokens:
            raise ValueError(f"split {split!r} of {self.dataroot} ({self.version}) has no samples")
        if limit is not None:
            tokens = tokens[: int(limit)]
        return NuScenesDataset(self.loader, tokens, split, train, self.final_dim, self.resize_lim, self.bot_pct_lim,
                               self.rot_lim, self.rand_flip, self.lidar_rot, self.lidar_scale, self.lidar_trans_std,
                               self.lidar_flip, self.point_cloud_range, self.map_xbound, self.map_ybound,
                               self.map_classes, self.use_camera)

    def train_dataset(self) -> NuScenesDataset:
        return self.dataset(self.train_split, True, self.max_train_samples)

    def val_dataset(self) -> NuScenesDataset:
        return self.dataset(self.val_split, False, self.max_val_samples)

    # ------------------------------------------------------------------ loaders
    def _dl(self, ds, batch_size: int, sampler) -> DataLoader:
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                          collate_fn=collate_nuscenes, worker_init_fn=seed_worker,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self, distributed: Optional[bool] = None) -> DataLoader:
        """Shuffled training loader (``DistributedSampler``, also with one process); call
        ``loader.sampler.set_epoch(epoch)`` each epoch."""
        if distributed is None:
            distributed = D.is_distributed()
        ds = self.train_dataset()
        world, rank = (D.get_world_size(), D.get_rank()) if distributed else (1, 0)
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=self.seed, drop_last=False)
        return self._dl(ds, self.batch_size, sampler)

    def val_dataloader(self, distributed: Optional[bool] = None) -> DataLoader:
        """Validation loader in split order, sharded ``rank::world`` without padding."""
        if distributed is None:
            distributed = D.is_distributed()
        ds = self.val_dataset()
        world, rank = (D.get_world_size(), D.get_rank()) if distributed else (1, 0)
        return self._dl(ds, self.val_batch_size, ShardSampler(len(ds), rank, world))
