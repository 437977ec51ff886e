"""BEVFusion evaluation: submission JSON rules, the augmented-LiDAR -> global box chain against the devkit's own
annotations, perfect predictions scored ~1 by the real ``DetectionEval``, map IoU, the BEV/camera PNG."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("nuscenes")

from pyquaternion import Quaternion  # noqa: E402

from sparse3d.datasets.nuscenes import DETECTION_CLASSES  # noqa: E402
from sparse3d.datasets.nuscenes.module import lidar_aug_matrix, transform_boxes  # noqa: E402
from sparse3d.evaluation.bevfusion import (MapIoU, boxes_to_global, default_attribute,  # noqa: E402
                                           detection_records, format_detection_metrics, render_bevfusion_sample,
                                           run_detection_eval, validate_detection_submission,
                                           write_detection_submission)

from test_nuscenes_module import make_dm, tiny_root  # noqa: E402

META = {"use_camera": True, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    return make_dm(tiny_root(tmp_path_factory))


def _meta(info, L=None):
    return {"lidar_aug_matrix": np.eye(4) if L is None else L, "lidar2ego": info["lidar2ego"],
            "ego2global": info["ego2global"]}


# ---------------------------------------------------------------------------------------------- attributes
def test_default_attribute_rules():
    assert default_attribute("car", (3.0, 0.0)) == "vehicle.moving"
    assert default_attribute("car", (0.1, 0.0)) == "vehicle.parked"
    assert default_attribute("bus", (0.0, 0.0)) == "vehicle.stopped"
    assert default_attribute("bus", (0.0, 1.0)) == "vehicle.moving"
    assert default_attribute("trailer", (0.0, 0.0)) == "vehicle.parked"
    assert default_attribute("pedestrian", (0.0, 0.0)) == "pedestrian.standing"
    assert default_attribute("pedestrian", (1.0, 0.5)) == "pedestrian.moving"
    assert default_attribute("bicycle", (2.0, 0.0)) == "cycle.with_rider"
    assert default_attribute("motorcycle", (0.0, 0.0)) == "cycle.without_rider"
    assert default_attribute("barrier", (0.0, 0.0)) == "" and default_attribute("traffic_cone", (5.0, 0.0)) == ""
    with pytest.raises(ValueError, match="unknown detection class"):
        default_attribute("tram", (0, 0))


# ---------------------------------------------------------------------------------------------- frame chain
@pytest.mark.parametrize("aug", [None, dict(rotation=0.7, scale=1.08, translation=(0.4, -0.3, 0.1), flip_y=True),
                                 dict(rotation=-2.0, scale=0.93, translation=(0.0, 0.5, -0.2), flip_x=True,
                                      flip_y=True)])
def test_boxes_to_global_recovers_devkit_annotations(dm, aug):
    """Loader GT boxes (LiDAR frame), optionally augmented, back to global == the sample_annotation records."""
    ld = dm.loader
    nusc = ld.nusc
    for tok in ld.split_tokens("mini_val")[:2]:
        info = ld.load(tok)
        L = None if aug is None else lidar_aug_matrix(**aug)
        boxes = info["gt_boxes"].astype(np.float64) if L is None else transform_boxes(info["gt_boxes"], L)
        gboxes = boxes_to_global(boxes, np.eye(4) if L is None else L, info["lidar2ego"], info["ego2global"])
        for box, ann_tok, ok in zip(gboxes, info["ann_tokens"], info["gt_velocity_valid"]):
            ann = nusc.get("sample_annotation", ann_tok)
            np.testing.assert_allclose(box.center, ann["translation"], atol=2e-4)
            np.testing.assert_allclose(box.wlh, ann["size"], atol=2e-4)
            q = Quaternion(ann["rotation"])
            assert abs(Quaternion.absolute_distance(box.orientation, q)) < 1e-4
            if ok:
                np.testing.assert_allclose(box.velocity[:2], nusc.box_velocity(ann_tok)[:2], atol=2e-4)


def test_detection_records_format_and_cap(dm):
    info = dm.loader.load(dm.loader.split_tokens("mini_val")[0])
    rng = np.random.default_rng(0)
    n = 620
    boxes = np.tile(info["gt_boxes"][:1].astype(np.float64), (n, 1))
    boxes[:, :2] += rng.normal(0, 5, (n, 2))
    scores = rng.random(n)
    labels = rng.integers(0, 10, n)
    recs = detection_records(info["token"], torch.from_numpy(boxes), torch.from_numpy(scores),
                             torch.from_numpy(labels), _meta(info), DETECTION_CLASSES)
    assert len(recs) == 500
    got = [r["detection_score"] for r in recs]
    assert got == sorted(got, reverse=True) and got[0] == pytest.approx(scores.max())
    r = recs[0]
    assert set(r) == {"sample_token", "translation", "size", "rotation", "velocity", "detection_name",
                      "detection_score", "attribute_name"}
    assert len(r["translation"]) == 3 and len(r["size"]) == 3 and len(r["rotation"]) == 4 and len(r["velocity"]) == 2
    assert all(isinstance(v, float) for k in ("translation", "size", "rotation", "velocity") for v in r[k])
    assert r["size"] == pytest.approx(list(info["gt_boxes"][0, [4, 3, 5]]), abs=1e-5)  # w, l, h
    assert r["detection_name"] in DETECTION_CLASSES
    assert r["attribute_name"] == default_attribute(r["detection_name"], r["velocity"])
    with pytest.raises(ValueError, match="labels must be in"):
        detection_records("t", boxes[:2], scores[:2], np.array([0, 10]), _meta(info), DETECTION_CLASSES)
    with pytest.raises(ValueError, match="2 boxes, 3 scores"):
        detection_records("t", boxes[:2], scores[:3], labels[:2], _meta(info), DETECTION_CLASSES)
    with pytest.raises(ValueError, match="non-finite"):
        detection_records("t", np.full((1, 9), np.nan), [1.0], [0], _meta(info), DETECTION_CLASSES)


def _good_record(tok):
    return {"sample_token": tok, "translation": [1.0, 2.0, 0.5], "size": [2.0, 4.5, 1.6],
            "rotation": [1.0, 0.0, 0.0, 0.0], "velocity": [0.0, 0.0], "detection_name": "car",
            "detection_score": 0.5, "attribute_name": "vehicle.parked"}


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s["results"].pop("b"), "1 missing"),
    (lambda s: s["results"].update(c=[]), "1 extra"),
    (lambda s: s["results"].update(a=[_good_record("a")] * 501), "501 boxes"),
    (lambda s: s["meta"].pop("use_map"), "meta"),
    (lambda s: s["meta"].update(use_lidar=1), "meta"),
    (lambda s: s["results"]["a"][0].update(sample_token="b"), "sample_token"),
    (lambda s: s["results"]["a"][0].update(translation=[1.0, 2.0]), "translation"),
    (lambda s: s["results"]["a"][0].update(size=[2.0, 0.0, 1.0]), "size"),
    (lambda s: s["results"]["a"][0].update(rotation=[2.0, 0.0, 0.0, 0.0]), "rotation"),
    (lambda s: s["results"]["a"][0].update(velocity=[0.0, float("nan")]), "velocity"),
    (lambda s: s["results"]["a"][0].update(detection_name="van"), "detection_name"),
    (lambda s: s["results"]["a"][0].update(detection_score=np.float32(0.5)), "detection_score"),
    (lambda s: s["results"]["a"][0].update(attribute_name="vehicle.flying"), "attribute_name"),
    (lambda s: s.update(extra=1), "exactly the keys"),
])
def test_submission_rules(mutate, match):
    sub = {"meta": dict(META), "results": {"a": [_good_record("a")], "b": []}}
    validate_detection_submission(sub, ["a", "b"])
    mutate(sub)
    with pytest.raises(ValueError, match=match):
        validate_detection_submission(sub, ["a", "b"])


def test_write_submission_fills_every_token(tmp_path):
    path = write_detection_submission(tmp_path / "s.json", {"a": [_good_record("a")]}, META, ["a", "b", "c"])
    sub = json.loads(path.read_text())
    assert sub["meta"] == META and set(sub["results"]) == {"a", "b", "c"} and sub["results"]["b"] == []
    with pytest.raises(ValueError, match="outside the split"):
        write_detection_submission(tmp_path / "t.json", {"z": []}, META, ["a"])


# ---------------------------------------------------------------------------------------------- devkit eval
def _perfect_submission(dm, tmp_path, undo_aug=True, gt_attributes=True, seed=0):
    """Predictions = the augmented GT boxes of the val split (training-mode augmentation: rotation +-45 deg, flips,
    scale <= 1 and no translation, so that no GT box within the class ranges leaves the point-cloud range)."""
    ds = dm.dataset(dm.val_split, True, None)
    ds.lidar_scale, ds.lidar_trans_std = (0.9, 1.0), 0.0
    ds.generator = torch.Generator().manual_seed(seed)
    results = {}
    for i, tok in enumerate(ds.tokens):
        item = ds[i]
        info = dm.loader.load(tok)
        attr_of = dict(zip(info["ann_tokens"], info["gt_attributes"]))
        attrs = [attr_of[t] for t in item["metas"]["gt_ann_tokens"]]
        assert len(attrs) == len(item["gt_boxes"])
        meta = dict(item["metas"])
        if not undo_aug:
            meta["lidar_aug_matrix"] = np.eye(4)
        n = len(item["gt_boxes"])
        results[tok] = detection_records(tok, item["gt_boxes"], torch.linspace(1.0, 0.5, n), item["gt_labels"],
                                         meta, DETECTION_CLASSES, attributes=attrs if gt_attributes else None)
    return write_detection_submission(tmp_path / "submission.json", results, META, ds.tokens)


def test_perfect_predictions_score_one(dm, tmp_path):
    sub = _perfect_submission(dm, tmp_path)
    m = run_detection_eval(dm.loader.nusc, sub, "mini_val", tmp_path / "eval")
    assert (tmp_path / "eval" / "metrics_summary.json").is_file()
    assert m["mAP"] > 0.999, m
    for k in ("mATE", "mASE", "mAOE", "mAVE", "mAAE"):
        assert m[k] < 2e-3, (k, m[k])
    assert m["NDS"] > 0.999
    assert set(m["per_class"]) == set(DETECTION_CLASSES)
    assert all(v["AP"] > 0.999 for v in m["per_class"].values())
    text = format_detection_metrics(m)
    assert "NDS 1.0000" in text or "NDS 0.999" in text


def test_perfect_predictions_custom_split_beyond_mini(tmp_path):
    """A v1.0-mini set with more than 8 + 2 scenes, scored on its splits.json val split (devkit >= 1.2): the
    extra scenes take part in the evaluation and perfect predictions still score 1."""
    from sparse3d.datasets.nuscenes.module import ensure_nuscenes_synth
    root = ensure_nuscenes_synth(tmp_path / "many", seed=5, n_scenes=13, n_val=3, n_keyframes=2, n_sweeps=0,
                                 image_size=(96, 54), azimuth_steps=180, n_objects=12)
    big = make_dm(root, train_split="synth_train", val_split="synth_val")
    scenes = {big.loader.nusc.get("sample", t)["scene_token"] for t in big.loader.split_tokens("synth_val")}
    assert len(scenes) == 3 and len(big.loader.split_tokens("synth_train")) == 20
    m = run_detection_eval(big.loader.nusc, _perfect_submission(big, tmp_path), "synth_val", tmp_path / "eval")
    assert m["mAP"] > 0.999 and m["NDS"] > 0.999, m


def test_default_attributes_and_lost_augmentation_score_lower(dm, tmp_path):
    m = run_detection_eval(dm.loader.nusc, _perfect_submission(dm, tmp_path / "a", gt_attributes=False),
                           "mini_val", tmp_path / "eval_a")
    assert m["mAP"] > 0.999 and m["mATE"] < 2e-3 and 0.0 <= m["mAAE"] < 0.5 and m["NDS"] > 0.95
    # forgetting to undo the LiDAR augmentation (rotation +-45 deg, flips) must be caught by the devkit
    m = run_detection_eval(dm.loader.nusc, _perfect_submission(dm, tmp_path / "b", undo_aug=False, seed=1),
                           "mini_val", tmp_path / "eval_b")
    assert m["mAP"] < 0.5 and m["NDS"] < 0.5, m


# ---------------------------------------------------------------------------------------------- map IoU
def test_map_iou_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    classes = ["a", "b", "c"]
    m = MapIoU(classes)
    probs, gts = [], []
    for _ in range(3):
        p = torch.rand(2, 3, 8, 9, generator=g)
        gt = (torch.rand(2, 3, 8, 9, generator=g) < 0.4).float()
        gt[:, 2] = 0  # class c: never present
        p[:, 2] = 0.1  # and never predicted (below every threshold)
        m.update(p, gt)
        probs.append(p)
        gts.append(gt)
    P, G = torch.cat(probs), torch.cat(gts).bool()
    r = m.compute()
    for i, c in enumerate(classes):
        ious = []
        for t in (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65):
            pr = P[:, i] >= t
            tp, fp, fn = (pr & G[:, i]).sum(), (pr & ~G[:, i]).sum(), (~pr & G[:, i]).sum()
            ious.append(float(tp) / (float(tp + fp + fn) + 1e-7))
        assert r["map_iou"][c] == pytest.approx(max(ious), abs=1e-9)
        assert r["map_iou_thresholds"][c] == pytest.approx(ious, abs=1e-9)
    assert r["map_iou"]["c"] == 0.0  # BEVFusion: an empty class counts 0
    assert r["map_miou"] == pytest.approx(np.mean([r["map_iou"][c] for c in classes]))
    perfect = MapIoU(["x"])
    gt = (torch.rand(1, 1, 5, 5, generator=g) < 0.5).float()
    perfect.update(gt, gt)
    assert perfect.compute()["map_miou"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="probs and labels"):
        perfect.update(torch.zeros(1, 2, 5, 5), torch.zeros(1, 2, 5, 5))


# ---------------------------------------------------------------------------------------------- render
def test_render_png(dm, tmp_path):
    info = dm.loader.load(dm.loader.split_tokens("mini_val")[0])
    K4 = np.eye(4)
    K4[:3, :3] = info["cam_intrinsics"][0]
    pred = info["gt_boxes"].copy()
    pred[:, :2] += 0.5
    bev = np.random.default_rng(0).random((128, 128))
    path = render_bevfusion_sample(tmp_path / "bev.png", info["points"], info["gt_boxes"], pred,
                                   np.linspace(1, 0.05, len(pred)), bev=bev, image=info["images"][0],
                                   lidar2image=K4 @ info["lidar2camera"][0], title="t")
    assert path.is_file() and path.stat().st_size > 20000
    from PIL import Image
    with Image.open(path) as im:
        assert im.size[0] > im.size[1] > 300
    path = render_bevfusion_sample(tmp_path / "bev2.png", np.zeros((0, 5)), np.zeros((0, 9)), np.zeros((0, 9)))
    assert path.is_file()


def test_rotation_is_unit_quaternion_after_float32_roundtrip(dm):
    info = dm.loader.load(dm.loader.split_tokens("mini_val")[1])
    meta = {k: v.astype(np.float32) for k, v in _meta(info, lidar_aug_matrix(0.3, 1.05, (0.2, 0.1, 0.0))).items()}
    recs = detection_records("x", info["gt_boxes"][:3], [0.9, 0.8, 0.7], [0, 1, 2], meta, DETECTION_CLASSES)
    for r in recs:
        assert math.isclose(sum(v * v for v in r["rotation"]), 1.0, abs_tol=1e-9)
