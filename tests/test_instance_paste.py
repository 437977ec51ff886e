"""Rare-object instance pasting (sparse3d.datasets.instance_paste) and its DataModule option."""
import numpy as np
import pytest
import torch

from sparse3d.datasets.instance_paste import InstanceBank, InstancePaste
from sparse3d.datasets.kitti_module import SemanticKITTIDataModule
from sparse3d.datasets.semantic_kitti import SemanticKITTI

# raw SemanticKITTI ids: 10 car, 11 bicycle, 30 person, 40 road (train ids 0, 1, 5, 8)
RAW = {"car": 10, "bicycle": 11, "person": 30, "road": 40}


def _write_scan(seq_dir, i, pts, sem, inst):
    (seq_dir / "velodyne").mkdir(parents=True, exist_ok=True)
    (seq_dir / "labels").mkdir(parents=True, exist_ok=True)
    pts.astype(np.float32).tofile(seq_dir / "velodyne" / f"{i:06d}.bin")
    ((inst.astype(np.uint32) << 16) | sem.astype(np.uint32)).tofile(seq_dir / "labels" / f"{i:06d}.label")


@pytest.fixture
def root(tmp_path):
    rng = np.random.default_rng(0)
    seq = tmp_path / "sequences" / "00"
    # scan 0: 30 road points, a bicycle (inst 1, 25 pts), a person (inst 2, 22 pts), a tiny person (inst 3, 5 pts)
    pts0 = rng.normal(size=(82, 4)).astype(np.float32) + np.array([10, 0, 0, 0], np.float32)
    sem0 = np.array([RAW["road"]] * 30 + [RAW["bicycle"]] * 25 + [RAW["person"]] * 22 + [RAW["person"]] * 5)
    inst0 = np.array([0] * 30 + [1] * 25 + [2] * 22 + [3] * 5)
    _write_scan(seq, 0, pts0, sem0, inst0)
    # scan 1: a car (not in the classes) and a person without instance id (0: skipped), a person inst 1
    pts1 = rng.normal(size=(70, 4)).astype(np.float32)
    sem1 = np.array([RAW["car"]] * 30 + [RAW["person"]] * 20 + [RAW["person"]] * 20)
    inst1 = np.array([5] * 30 + [0] * 20 + [1] * 20)
    _write_scan(seq, 1, pts1, sem1, inst1)
    return tmp_path, pts0, pts1


def test_bank_cuts_whole_instances(root):
    path, pts0, pts1 = root
    bank = InstanceBank.from_dataset(SemanticKITTI(path, sequences=[0]), classes=[1, 5], min_points=20)
    assert len(bank) == 3                        # bicycle + person of scan 0, person inst 1 of scan 1
    got = sorted((c, len(p)) for p, c in bank.objects)
    assert got == [(1, 25), (5, 20), (5, 22)]
    bike = next(p for p, c in bank.objects if c == 1)
    np.testing.assert_array_equal(bike, pts0[30:55])
    assert bank.class_histogram(19)[[1, 5]].tolist() == [1, 2]


def test_paste_keeps_range_and_height_and_labels(root):
    path, _, _ = root
    bank = InstanceBank.from_dataset(SemanticKITTI(path, sequences=[0]), classes=[1, 5], min_points=20)
    sample = {"points": np.zeros((10, 4), np.float32), "labels": np.full(10, 8, np.int64), "scan_id": "x"}
    out = InstancePaste(bank, num=5, generator=torch.Generator().manual_seed(1))(sample)
    n = len(out["points"])
    assert n > 10 and len(out["labels"]) == n and out["scan_id"] == "x"
    np.testing.assert_array_equal(out["points"][:10], sample["points"])      # the scan itself untouched
    assert set(out["labels"][10:].tolist()) <= {1, 5}
    # every pasted point is a bank point rotated about z: same range in xy, same z and remission
    bank_pts = np.concatenate([p for p, _ in bank.objects])
    key = lambda p: np.round(np.c_[np.hypot(p[:, 0], p[:, 1]), p[:, 2], p[:, 3]], 4)  # noqa: E731
    have = {tuple(r) for r in key(bank_pts)}
    assert all(tuple(r) in have for r in key(out["points"][10:]))
    again = InstancePaste(bank, num=5, generator=torch.Generator().manual_seed(1))(sample)
    np.testing.assert_array_equal(again["points"], out["points"])            # deterministic by generator


def test_paste_edge_cases(root):
    path, _, _ = root
    empty = InstanceBank([])
    s = {"points": np.zeros((3, 4), np.float32), "labels": np.zeros(3, np.int64)}
    assert InstancePaste(empty, num=4)(s) is s                               # nothing to paste
    bank = InstanceBank.from_dataset(SemanticKITTI(path, sequences=[0]), classes=[1], min_points=1)
    unlabeled = {"points": np.zeros((3, 4), np.float32)}
    assert InstancePaste(bank)(unlabeled) is unlabeled
    with pytest.raises(ValueError, match="num"):
        InstancePaste(bank, num=-1)
    with pytest.raises(ValueError, match="object 0"):
        InstanceBank([(np.zeros((0, 4), np.float32), 1)])


def test_datamodule_option(root):
    path, _, _ = root
    dm = SemanticKITTIDataModule(path, train_sequences=[0], val_sequences=[0], voxel_size=0.5, max_voxels=None,
                                 instance_paste={"classes": [1, 5], "num": 3})
    ds = dm.train_dataset()
    torch.manual_seed(0)
    item = ds[0]
    plain = SemanticKITTIDataModule(path, train_sequences=[0], val_sequences=[0], voxel_size=0.5,
                                    max_voxels=None).train_dataset()[0]
    assert len(item["lidar_inverse"]) > len(plain["lidar_inverse"])          # pasted points were voxelized
    assert len(dm.val_dataset()[0]["lidar_inverse"]) == 82                   # validation: never pasted
    with pytest.raises(ValueError, match="classes"):
        SemanticKITTIDataModule(path, instance_paste={"num": 3})
    with pytest.raises(ValueError, match="training class ids"):
        SemanticKITTIDataModule(path, instance_paste={"classes": [42]})
