"""Leaderboard files: SemanticKITTI (writer, zip, validator) and nuScenes-lidarseg (writer, validator)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.datasets.semantic_kitti import LEARNING_MAP_INV, SPLITS
from sparse3d.evaluation import (LIDARSEG_CLASSES, VALID_RAW_IDS, SubmissionError, prediction_path,
                                 train_to_lidarseg, validate_nuscenes_lidarseg_submission,
                                 validate_semantic_kitti_submission, write_description,
                                 write_nuscenes_lidarseg_prediction, write_nuscenes_submission_meta,
                                 write_semantic_kitti_labels, zip_semantic_kitti_submission)

# --------------------------------------------------------------------------------------------- SemanticKITTI


def _make_dataset(root: Path, sequences, scans_per_seq=2, seed=0) -> dict:
    """Tiny SemanticKITTI-layout inputs: ``{scan_id: n_points}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for seq in sequences:
        vdir = root / "sequences" / f"{seq:02d}" / "velodyne"
        vdir.mkdir(parents=True)
        for i in range(scans_per_seq):
            n = int(rng.integers(1, 40))
            rng.standard_normal((n, 4)).astype(np.float32).tofile(vdir / f"{i:06d}.bin")
            out[f"{seq:02d}/{i:06d}"] = n
    return out


@pytest.fixture
def test_split(tmp_path):
    """Dataset root with every test sequence (11..21) and a complete, valid submission folder."""
    data = tmp_path / "dataset"
    scans = _make_dataset(data, SPLITS["test"])
    sub = tmp_path / "submission"
    rng = np.random.default_rng(1)
    preds = {}
    for scan_id, n in scans.items():
        preds[scan_id] = rng.integers(0, 19, n)
        write_semantic_kitti_labels(sub, scan_id, preds[scan_id])
    write_description(sub, "method: tiny test\ncode: sparse3d")
    return data, sub, scans, preds


def test_writer_raw_ids_layout(tmp_path):
    pred = np.arange(19).repeat(2)
    path = write_semantic_kitti_labels(tmp_path, "08/000007", torch.from_numpy(pred))
    assert path == tmp_path / "sequences" / "08" / "predictions" / "000007.label"
    assert path == prediction_path(tmp_path, "08/000007")
    raw = np.fromfile(path, dtype="<u4")
    assert raw.dtype == np.uint32 and len(raw) == len(pred)
    np.testing.assert_array_equal(raw, [LEARNING_MAP_INV[t + 1] for t in pred])
    assert set(raw.tolist()) == set(VALID_RAW_IDS)


@pytest.mark.parametrize("scan_id", ["8/000000", "08/0000", "08-000000", "../08/000000"])
def test_writer_bad_scan_id(tmp_path, scan_id):
    with pytest.raises(ValueError, match="scan_id"):
        write_semantic_kitti_labels(tmp_path, scan_id, np.zeros(3, np.int64))


def test_writer_bad_predictions(tmp_path):
    with pytest.raises(TypeError, match="integer"):
        write_semantic_kitti_labels(tmp_path, "08/000000", np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="0..18"):
        write_semantic_kitti_labels(tmp_path, "08/000000", np.array([0, 19]))
    with pytest.raises(ValueError, match="0..18"):
        write_semantic_kitti_labels(tmp_path, "08/000000", np.array([255]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        write_semantic_kitti_labels(tmp_path, "08/000000", np.zeros((2, 2), np.int64))


def test_valid_folder_and_zip(test_split, tmp_path):
    data, sub, scans, preds = test_split
    info = validate_semantic_kitti_submission(sub, data, "test")
    assert info == {"sequences": list(SPLITS["test"]), "scans": len(scans), "points": sum(scans.values()),
                    "description": True}
    zp = zip_semantic_kitti_submission(sub, tmp_path / "bundle.zip")
    assert validate_semantic_kitti_submission(zp, data, "test") == info
    with zipfile.ZipFile(zp) as zf:
        names = set(zf.namelist())
        # the directory entries the official validator looks for
        assert {"sequences/", "sequences/11/", "sequences/11/predictions/", "sequences/21/predictions/"} <= names
        assert "description.txt" in names
        for scan_id, p in preds.items():
            seq, scan = scan_id.split("/")
            raw = np.frombuffer(zf.read(f"sequences/{seq}/predictions/{scan}.label"), "<u4")
            np.testing.assert_array_equal(raw, [LEARNING_MAP_INV[t + 1] for t in p])


def test_description_is_optional(test_split):
    data, sub, scans, _ = test_split
    (sub / "description.txt").unlink()
    assert validate_semantic_kitti_submission(sub, data, "test")["description"] is False


def test_instance_bits_are_ignored(test_split):
    data, sub, scans, _ = test_split
    path = prediction_path(sub, "11/000000")
    raw = np.fromfile(path, "<u4")
    (raw | np.uint32(7 << 16)).tofile(path)
    validate_semantic_kitti_submission(sub, data, "test")


def test_missing_scan(test_split):
    data, sub, _, _ = test_split
    prediction_path(sub, "15/000001").unlink()
    with pytest.raises(SubmissionError, match=r"sequences/15/predictions/000001\.label.*missing"):
        validate_semantic_kitti_submission(sub, data, "test")


def test_missing_sequence_in_submission(test_split):
    data, sub, _, _ = test_split
    shutil.rmtree(sub / "sequences" / "21")
    with pytest.raises(SubmissionError, match='"sequences/21/" missing'):
        validate_semantic_kitti_submission(sub, data, "test")


def test_wrong_label_count(test_split):
    data, sub, scans, _ = test_split
    path = prediction_path(sub, "12/000000")
    np.concatenate([np.fromfile(path, "<u4"), np.array([40], "<u4")]).tofile(path)
    with pytest.raises(SubmissionError, match=rf"000000\.label should have {scans['12/000000']} labels"):
        validate_semantic_kitti_submission(sub, data, "test")


def test_partial_uint32(test_split):
    data, sub, _, _ = test_split
    path = prediction_path(sub, "13/000001")
    with open(path, "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(SubmissionError, match="13/predictions/000001.label"):
        validate_semantic_kitti_submission(sub, data, "test")


@pytest.mark.parametrize("bad_id", [0, 1, 52, 99, 252, 13, 1000])
def test_invalid_raw_ids(test_split, bad_id):
    data, sub, _, _ = test_split
    path = prediction_path(sub, "14/000000")
    raw = np.fromfile(path, "<u4")
    raw[0] = bad_id
    raw.tofile(path)
    with pytest.raises(SubmissionError, match=rf"14/predictions/000000\.label: raw ids \[{bad_id}\]"):
        validate_semantic_kitti_submission(sub, data, "test")
    # the official validator does not check ids; neither does check_label_ids=False
    validate_semantic_kitti_submission(sub, data, "test", check_label_ids=False)


def test_unneeded_files(test_split):
    data, sub, _, _ = test_split
    write_semantic_kitti_labels(sub, "11/000099", np.zeros(3, np.int64))
    with pytest.raises(SubmissionError, match=r"unneeded files.*11/predictions/000099\.label"):
        validate_semantic_kitti_submission(sub, data, "test")


def test_zip_rules(test_split, tmp_path):
    data, sub, _, _ = test_split
    zp = zip_semantic_kitti_submission(sub, tmp_path / "ok.zip")
    renamed = tmp_path / "bundle.tar"
    shutil.copy(zp, renamed)
    with pytest.raises(SubmissionError, match=r'must end with "\.zip"'):
        validate_semantic_kitti_submission(renamed, data, "test")
    # files only, no directory entries (as `zip -D` writes): the official validator rejects it
    nodirs = tmp_path / "nodirs.zip"
    with zipfile.ZipFile(zp) as src, zipfile.ZipFile(nodirs, "w") as dst:
        for info in src.infolist():
            if not info.filename.endswith("/"):
                dst.writestr(info.filename, src.read(info.filename))
    with pytest.raises(SubmissionError, match='directory "sequences" missing'):
        validate_semantic_kitti_submission(nodirs, data, "test")
    # a top-level folder around sequences/
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(zp) as src, zipfile.ZipFile(nested, "w") as dst:
        for info in src.infolist():
            dst.writestr("submission/" + info.filename, src.read(info.filename))
    with pytest.raises(SubmissionError, match='directory "sequences" missing'):
        validate_semantic_kitti_submission(nested, data, "test")
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(SubmissionError, match="corrupt.zip is not a valid zip"):
        validate_semantic_kitti_submission(corrupt, data, "test")
    with pytest.raises(FileNotFoundError, match="absent.zip"):
        validate_semantic_kitti_submission(tmp_path / "absent.zip", data, "test")


def test_missing_dataset_sequence(test_split):
    data, sub, _, _ = test_split
    shutil.rmtree(data / "sequences" / "17")
    with pytest.raises(FileNotFoundError, match=r"sequence folder not found: .*sequences/17"):
        validate_semantic_kitti_submission(sub, data, "test")


def test_bad_split(test_split):
    data, sub, _, _ = test_split
    with pytest.raises(ValueError, match="split must be one of"):
        validate_semantic_kitti_submission(sub, data, "testing")


def test_zip_needs_sequences(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sequences/ folder"):
        zip_semantic_kitti_submission(tmp_path)
    (tmp_path / "sequences").mkdir()
    with pytest.raises(ValueError, match="must end with '.zip'"):
        zip_semantic_kitti_submission(tmp_path, tmp_path / "x.tar")


def test_real_scan_val_submission(tmp_path, shared_dir):
    """A val submission for the real scan (sequence 08) against the real .bin."""
    root = shared_dir / "data" / "semantickitti"
    if not root.is_dir():
        pytest.skip("real SemanticKITTI scan not available")
    n = (root / "sequences/08/velodyne/000000.bin").stat().st_size // 16
    write_semantic_kitti_labels(tmp_path / "sub", "08/000000", np.full(n, 8))
    zp = zip_semantic_kitti_submission(tmp_path / "sub")
    assert zp == tmp_path / "sub.zip"
    assert validate_semantic_kitti_submission(zp, root, "val")["points"] == 123389
    write_semantic_kitti_labels(tmp_path / "short", "08/000000", np.full(n - 1, 8))
    with pytest.raises(SubmissionError, match="should have 123389 labels"):
        validate_semantic_kitti_submission(tmp_path / "short", root, "val")


# --------------------------------------------------------------------------------------------- nuScenes


TOKENS = {"a0c4e8f1": 7, "b1d5f9a2": 1, "c2e6a0b3": 30}


@pytest.fixture
def nus_submission(tmp_path):
    rng = np.random.default_rng(0)
    for tok, n in TOKENS.items():
        write_nuscenes_lidarseg_prediction(tmp_path, "test", tok, rng.integers(1, 17, n))
    write_nuscenes_submission_meta(tmp_path, "test")
    return tmp_path


def test_nuscenes_valid(nus_submission):
    info = validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)
    assert info["files"] == 3 and info["points"] == sum(TOKENS.values())
    assert info["meta"] == {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                            "use_external": False}
    path = nus_submission / "lidarseg" / "test" / "c2e6a0b3_lidarseg.bin"
    assert path.stat().st_size == 30  # uint8, one per point
    meta = json.loads((nus_submission / "test" / "submission.json").read_text())
    assert set(meta) == {"meta"}


def test_nuscenes_train_ids():
    out = train_to_lidarseg(torch.arange(16))
    assert out.dtype == np.uint8 and out.tolist() == list(range(1, 17))
    assert len(LIDARSEG_CLASSES) == 16 and LIDARSEG_CLASSES[3] == "car" and LIDARSEG_CLASSES[15] == "vegetation"
    with pytest.raises(ValueError, match="0..15"):
        train_to_lidarseg(np.array([16]))
    with pytest.raises(TypeError, match="integers"):
        train_to_lidarseg(np.array([1.0]))


def test_nuscenes_writer_rejects(tmp_path):
    with pytest.raises(ValueError, match=r"1\.\.16.*\[0\]"):
        write_nuscenes_lidarseg_prediction(tmp_path, "test", "tok", np.array([0, 1]))
    with pytest.raises(ValueError, match=r"\[17\]"):
        write_nuscenes_lidarseg_prediction(tmp_path, "test", "tok", np.array([17]))
    with pytest.raises(ValueError, match="lidar_token"):
        write_nuscenes_lidarseg_prediction(tmp_path, "test", "../x", np.array([1]))
    with pytest.raises(TypeError, match="use_map must be a bool"):
        write_nuscenes_submission_meta(tmp_path, "test", use_map=1)


def test_nuscenes_missing_meta(nus_submission):
    (nus_submission / "test" / "submission.json").unlink()
    with pytest.raises(SubmissionError, match=r"submission\.json .*does not exist"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)
    shutil.rmtree(nus_submission / "test")
    with pytest.raises(SubmissionError, match="folder containing submission.json"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


@pytest.mark.parametrize("meta", [{"use_camera": False}, {"use_camera": False, "use_lidar": True, "use_radar": False,
                                                          "use_map": False, "use_external": "no"}, [1, 2]])
def test_nuscenes_bad_meta(nus_submission, meta):
    (nus_submission / "test" / "submission.json").write_text(json.dumps({"meta": meta}))
    with pytest.raises(SubmissionError, match="submission.json"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


def test_nuscenes_bad_json(nus_submission):
    (nus_submission / "test" / "submission.json").write_text("{meta: ")
    with pytest.raises(SubmissionError, match="not valid JSON"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


def test_nuscenes_missing_bin_dir(nus_submission):
    shutil.rmtree(nus_submission / "lidarseg")
    with pytest.raises(SubmissionError, match=r"lidarseg/test\) does not exist"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


def test_nuscenes_missing_file(nus_submission):
    (nus_submission / "lidarseg" / "test" / "b1d5f9a2_lidarseg.bin").unlink()
    with pytest.raises(SubmissionError, match="b1d5f9a2_lidarseg.bin does not exist"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


def test_nuscenes_wrong_count(nus_submission):
    with pytest.raises(SubmissionError, match="a0c4e8f1_lidarseg.bin: 7 predictions .* has 8 points"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", {**TOKENS, "a0c4e8f1": 8})


@pytest.mark.parametrize("value", [0, 17, 255])
def test_nuscenes_bad_values(nus_submission, value):
    path = nus_submission / "lidarseg" / "test" / "c2e6a0b3_lidarseg.bin"
    p = np.fromfile(path, np.uint8)
    p[5] = value
    p.tofile(path)
    with pytest.raises(SubmissionError, match=rf"c2e6a0b3_lidarseg\.bin: predictions must be in 1\.\.16, found \[{value}\]"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


def test_nuscenes_extra_file(nus_submission):
    write_nuscenes_lidarseg_prediction(nus_submission, "test", "ffff", np.ones(3, np.int64))
    with pytest.raises(SubmissionError, match="ffff_lidarseg.bin"):
        validate_nuscenes_lidarseg_submission(nus_submission, "test", TOKENS)


@pytest.mark.slow
def test_nuscenes_synthetic_devkit(tmp_path, repo_dir):
    """Synthetic nuScenes (the 2 mini_val scenes): our validator agrees with the devkit's on valid and broken folders."""
    pytest.importorskip("nuscenes")
    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    from sparse3d.evaluation import expected_points_from_nuscenes

    root = tmp_path / "nus"
    subprocess.run([sys.executable, str(repo_dir / "tools" / "make_data.py"), "nuscenes", "--out", str(root),
                    "--scenes", "2", "--val", "2", "--keyframes", "2", "--sweeps", "0", "--width", "64", "--height", "36",
                    "--azimuth-steps", "200", "--objects", "4"], check=True, capture_output=True)
    nusc = NuScenes("v1.0-mini", str(root), verbose=False)
    expected = expected_points_from_nuscenes(nusc, "mini_val")
    assert len(expected) == 4 and all(n > 0 for n in expected.values())
    res = tmp_path / "results"
    for tok, n in expected.items():
        write_nuscenes_lidarseg_prediction(res, "mini_val", tok, train_to_lidarseg(np.arange(n) % 16))
    write_nuscenes_submission_meta(res, "mini_val")
    validate_nuscenes_lidarseg_submission(res, "mini_val", expected)
    validate_submission(nusc, str(res), "mini_val")  # the devkit's own checks (asserts)
    tok = next(iter(expected))
    np.ones(expected[tok] - 1, np.uint8).tofile(res / "lidarseg" / "mini_val" / f"{tok}_lidarseg.bin")
    with pytest.raises(SubmissionError, match=tok):
        validate_nuscenes_lidarseg_submission(res, "mini_val", expected)
    with pytest.raises(AssertionError):
        validate_submission(nusc, str(res), "mini_val")
