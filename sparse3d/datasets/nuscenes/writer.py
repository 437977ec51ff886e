"""Synthetic nuScenes writer: a small dataset in the real nuScenes layout that ``nuscenes-devkit`` loads
unchanged (13 tables, map table + mask PNGs, map expansion v1.3 for the 4 locations, LiDAR keyframes and
sweeps, 6 camera images per keyframe, nuScenes-lidarseg labels, ``splits.json``).

Everything is a deterministic function of the arguments (same seed -> byte-identical files).
"""
from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image
from pyquaternion import Quaternion

from .common import (ATTRIBUTES, CAMERAS, CATEGORIES, LIDAR, LOCATIONS, VISIBILITY_LEVELS, make_token, rng_for,
                     yaw_quaternion)
from .lidar import radar_counts, simulate_lidar
from .render import render_camera
from .scene import CAMERA_DELAY, KEYFRAME_DT, SWEEP_DT, make_rig, make_scene
from .town import Town

__all__ = ["write_nuscenes_synth", "scene_names", "build_scene", "CUSTOM_SPLITS", "BASE_TIMESTAMP",
           "WRITER_VERSION"]

BASE_TIMESTAMP = 1533151600000000  # microseconds of the first keyframe of scene 0
CUSTOM_SPLITS = ("synth_train", "synth_val")  # keys of <version>/splits.json
_VIS_THRESHOLDS = (0.4, 0.6, 0.8)
# bumped whenever the same arguments give different data (ensure_nuscenes_synth then rewrites a cached set);
# 2: vehicles are a body plus a lower front part (heading visible), 9 sweeps by default
WRITER_VERSION = 2


def scene_names(version: str, n_scenes: int, n_val: int | None = None) -> tuple[list[str], list[str]]:
    """Scene names taken from the devkit's split lists so its predefined splits select them: ``v1.0-mini`` uses
    ``mini_train``/``mini_val`` for its first 8 + 2 scenes and continues with the ``train``/``val`` names that are
    not mini scenes (so ``mini_train``/``mini_val`` select the first 10, and the ``splits.json`` keys
    ``synth_train``/``synth_val`` select all), ``v1.0-trainval`` uses ``train``/``val``."""
    from nuscenes.utils import splits

    if n_val is None:
        n_val = max(1, int(round(0.2 * n_scenes))) if n_scenes > 1 else 0
    n_train = n_scenes - n_val
    if version == "v1.0-mini":
        mini = set(splits.mini_train) | set(splits.mini_val)
        train = list(splits.mini_train) + [n for n in splits.train if n not in mini]
        val = list(splits.mini_val) + [n for n in splits.val if n not in mini]
    elif version == "v1.0-trainval":
        train, val = splits.train, splits.val
    else:
        raise ValueError(f"version must be 'v1.0-mini' or 'v1.0-trainval', got {version!r}")
    if n_scenes < 1 or n_train < 0 or n_val < 0 or n_train > len(train) or n_val > len(val):
        raise ValueError(f"n_scenes={n_scenes} (train {n_train}, val {n_val}) does not fit the {version} splits "
                         f"({len(train)} train, {len(val)} val scenes)")
    return list(train[:n_train]), list(val[:n_val])


def build_scene(seed: int, index: int, n_keyframes: int = 10, n_sweeps: int = 9, image_size=(400, 225),
                n_objects: int = 40, town: Town | None = None):
    """The procedural scene the writer uses for scene ``index`` (location ``LOCATIONS[index % 4]``)."""
    town = town if town is not None else Town(LOCATIONS[index % len(LOCATIONS)], seed)
    return make_scene(town, make_rig(seed, index, image_size), seed, index, n_keyframes, n_sweeps, n_objects)


def _quat(m: np.ndarray) -> list[float]:
    return [float(v) for v in Quaternion(matrix=m[:3, :3], atol=1e-6).elements]


def _jpeg(img: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _points_in_boxes(points: np.ndarray, lidar_pose: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``[A]`` number of LiDAR points (sensor frame) inside each global box (cx, cy, cz, l, w, h, yaw)."""
    g = points.astype(np.float64) @ lidar_pose[:3, :3].T + lidar_pose[:3, 3]
    out = np.zeros(len(boxes), np.int64)
    for a, b in enumerate(boxes):
        d = g - b[:3]
        c, s = np.cos(b[6]), np.sin(b[6])
        x, y = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
        out[a] = np.count_nonzero((np.abs(x) <= b[3] / 2) & (np.abs(y) <= b[4] / 2) & (np.abs(d[:, 2]) <= b[5] / 2))
    return out


def _visibility(hits: np.ndarray, potential: np.ndarray) -> list[str]:
    frac = np.where(potential > 0, hits / np.maximum(potential, 1), 0.0)
    return [str(1 + int(np.searchsorted(_VIS_THRESHOLDS, f, side="right"))) for f in frac]


def write_nuscenes_synth(out, seed: int = 0, n_scenes: int = 48, n_keyframes: int = 3, n_sweeps: int = 9,
                         image_size=(400, 225), azimuth_steps: int = 1080, n_objects: int = 40,
                         version: str = "v1.0-mini", n_val: int | None = None, jpeg_quality: int = 90,
                         verbose: bool = False) -> dict:
    """Write the synthetic dataset under ``out`` (which should be empty or absent) and return its meta dict.

    Args:
        out: dataroot to create.
        seed: every random choice derives from it.
        n_scenes: scenes (v1.0-mini: the first 8 + 2 named after the devkit's ``mini_train``/``mini_val``,
            the rest after ``train``/``val`` scenes; ``splits.json`` lists them all).
        n_keyframes: keyframes (samples) per scene, 0.5 s apart.
        n_sweeps: LiDAR sweeps before each keyframe, 0.05 s apart (``sweeps/LIDAR_TOP``).
        image_size: ``(W, H)`` of the 6 camera images.
        azimuth_steps: LiDAR firings per revolution (32 beams each).
        n_objects: annotated agents per scene.
        version: ``v1.0-mini`` or ``v1.0-trainval`` (decides the table folder and the scene names).
        n_val: validation scenes (default 20 %, at least 1).
    """
    t_start = time.perf_counter()
    if n_keyframes < 1 or n_sweeps < 0 or azimuth_steps < 1 or n_objects < 0:
        raise ValueError("n_keyframes, azimuth_steps must be >= 1 and n_sweeps, n_objects >= 0")
    W, H = int(image_size[0]), int(image_size[1])
    if W < 16 or H < 16:
        raise ValueError(f"image_size must be at least 16 x 16, got {image_size}")
    train_names, val_names = scene_names(version, n_scenes, n_val)
    names = train_names + val_names
    out = Path(out)
    tok = lambda *k: make_token(seed, *k)  # noqa: E731
    T = {name: [] for name in ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
                               "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility",
                               "lidarseg")}
    for d in ["samples/" + LIDAR, "sweeps/" + LIDAR, "maps/expansion", f"lidarseg/{version}", version] + \
             ["samples/" + c for c in CAMERAS]:
        (out / d).mkdir(parents=True, exist_ok=True)

    T["category"] = [{"token": tok("category", n), "name": n, "description": n, "index": i}
                     for i, n in enumerate(CATEGORIES)]
    cat_tok = {c["name"]: c["token"] for c in T["category"]}
    T["attribute"] = [{"token": tok("attribute", a), "name": a, "description": a} for a in ATTRIBUTES]
    attr_tok = {a["name"]: a["token"] for a in T["attribute"]}
    T["visibility"] = [{"token": k, "level": v, "description": f"visibility of whole object is {v[1:]} %"}
                       for k, v in VISIBILITY_LEVELS.items()]
    sensors = [(LIDAR, "lidar")] + [(c, "camera") for c in CAMERAS]
    T["sensor"] = [{"token": tok("sensor", ch), "channel": ch, "modality": mod} for ch, mod in sensors]

    towns = {loc: Town(loc, seed) for loc in LOCATIONS}
    logs_at = {loc: [] for loc in LOCATIONS}
    stats = {"points_per_keyframe": [], "annotations": 0, "class_counts": {}}
    for si, name in enumerate(names):
        loc = LOCATIONS[si % len(LOCATIONS)]
        town = towns[loc]
        sc = build_scene(seed, si, n_keyframes, n_sweeps, (W, H), n_objects, town=town)
        rig = sc.rig
        rng = rng_for(seed, "sensors", si)
        logname = f"synth-{si:04d}-{loc}"
        log_token = tok("log", si)
        logs_at[loc].append(log_token)
        T["log"].append({"token": log_token, "logfile": logname, "vehicle": "synth", "date_captured": "2018-08-01",
                         "location": loc})
        cs_tok = {}
        for ch, mod in sensors:
            m = rig.lidar if ch == LIDAR else rig.cameras[ch]
            cs_tok[ch] = tok("calibrated_sensor", si, ch)
            T["calibrated_sensor"].append({
                "token": cs_tok[ch], "sensor_token": tok("sensor", ch),
                "translation": [float(v) for v in m[:3, 3]], "rotation": _quat(m),
                "camera_intrinsic": rig.intrinsics[ch].tolist() if mod == "camera" else []})
        base = BASE_TIMESTAMP + si * 100_000_000
        ts_of = lambda t: int(base + round(t * 1e6))  # noqa: E731
        sample_tok = [tok("sample", si, k) for k in range(n_keyframes)]
        for k in range(n_keyframes):
            T["sample"].append({"token": sample_tok[k], "timestamp": ts_of(k * KEYFRAME_DT),
                                "prev": sample_tok[k - 1] if k else "",
                                "next": sample_tok[k + 1] if k + 1 < n_keyframes else "",
                                "scene_token": tok("scene", si)})
        T["scene"].append({"token": tok("scene", si), "log_token": log_token, "nbr_samples": n_keyframes,
                           "first_sample_token": sample_tok[0], "last_sample_token": sample_tok[-1], "name": name,
                           "description": f"synthetic {loc}, ego {sc.ego_speed:.1f} m/s, {len(sc.yaw)} agents"})
        chains = {ch: [] for ch, _ in sensors}

        def add_sd(ch, k, t, key, fileformat, filename, width=0, height=0):
            ts = ts_of(t)
            sd_token = tok("sample_data", si, ch, ts)
            pose = sc.ego_pose(t)
            T["ego_pose"].append({"token": sd_token, "timestamp": ts, "rotation": yaw_quaternion(sc.ego_yaw),
                                  "translation": [float(pose[0, 3]), float(pose[1, 3]), 0.0]})
            chains[ch].append({"token": sd_token, "sample_token": sample_tok[k], "ego_pose_token": sd_token,
                               "calibrated_sensor_token": cs_tok[ch], "timestamp": ts, "fileformat": fileformat,
                               "is_key_frame": key, "height": height, "width": width, "filename": filename,
                               "prev": "", "next": ""})
            return sd_token

        agent_tok = [tok("instance", si, a) for a in range(len(sc.yaw))]
        ann_tok = [[tok("sample_annotation", si, a, k) for k in range(n_keyframes)] for a in range(len(sc.yaw))]
        for k in range(n_keyframes):
            tk = k * KEYFRAME_DT
            for j in range(n_sweeps, 0, -1):
                t = tk - j * SWEEP_DT
                fn = f"sweeps/{LIDAR}/{logname}__{LIDAR}__{ts_of(t)}.pcd.bin"
                add_sd(LIDAR, k, t, False, "pcd", fn)
                simulate_lidar(sc, t, rng, azimuth_steps)["points"].tofile(out / fn)
            fn = f"samples/{LIDAR}/{logname}__{LIDAR}__{ts_of(tk)}.pcd.bin"
            sd_token = add_sd(LIDAR, k, tk, True, "pcd", fn)
            scan = simulate_lidar(sc, tk, rng, azimuth_steps)
            scan["points"].tofile(out / fn)
            seg = f"lidarseg/{version}/{sd_token}_lidarseg.bin"
            scan["labels"].astype(np.uint8).tofile(out / seg)
            T["lidarseg"].append({"token": sd_token, "sample_data_token": sd_token, "filename": seg})
            stats["points_per_keyframe"].append(len(scan["points"]))
            radar = radar_counts(sc, tk)
            vis = _visibility(scan["agent_hits"], scan["agent_potential"])
            boxes = sc.agent_boxes(tk)
            n_in = _points_in_boxes(scan["points"][:, :3], sc.ego_pose(tk) @ rig.lidar, boxes)
            for a in range(len(sc.yaw)):
                attr = sc.attribute[a]
                T["sample_annotation"].append({
                    "token": ann_tok[a][k], "sample_token": sample_tok[k], "instance_token": agent_tok[a],
                    "visibility_token": vis[a], "attribute_tokens": [attr_tok[attr]] if attr else [],
                    "translation": [float(v) for v in boxes[a, :3]],
                    "size": [float(v) for v in sc.wlh[a]], "rotation": yaw_quaternion(float(sc.yaw[a])),
                    "prev": ann_tok[a][k - 1] if k else "", "next": ann_tok[a][k + 1] if k + 1 < n_keyframes else "",
                    "num_lidar_pts": int(n_in[a]), "num_radar_pts": int(radar[a])})
                stats["class_counts"][sc.det_class[a]] = stats["class_counts"].get(sc.det_class[a], 0) + 1
            for ch in CAMERAS:
                t = tk + CAMERA_DELAY[ch]
                fn = f"samples/{ch}/{logname}__{ch}__{ts_of(t)}.jpg"
                add_sd(ch, k, t, True, "jpg", fn, W, H)
                (out / fn).write_bytes(_jpeg(render_camera(sc, ch, t), jpeg_quality))
        for a in range(len(sc.yaw)):
            T["instance"].append({"token": agent_tok[a], "category_token": cat_tok[sc.category[a]],
                                  "nbr_annotations": n_keyframes, "first_annotation_token": ann_tok[a][0],
                                  "last_annotation_token": ann_tok[a][-1]})
        for recs in chains.values():
            for i, r in enumerate(recs):
                r["prev"] = recs[i - 1]["token"] if i else ""
                r["next"] = recs[i + 1]["token"] if i + 1 < len(recs) else ""
            T["sample_data"].extend(recs)
        if verbose:
            print(f"scene {si + 1}/{len(names)} {name} ({loc}): {len(sc.yaw)} agents, "
                  f"{time.perf_counter() - t_start:.1f} s")

    for loc in LOCATIONS:
        town = towns[loc]
        map_token = tok("map", loc)
        fn = f"maps/{map_token}.png"
        Image.fromarray(town.mask_png()).save(out / fn)
        T["map"].append({"token": map_token, "log_tokens": logs_at[loc], "category": "semantic_prior",
                         "filename": fn})
        (out / "maps" / "expansion" / f"{loc}.json").write_text(json.dumps(town.expansion_json()))
    stats["annotations"] = len(T["sample_annotation"])
    for name, table in T.items():
        (out / version / f"{name}.json").write_text(json.dumps(table, indent=0))
    (out / version / "splits.json").write_text(json.dumps({CUSTOM_SPLITS[0]: train_names,
                                                           CUSTOM_SPLITS[1]: val_names}, indent=0))
    meta = {"generator": "sparse3d.datasets.nuscenes", "writer_version": WRITER_VERSION, "seed": seed,
            "version": version, "n_scenes": n_scenes,
            "n_keyframes": n_keyframes, "n_sweeps": n_sweeps, "image_size": [W, H], "azimuth_steps": azimuth_steps,
            "n_objects": n_objects, "train_scenes": train_names, "val_scenes": val_names,
            "samples": len(T["sample"]), "sample_data": len(T["sample_data"]),
            "annotations": stats["annotations"], "class_counts": dict(sorted(stats["class_counts"].items())),
            "mean_points_per_keyframe": float(np.mean(stats["points_per_keyframe"]))}
    (out / "synth_meta.json").write_text(json.dumps(meta, indent=1))
    meta["seconds"] = time.perf_counter() - t_start
    return meta
