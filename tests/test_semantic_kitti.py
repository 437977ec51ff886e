"""SemanticKITTI reader (real scan, label maps, bad input) and the transforms / voxelization / collate."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d import SparseTensor, sparse_collate_fn
from sparse3d.datasets import (CLASS_NAMES, IGNORE_INDEX, LEARNING_MAP, LEARNING_MAP_INV, SPLITS, Compose,
                               RandomFlip, RandomJitter, RandomRotateZ, RandomScale, SemanticKITTI, Voxelize,
                               raw_to_train, train_to_raw)
from sparse3d.datasets.semantic_kitti import read_calib, read_labels, read_points, read_poses

# Independent of the module's tables: the raw ids of the real scan and their official training ids
# (official learning_map value - 1; None = unlabeled -> ignore).
_REAL_SCAN_MAP = {0: None, 1: None, 10: 0, 11: 1, 30: 5, 40: 8, 44: 9, 48: 10, 50: 12, 51: 13, 52: None,
                  70: 14, 71: 15, 72: 16, 80: 17, 81: 18, 99: None, 252: 0, 254: 5}


@pytest.fixture(scope="module")
def real_root(shared_dir) -> Path:
    root = shared_dir / "data" / "semantickitti"
    if not (root / "sequences" / "08" / "velodyne" / "000000.bin").exists():
        pytest.skip("real SemanticKITTI scan not available")
    return root


@pytest.fixture(scope="module")
def real_sample(real_root) -> dict:
    return SemanticKITTI(real_root, split="val")[0]


def _write_seq(root: Path, seq: int, scans, labels=None) -> Path:
    d = root / "sequences" / f"{seq:02d}"
    (d / "velodyne").mkdir(parents=True, exist_ok=True)
    for i, pts in enumerate(scans):
        np.asarray(pts, np.float32).tofile(d / "velodyne" / f"{i:06d}.bin")
    if labels is not None:
        (d / "labels").mkdir(exist_ok=True)
        for i, lab in enumerate(labels):
            np.asarray(lab, np.uint32).tofile(d / "labels" / f"{i:06d}.label")
    return d


def _points(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = rng.uniform(-20, 20, (n, 4)).astype(np.float32)
    p[:, 3] = rng.uniform(0, 1, n)
    return p


# ----------------------------------------------------------------------------- label tables


def test_official_learning_map():
    assert len(LEARNING_MAP) == 34 and len(LEARNING_MAP_INV) == 20
    assert set(LEARNING_MAP.values()) == set(range(20))
    for i in range(20):
        assert LEARNING_MAP[LEARNING_MAP_INV[i]] == i
    # official (semantic-kitti.yaml), where the spvnas map differs: these are not ignored
    assert LEARNING_MAP[13] == 5 and LEARNING_MAP[16] == 5 and LEARNING_MAP[257] == 5  # -> other-vehicle
    assert LEARNING_MAP[60] == 9  # lane-marking -> road
    assert LEARNING_MAP[252] == 1 and LEARNING_MAP[254] == 6  # moving classes merged
    assert all(LEARNING_MAP[k] == 0 for k in (0, 1, 52, 99))
    assert CLASS_NAMES[0] == "car" and CLASS_NAMES[8] == "road" and CLASS_NAMES[18] == "traffic-sign"
    assert len(CLASS_NAMES) == 19
    assert SPLITS == {"train": (0, 1, 2, 3, 4, 5, 6, 7, 9, 10), "val": (8,), "test": tuple(range(11, 22))}


def test_raw_train_round_trip():
    raw = np.array(sorted(LEARNING_MAP), dtype=np.uint16)
    t = raw_to_train(raw)
    assert set(t.tolist()) == set(range(19)) | {IGNORE_INDEX}
    back = train_to_raw(t)
    assert back.dtype == np.uint32
    np.testing.assert_array_equal(raw_to_train(back), t)
    assert train_to_raw(np.array([IGNORE_INDEX]))[0] == 0
    with pytest.raises(ValueError, match="train ids"):
        train_to_raw(np.array([19]))
    with pytest.raises(ValueError, match=r"my\.label.*\[7\]"):
        raw_to_train(np.array([10, 7, 7]), "my.label")


# ----------------------------------------------------------------------------- the real scan


def test_real_scan_points(real_root, real_sample, kitti_points):
    ds = SemanticKITTI(real_root, split="val")
    assert len(ds) == 1 and ds.scans[0][0] == "08/000000"
    pts = real_sample["points"]
    assert pts.shape == (123389, 4) and pts.dtype == np.float32
    np.testing.assert_array_equal(pts, kitti_points)


def test_real_scan_label_histogram(real_root, real_sample):
    path = real_root / "sequences" / "08" / "labels" / "000000.label"
    raw = np.fromfile(path, dtype=np.uint32) & 0xFFFF
    ids, counts = np.unique(raw, return_counts=True)
    assert len(ids) == 19 and counts.sum() == 123389
    expect = np.zeros(256, np.int64)
    for i, c in zip(ids.tolist(), counts.tolist()):
        t = _REAL_SCAN_MAP[i]
        expect[IGNORE_INDEX if t is None else t] += c
    got = np.bincount(real_sample["labels"], minlength=256)
    np.testing.assert_array_equal(got, expect)
    assert got[0] == 544 + 990 and got[IGNORE_INDEX] == 4458 + 5 + 809 + 1652  # car + moving-car; unlabeled
    sem, inst = read_labels(path, 123389)
    np.testing.assert_array_equal(sem, raw)
    assert inst.max() > 0


def test_real_scan_voxels(real_sample):
    out = Voxelize(0.05)(real_sample)
    assert len(out["lidar"].coords) == 94444  # floor(xyz / 0.05), as the fixture README says


def test_real_scan_without_calib_and_poses(real_root):
    ds = SemanticKITTI(real_root, split="val")
    with pytest.raises(FileNotFoundError, match="calib.txt"):
        ds.calib(8)


# ----------------------------------------------------------------------------- bad input


def test_bin_size_not_multiple_of_16(tmp_path):
    d = _write_seq(tmp_path, 0, [_points(10)], [np.full(10, 40)])
    bad = d / "velodyne" / "000000.bin"
    bad.write_bytes(bad.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"000000\.bin.*multiple of 16"):
        SemanticKITTI(tmp_path, sequences=[0])
    with pytest.raises(ValueError, match=r"000000\.bin.*multiple of 16"):
        read_points(bad)


def test_label_count_mismatch(tmp_path):
    _write_seq(tmp_path, 0, [_points(10)], [np.full(9, 40)])
    with pytest.raises(ValueError, match=r"000000\.label.*9 labels.*10 points"):
        SemanticKITTI(tmp_path, sequences=[0])
    with pytest.raises(ValueError, match=r"000000\.label: 9 labels but the scan has 10"):
        read_labels(tmp_path / "sequences" / "00" / "labels" / "000000.label", 10)


def test_missing_sequence_folder(tmp_path):
    _write_seq(tmp_path, 0, [_points(5)], [np.full(5, 40)])
    with pytest.raises(FileNotFoundError, match=r"sequences/01"):
        SemanticKITTI(tmp_path, sequences=[0, 1])
    with pytest.raises(FileNotFoundError, match=r"sequences/00"):  # official train split needs 00..10
        SemanticKITTI(tmp_path / "nowhere", split="train")


def test_label_ids_absent_from_learning_map(tmp_path):
    lab = np.full(10, 40, np.uint32)
    lab[3] = 7
    lab[5] = (4 << 16) | 300  # instance bits are ignored, semantic 300 is unknown
    _write_seq(tmp_path, 0, [_points(10)], [lab])
    ds = SemanticKITTI(tmp_path, sequences=[0])
    with pytest.raises(ValueError, match=r"000000\.label: label ids \[7, 300\] \(2 points\)"):
        ds[0]


def test_empty_scan(tmp_path):
    d = _write_seq(tmp_path, 0, [_points(4), np.zeros((0, 4))], [np.full(4, 40), np.zeros(0)])
    with pytest.raises(ValueError, match=r"empty scan: .*000001\.bin"):
        SemanticKITTI(tmp_path, sequences=[0])
    with pytest.raises(ValueError, match="empty scan"):
        read_points(d / "velodyne" / "000001.bin")
    with pytest.raises(ValueError, match="empty scan"):
        Voxelize()({"points": np.zeros((0, 4), np.float32), "scan_id": "00/000001"})


def test_nothing_skipped_silently(tmp_path):
    d = _write_seq(tmp_path, 0, [_points(4), _points(4)], [np.full(4, 40)])
    with pytest.raises(ValueError, match=r"missing label file .*000001\.label"):
        SemanticKITTI(tmp_path, sequences=[0])
    assert len(SemanticKITTI(tmp_path, sequences=[0], require_labels=False)) == 2
    np.full(4, 40, np.uint32).tofile(d / "labels" / "000007.label")
    with pytest.raises(ValueError, match=r"without a scan.*000007\.label"):
        SemanticKITTI(tmp_path, sequences=[0], require_labels=False)
    (tmp_path / "sequences" / "01" / "velodyne").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"sequences/01 has no \.bin"):
        SemanticKITTI(tmp_path, sequences=[1])
    (tmp_path / "sequences" / "02").mkdir()
    with pytest.raises(FileNotFoundError, match=r"02/velodyne"):
        SemanticKITTI(tmp_path, sequences=[2])
    nan = _points(3)
    nan[1, 2] = np.nan
    _write_seq(tmp_path, 3, [nan], [np.full(3, 40)])
    with pytest.raises(ValueError, match=r"000000\.bin: 1 points have NaN"):
        SemanticKITTI(tmp_path, sequences=[3])[0]


def test_test_split_without_labels(tmp_path):
    _write_seq(tmp_path, 11, [_points(6)])
    s = SemanticKITTI(tmp_path, sequences=[11], require_labels=False)[0]
    assert "labels" not in s and s["points"].shape == (6, 4)
    out = Voxelize(0.5)(s)
    assert "targets" not in out and len(out["lidar_inverse"]) == 6


def test_calib_and_poses_parsing(tmp_path):
    (tmp_path / "calib.txt").write_text("P0: " + " ".join(["1"] * 12) + "\nTr: 1 0 0 0 0 1 0 0 0 0 1 0\n")
    c = read_calib(tmp_path / "calib.txt")
    assert c["P0"].shape == (3, 4) and np.allclose(c["Tr"][:, :3], np.eye(3))
    (tmp_path / "bad.txt").write_text("Tr: 1 2 3\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1"):
        read_calib(tmp_path / "bad.txt")
    (tmp_path / "poses.txt").write_text("1 0 0 5 0 1 0 6 0 0 1 7\n")
    p = read_poses(tmp_path / "poses.txt")
    assert p.shape == (1, 4, 4) and p[0, 2, 3] == 7 and p[0, 3, 3] == 1
    (tmp_path / "poses_bad.txt").write_text("1 0 0\n")
    with pytest.raises(ValueError, match=r"poses_bad\.txt:1"):
        read_poses(tmp_path / "poses_bad.txt")


# ----------------------------------------------------------------------------- transforms


def _sample(n=2000, seed=0):
    p = _points(n, seed)
    return {"points": p, "labels": np.random.default_rng(seed).integers(0, 19, n), "scan_id": "00/000000"}


def test_rotation_preserves_xy_norms():
    s = _sample()
    g = torch.Generator().manual_seed(0)
    out = RandomRotateZ(generator=g)(s)
    np.testing.assert_allclose(np.linalg.norm(out["points"][:, :2], axis=1),
                               np.linalg.norm(s["points"][:, :2], axis=1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out["points"][:, 2:], s["points"][:, 2:])
    assert not np.allclose(out["points"][:, :2], s["points"][:, :2])
    np.testing.assert_array_equal(out["labels"], s["labels"])
    # pairwise distances are preserved (a rigid rotation), and the input is not modified
    i, j = np.arange(0, 100), np.arange(100, 200)
    d0 = np.linalg.norm(s["points"][i, :3] - s["points"][j, :3], axis=1)
    d1 = np.linalg.norm(out["points"][i, :3] - out["points"][j, :3], axis=1)
    np.testing.assert_allclose(d0, d1, rtol=1e-4)
    assert np.array_equal(s["points"], _points(2000, 0))
    half = RandomRotateZ(np.pi / 2, np.pi / 2)(s)  # exactly 90 degrees: (x, y) -> (-y, x)
    np.testing.assert_allclose(half["points"][:, 0], -s["points"][:, 1], atol=1e-5)
    np.testing.assert_allclose(half["points"][:, 1], s["points"][:, 0], atol=1e-5)


def test_scale_flip_jitter():
    s = _sample()
    out = RandomScale(0.9, 1.1, generator=torch.Generator().manual_seed(1))(s)
    f = np.linalg.norm(out["points"][:, :3], axis=1) / np.linalg.norm(s["points"][:, :3], axis=1)
    assert 0.9 <= f.min() and f.max() <= 1.1 and np.ptp(f) < 1e-5
    fl = RandomFlip(("x", "y"), p=1.0)(s)
    np.testing.assert_array_equal(fl["points"][:, :2], -s["points"][:, :2])
    np.testing.assert_array_equal(RandomFlip(p=0.0)(s)["points"], s["points"])
    j = RandomJitter(0.01, 0.02)(s)
    delta = j["points"][:, :3] - s["points"][:, :3]
    assert np.abs(delta).max() <= 0.02 + 1e-6 and np.abs(delta).max() > 0
    np.testing.assert_array_equal(j["points"][:, 3], s["points"][:, 3])
    with pytest.raises(ValueError, match="axes"):
        RandomFlip(("w",))
    with pytest.raises(ValueError, match="low"):
        RandomScale(0, 1)


def test_random_transforms_follow_the_generator():
    t = Compose([RandomRotateZ(), RandomScale(), RandomFlip(), RandomJitter()])
    s = _sample()
    torch.manual_seed(5)
    a = t(s)["points"]
    torch.manual_seed(5)
    b = t(s)["points"]
    np.testing.assert_array_equal(a, b)


def test_voxelize_inverse_reconstructs_point_labels():
    rng = np.random.default_rng(0)
    vs = 0.25
    cells = rng.integers(-40, 40, (500, 3))
    cells = np.unique(cells, axis=0)
    cell_label = rng.integers(0, 19, len(cells))
    pick = rng.integers(0, len(cells), 5000)
    xyz = (cells[pick] + rng.uniform(0.01, 0.99, (5000, 3))) * vs  # several points per voxel
    pts = np.concatenate([xyz, rng.uniform(0, 1, (5000, 1))], 1).astype(np.float32)
    labels = cell_label[pick]  # label-pure voxels
    out = Voxelize(vs)({"points": pts, "labels": labels, "scan_id": "x"})
    lidar, inv = out["lidar"], out["lidar_inverse"]
    assert isinstance(lidar, SparseTensor) and lidar.coords.dtype == torch.int32
    assert len(lidar.coords) == len(np.unique(cells[pick], axis=0)) and out["scan_id"] == "x"
    np.testing.assert_array_equal(out["targets"][inv].numpy(), labels)
    np.testing.assert_array_equal(out["targets_mapped"].numpy(), labels)
    grid = np.floor(pts[:, :3].astype(np.float64) / vs).astype(np.int64)
    grid -= grid.min(0)
    np.testing.assert_array_equal(lidar.coords[inv, 1:].numpy(), grid)
    assert (lidar.coords[:, 0] == 0).all() and (lidar.coords[:, 1:].min(0).values == 0).all()
    # a voxel's features are those of one of its points
    f = lidar.feats[inv].numpy()
    assert (np.floor(f[:, :3].astype(np.float64) / vs) == np.floor(pts[:, :3].astype(np.float64) / vs)).all()


def test_voxelize_real_scan_inverse(real_sample):
    out = Voxelize(0.05)(real_sample)
    inv = out["lidar_inverse"].numpy()
    lab = real_sample["labels"]
    assert len(inv) == 123389 and inv.max() == 94443
    np.testing.assert_array_equal(out["targets_mapped"].numpy(), lab)
    # voxels keep one point's label: per-point labels come back except in mixed voxels
    assert (out["targets"].numpy()[inv] == lab).mean() > 0.99


def test_voxel_cap():
    s = _sample(5000, 2)
    out = Voxelize(1.0, max_voxels=300, generator=torch.Generator().manual_seed(0))(s)
    full = Voxelize(1.0)(s)
    assert len(full["lidar"].coords) > 300 and len(out["lidar"].coords) == 300
    inv = out["lidar_inverse"].numpy()
    n_kept = len(inv)
    assert len(out["targets_mapped"]) == n_kept < 5000
    np.testing.assert_array_equal(np.unique(inv), np.arange(300))  # every kept voxel has its points
    # kept voxels are a subset of the full set, and each kept point maps to its own voxel
    full_set = {tuple(c) for c in full["lidar"].coords.tolist()}
    assert {tuple(c) for c in out["lidar"].coords.tolist()} <= full_set
    f = out["lidar"].feats[inv].numpy()
    kept_pts = s["points"][_kept_mask(s, out)]  # points stay in their original order
    assert len(kept_pts) == n_kept
    assert (np.floor(f[:, :3]) == np.floor(kept_pts[:, :3])).all()
    np.testing.assert_array_equal(out["targets_mapped"].numpy(), s["labels"][_kept_mask(s, out)])
    assert len(Voxelize(1.0, max_voxels=10**9)(s)["lidar"].coords) == len(full["lidar"].coords)
    with pytest.raises(ValueError, match="max_voxels"):
        Voxelize(1.0, max_voxels=0)


def _kept_mask(s, out):
    kept = {tuple(c) for c in out["lidar"].feats[:, :3].floor().int().tolist()}
    cells = np.floor(s["points"][:, :3]).astype(int)
    return np.array([tuple(c) in kept for c in cells.tolist()])


def test_voxelize_bad_input():
    with pytest.raises(ValueError, match="labels has 3 entries but points has 4"):
        Voxelize()({"points": _points(4), "labels": np.zeros(3, np.int64)})
    with pytest.raises(ValueError, match="points"):
        Voxelize()({"labels": np.zeros(3)})
    with pytest.raises(ValueError, match="voxel_size"):
        Voxelize(0)


# ----------------------------------------------------------------------------- collate


def test_collate_into_one_sparse_tensor(real_root):
    ds = SemanticKITTI(real_root, split="val", transform=Compose([RandomRotateZ(), Voxelize(0.2)]))
    a = Voxelize(0.2)(_sample(3000, 1))
    b = ds[0]
    batch = sparse_collate_fn([a, b])
    lidar = batch["lidar"]
    ma, mb = len(a["lidar"].coords), len(b["lidar"].coords)
    assert isinstance(lidar, SparseTensor) and lidar.coords.shape == (ma + mb, 4)
    assert (lidar.coords[:ma, 0] == 0).all() and (lidar.coords[ma:, 0] == 1).all()
    assert batch["targets"].shape == (ma + mb,)
    assert batch["targets_mapped"].shape == (3000 + 123389,)
    assert batch["scan_id"] == ["00/000000", "08/000000"]
    # the offset inverse map sends every point of the batch to its own voxel row
    inv = batch["lidar_inverse"]
    per_point = torch.cat([a["lidar"].feats[a["lidar_inverse"]], b["lidar"].feats[b["lidar_inverse"]]])
    torch.testing.assert_close(lidar.feats[inv], per_point)
    torch.testing.assert_close(batch["targets"][inv], torch.cat([a["targets"][a["lidar_inverse"]],
                                                                 b["targets"][b["lidar_inverse"]]]))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=sparse_collate_fn)
    (only,) = list(loader)  # randomly rotated again, so only the point count is fixed
    assert len(only["lidar_inverse"]) == 123389 and only["lidar"].coords[:, 0].max() == 0
    assert int(only["lidar_inverse"].max()) == len(only["lidar"].coords) - 1


def test_collate_equal_sizes_concatenates():
    s = Voxelize(0.5)(_sample(500, 3))
    batch = sparse_collate_fn([s, s])
    m = len(s["lidar"].coords)
    assert batch["targets"].shape == (2 * m,) and batch["targets_mapped"].shape == (1000,)
