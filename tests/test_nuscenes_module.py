"""NuScenesDataModule (BEVFusion data pipeline): image / LiDAR augmentation matrices are consistent with the
warped images, points, boxes and BEV map masks; collate shapes; bad input fails naming the table, token or file."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes")

from sparse3d.datasets.nuscenes import CAMERAS, LIDAR, NuScenesDataError  # noqa: E402
from sparse3d.datasets.nuscenes.augment import (image_aug_matrix, image_aug_params, lidar_aug_matrix,  # noqa: E402
                                                map_masks_augmented, random_lidar_aug, transform_boxes,
                                                transform_points, warp_image)
from sparse3d.datasets.nuscenes.module import NuScenesDataModule, collate_nuscenes, ensure_nuscenes_synth  # noqa: E402
from sparse3d.datasets.nuscenes.render import box_corners  # noqa: E402
from sparse3d.datasets.nuscenes.writer import WRITER_VERSION  # noqa: E402

VERSION = "v1.0-mini"
# 1 train + 1 val scene of 3 keyframes; the val scene holds all 10 detection classes (seed 0)
TINY = dict(seed=0, n_scenes=2, n_keyframes=3, n_sweeps=1, image_size=(192, 108), azimuth_steps=360, n_objects=30)


def tiny_root(tmp_path_factory) -> Path:
    """The tiny synthetic set, written once per test session (shared by the BEVFusion test files)."""
    return ensure_nuscenes_synth(tmp_path_factory.getbasetemp() / "nuscenes_tiny", **TINY)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tiny_root(tmp_path_factory)


def make_dm(root, **kw) -> NuScenesDataModule:
    args = dict(nsweeps=1, final_dim=(64, 112), resize_lim=(0.55, 0.65), rot_lim=(-5.4, 5.4), rand_flip=True,
                batch_size=2, val_batch_size=2, map_xbound=(-25.0, 25.0, 0.5), map_ybound=(-25.0, 25.0, 0.5))
    args.update(kw)
    return NuScenesDataModule(root, VERSION, **args)


@pytest.fixture(scope="module")
def dm(root) -> NuScenesDataModule:
    return make_dm(root)


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _table(root: Path, name: str) -> list:
    return json.loads((root / VERSION / f"{name}.json").read_text())


def _write_table(root: Path, name: str, table: list) -> None:
    (root / VERSION / f"{name}.json").write_text(json.dumps(table))


def _project(M: np.ndarray, pts: np.ndarray):
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ M.T
    return p[:, :2] / p[:, 2:3], p[:, 2]


# ---------------------------------------------------------------------------------------------- image aug
@pytest.mark.parametrize("flip,rot", [(False, 0.0), (True, 0.0), (False, 5.0), (True, -4.0)])
def test_warp_image_follows_img_aug_matrix(flip, rot):
    """A bright source pixel lands (centre of mass) where ``img_aug_matrix`` maps its centre."""
    H, W = 90, 160
    final = (48, 96)
    resize, _, crop, _, _ = image_aug_params((W, H), final, (0.7, 0.7), train=False)
    M = image_aug_matrix(resize, crop, flip, rot)
    rng = np.random.default_rng(0)
    for _ in range(5):
        img = np.zeros((H, W, 3), np.uint8)
        u, v = int(rng.integers(40, 120)), int(rng.integers(30, 70))
        img[v - 1:v + 2, u - 1:u + 2] = 255  # 3x3 blob centred on pixel (u, v), continuous centre (u+.5, v+.5)
        out = warp_image(img, M, final)[..., 0].astype(np.float64)
        assert out.shape == final
        want = M[:2, :2] @ np.array([u + 0.5, v + 0.5]) + M[:2, 3]
        ys, xs = np.mgrid[:final[0], :final[1]]
        got = np.array([(out * (xs + 0.5)).sum(), (out * (ys + 0.5)).sum()]) / out.sum()
        np.testing.assert_allclose(got, want, atol=0.15)


def test_image_aug_params_ranges():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        resize, dims, crop, flip, rot = image_aug_params((400, 225), (128, 224), (0.54, 0.62), (0.0, 0.1),
                                                         (-5.4, 5.4), True, True, g)
        assert 0.54 <= resize <= 0.62 and -5.4 <= rot <= 5.4
        assert crop[2] - crop[0] == 224 and crop[3] - crop[1] == 128 and 0 <= crop[0] <= max(0, dims[0] - 224)
    resize, dims, crop, flip, rot = image_aug_params((400, 225), (128, 224), (0.54, 0.62), train=False)
    assert resize == pytest.approx(0.58) and not flip and rot == 0.0
    assert crop == ((232 - 224) // 2, 130 - 128, (232 - 224) // 2 + 224, 130)


# ---------------------------------------------------------------------------------------------- LiDAR aug
def test_random_lidar_aug_ranges():
    g = torch.Generator().manual_seed(1)
    draws = [random_lidar_aug((-0.5, 0.5), (0.9, 1.1), 0.5, True, g) for _ in range(200)]
    assert all(-0.5 <= d["rotation"] <= 0.5 and 0.9 <= d["scale"] <= 1.1 for d in draws)
    t = np.array([d["translation"] for d in draws])
    assert 0.35 < t.std() < 0.65
    assert 60 < sum(d["flip_x"] for d in draws) < 140 and 60 < sum(d["flip_y"] for d in draws) < 140
    assert not any(random_lidar_aug(flip=False, generator=g)["flip_x"] for _ in range(20))


def test_lidar_aug_matrix_and_boxes():
    L = lidar_aug_matrix(0.3, 1.1, (0.5, -0.2, 0.1), flip_x=True, flip_y=False)
    R = np.array([[math.cos(0.3), -math.sin(0.3)], [math.sin(0.3), math.cos(0.3)]])
    p = np.array([[2.0, 1.0, 0.5]])
    q = 1.1 * np.concatenate([R @ p[0, :2], [0.5]]) + [0.5, -0.2, 0.1]
    q[0] = -q[0]
    np.testing.assert_allclose(transform_points(p, L)[0], q)
    boxes = np.array([[2.0, 1.0, 0.5, 4.0, 2.0, 1.5, 0.4, 3.0, -1.0]])
    out = transform_boxes(boxes, L)
    # corners of the transformed box = transformed corners (as sets), velocity rotated + scaled + mirrored
    c0 = transform_points(box_corners(boxes[:, :7])[0], L)
    c1 = box_corners(out[:, :7])[0]
    d = np.linalg.norm(c0[:, None] - c1[None], axis=-1)
    assert d.min(1).max() < 1e-9
    v = 1.1 * R @ np.array([3.0, -1.0])
    np.testing.assert_allclose(out[0, 7:9], [-v[0], v[1]])
    np.testing.assert_allclose(out[0, 3:6], 1.1 * boxes[0, 3:6])
    np.testing.assert_allclose(transform_boxes(out, np.linalg.inv(L)), boxes, atol=1e-12)
    assert transform_boxes(np.zeros((0, 9)), L).shape == (0, 9)


def test_augmented_sample_is_consistent(dm):
    """Train-mode samples: points and boxes are the raw ones through ``lidar_aug_matrix``; a GT box corner
    projected through ``lidar2image`` (after augs) lands where ``img_aug_matrix`` sends its raw projection."""
    ds = dm.train_dataset()
    ds.generator = torch.Generator().manual_seed(3)
    ld = dm.loader
    flips = set()
    n_checked = 0
    for i in range(len(ds)):
        item = ds[i]
        info = ld.load(ds.tokens[i])
        meta = item["metas"]
        L = meta["lidar_aug_matrix"]
        flips.add((meta["lidar_aug"]["flip_x"], meta["lidar_aug"]["flip_y"]))
        np.testing.assert_allclose(item["lidar_aug_matrix"].numpy(), L, atol=1e-6)
        # points: raw -> L, cropped to the range
        raw = transform_points(info["points"], L)
        r = dm.point_cloud_range
        keep = (raw[:, 0] >= r[0]) & (raw[:, 0] < r[3]) & (raw[:, 1] >= r[1]) & (raw[:, 1] < r[4]) & \
            (raw[:, 2] >= r[2]) & (raw[:, 2] < r[5])
        np.testing.assert_allclose(item["points"].numpy(), raw[keep], atol=1e-4)
        # boxes: valid detection boxes through L
        valid = (info["gt_labels"] >= 0) & info["gt_valid"]
        want = transform_boxes(info["gt_boxes"][valid], L)
        inside = (want[:, 0] >= r[0]) & (want[:, 0] < r[3]) & (want[:, 1] >= r[1]) & (want[:, 1] < r[4])
        np.testing.assert_allclose(item["gt_boxes"].numpy(), want[inside], atol=1e-4)
        assert (item["gt_labels"].numpy() == info["gt_labels"][valid][inside]).all()
        # projection chain: raw corners through the raw camera, mapped by img_aug == aug corners through lidar2image
        corners = box_corners(info["gt_boxes"][valid][:, :7]).reshape(-1, 3)
        corners_aug = transform_points(corners, L)
        for c in range(len(CAMERAS)):
            K4 = np.eye(4)
            K4[:3, :3] = info["cam_intrinsics"][c]
            uv0, d0 = _project(K4 @ info["lidar2camera"][c], corners)
            A = item["img_aug_matrix"][c].numpy().astype(np.float64)
            want_uv = uv0 @ A[:2, :2].T + A[:2, 3]
            uv1, d1 = _project(item["lidar2image"][c].numpy().astype(np.float64), corners_aug)
            front = d0 > 0.5
            np.testing.assert_allclose(d1[front], d0[front], rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(uv1[front], want_uv[front], atol=0.05)
            n_checked += int(front.sum())
    assert n_checked > 100
    assert len(flips) > 1  # the augmentation actually flipped some samples


def test_augmented_image_content_matches_matrix(dm):
    """The warped camera image equals the raw image sampled through ``img_aug_matrix^-1`` (object colours
    at projected box centres survive the augmentation)."""
    ds = dm.train_dataset()
    ds.generator = torch.Generator().manual_seed(5)
    item = ds[1]
    info = dm.loader.load(ds.tokens[1])
    from sparse3d.datasets.nuscenes.module import IMAGENET_MEAN, IMAGENET_STD
    img = item["img"].numpy().transpose(0, 2, 3, 1) * np.array(IMAGENET_STD) * 255 + np.array(IMAGENET_MEAN) * 255
    H, W = img.shape[1:3]
    agree, total = 0, 0
    for c in range(len(CAMERAS)):
        A = item["img_aug_matrix"][c].numpy().astype(np.float64)
        src = info["images"][c].astype(np.float64)
        ys, xs = np.mgrid[4:H - 4:5, 4:W - 4:5]
        q = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], 1)
        p = (q - A[:2, 3]) @ np.linalg.inv(A[:2, :2]).T
        ok = (p[:, 0] >= 1) & (p[:, 0] < src.shape[1] - 1) & (p[:, 1] >= 1) & (p[:, 1] < src.shape[0] - 1)
        a = img[c][ys.ravel()[ok], xs.ravel()[ok]]
        b = src[p[ok, 1].astype(int), p[ok, 0].astype(int)]
        agree += int((np.abs(a - b).max(1) < 40).sum())
        total += int(ok.sum())
    assert total > 500 and agree / total > 0.9


# ---------------------------------------------------------------------------------------------- map masks
def test_map_masks_identity_equals_loader(dm):
    ld = dm.loader
    info = ld.load(ld.split_tokens("mini_val")[0])
    a = map_masks_augmented(ld, info, (-25.0, 25.0, 0.5), (-25.0, 25.0, 0.5))
    b = ld.map_masks(info, (-25.0, 25.0, 0.5), (-25.0, 25.0, 0.5))
    assert a.shape == b.shape == (6, 100, 100) and a.dtype == np.uint8
    assert (a != b).mean() < 1e-3
    assert a[0].mean() > 0.05  # drivable area present


@pytest.mark.parametrize("aug", [dict(rotation=0.4), dict(scale=1.25, translation=(4.0, -3.0, 0.2)),
                                 dict(flip_x=True), dict(rotation=-0.6, scale=0.9, translation=(0.5, 1.0, 0.0),
                                                         flip_y=True, flip_x=True)])
def test_map_masks_follow_lidar_aug(dm, aug):
    """The augmented mask at cell centre ``p'`` equals the raw mask at ``L^-1 p'``."""
    ld = dm.loader
    info = ld.load(ld.split_tokens("mini_train")[1])
    b = (-25.0, 25.0, 0.5)
    got = map_masks_augmented(ld, info, b, b, **aug)
    raw = map_masks_augmented(ld, info, (-40.0, 40.0, 0.25), (-40.0, 40.0, 0.25))  # finer, wider raw mask
    L = lidar_aug_matrix(**{k: v for k, v in aug.items()})
    c = np.arange(100) * 0.5 - 25.0 + 0.25
    X, Y = np.meshgrid(c, c, indexing="ij")
    p = transform_points(np.stack([X.ravel(), Y.ravel(), np.zeros(X.size)], 1), np.linalg.inv(L))
    i = np.floor((p[:, 0] + 40.0) / 0.25).astype(int)
    j = np.floor((p[:, 1] + 40.0) / 0.25).astype(int)
    want = raw[:, i, j].reshape(6, 100, 100)
    for k in (0, 2):  # drivable area, walkway: large areas
        assert want[k].sum() > 100
        assert (got[k] != want[k]).mean() < 0.02, (k, (got[k] != want[k]).mean())


# ---------------------------------------------------------------------------------------------- collate
def test_collate_shapes_and_dtypes(dm):
    dl = dm.train_dataloader(distributed=False)
    assert len(dl) == 2  # 3 train samples, batch 2
    b = next(iter(dl))
    B, N = 2, len(CAMERAS)
    assert b["img"].shape == (B, N, 3, 64, 112) and b["img"].dtype == torch.float32
    for k in ("camera_intrinsics", "camera2lidar", "lidar2camera", "camera2ego", "img_aug_matrix", "lidar2image"):
        assert b[k].shape == (B, N, 4, 4) and b[k].dtype == torch.float32, k
    assert b["lidar_aug_matrix"].shape == (B, 4, 4) and b["lidar2ego"].shape == (B, 4, 4)
    assert b["gt_masks_bev"].shape == (B, 6, 100, 100) and b["gt_masks_bev"].dtype == torch.float32
    assert set(torch.unique(b["gt_masks_bev"]).tolist()) <= {0.0, 1.0}
    assert len(b["points"]) == len(b["gt_boxes"]) == len(b["gt_labels"]) == len(b["metas"]) == B
    for p, g, l in zip(b["points"], b["gt_boxes"], b["gt_labels"]):
        assert p.ndim == 2 and p.shape[1] == 5 and p.dtype == torch.float32 and len(p) > 1000
        assert g.shape[1] == 9 and g.dtype == torch.float32 and l.dtype == torch.int64 and len(l) == len(g)
        assert l.min() >= 0 and l.max() < 10
        assert (p[:, 4] > 0).any() and (p[:, 4] == 0).any()  # sweep time lags
    assert {"token", "lidar2ego", "ego2global", "lidar_aug_matrix"} <= set(b["metas"][0])
    # K: intrinsics embedded in 4x4
    assert torch.allclose(b["camera_intrinsics"][..., 3, 3], torch.ones(B, N))


def test_val_loader_is_deterministic_and_unaugmented(dm):
    dl = dm.val_dataloader(distributed=False)
    a, b = next(iter(dl)), next(iter(dl))
    assert torch.equal(a["img"], b["img"])
    assert torch.allclose(a["lidar_aug_matrix"], torch.eye(4).expand(2, 4, 4))
    assert all(torch.equal(x, y) for x, y in zip(a["points"], b["points"]))
    assert [m["token"] for m in a["metas"]] == dm.loader.split_tokens("mini_val")[:2]


def test_lidar_only_and_no_maps(root):
    d = make_dm(root, use_camera=False, map_classes=())
    item = d.val_dataset()[0]
    assert "img" not in item and "gt_masks_bev" not in item
    assert item["camera2lidar"].shape == (0, 4, 4)
    b = collate_nuscenes([item, item])
    assert "img" not in b and b["camera2lidar"].shape == (2, 0, 4, 4)


def test_distributed_shards(dm, monkeypatch):
    from sparse3d.engine import distributed as D
    monkeypatch.setattr(D, "get_world_size", lambda: 2)
    monkeypatch.setattr(D, "get_rank", lambda: 1)
    dl = dm.val_dataloader(distributed=True)
    assert list(dl.sampler) == [1]
    assert len(dm.train_dataloader(distributed=True).sampler) == 2


# ---------------------------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kw,field", [(dict(batch_size=0), "batch_size"), (dict(final_dim=(64,)), "final_dim"),
                                      (dict(point_cloud_range=(0, 0, 0, -1, 1, 1)), "point_cloud_range"),
                                      (dict(map_xbound=(-20.0, 30.0, 0.5)), "symmetric"),
                                      (dict(map_classes=("lane",)), "map_classes"),
                                      (dict(cameras=("CAM_TOP",)), "cameras"), (dict(nsweeps=-1), "nsweeps"),
                                      (dict(num_workers=-1), "num_workers")])
def test_bad_arguments(root, kw, field):
    with pytest.raises(ValueError, match=field):
        make_dm(root, **kw)


def test_ensure_synth_refuses_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a generated synthetic nuScenes"):
        ensure_nuscenes_synth(tmp_path / "x", **TINY)
    with pytest.raises(ValueError, match="unknown keys"):
        ensure_nuscenes_synth(tmp_path / "y", bogus=1)


def test_prepare_data_reuses_matching_set(root, tmp_path_factory):
    before = (root / "synth_meta.json").stat().st_mtime_ns
    assert tiny_root(tmp_path_factory) == root
    assert (root / "synth_meta.json").stat().st_mtime_ns == before
    d = NuScenesDataModule(root, VERSION, synthetic=TINY)
    assert d.prepare_data() == root
    assert (root / "synth_meta.json").stat().st_mtime_ns == before


def test_prepare_data_rewrites_older_writer_version(root, tmp_path):
    dst = _copy(root, tmp_path)
    meta = json.loads((dst / "synth_meta.json").read_text())
    meta["writer_version"] = WRITER_VERSION - 1
    (dst / "synth_meta.json").write_text(json.dumps(meta))
    assert ensure_nuscenes_synth(dst, **TINY) == dst
    assert json.loads((dst / "synth_meta.json").read_text())["writer_version"] == WRITER_VERSION


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_tables(root, tmp_path):
    dst = _copy(root, tmp_path)
    (dst / VERSION / "sample_annotation.json").unlink()
    with pytest.raises(NuScenesDataError, match="sample_annotation"):
        make_dm(dst).train_dataloader(distributed=False)
    with pytest.raises(NuScenesDataError, match="does not exist"):
        make_dm(tmp_path / "nowhere").prepare_data()


def test_sample_without_camera(root, tmp_path):
    dst = _copy(root, tmp_path)
    sd = _table(dst, "sample_data")
    sensors = {s["token"]: s["channel"] for s in _table(dst, "sensor")}
    cs = {c["token"]: sensors[c["sensor_token"]] for c in _table(dst, "calibrated_sensor")}
    victim = next(r for r in sd if cs[r["calibrated_sensor_token"]] == "CAM_BACK_LEFT")
    _write_table(dst, "sample_data", [r for r in sd if r["token"] != victim["token"]])
    d = make_dm(dst)
    ds = d.dataset(d.train_split if victim["sample_token"] in d.loader.split_tokens(d.train_split)
                    else d.val_split, False, None)
    idx = ds.tokens.index(victim["sample_token"])
    with pytest.raises(NuScenesDataError, match=f"sample '{victim['sample_token']}' has no CAM_BACK_LEFT"):
        ds[idx]
    # a LiDAR-only module does not need the cameras
    d2 = make_dm(dst, use_camera=False)
    ds2 = d2.dataset(ds.split, False, None)
    assert len(ds2[idx]["points"]) > 0


def test_corrupt_jpeg(root, tmp_path):
    dst = _copy(root, tmp_path)
    d = make_dm(dst)
    ds = d.val_dataset()
    s = d.loader.nusc.get("sample", ds.tokens[0])
    sd = d.loader.nusc.get("sample_data", s["data"]["CAM_FRONT"])
    path = dst / sd["filename"]
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(NuScenesDataError, match=f"{sd['token']}.*corrupt JPEG.*{Path(sd['filename']).name}"):
        ds[0]
    with pytest.raises(NuScenesDataError, match="corrupt JPEG"):
        next(iter(d.val_dataloader(distributed=False)))


def test_corrupt_pcd_bin(root, tmp_path):
    dst = _copy(root, tmp_path)
    d = make_dm(dst)
    ds = d.val_dataset()
    s = d.loader.nusc.get("sample", ds.tokens[1])
    sd = d.loader.nusc.get("sample_data", s["data"][LIDAR])
    path = dst / sd["filename"]
    np.fromfile(path, np.float32)[:-2].tofile(path)
    with pytest.raises(NuScenesDataError, match=f"{sd['token']}.*corrupt .pcd.bin.*{Path(sd['filename']).name}"):
        ds[1]


def test_non_invertible_calibration(root, tmp_path):
    dst = _copy(root, tmp_path)
    cs = _table(dst, "calibrated_sensor")
    sensors = {s["token"]: s["channel"] for s in _table(dst, "sensor")}
    cam = next(c for c in cs if sensors[c["sensor_token"]] == "CAM_BACK")
    cam["camera_intrinsic"] = [[100.0, 0.0, 50.0], [200.0, 0.0, 100.0], [0.0, 0.0, 1.0]]  # rank 2
    _write_table(dst, "calibrated_sensor", cs)
    d = make_dm(dst)
    nusc = d.loader.nusc
    for split in (d.train_split, d.val_split):
        ds = d.dataset(split, False, None)
        for i, tok in enumerate(ds.tokens):
            if nusc.get("sample_data", nusc.get("sample", tok)["data"]["CAM_BACK"])["calibrated_sensor_token"] \
                    == cam["token"]:
                with pytest.raises(NuScenesDataError, match=f"calibrated_sensor '{cam['token']}'.*singular"):
                    ds[i]
                return
    pytest.fail("no sample uses the modified calibration")


def test_empty_point_cloud(root, tmp_path):
    dst = _copy(root, tmp_path)
    d = make_dm(dst, nsweeps=0)
    ds = d.val_dataset()
    s = d.loader.nusc.get("sample", ds.tokens[0])
    sd = d.loader.nusc.get("sample_data", s["data"][LIDAR])
    (dst / sd["filename"]).write_bytes(b"")
    item = ds[0]
    assert item["points"].shape == (0, 5) and item["points"].dtype == torch.float32
    b = collate_nuscenes([item, ds[1]])
    assert b["points"][0].shape == (0, 5) and len(b["points"][1]) > 0
    assert b["gt_boxes"][0].shape[1] == 9
