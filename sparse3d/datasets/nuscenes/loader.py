"""nuScenes sample loader built on the real ``nuscenes-devkit`` (``NuScenes``, ``LidarPointCloud``, ``Box``,
``NuScenesMap``, ``splits``), returning plain numpy arrays and dicts.

Per sample: keyframe LiDAR plus up to N previous sweeps (5th feature = time lag in s, 0 for the keyframe), the 6
cameras with intrinsics and the camera -> LiDAR chain (through both ego poses, as the cameras fire a few ms after
the LiDAR), ego poses, and the annotations as boxes in the LiDAR frame with velocity. Bad data raises
:class:`NuScenesDataError` (a ``ValueError``) naming the table, token or file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

try:
    from nuscenes import NuScenes
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.map_expansion.map_api import NuScenesMap
    from nuscenes.utils import splits as nus_splits
    from nuscenes.utils.data_classes import Box, LidarPointCloud
    from nuscenes.utils.data_io import load_bin_file
    from nuscenes.utils.geometry_utils import transform_matrix
    from pyquaternion import Quaternion
except ImportError as e:  # pragma: no cover - exercised only without the devkit
    raise ImportError("sparse3d.datasets.nuscenes needs 'nuscenes-devkit>=1.2' (pip install nuscenes-devkit "
                      "'numpy<2')") from e

from .common import CAMERAS, DETECTION_CLASSES, LIDAR, MAP_CLASSES, TABLES

__all__ = ["NuScenesLoader", "NuScenesDataError", "check_dataroot", "pose_matrix", "camera_intrinsic"]


class NuScenesDataError(ValueError):
    """Missing, corrupt or inconsistent nuScenes data; the message names the table, token or file."""


def check_dataroot(dataroot, version: str) -> None:
    """Raise :class:`NuScenesDataError` unless ``dataroot/version`` holds all 13 tables (valid JSON) and every map
    PNG of the ``map`` table exists."""
    root = Path(dataroot)
    if not root.is_dir():
        raise NuScenesDataError(f"nuScenes dataroot {str(root)!r} does not exist or is not a folder")
    tdir = root / version
    if not tdir.is_dir():
        raise NuScenesDataError(f"nuScenes table folder {str(tdir)!r} (version {version!r}) does not exist")
    missing = [t for t in TABLES if not (tdir / f"{t}.json").is_file()]
    if missing:
        raise NuScenesDataError(f"nuScenes tables missing in {str(tdir)!r}: {', '.join(missing)} "
                                "(the devkit needs all 13 <table>.json files)")
    try:
        maps = json.loads((tdir / "map.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NuScenesDataError(f"nuScenes table 'map' ({tdir / 'map.json'}) is not valid JSON: {e}") from e
    if not maps:
        raise NuScenesDataError(f"nuScenes table 'map' ({tdir / 'map.json'}) is empty; the devkit needs >= 1 map")
    for rec in maps:
        if not (root / rec.get("filename", "")).is_file():
            raise NuScenesDataError(f"map {rec.get('token')!r}: mask file {rec.get('filename')!r} missing "
                                    f"under {str(root)!r}")


def pose_matrix(rec: dict, table: str, inverse: bool = False) -> np.ndarray:
    """``[4, 4]`` float64 sensor->ego (calibrated_sensor) or ego->global (ego_pose) matrix of a record, or its
    inverse; raises if the rotation quaternion is zero/non-finite (the transform would not be invertible)."""
    t = np.asarray(rec.get("translation", ()), np.float64)
    q = np.asarray(rec.get("rotation", ()), np.float64)
    if t.shape != (3,) or q.shape != (4,):
        raise NuScenesDataError(f"{table} {rec.get('token')!r}: translation must have 3 and rotation 4 values, got "
                                f"{t.shape} and {q.shape}")
    if not (np.isfinite(t).all() and np.isfinite(q).all()):
        raise NuScenesDataError(f"{table} {rec.get('token')!r}: non-finite translation/rotation")
    norm = float(np.linalg.norm(q))
    if norm < 1e-6:
        raise NuScenesDataError(f"{table} {rec.get('token')!r}: rotation quaternion {q.tolist()} has zero norm, the "
                                "calibration matrix is not invertible")
    return transform_matrix(t, Quaternion(q / norm), inverse=inverse)


def camera_intrinsic(rec: dict) -> np.ndarray:
    """``[3, 3]`` float64 camera intrinsic of a calibrated_sensor record; raises if missing or singular."""
    K = np.asarray(rec.get("camera_intrinsic", ()), np.float64)
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise NuScenesDataError(f"calibrated_sensor {rec.get('token')!r}: camera_intrinsic must be a finite 3x3 "
                                f"matrix, got shape {K.shape}")
    det = float(np.linalg.det(K))
    if abs(det) < 1e-9 or abs(K[2, 2]) < 1e-12:
        raise NuScenesDataError(f"calibrated_sensor {rec.get('token')!r}: camera_intrinsic {K.tolist()} is singular "
                                f"(det={det:.3g}), not invertible")
    return K


def _read_points(path: Path, sd_token: str) -> np.ndarray:
    if not path.is_file():
        raise NuScenesDataError(f"sample_data {sd_token!r}: LiDAR file missing: {str(path)!r}")
    size = path.stat().st_size
    if size % 20:
        raise NuScenesDataError(f"sample_data {sd_token!r}: corrupt .pcd.bin {str(path)!r}: {size} bytes is not a "
                                "multiple of 5 float32 per point")
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    if not np.isfinite(pts).all():
        raise NuScenesDataError(f"sample_data {sd_token!r}: corrupt .pcd.bin {str(path)!r}: non-finite values")
    return pts


class NuScenesLoader:
    """Devkit-backed loader of nuScenes samples.

    Args:
        dataroot: folder holding ``<version>/``, ``samples/``, ``sweeps/``, ``maps/``.
        version: table version, e.g. ``v1.0-mini``.
        nsweeps: previous LiDAR sweeps to merge with each keyframe (0 = keyframe only).
        cameras: camera channels to load (all 6 by default).
        load_images: decode the JPEGs (else only paths and calibration are returned).
        min_distance: points closer than this to the sensor are dropped (devkit ``remove_close``).
    """

    def __init__(self, dataroot, version: str = "v1.0-mini", nsweeps: int = 0, cameras=CAMERAS,
                 load_images: bool = True, min_distance: float = 1.0, verbose: bool = False):
        if int(nsweeps) < 0:
            raise ValueError(f"nsweeps must be >= 0, got {nsweeps}")
        check_dataroot(dataroot, version)
        self.dataroot, self.version = str(dataroot), version
        self.nsweeps, self.cameras = int(nsweeps), tuple(cameras)
        self.load_images, self.min_distance = load_images, float(min_distance)
        try:
            self.nusc = NuScenes(version=version, dataroot=self.dataroot, verbose=verbose)
        except (KeyError, AssertionError, json.JSONDecodeError) as e:
            raise NuScenesDataError(f"nuScenes devkit could not index {self.dataroot!r} ({version}): "
                                    f"{type(e).__name__}: {e}") from e
        self._maps: dict = {}

    # ------------------------------------------------------------------ indexing
    def __len__(self) -> int:
        return len(self.nusc.sample)

    def split_tokens(self, split: str) -> list[str]:
        """Sample tokens of a split, scene by scene in time order: a devkit split (``mini_train``,
        ``mini_val``, ``train``, ``val`` ...) or a key of ``<version>/splits.json``."""
        if nus_splits.is_predefined_split(split):
            names = set(nus_splits.create_splits_scenes()[split])
        else:
            try:
                names = set(nus_splits.get_scenes_of_custom_split(split, self.nusc))
            except ValueError as e:
                raise ValueError(f"unknown split {split!r}: {e}") from e
        tokens = []
        for scene in self.nusc.scene:
            if scene["name"] in names:
                tok = scene["first_sample_token"]
                while tok:
                    tokens.append(tok)
                    tok = self.nusc.get("sample", tok)["next"]
        return tokens

    def _get(self, table: str, token: str) -> dict:
        try:
            return self.nusc.get(table, token)
        except KeyError:
            raise NuScenesDataError(f"{table} token {token!r} not found") from None

    def _sample_data(self, sample: dict, channel: str) -> dict:
        if channel not in sample["data"]:
            raise NuScenesDataError(f"sample {sample['token']!r} has no {channel} sample_data")
        return self._get("sample_data", sample["data"][channel])

    # ------------------------------------------------------------------ loading
    def load(self, sample_token: str) -> dict:
        """All inputs and targets of one sample as numpy (see the class docstring of the keys)."""
        sample = self._get("sample", sample_token)
        lidar_sd = self._sample_data(sample, LIDAR)
        lidar_cs = self._get("calibrated_sensor", lidar_sd["calibrated_sensor_token"])
        lidar_pose = self._get("ego_pose", lidar_sd["ego_pose_token"])
        lidar2ego = pose_matrix(lidar_cs, "calibrated_sensor")
        ego2global = pose_matrix(lidar_pose, "ego_pose")
        scene = self._get("scene", sample["scene_token"])
        log = self._get("log", scene["log_token"])
        out = {"token": sample_token, "scene_name": scene["name"], "location": log.get("location", ""),
               "timestamp": int(sample["timestamp"]), "lidar_token": lidar_sd["token"],
               "lidar_path": os.path.join(self.dataroot, lidar_sd["filename"]),
               "lidar2ego": lidar2ego, "ego2global": ego2global, "lidar2global": ego2global @ lidar2ego,
               "points": self.load_points(sample)}
        out.update(self.load_cameras(sample, lidar2ego, ego2global))
        out.update(self.load_annotations(sample, lidar_cs, lidar_pose))
        return out

    def load_points(self, sample: dict) -> np.ndarray:
        """``[N, 5]`` float32 (x, y, z, intensity, time lag s) in the keyframe LiDAR frame: the keyframe and up to
        ``nsweeps`` previous sweeps merged by ``LidarPointCloud.from_file_multisweep``."""
        sd = self._sample_data(sample, LIDAR)
        for _ in range(self.nsweeps + 1):  # validate every file the devkit will read
            for table, key in (("calibrated_sensor", "calibrated_sensor_token"), ("ego_pose", "ego_pose_token")):
                pose_matrix(self._get(table, sd[key]), table)
            _read_points(Path(self.dataroot) / sd["filename"], sd["token"])
            if not sd["prev"]:
                break
            sd = self._get("sample_data", sd["prev"])
        pc, times = LidarPointCloud.from_file_multisweep(self.nusc, sample, LIDAR, LIDAR, nsweeps=self.nsweeps + 1,
                                                         min_distance=self.min_distance)
        pts = np.concatenate([pc.points.T, times.T], 1).astype(np.float32)
        return pts.reshape(-1, 5)

    def load_lidarseg(self, sample_token: str) -> tuple[np.ndarray, np.ndarray]:
        """Keyframe points ``[N, 5]`` float32 as stored (x, y, z, intensity, ring) and their nuScenes-lidarseg
        labels ``[N]`` uint8 (``category.json`` index)."""
        if not hasattr(self.nusc, "lidarseg"):
            raise NuScenesDataError(f"no lidarseg table in {self.dataroot!r}/{self.version}")
        sample = self._get("sample", sample_token)
        sd = self._sample_data(sample, LIDAR)
        pts = _read_points(Path(self.dataroot) / sd["filename"], sd["token"])
        rec = self._get("lidarseg", sd["token"])
        path = Path(self.dataroot) / rec["filename"]
        if not path.is_file():
            raise NuScenesDataError(f"lidarseg {rec['token']!r}: label file missing: {str(path)!r}")
        labels = load_bin_file(str(path), "lidarseg") if len(pts) else np.zeros(0, np.uint8)
        if len(labels) != len(pts):
            raise NuScenesDataError(f"lidarseg {rec['token']!r}: {len(labels)} labels for {len(pts)} points")
        return pts, labels

    def load_cameras(self, sample: dict, lidar2ego: np.ndarray, ego2global: np.ndarray) -> dict:
        """Per camera (order ``self.cameras``): intrinsics ``[C, 3, 3]``, ``camera2lidar``, ``lidar2camera``,
        ``lidar2image`` (K @ lidar2camera), ``camera2ego``, ``camera_ego2global`` ``[C, 4, 4]`` float64, timestamps,
        paths and, with ``load_images``, ``images`` ``[C, H, W, 3]`` uint8."""
        global2lidar = np.linalg.inv(ego2global @ lidar2ego)
        keys = ("cam_intrinsics", "camera2lidar", "lidar2camera", "lidar2image", "camera2ego", "camera_ego2global")
        res = {k: [] for k in keys}
        images, paths, stamps, tokens = [], [], [], []
        for ch in self.cameras:
            sd = self._sample_data(sample, ch)
            cs = self._get("calibrated_sensor", sd["calibrated_sensor_token"])
            K = camera_intrinsic(cs)
            cam2ego = pose_matrix(cs, "calibrated_sensor")
            cam_e2g = pose_matrix(self._get("ego_pose", sd["ego_pose_token"]), "ego_pose")
            cam2lidar = global2lidar @ cam_e2g @ cam2ego
            lidar2cam = np.linalg.inv(cam2lidar)
            K4 = np.eye(4)
            K4[:3, :3] = K
            for k, v in zip(keys, (K, cam2lidar, lidar2cam, K4 @ lidar2cam, cam2ego, cam_e2g)):
                res[k].append(v)
            path = os.path.join(self.dataroot, sd["filename"])
            paths.append(path)
            stamps.append(int(sd["timestamp"]))
            tokens.append(sd["token"])
            if self.load_images:
                images.append(self._read_image(path, sd))
        out = {k: np.stack(v) if v else np.zeros((0, 3, 3) if k == "cam_intrinsics" else (0, 4, 4))
               for k, v in res.items()}
        out.update(cam_channels=list(self.cameras), image_paths=paths, cam_tokens=tokens,
                   cam_timestamps=np.array(stamps, np.int64))
        if self.load_images:
            same = len({im.shape for im in images}) <= 1
            out["images"] = np.stack(images) if images and same else images
        return out

    @staticmethod
    def _read_image(path: str, sd: dict) -> np.ndarray:
        if not os.path.isfile(path):
            raise NuScenesDataError(f"sample_data {sd['token']!r} ({sd.get('channel')}): image file missing: "
                                    f"{path!r}")
        try:
            with Image.open(path) as im:
                img = np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError) as e:
            raise NuScenesDataError(f"sample_data {sd['token']!r} ({sd.get('channel')}): corrupt JPEG {path!r}: "
                                    f"{e}") from e
        if sd.get("width") and sd.get("height") and img.shape[:2] != (sd["height"], sd["width"]):
            raise NuScenesDataError(f"sample_data {sd['token']!r}: image {path!r} is {img.shape[1]}x{img.shape[0]}, "
                                    f"table says {sd['width']}x{sd['height']}")
        return img

    def load_annotations(self, sample: dict, lidar_cs: dict, lidar_pose: dict) -> dict:
        """Annotations as devkit ``Box``es moved global -> ego -> LiDAR.

        ``gt_boxes`` ``[M, 9]`` float32: centre (x, y, z), size (l, w, h) with l along the heading, yaw (rad, of
        the box x axis in the LiDAR frame), velocity (vx, vy) in the LiDAR frame (m/s; 0 where the devkit gives
        NaN, see ``gt_velocity_valid``). ``gt_labels`` ``[M]`` int64 index in ``DETECTION_CLASSES`` (-1 for other
        categories), ``gt_names`` detection names (or the category), ``gt_valid`` = lidar+radar points > 0.
        """
        ego_t, ego_q = np.asarray(lidar_pose["translation"]), Quaternion(lidar_pose["rotation"])
        cs_t, cs_q = np.asarray(lidar_cs["translation"]), Quaternion(lidar_cs["rotation"])
        attr_name = {a["token"]: a["name"] for a in self.nusc.attribute}
        boxes, names, labels, attrs, nl, nr, vis, vok, toks, insts = [], [], [], [], [], [], [], [], [], []
        for ann_token in sample["anns"]:
            ann = self._get("sample_annotation", ann_token)
            vel = self.nusc.box_velocity(ann_token)
            ok = bool(np.isfinite(vel).all())
            box = Box(ann["translation"], ann["size"], Quaternion(ann["rotation"]),
                      velocity=tuple(vel) if ok else (0.0, 0.0, 0.0), name=ann["category_name"], token=ann_token)
            box.translate(-ego_t)
            box.rotate(ego_q.inverse)
            box.translate(-cs_t)
            box.rotate(cs_q.inverse)
            w, l, h = box.wlh
            boxes.append([*box.center, l, w, h, box.orientation.yaw_pitch_roll[0], box.velocity[0], box.velocity[1]])
            det = category_to_detection_name(ann["category_name"])
            names.append(det or ann["category_name"])
            labels.append(DETECTION_CLASSES.index(det) if det in DETECTION_CLASSES else -1)
            attrs.append(attr_name[ann["attribute_tokens"][0]] if ann["attribute_tokens"] else "")
            nl.append(ann["num_lidar_pts"])
            nr.append(ann["num_radar_pts"])
            vis.append(int(ann["visibility_token"]) if str(ann["visibility_token"]).isdigit() else 0)
            vok.append(ok)
            toks.append(ann_token)
            insts.append(ann["instance_token"])
        nl, nr = np.array(nl, np.int64), np.array(nr, np.int64)
        return {"gt_boxes": np.array(boxes, np.float32).reshape(-1, 9), "gt_names": names,
                "gt_labels": np.array(labels, np.int64), "gt_attributes": attrs, "num_lidar_pts": nl,
                "num_radar_pts": nr, "gt_valid": (nl + nr) > 0, "gt_visibility": np.array(vis, np.int64),
                "gt_velocity_valid": np.array(vok, bool), "ann_tokens": toks, "instance_tokens": insts}

    # ------------------------------------------------------------------ maps
    def nusc_map(self, location: str) -> NuScenesMap:
        """The (cached) devkit ``NuScenesMap`` of a location."""
        if location not in self._maps:
            path = Path(self.dataroot) / "maps" / "expansion" / f"{location}.json"
            if not path.is_file():
                raise NuScenesDataError(f"map expansion for location {location!r} missing: {str(path)!r}")
            self._maps[location] = NuScenesMap(dataroot=self.dataroot, map_name=location)
        return self._maps[location]

    def map_masks(self, info: dict, xbound=(-50.0, 50.0, 0.5), ybound=(-50.0, 50.0, 0.5), classes=MAP_CLASSES,
                  lidar_aug: np.ndarray | None = None) -> np.ndarray:
        """BEV map labels ``[len(classes), X, Y]`` uint8 around the LiDAR of a loaded sample (BEVFusion's
        ``LoadBEVSegmentation`` convention: patch aligned with the LiDAR axes, axis 1 = LiDAR x, axis 2 = LiDAR y;
        ``divider`` = road_divider + lane_divider)."""
        lidar2global = info["lidar2global"] if lidar_aug is None else info["lidar2global"] @ np.linalg.inv(lidar_aug)
        patch_h, patch_w = ybound[1] - ybound[0], xbound[1] - xbound[0]
        canvas = (int(patch_h / ybound[2]), int(patch_w / xbound[2]))
        v = lidar2global[:3, :3] @ np.array([1.0, 0.0, 0.0])
        angle = float(np.degrees(np.arctan2(v[1], v[0])))
        layers = {c: (["road_divider", "lane_divider"] if c == "divider" else [c]) for c in classes}
        names = sorted({n for ls in layers.values() for n in ls})
        masks = self.nusc_map(info["location"]).get_map_mask(
            (lidar2global[0, 3], lidar2global[1, 3], patch_h, patch_w), angle, names, canvas)
        masks = masks.transpose(0, 2, 1).astype(bool)
        out = np.zeros((len(classes), canvas[1], canvas[0]), np.uint8)
        for k, c in enumerate(classes):
            for n in layers[c]:
                out[k] |= masks[names.index(n)]
        return out
