"""nuScenes-lidarseg through nuscenes-devkit: labels (16 classes + ignore), the data module, tools/eval.py with a
leaderboard folder whose mIoU equals an independent recomputation from the written files."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_eval import compose_eval, load_tool, tiny_model, write_ckpt  # noqa: E402

from sparse3d.datasets.nuscenes.lidarseg import (LIDARSEG_TRAIN_CLASSES, NuScenesLidarSeg,  # noqa: E402
                                                 NuScenesLidarSegDataModule, ensure_synthetic_nuscenes)
from sparse3d.evaluation import LIDARSEG_CLASSES  # noqa: E402

TINY = dict(seed=3, n_scenes=2, n_keyframes=2, n_sweeps=0, image_size=(64, 36), azimuth_steps=300, n_objects=6)


@pytest.fixture(scope="module")
def nus_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nus") / "nuscenes"
    return ensure_synthetic_nuscenes(root, **TINY)


def test_classes_match_leaderboard_order():
    assert LIDARSEG_TRAIN_CLASSES == LIDARSEG_CLASSES


def test_labels_follow_devkit_mapping(nus_root):
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    from nuscenes.utils.data_io import load_bin_file
    ds = NuScenesLidarSeg(nus_root, "v1.0-mini", "mini_train")
    assert len(ds) == 2  # one train scene x 2 keyframes
    nusc = ds.loader.nusc
    f2c = LidarsegClassMapper(nusc).get_fine_idx_2_coarse_idx()
    s = ds.read(0)
    sd = nusc.get("sample", s["scan_id"])["data"]["LIDAR_TOP"]
    raw = load_bin_file(str(Path(nusc.dataroot) / nusc.get("lidarseg", sd)["filename"]), "lidarseg")
    want = np.array([f2c[int(r)] - 1 if f2c[int(r)] > 0 else 255 for r in raw])
    np.testing.assert_array_equal(s["labels"], want)
    assert s["points"].shape == (len(raw), 4) and s["points"].dtype == np.float32
    assert s["lidar_token"] == sd
    assert len(np.unique(s["labels"][s["labels"] != 255])) >= 5  # several classes in one scan
    assert set(np.unique(s["labels"])) <= set(range(16)) | {255}


def test_datamodule_batches_and_counts(nus_root):
    dm = NuScenesLidarSegDataModule(nus_root, synthetic=None, voxel_size=0.2)
    b = next(iter(dm.train_dataloader(False)))
    assert b["lidar"].feats.shape[1] == 4 and b["targets"].shape == (b["lidar"].feats.shape[0],)
    assert int(b["lidar"].coords[:, 0].max()) == 1  # two samples collated
    counts = dm.class_counts()
    assert counts.shape == (16,) and counts.sum() > 1000
    assert dm.num_classes == 16 and dm.miou_convention == "nuscenes"
    with pytest.raises(ValueError, match="16 classes"):
        NuScenesLidarSegDataModule(nus_root, num_classes=19)


def test_bad_lidarseg_inputs(nus_root, tmp_path):
    import shutil
    from sparse3d.datasets.nuscenes import NuScenesDataError
    root = tmp_path / "copy"
    shutil.copytree(nus_root, root)
    ds = NuScenesLidarSeg(root, "v1.0-mini", "mini_train")
    rec = ds.loader.nusc.get("lidarseg", ds.read(0)["lidar_token"])
    path = root / rec["filename"]
    np.fromfile(path, np.uint8)[:-3].tofile(path)  # label count != point count
    with pytest.raises(NuScenesDataError, match=rec["token"]):
        ds.read(0)
    lab = np.full(len(ds.read(1)["labels"]), 77, np.uint8)  # id absent from category.json
    rec1 = ds.loader.nusc.get("lidarseg", ds.read(1)["lidar_token"])
    lab.tofile(root / rec1["filename"])
    with pytest.raises(NuScenesDataError, match="not in category.json"):
        ds.read(1)
    path.unlink()
    with pytest.raises(NuScenesDataError, match="missing"):
        ds.read(0)


def test_eval_writes_valid_lidarseg_submission(nus_root, tmp_path):
    """tools/eval.py on the nuScenes-lidarseg val split: lidarseg/<split>/<token>_lidarseg.bin (uint8 1..16) +
    <split>/submission.json, validated; the reported mIoU (nanmean) equals a recomputation from the files."""
    torch.manual_seed(0)
    ckpt = write_ckpt(tmp_path / "best.pt", tiny_model(16))
    out = tmp_path / "eval"
    cfg = compose_eval([f"checkpoint={ckpt}", "model=minkunet", "model.cr=0.125", "dataset=nuscenes_lidarseg_synth",
                        f"dataset.root={nus_root}", "dataset.synthetic=null", "dataset.voxel_size=0.2",
                        f"output_dir={out}", "progress=false", "render.enabled=false"])
    res = load_tool().evaluate(cfg)
    sub, split = out / "submission", cfg.dataset.val_split   # the splits.json key synth_val
    meta = json.loads((sub / split / "submission.json").read_text())["meta"]
    assert meta["use_lidar"] is True and meta["use_camera"] is False
    ds = NuScenesLidarSeg(nus_root, "v1.0-mini", split)
    conf = np.zeros((16, 16), np.int64)
    for i in range(len(ds)):
        s = ds.read(i)
        pred = np.fromfile(sub / "lidarseg" / split / f"{s['lidar_token']}_lidarseg.bin", np.uint8)
        assert len(pred) == len(s["labels"]) and pred.min() >= 1 and pred.max() <= 16
        keep = s["labels"] != 255
        np.add.at(conf, (s["labels"][keep], pred[keep].astype(np.int64) - 1), 1)
    tp = np.diag(conf)
    denom = conf.sum(0) + conf.sum(1) - tp
    iou = tp[denom > 0] / denom[denom > 0]
    assert res["miou_convention"] == "nuscenes"
    assert res["miou"] == pytest.approx(iou.mean(), abs=1e-12)
    assert res["submission"]["files"] == len(ds) == 2
