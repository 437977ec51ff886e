"""Synthetic nuScenes writer + devkit loader: the real nuscenes-devkit loads the generated set, maps rasterize,
lidarseg loads, generation is deterministic, camera/LiDAR geometry is consistent, bad input fails clearly."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nuscenes")

from nuscenes import NuScenes  # noqa: E402
from nuscenes.map_expansion.map_api import NuScenesMap  # noqa: E402
from nuscenes.utils import splits as nus_splits  # noqa: E402
from nuscenes.utils.data_classes import Box  # noqa: E402
from nuscenes.utils.data_io import load_bin_file  # noqa: E402
from nuscenes.utils.geometry_utils import points_in_box  # noqa: E402
from pyquaternion import Quaternion  # noqa: E402

from sparse3d.datasets.nuscenes import (CAMERAS, CATEGORIES, CLASS_COLORS, DETECTION_CLASSES, LIDAR,  # noqa: E402
                                        LOCATIONS, TABLES, NuScenesDataError, NuScenesLoader, build_scene, cli,
                                        write_nuscenes_synth)
from sparse3d.datasets.nuscenes.common import SHADES  # noqa: E402
from sparse3d.datasets.nuscenes.scene import CAMERA_DELAY, PART_PROFILES  # noqa: E402
from sparse3d.datasets.nuscenes.town import GROUND_COLORS  # noqa: E402

VERSION = "v1.0-mini"
TINY = dict(seed=3, n_scenes=2, n_keyframes=3, n_sweeps=1, image_size=(400, 225), azimuth_steps=720,
            n_objects=30)
MAP_LAYERS = ("drivable_area", "ped_crossing", "walkway", "stop_line", "carpark_area", "road_divider",
              "lane_divider")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nuscenes_synth")
    write_nuscenes_synth(out, **TINY)
    return out


@pytest.fixture(scope="module")
def nusc(root) -> NuScenes:
    return NuScenes(VERSION, str(root), verbose=False)


@pytest.fixture(scope="module")
def loader(root) -> NuScenesLoader:
    return NuScenesLoader(root, VERSION, nsweeps=1)


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _table(root: Path, name: str) -> list:
    return json.loads((root / VERSION / f"{name}.json").read_text())


def _write_table(root: Path, name: str, table: list) -> None:
    (root / VERSION / f"{name}.json").write_text(json.dumps(table))


# ---------------------------------------------------------------------------------------------- devkit loading
def test_devkit_loads_all_tables(root, nusc):
    for t in TABLES:
        assert (root / VERSION / f"{t}.json").is_file()
        assert len(getattr(nusc, t)) > 0, t
    assert len(nusc.scene) == 2 and len(nusc.sample) == 6
    assert [c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(CATEGORIES)
    assert len(nusc.attribute) == 8 and len(nusc.visibility) == 4
    for s in nusc.sample:
        assert set(s["data"]) == {LIDAR, *CAMERAS}
        assert len(s["anns"]) > 0
    for sd in nusc.sample_data:
        assert (root / sd["filename"]).is_file(), sd["filename"]
    n_lidar = sum(sd["channel"] == LIDAR for sd in nusc.sample_data)
    assert n_lidar == 6 * (1 + TINY["n_sweeps"])
    assert sum(sd["channel"] == LIDAR and not sd["is_key_frame"] for sd in nusc.sample_data) == 6
    for log in nusc.log:
        assert log["map_token"] in {m["token"] for m in nusc.map}
        assert log["location"] in LOCATIONS


def test_scene_names_fit_devkit_splits(nusc, loader):
    names = {s["name"] for s in nusc.scene}
    mini = nus_splits.create_splits_scenes()
    assert names <= set(mini["mini_train"]) | set(mini["mini_val"])
    assert names & set(mini["mini_val"]) and names & set(mini["mini_train"])
    assert len(loader.split_tokens("mini_train")) == 3 and len(loader.split_tokens("mini_val")) == 3
    # the custom splits.json (devkit >= 1.2)
    assert nus_splits.get_scenes_of_split("synth_val", nusc) == sorted(names & set(mini["mini_val"]))
    assert loader.split_tokens("synth_train") == loader.split_tokens("mini_train")
    with pytest.raises(ValueError, match="no_such_split"):
        loader.split_tokens("no_such_split")


def test_scene_names_beyond_mini():
    """v1.0-mini with more than 8 + 2 scenes: mini names first, then distinct train/val names that are no mini
    scenes, so mini_train/mini_val select the first 10 and splits.json the rest."""
    from sparse3d.datasets.nuscenes import scene_names
    splits = nus_splits.create_splits_scenes()
    mini = set(splits["mini_train"]) | set(splits["mini_val"])
    train, val = scene_names("v1.0-mini", 48, 10)
    assert (len(train), len(val)) == (38, 10) and len(set(train) | set(val)) == 48
    assert train[:8] == list(splits["mini_train"]) and val[:2] == list(splits["mini_val"])
    assert set(train[8:]) <= set(splits["train"]) - mini and set(val[2:]) <= set(splits["val"]) - mini
    assert scene_names("v1.0-mini", 10, 2) == (list(splits["mini_train"]), list(splits["mini_val"]))
    with pytest.raises(ValueError, match="does not fit"):
        scene_names("v1.0-mini", 10 ** 4, 10)


def test_annotations_classes_attributes_visibility(nusc):
    from nuscenes.eval.detection.utils import category_to_detection_name
    names = {category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation}
    assert names == set(DETECTION_CLASSES)
    attr = {a["token"]: a["name"] for a in nusc.attribute}
    moving = 0
    for a in nusc.sample_annotation:
        assert len(a["attribute_tokens"]) <= 1
        assert a["visibility_token"] in {"1", "2", "3", "4"}
        assert a["num_lidar_pts"] >= 0 and a["num_radar_pts"] >= 0
        det = category_to_detection_name(a["category_name"])
        if det in ("traffic_cone", "barrier"):
            assert a["attribute_tokens"] == []
        else:
            kind = {"pedestrian": "pedestrian", "bicycle": "cycle", "motorcycle": "cycle"}.get(det, "vehicle")
            assert attr[a["attribute_tokens"][0]].startswith(kind + ".")
        moving += np.linalg.norm(nusc.box_velocity(a["token"])[:2]) > 0.5
    assert moving > 0
    npts = np.array([a["num_lidar_pts"] for a in nusc.sample_annotation])
    assert (npts > 0).mean() > 0.5
    vis = {a["visibility_token"] for a in nusc.sample_annotation}
    assert {"1", "4"} <= vis


def test_velocities_match_scene_motion(nusc, loader):
    """devkit box_velocity (finite differences) == the scene's constant velocities; loader rotates them into
    the LiDAR frame."""
    for si, scene in enumerate(nusc.scene):
        sc = build_scene(TINY["seed"], si, TINY["n_keyframes"], TINY["n_sweeps"], TINY["image_size"],
                         TINY["n_objects"])
        insts = [i for i in nusc.instance if nusc.get("sample_annotation", i["first_annotation_token"])
                 ["sample_token"] in {s["token"] for s in nusc.sample if s["scene_token"] == scene["token"]}]
        assert len(insts) == len(sc.yaw)
        vel = sc.velocities()
        for a, inst in enumerate(insts):
            got = nusc.box_velocity(inst["first_annotation_token"])[:2]
            np.testing.assert_allclose(got, vel[a], atol=1e-3)
    info = loader.load(loader.split_tokens("mini_val")[1])
    R = info["lidar2global"][:3, :3]
    for tok, b in zip(info["ann_tokens"], info["gt_boxes"]):
        v_global = R @ np.array([b[7], b[8], 0.0])
        np.testing.assert_allclose(v_global[:2], loader.nusc.box_velocity(tok)[:2], atol=1e-4)


# ---------------------------------------------------------------------------------------------- maps
def test_map_expansion_layers_rasterize(root, nusc):
    locations = {log["location"] for log in nusc.log}
    for loc in locations:
        meta = json.loads((root / "maps" / "expansion" / f"{loc}.json").read_text())
        assert meta["version"] >= "1.3"
        m = NuScenesMap(dataroot=str(root), map_name=loc)
        size = meta["canvas_edge"][0]
        masks = m.get_map_mask((size / 2, size / 2, size, size), 0.0, list(MAP_LAYERS), (800, 800))
        assert masks.shape == (len(MAP_LAYERS), 800, 800)
        for name, mask in zip(MAP_LAYERS, masks):
            assert mask.sum() > 0, f"{loc}: layer {name} rasterizes empty"
        # rotated patch around the ego of each sample: drivable area under the ego
        for s in nusc.sample:
            if nusc.get("log", nusc.get("scene", s["scene_token"])["log_token"])["location"] != loc:
                continue
            pose = nusc.get("ego_pose", nusc.get("sample_data", s["data"][LIDAR])["ego_pose_token"])
            x, y = pose["translation"][:2]
            mk = m.get_map_mask((x, y, 100, 100), 37.0, ["drivable_area", "walkway", "lane_divider"], (200, 200))
            assert mk[0, 99:101, 99:101].all() and mk[1].sum() > 0 and mk[2].sum() > 0


def test_map_table_png_and_loader_map_masks(nusc, loader):
    for rec in nusc.map:
        assert rec["category"] == "semantic_prior"
        assert rec["mask"].mask().max() == 255
    for s in nusc.sample:
        pose = nusc.get("ego_pose", nusc.get("sample_data", s["data"][LIDAR])["ego_pose_token"])
        log = nusc.get("log", nusc.get("scene", s["scene_token"])["log_token"])
        mm = nusc.get("map", log["map_token"])["mask"]
        assert mm.is_on_mask(pose["translation"][0], pose["translation"][1]).all()
    info = loader.load(loader.split_tokens("mini_train")[0])
    masks = loader.map_masks(info, xbound=(-50, 50, 0.5), ybound=(-50, 50, 0.5))
    assert masks.shape == (6, 200, 200) and masks.dtype == np.uint8
    assert masks[0, 99:101, 99:101].all()          # the ego drives on the drivable area
    assert masks[2].sum() > 0 and masks[5].sum() > 0  # walkway, divider


# ---------------------------------------------------------------------------------------------- LiDAR
def test_lidar_files_and_lidarseg(root, nusc, loader):
    cat_idx = {c["index"] for c in nusc.category}
    for s in nusc.sample:
        sd = nusc.get("sample_data", s["data"][LIDAR])
        raw = np.fromfile(root / sd["filename"], np.float32)
        assert raw.size % 5 == 0 and raw.size > 0
        pts = raw.reshape(-1, 5)
        assert set(np.unique(pts[:, 4]).astype(int)) <= set(range(32))
        assert 0 <= pts[:, 3].min() and pts[:, 3].max() <= 255
        labels = load_bin_file(str(root / nusc.get("lidarseg", sd["token"])["filename"]))
        assert labels.dtype == np.uint8 and len(labels) == len(pts)
        assert set(np.unique(labels)) <= cat_idx
        p2, l2 = loader.load_lidarseg(s["token"])
        np.testing.assert_array_equal(l2, labels)
        # ground points carry flat.* labels, and lie at z ~ -lidar height
        ground = np.isin(labels, [24, 26, 27])
        assert ground.mean() > 0.2
        assert np.abs(pts[ground, 2] + 1.84).max() < 0.2
    names = set(nusc.lidarseg_name2idx_mapping)
    assert {"flat.driveable_surface", "static.manmade", "static.vegetation", "vehicle.car"} <= names


def test_num_lidar_pts_are_points_in_boxes(loader):
    info = NuScenesLoader(loader.dataroot, VERSION, nsweeps=0, load_images=False).load(
        loader.split_tokens("mini_train")[1])
    pts = info["points"][:, :3].T
    for b, n in zip(info["gt_boxes"], info["num_lidar_pts"]):
        box = Box(b[:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], angle=float(b[6])))
        inside = int(points_in_box(box, pts).sum())
        assert inside == n


def _end_heights(info, name: str, min_pts: int = 6):
    """Per annotated ``name`` box: highest keyframe return (above the box bottom) in its front and rear quarter."""
    pts = info["points"][info["points"][:, 4] == 0, :3]
    out = []
    for b, nm in zip(info["gt_boxes"], info["gt_names"]):
        if nm != name:
            continue
        d = pts - b[:3]
        c, s = np.cos(b[6]), np.sin(b[6])
        x, y = c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]
        inside = (np.abs(x) <= b[3] / 2) & (np.abs(y) <= b[4] / 2) & (np.abs(d[:, 2]) <= b[5] / 2)
        z = d[inside, 2] + b[5] / 2
        front, rear = z[x[inside] > b[3] / 4], z[x[inside] < -b[3] / 4]
        if len(front) >= min_pts and len(rear) >= min_pts:
            out.append((front.max() / b[5], rear.max() / b[5]))
    return np.array(out).reshape(-1, 2)


def test_car_lidar_returns_differ_front_vs_back(loader):
    """Heading is observable: a car's returns in the front quarter (bonnet) stay low, the rear quarter reaches the
    roof, so the height profile along the annotated heading tells front from back (not a symmetric cuboid)."""
    ld = NuScenesLoader(loader.dataroot, VERSION, nsweeps=0, load_images=False)
    tokens = ld.split_tokens("mini_train") + ld.split_tokens("mini_val")
    prof = np.concatenate([_end_heights(ld.load(tok), "car") for tok in tokens])
    assert len(prof) >= 8, prof
    front, rear = prof[:, 0], prof[:, 1]
    assert (front < 0.6).mean() > 0.9 and np.median(rear) > 0.85, prof  # bonnet ~0.55 h, roof ~h
    assert (front < rear - 0.2).mean() > 0.85, prof


def test_agent_parts_fill_the_solid_shape():
    """Vehicles are a body plus a lower front part inside the annotation box; other classes are one box."""
    sc = build_scene(TINY["seed"], 0, TINY["n_keyframes"], TINY["n_sweeps"], TINY["image_size"], TINY["n_objects"])
    parts, owner = sc.agent_parts(0.5)
    full = sc.agent_shapes(0.5)
    assert parts.shape == (len(owner), 7) and (np.diff(owner) >= 0).all()
    assert np.array_equal(np.unique(owner), np.arange(len(sc.yaw)))
    for a, cls in enumerate(sc.det_class):
        p = parts[owner == a]
        n_expected = 2 if cls in PART_PROFILES else 1
        assert len(p) == n_expected, cls
        assert np.isclose(p[:, 3].sum(), full[a, 3]) and np.allclose(p[:, 4], full[a, 4])
        assert np.isclose(p[:, 5].max(), full[a, 5]) and np.allclose(p[:, 2], p[:, 5] / 2)
        u = np.array([np.cos(full[a, 6]), np.sin(full[a, 6])])
        along = (p[:, :2] - full[a, :2]) @ u
        assert np.isclose(along.min() - p[along.argmin(), 3] / 2, -full[a, 3] / 2)
        assert np.isclose(along.max() + p[along.argmax(), 3] / 2, full[a, 3] / 2)
        if n_expected == 2:
            assert p[along.argmax(), 5] < p[along.argmin(), 5]  # the front part is the lower one


def test_multisweep_points_have_time_lag(loader):
    info = loader.load(loader.split_tokens("mini_train")[2])
    pts = info["points"]
    assert pts.dtype == np.float32 and pts.shape[1] == 5
    np.testing.assert_allclose(np.unique(pts[:, 4]), [0.0, 0.05], atol=1e-4)
    assert np.hypot(pts[:, 0], pts[:, 1]).min() >= 1.0  # devkit remove_close
    one = NuScenesLoader(loader.dataroot, VERSION, nsweeps=0, load_images=False).load(info["token"])["points"]
    assert len(one) == (pts[:, 4] == 0).sum()
    # static structure from the sweep lands where the keyframe sees it (ego-motion compensation):
    sweep = pts[pts[:, 4] > 0]
    key = one
    hi_s, hi_k = sweep[sweep[:, 2] > 1.0], key[key[:, 2] > 1.0]  # buildings/trees/objects above 1 m
    from scipy.spatial import cKDTree
    d, _ = cKDTree(hi_k[:, :3]).query(hi_s[:, :3])
    assert np.median(d) < 0.3


# ---------------------------------------------------------------------------------------------- geometry
def _palette():
    cols, labs = [], []
    for c, rgb in CLASS_COLORS.items():
        for f in SHADES.values():
            cols.append(np.array(rgb) * f)
            labs.append(c)
    bg = [*GROUND_COLORS, (200, 212, 225), (95, 145, 215), (150, 180, 220), (90, 60, 30), (35, 110, 30)]
    bg += [(g, 0.92 * g, 0.82 * g) for g in range(110, 210, 15)]
    for rgb in bg:
        cols.append(np.array(rgb, float))
        labs.append("background")
    return np.array(cols), labs


def _classify(img, uv, palette):
    cols, labs = palette
    u, v = int(round(uv[0])), int(round(uv[1]))
    patch = img[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2].reshape(-1, 3).astype(float)
    px = np.median(patch, 0)
    return labs[int(np.argmin(np.linalg.norm(cols - px, axis=1)))]


def _corners(b):
    box = Box(b[:3], [b[4], b[3], b[5]], Quaternion(axis=[0, 0, 1], angle=float(b[6])))
    return box.corners().T  # [8, 3]


def _projection_hits(info, lidar2image_override=None):
    palette = _palette()
    centre_total = centre_ok = corner_total = corner_ok = 0
    for c, ch in enumerate(info["cam_channels"]):
        img = info["images"][c]
        H, W = img.shape[:2]
        P = info["lidar2image"][c] if lidar2image_override is None else lidar2image_override[c]
        for b, name, vis in zip(info["gt_boxes"], info["gt_names"], info["gt_visibility"]):
            if vis < 3:  # skip objects the LiDAR sees mostly occluded
                continue
            pts = np.concatenate([b[None, :3], _corners(b)], 0)
            ph = np.concatenate([pts, np.ones((9, 1))], 1) @ P.T
            if (ph[:, 2] < 1.0).any() or ph[0, 2] > 40:
                continue
            uv = ph[:, :2] / ph[:, 2:3]
            if not (3 <= uv[0, 0] < W - 3 and 3 <= uv[0, 1] < H - 3):
                continue
            centre_total += 1
            if _classify(img, uv[0], palette) != name:
                continue  # occluded at the centre (or a geometry error, which the rate below catches)
            centre_ok += 1
            for k in range(1, 9):  # points pulled 25 % from each projected corner towards the centre
                p = uv[0] + 0.75 * (uv[k] - uv[0])
                if 3 <= p[0] < W - 3 and 3 <= p[1] < H - 3:
                    corner_total += 1
                    corner_ok += _classify(img, p, palette) == name
    return centre_total, centre_ok, corner_total, corner_ok


def test_projected_boxes_land_on_rendered_objects(loader):
    """Boxes (devkit tables -> loader chain LiDAR -> camera -> image) hit pixels of their class colour."""
    tot = np.zeros(4, int)
    for tok in loader.split_tokens("mini_train") + loader.split_tokens("mini_val"):
        tot += _projection_hits(loader.load(tok))
    centre_total, centre_ok, corner_total, corner_ok = tot
    assert centre_total >= 30
    assert centre_ok / centre_total > 0.9, tot
    assert corner_total >= 100 and corner_ok / corner_total > 0.85, tot
    # controls on the same samples: a conjugated camera quaternion (a classic w,x,y,z convention bug) misses the
    # objects, and a 2 degree camera yaw error visibly lowers the agreement
    good, conj, yaw2 = np.zeros(4, int), np.zeros(4, int), np.zeros(4, int)
    a = np.deg2rad(2.0)
    Ry = np.array([[np.cos(a), 0, np.sin(a), 0], [0, 1, 0, 0], [-np.sin(a), 0, np.cos(a), 0], [0, 0, 0, 1]])
    for tok in loader.split_tokens("mini_train"):
        info = loader.load(tok)
        K4 = np.zeros((len(CAMERAS), 4, 4))
        K4[:, :3, :3] = info["cam_intrinsics"]
        K4[:, 3, 3] = 1
        fix = np.tile(np.eye(4), (len(CAMERAS), 1, 1))
        R = info["camera2ego"][:, :3, :3]
        fix[:, :3, :3] = np.transpose(R, (0, 2, 1)) @ np.transpose(R, (0, 2, 1))  # camera rotation R -> R^T
        good += _projection_hits(info)
        conj += _projection_hits(info, K4 @ np.linalg.inv(info["camera2lidar"] @ fix))
        yaw2 += _projection_hits(info, K4 @ Ry @ info["lidar2camera"])
    assert conj[1] / max(conj[0], 1) < 0.5, conj
    assert yaw2[3] / max(yaw2[2], 1) < good[3] / good[2] - 0.1, (good, yaw2)


def test_lss_frustum_to_lidar_matches_analytic(loader):
    """LSS ``get_geometry`` (undo image aug, K^-1, camera->LiDAR) against the rig/ego motion in closed form."""
    seed = TINY["seed"]
    for si, split, k in ((0, "mini_train", 1), (1, "mini_val", 2)):  # scene index (writer order), keyframe
        info = loader.load(loader.split_tokens(split)[k])
        sc = build_scene(seed, si, TINY["n_keyframes"], TINY["n_sweeps"], TINY["image_size"], TINY["n_objects"])
        t_lidar = 0.5 * k
        # image augmentation: resize by 0.44, crop (10, 4) -> post_rot / post_trans as in BEVFusion ImageAug3D
        scale, crop = 0.44, np.array([10.0, 4.0])
        post_rot, post_trans = np.diag([scale, scale, 1.0]), np.array([-crop[0], -crop[1], 0.0])
        fH, fW, ds = 6, 11, np.arange(1.0, 49.0, 8.0)
        u = np.linspace(0, 400 * scale - 2 * crop[0] - 1, fW)
        v = np.linspace(0, 225 * scale - 2 * crop[1] - 1, fH)
        D, V, U = np.meshgrid(ds, v, u, indexing="ij")
        frustum = np.stack([U, V, D], -1).reshape(-1, 3)                      # augmented (u, v, d)
        lidar_yaw = sc.rig.euler[LIDAR][0][0]
        t_l = sc.rig.euler[LIDAR][1]
        for c, ch in enumerate(CAMERAS):
            p = (frustum - post_trans) @ np.linalg.inv(post_rot).T          # original pixels, depth
            p = np.concatenate([p[:, :2] * p[:, 2:3], p[:, 2:3]], 1)
            cam2lidar = info["camera2lidar"][c]
            got = p @ (cam2lidar[:3, :3] @ np.linalg.inv(info["cam_intrinsics"][c])).T + cam2lidar[:3, 3]
            # analytic: pixel ray in the camera, mount yaw/pitch/roll, ego yaw and the two ego positions
            (yaw, pitch, roll), t_c = sc.rig.euler[ch]
            K = sc.rig.intrinsics[ch]
            uo, vo, d = (frustum[:, 0] + crop[0]) / scale, (frustum[:, 1] + crop[1]) / scale, frustum[:, 2]
            x_r, y_d = d * (uo - K[0, 2]) / K[0, 0], d * (vo - K[1, 2]) / K[1, 1]
            base = np.stack([d, -x_r, -y_d], 1)                           # forward, left, up for a yaw-0 camera
            cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), \
                np.sin(yaw)
            x1, y1, z1 = base[:, 0], cr * base[:, 1] - sr * base[:, 2], sr * base[:, 1] + cr * base[:, 2]
            x2, y2, z2 = cp * x1 + sp * z1, y1, -sp * x1 + cp * z1
            e = np.stack([cy * x2 - sy * y2, sy * x2 + cy * y2, z2], 1) + t_c  # ego frame at camera time
            shift = sc.ego_xy(t_lidar + CAMERA_DELAY[ch]) - sc.ego_xy(t_lidar)  # ego motion between the stamps
            ce, se = np.cos(sc.ego_yaw), np.sin(sc.ego_yaw)
            e[:, 0] += ce * shift[0] + se * shift[1]
            e[:, 1] += -se * shift[0] + ce * shift[1]
            q = e - t_l
            cl, sl = np.cos(lidar_yaw), np.sin(lidar_yaw)
            want = np.stack([cl * q[:, 0] + sl * q[:, 1], -sl * q[:, 0] + cl * q[:, 1], q[:, 2]], 1)
            np.testing.assert_allclose(got, want, atol=1e-6)


# ---------------------------------------------------------------------------------------------- determinism
def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_by_seed(tmp_path):
    kw = dict(n_scenes=1, n_keyframes=2, n_sweeps=1, image_size=(96, 54), azimuth_steps=180, n_objects=12)
    a, b, c = (write_nuscenes_synth(tmp_path / n, seed=s, **kw) for n, s in (("a", 5), ("b", 5), ("c", 6)))
    assert a["annotations"] == b["annotations"] > 0
    da, db, dc = _digest(tmp_path / "a"), _digest(tmp_path / "b"), _digest(tmp_path / "c")
    assert da == db
    assert da.keys() != dc.keys() or da != dc
    assert da[f"{VERSION}/sample_annotation.json"] != dc[f"{VERSION}/sample_annotation.json"]


def test_cli_writes_and_refuses_foreign_folder(tmp_path, capsys):
    out = tmp_path / "cli"
    meta = cli(["--out", str(out), "--seed", "1", "--scenes", "1", "--keyframes", "1", "--sweeps", "0",
                "--width", "64", "--height", "36", "--azimuth-steps", "90", "--objects", "10"])
    assert meta["samples"] == 1 and (out / "synth_meta.json").is_file()
    assert "wrote" in capsys.readouterr().out
    NuScenes(VERSION, str(out), verbose=False)
    cli(["--out", str(out), "--scenes", "1", "--keyframes", "1", "--sweeps", "0", "--width", "64", "--height",
         "36", "--azimuth-steps", "90", "--objects", "5"])  # a generated set is overwritten
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(SystemExit, match="--force"):
        cli(["--out", str(foreign), "--scenes", "1"])
    assert (foreign / "keep.txt").exists()


def test_writer_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="v1.0-mini"):
        write_nuscenes_synth(tmp_path / "x", n_scenes=1000)  # 200 val scenes > 150 names
    with pytest.raises(ValueError, match="version"):
        write_nuscenes_synth(tmp_path / "x", version="v2.0")
    with pytest.raises(ValueError, match="image_size"):
        write_nuscenes_synth(tmp_path / "x", n_scenes=1, image_size=(8, 8))


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_dataroot_and_tables(root, tmp_path):
    with pytest.raises(NuScenesDataError, match="does not exist"):
        NuScenesLoader(tmp_path / "nope", VERSION)
    with pytest.raises(NuScenesDataError, match="v1.0-trainval"):
        NuScenesLoader(root, "v1.0-trainval")
    dst = _copy(root, tmp_path)
    (dst / VERSION / "sample_data.json").unlink()
    (dst / VERSION / "visibility.json").unlink()
    with pytest.raises(NuScenesDataError, match="sample_data, visibility"):
        NuScenesLoader(dst, VERSION)


def test_missing_files(root, tmp_path):
    dst = _copy(root, tmp_path)
    maps = _table(dst, "map")
    (dst / maps[1]["filename"]).unlink()
    with pytest.raises(NuScenesDataError, match=maps[1]["token"]):
        NuScenesLoader(dst, VERSION)
    _write_table(dst, "map", [])
    with pytest.raises(NuScenesDataError, match="'map'.*empty"):
        NuScenesLoader(dst, VERSION)
    dst2 = _copy(root, tmp_path / "b")
    ld = NuScenesLoader(dst2, VERSION)
    s = ld.nusc.sample[0]
    lid = ld.nusc.get("sample_data", s["data"][LIDAR])
    cam = ld.nusc.get("sample_data", s["data"]["CAM_FRONT_LEFT"])
    (dst2 / cam["filename"]).unlink()
    with pytest.raises(NuScenesDataError, match=cam["token"]):
        ld.load(s["token"])
    (dst2 / lid["filename"]).unlink()
    with pytest.raises(NuScenesDataError, match=lid["token"]):
        ld.load_points(s)
    with pytest.raises(NuScenesDataError, match="sample token 'deadbeef'"):
        ld.load("deadbeef")


def test_missing_lidarseg_file(root, tmp_path):
    dst = _copy(root, tmp_path)
    rec = _table(dst, "lidarseg")[0]
    (dst / rec["filename"]).unlink()
    with pytest.raises(NuScenesDataError, match="label files"):
        NuScenesLoader(dst, VERSION)


def test_sample_without_camera(root, tmp_path):
    dst = _copy(root, tmp_path)
    sd = _table(dst, "sample_data")
    sensors = {s["token"]: s["channel"] for s in _table(dst, "sensor")}
    cs = {c["token"]: sensors[c["sensor_token"]] for c in _table(dst, "calibrated_sensor")}
    victim = next(r for r in sd if cs[r["calibrated_sensor_token"]] == "CAM_BACK")
    _write_table(dst, "sample_data", [r for r in sd if r["token"] != victim["token"]])
    ld = NuScenesLoader(dst, VERSION)
    with pytest.raises(NuScenesDataError, match=f"sample '{victim['sample_token']}' has no CAM_BACK"):
        ld.load(victim["sample_token"])
    # a loader restricted to other cameras still works
    info = NuScenesLoader(dst, VERSION, cameras=("CAM_FRONT",)).load(victim["sample_token"])
    assert info["images"].shape[0] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_jpeg(root, tmp_path, damage):
    dst = _copy(root, tmp_path)
    ld = NuScenesLoader(dst, VERSION)
    s = ld.nusc.sample[2]
    sd = ld.nusc.get("sample_data", s["data"]["CAM_BACK_RIGHT"])
    path = dst / sd["filename"]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a jpeg" * 50)
    with pytest.raises(NuScenesDataError, match=f"{sd['token']}.*corrupt JPEG"):
        ld.load(s["token"])


@pytest.mark.parametrize("damage", ["truncate", "nan"])
def test_corrupt_pcd_bin(root, tmp_path, damage):
    dst = _copy(root, tmp_path)
    ld = NuScenesLoader(dst, VERSION, nsweeps=1)
    s = ld.nusc.sample[1]
    key = ld.nusc.get("sample_data", s["data"][LIDAR])
    sweep = ld.nusc.get("sample_data", key["prev"])  # damage the sweep: the error names the sweep's token
    path = dst / sweep["filename"]
    pts = np.fromfile(path, np.float32)
    if damage == "truncate":
        pts[:-3].tofile(path)
    else:
        pts[7] = np.nan
        pts.tofile(path)
    with pytest.raises(NuScenesDataError, match=f"{sweep['token']}.*corrupt .pcd.bin"):
        ld.load(s["token"])
    assert len(NuScenesLoader(dst, VERSION, nsweeps=0, load_images=False).load(s["token"])["points"]) > 0


def test_non_invertible_calibration(root, tmp_path):
    dst = _copy(root, tmp_path)
    cs = _table(dst, "calibrated_sensor")
    sensors = {s["token"]: s["channel"] for s in _table(dst, "sensor")}
    cam = next(c for c in cs if sensors[c["sensor_token"]] == "CAM_FRONT")
    cam["camera_intrinsic"] = [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    _write_table(dst, "calibrated_sensor", cs)
    ld = NuScenesLoader(dst, VERSION)
    tok = next(s["token"] for s in ld.nusc.sample
               if ld.nusc.get("sample_data", s["data"]["CAM_FRONT"])["calibrated_sensor_token"] == cam["token"])
    with pytest.raises(NuScenesDataError, match=f"calibrated_sensor '{cam['token']}'.*singular"):
        ld.load(tok)
    lid = next(c for c in cs if sensors[c["sensor_token"]] == LIDAR)
    lid["rotation"] = [0.0, 0.0, 0.0, 0.0]
    _write_table(dst, "calibrated_sensor", cs)
    ld = NuScenesLoader(dst, VERSION, cameras=())
    tok = next(s["token"] for s in ld.nusc.sample
               if ld.nusc.get("sample_data", s["data"][LIDAR])["calibrated_sensor_token"] == lid["token"])
    with pytest.raises(NuScenesDataError, match=f"calibrated_sensor '{lid['token']}'.*not invertible"):
        ld.load(tok)


def test_empty_point_cloud(root, tmp_path):
    dst = _copy(root, tmp_path)
    ld = NuScenesLoader(dst, VERSION, nsweeps=0)
    s = ld.nusc.sample[4]
    sd = ld.nusc.get("sample_data", s["data"][LIDAR])
    (dst / sd["filename"]).write_bytes(b"")
    (dst / ld.nusc.get("lidarseg", sd["token"])["filename"]).write_bytes(b"")
    info = ld.load(s["token"])
    assert info["points"].shape == (0, 5) and info["points"].dtype == np.float32
    assert info["gt_boxes"].shape[1] == 9 and info["images"].shape[0] == 6
    pts, labels = ld.load_lidarseg(s["token"])
    assert pts.shape == (0, 5) and labels.shape == (0,)
    with_sweep = NuScenesLoader(dst, VERSION, nsweeps=1, load_images=False).load(s["token"])["points"]
    assert len(with_sweep) > 0 and (with_sweep[:, 4] > 0).all()
