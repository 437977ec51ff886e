"""Evaluation: per-point inference, checkpoint checks, IoU tables and plots, offscreen render, tools/eval.py."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config
import torch
from torch import nn

from sparse3d.datasets.semantic_kitti import SemanticKITTI
from sparse3d.datasets.transforms import Voxelize
from sparse3d.engine.checkpoint import save_checkpoint
from sparse3d.evaluation import (OffscreenRenderError, SubmissionError, iou_table, iou_table_markdown,
                                 load_model_weights, plot_confusion_matrix, predict_dataset, render_views,
                                 semantic_kitti_colors, validate_semantic_kitti_submission, write_iou_table)
from sparse3d.metrics.segmentation import ConfusionMatrix
from sparse3d.models.spvnas.minkunet import MinkUNet

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "data" / "semantickitti"
MINKUNET = "sparse3d.models.spvnas.minkunet.MinkUNet"

# Official semantic-kitti.yaml learning_map (raw id -> 0..19, 0 = ignored), written out independently
# of sparse3d for the reference mIoU below.
OFFICIAL_LEARNING_MAP = {
    0: 0, 1: 0, 10: 1, 11: 2, 13: 5, 15: 3, 16: 5, 18: 4, 20: 5, 30: 6, 31: 7, 32: 8, 40: 9, 44: 10, 48: 11,
    49: 12, 50: 13, 51: 14, 52: 0, 60: 9, 70: 15, 71: 16, 72: 17, 80: 18, 81: 19, 99: 0, 252: 1, 253: 7,
    254: 6, 255: 8, 256: 5, 257: 5, 258: 4, 259: 5,
}


def reference_iou(pred_files, gt_files):
    """semantic-kitti-api ``evaluate_semantics.py`` in plain numpy: raw ids & 0xFFFF -> learning_map,
    conf[pred, gt], GT-unlabeled columns zeroed, IoU over classes 1..19 with absent classes = 0."""
    lut = np.zeros(1 << 16, np.int64)
    for k, v in OFFICIAL_LEARNING_MAP.items():
        lut[k] = v
    conf = np.zeros((20, 20), np.int64)
    for pf, gf in zip(pred_files, gt_files):
        pred = lut[np.fromfile(pf, np.uint32) & 0xFFFF]
        gt = lut[np.fromfile(gf, np.uint32) & 0xFFFF]
        assert len(pred) == len(gt)
        np.add.at(conf, (pred, gt), 1)
    conf[:, 0] = 0
    tp = np.diag(conf)[1:]
    fp = conf.sum(1)[1:] - tp
    fn = conf.sum(0)[1:] - tp
    iou = tp / (tp + fp + fn + 1e-15)
    return iou, iou.mean()


def load_tool():
    spec = importlib.util.spec_from_file_location("sparse3d_tools_eval", REPO / "tools" / "eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _compose(name, overrides):
    return compose_config(name, overrides)


def compose_eval(overrides=()):
    """``configs/eval.yaml`` as ``tools/eval.py`` composes it (``hydra:`` resolvers set)."""
    return _compose("eval", overrides)


def tiny_model(num_classes=19, seed=0):
    """Random tiny MinkUNet; zero classifier bias so that the argmax varies over many classes."""
    torch.manual_seed(seed)
    m = MinkUNet(4, num_classes, cr=0.125, input_norm=True)   # as the default experiment (synth_cpu)
    with torch.no_grad():
        m.classifier[0].bias.zero_()
    return m


def write_ckpt(path, model, target=MINKUNET):
    return save_checkpoint(path, {"model": model.state_dict(), "epoch": 3, "global_step": 10, "best_miou": 0.1,
                                  "cfg": f"model:\n  _target_: {target}\n  cr: 0.125\n"})


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    """Sequence 08 with two subsampled copies of the real scan (every 16th / 20th point) and their labels."""
    if not REAL.is_dir():
        pytest.skip("real SemanticKITTI scan not available")
    pts = np.fromfile(REAL / "sequences/08/velodyne/000000.bin", np.float32).reshape(-1, 4)
    lab = np.fromfile(REAL / "sequences/08/labels/000000.label", np.uint32)
    root = tmp_path_factory.mktemp("kitti_small")
    for d in ("velodyne", "labels"):
        (root / "sequences/08" / d).mkdir(parents=True)
    for i, step in enumerate((16, 20)):
        pts[i::step].tofile(root / f"sequences/08/velodyne/{i:06d}.bin")
        lab[i::step].tofile(root / f"sequences/08/labels/{i:06d}.label")
    return root


# ------------------------------------------------------------------------------------------ predict


class VoxelCoordModel(nn.Module):
    """Logits whose argmax is ``(x + 2 y + 3 z) % C`` of each voxel's coordinate."""

    def __init__(self, num_classes=19):
        super().__init__()
        self.num_classes = num_classes
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        c = x.coords[:, 1:].long()
        cls = (c[:, 0] + 2 * c[:, 1] + 3 * c[:, 2]) % self.num_classes
        return nn.functional.one_hot(cls, self.num_classes).float() + self.dummy


@pytest.mark.parametrize("batch_size", [1, 2])
def test_predictions_reach_every_point(small_root, batch_size):
    ds = SemanticKITTI(small_root, "val", transform=Voxelize(0.05))
    out = list(predict_dataset(VoxelCoordModel(), ds, batch_size=batch_size))
    assert [r["scan_id"] for r in out] == ["08/000000", "08/000001"]
    for r in out:
        raw = ds.read(r["index"])
        xyz = raw["points"][:, :3].astype(np.float64)
        vox = np.floor(xyz / 0.05).astype(np.int64)
        vox -= vox.min(0)
        expect = (vox[:, 0] + 2 * vox[:, 1] + 3 * vox[:, 2]) % 19
        assert r["pred"].dtype == torch.int64 and len(r["pred"]) == len(xyz)
        np.testing.assert_array_equal(r["pred"].numpy(), expect)
        np.testing.assert_array_equal(r["target"].numpy(), raw["labels"])


def test_transform_that_drops_points_is_rejected(small_root):
    ds = SemanticKITTI(small_root, "val", transform=Voxelize(0.05, max_voxels=100))
    with pytest.raises(ValueError, match=r"scan 08/000000: \d+ predictions for 7712 points.*max_voxels"):
        list(predict_dataset(VoxelCoordModel(), ds))


def test_model_output_shape_checked(small_root):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.zeros(3, 19)

    ds = SemanticKITTI(small_root, "val", transform=Voxelize(0.05))
    with pytest.raises(ValueError, match="N_voxels"):
        list(predict_dataset(Bad(), ds))


# ------------------------------------------------------------------------------------------ checkpoints


def test_load_weights_roundtrip(tmp_path):
    src, dst = tiny_model(seed=1), tiny_model(seed=2)
    state = load_model_weights(dst, write_ckpt(tmp_path / "best.pt", src), expected_target=MINKUNET)
    assert state["epoch"] == 3
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*nothing\.pt"):
        load_model_weights(tiny_model(), tmp_path / "nothing.pt")


def test_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"last\.pt"):
        load_model_weights(tiny_model(), bad)


def test_checkpoint_other_num_classes(tmp_path):
    path = write_ckpt(tmp_path / "c20.pt", tiny_model(num_classes=20))
    with pytest.raises(ValueError, match=r"c20\.pt does not fit MinkUNet \(num_classes: checkpoint 20, model 19\)"):
        load_model_weights(tiny_model(), path)


def test_checkpoint_other_model(tmp_path):
    from sparse3d.models.spvnas.spvcnn import SPVCNN
    torch.manual_seed(0)
    spv = SPVCNN(4, 19, cr=0.125, input_norm=True)
    target = "sparse3d.models.spvnas.spvcnn.SPVCNN"
    path = write_ckpt(tmp_path / "spvcnn.pt", spv, target=target)
    with pytest.raises(ValueError, match=rf"spvcnn\.pt was trained with model {target}.*builds {MINKUNET}"):
        load_model_weights(tiny_model(), path, expected_target=MINKUNET)
    # without config hints, the key comparison still names the file
    save_checkpoint(path, {"model": spv.state_dict()})
    with pytest.raises(ValueError, match=r"spvcnn\.pt does not fit MinkUNet: 0 missing keys.*unexpected keys"):
        load_model_weights(tiny_model(), path)
    # a MinkUNet of another width
    torch.manual_seed(0)
    save_checkpoint(path, {"model": MinkUNet(4, 19, cr=0.25, input_norm=True).state_dict()})
    with pytest.raises(ValueError, match=r"spvcnn\.pt does not fit MinkUNet: shape mismatch in stem"):
        load_model_weights(tiny_model(), path)


# ------------------------------------------------------------------------------------------ tables and plots


def test_iou_table_matches_confusion_matrix(tmp_path):
    g = torch.Generator().manual_seed(0)
    cm = ConfusionMatrix(5)
    target = torch.randint(0, 4, (500,), generator=g)  # class 4 never in the targets
    pred = torch.where(torch.rand(500, generator=g) < 0.6, target, torch.randint(0, 5, (500,), generator=g))
    target[:20] = 255
    cm.update(pred, target)
    names = ["a", "b", "c", "d", "e"]
    t = iou_table(cm.matrix, names)
    np.testing.assert_allclose([r["iou"] for r in t["classes"]], cm.iou().numpy(), rtol=0, atol=1e-15)
    assert t["miou_semantickitti"] == pytest.approx(cm.miou("semantickitti"), abs=1e-15)
    assert t["miou_nuscenes"] == pytest.approx(cm.miou("nuscenes"), abs=1e-15)
    assert t["points"] == 480 and t["classes"][4]["points"] == 0
    md = iou_table_markdown(t, title="toy")
    assert md.startswith("## toy") and "| e |" in md and f"{100 * t['miou_semantickitti']:.2f}" in md
    paths = write_iou_table(t, tmp_path)
    assert json.loads(paths["json"].read_text()) == t and paths["markdown"].read_text() == md.replace("## toy\n\n", "")


def test_iou_table_absent_classes():
    m = torch.zeros(3, 3, dtype=torch.int64)
    m[0, 0] = 5
    t = iou_table(m, ["x", "y", "z"])
    assert t["miou_semantickitti"] == pytest.approx(1 / 3) and t["miou_nuscenes"] == 1.0
    assert "(absent)" in iou_table_markdown(t)
    empty = iou_table(torch.zeros(2, 2, dtype=torch.int64), ["x", "y"])
    assert empty["miou_nuscenes"] is None and empty["accuracy"] is None and "n/a" in iou_table_markdown(empty)
    with pytest.raises(ValueError, match="class_names has 2"):
        iou_table(m, ["x", "y"])
    with pytest.raises(ValueError, match="square"):
        iou_table(torch.zeros(2, 3), ["x", "y"])


def test_confusion_matrix_png(tmp_path):
    import matplotlib.image as mpimg
    m = np.arange(16).reshape(4, 4)
    for normalize in (True, False):
        p = plot_confusion_matrix(m, list("abcd"), tmp_path / f"cm_{normalize}.png", normalize=normalize)
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(m, list("abc"), tmp_path / "x.png")


# ------------------------------------------------------------------------------------------ render


def test_semantic_kitti_colors():
    c = semantic_kitti_colors(np.array([0, 8, 14, 255]))
    np.testing.assert_allclose(c * 255, [[100, 150, 245], [255, 0, 255], [0, 175, 0], [0, 0, 0]], atol=1e-4)
    with pytest.raises(TypeError):
        semantic_kitti_colors(np.array([0.5]))


def test_render_exact_colours():
    """Offscreen render (lavapipe/EGL): white background and the exact class colours (no tone mapping)."""
    g = np.linspace(-5, 5, 60)
    xyz = np.stack(np.meshgrid(g, g, [0.0]), -1).reshape(-1, 3)
    road, car = semantic_kitti_colors(np.full(len(xyz), 8)), semantic_kitti_colors(np.zeros(len(xyz), np.int64))
    imgs = render_views(xyz, [road, car], width=96, height=64, point_size=3.0)
    assert imgs.shape == (2, 64, 96, 3) and imgs.dtype == np.uint8
    for img, rgb in zip(imgs, ([255, 0, 255], [100, 150, 245])):
        px = img.reshape(-1, 3)
        assert (px == rgb).all(1).sum() > 100
        assert ((px == 255).all(1) | (px == rgb).all(1)).mean() > 0.95


def test_render_without_driver_is_a_clear_error(monkeypatch):
    """With no usable Vulkan ICD, Filament aborts the renderer process: reported as OffscreenRenderError."""
    monkeypatch.setenv("VK_ICD_FILENAMES", "/nonexistent/icd.json")
    monkeypatch.setenv("VK_DRIVER_FILES", "/nonexistent/icd.json")
    try:
        render_views(np.zeros((3, 3)), [np.zeros((3, 3))], width=32, height=32)
    except OffscreenRenderError as e:
        assert "libvulkan1 mesa-vulkan-drivers" in str(e) and "open3d log" in str(e)
    else:
        pytest.skip("this platform renders without Vulkan (EGL/OpenGL fallback)")


def test_render_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        render_views(np.zeros((0, 3)), [np.zeros((0, 3))])
    with pytest.raises(ValueError, match="colour array"):
        render_views(np.zeros((4, 3)), [np.zeros((3, 3))])


# ------------------------------------------------------------------------------------------ tools/eval.py


EXPERIMENTS = sorted(p.stem for p in (REPO / "configs" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [None] + EXPERIMENTS)
def test_eval_config_builds_the_trained_network(tmp_path, experiment):
    """eval.yaml composes the same model and dataset sections as train.yaml for every experiment."""
    from omegaconf import OmegaConf
    extra = [f"experiment={experiment}"] if experiment else []
    train = OmegaConf.to_container(_compose("train", extra), resolve=True)
    cfg = OmegaConf.to_container(compose_eval([f"checkpoint={tmp_path / 'x.pt'}", *extra]), resolve=True)
    for k in ("model", "dataset", "experiment_name"):
        assert cfg[k] == train[k], k


def test_eval_config_defaults(tmp_path):
    from hydra.utils import instantiate
    cfg = compose_eval([f"checkpoint={tmp_path / 'x.pt'}"])
    assert cfg.model._target_ == "sparse3d.models.spvnas.spvcnn.SPVCNN"
    assert cfg.split == "val" and cfg.submission.enabled and cfg.render.enabled and cfg.plots.enabled
    assert "outputs" in Path(cfg.output_dir).parts
    assert instantiate(cfg.model).num_classes == 19
    assert instantiate(cfg.dataset).num_classes == 19
    assert "SPVCNN" in cfg.submission.description
    with pytest.raises(Exception, match="checkpoint"):  # mandatory
        compose_eval([]).checkpoint


def _overrides(root, ckpt, out, *extra):
    return [f"checkpoint={ckpt}", "model=minkunet", "model.cr=0.125", "dataset=semantic_kitti",
            f"dataset.root={root}", "dataset.voxel_size=0.05", f"output_dir={out}", "progress=false", *extra]


@pytest.mark.parametrize("views", [1, 3])
def test_eval_real_scan_target(tmp_path, views):
    """Target check: the real scan (sequence 08, labels present) with a random tiny model writes a valid
    submission whose labels give the same mIoU (official rules, numpy) as the tool reports; also with
    rotation test-time augmentation (``dataset.tta_views``; the default experiment uses 6)."""
    if not REAL.is_dir():
        pytest.skip("real SemanticKITTI scan not available")
    ckpt = write_ckpt(tmp_path / "best.pt", tiny_model())
    out = tmp_path / "eval"
    tool = load_tool()
    res = tool.evaluate(compose_eval(_overrides(REAL, ckpt, out, "render.width=160", "render.height=120",
                                                "render.max_points=20000", f"dataset.tta_views={views}")))
    label = out / "submission/sequences/08/predictions/000000.label"
    raw = np.fromfile(label, np.uint32)
    assert len(raw) == 123389 and len(np.unique(raw)) >= (5 if views == 1 else 2)  # a non-trivial prediction
    iou, miou = reference_iou([label], [REAL / "sequences/08/labels/000000.label"])
    assert res["miou_semantickitti"] == pytest.approx(miou, abs=1e-12)
    assert res["miou"] == res["miou_semantickitti"] and res["miou_convention"] == "semantickitti"
    table = json.loads((out / "iou.json").read_text())
    np.testing.assert_allclose([c["iou"] for c in table["classes"]], iou, atol=1e-12)
    assert res["submission"] == {"sequences": [8], "scans": 1, "points": 123389, "description": True}
    assert validate_semantic_kitti_submission(out / "submission.zip", REAL, "val")["points"] == 123389
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["miou_semantickitti"] == res["miou_semantickitti"] and metrics["epoch"] == 3
    for f in ("confusion_matrix.png", "render_08_000000.png", "iou.md"):
        assert (out / f).stat().st_size > 1000, f
    assert "sparse3d minkunet" in (out / "submission/description.txt").read_text()


def test_eval_two_scans_batched(small_root, tmp_path):
    ckpt = write_ckpt(tmp_path / "best.pt", tiny_model())
    out = tmp_path / "eval"
    res = load_tool().evaluate(compose_eval(_overrides(small_root, ckpt, out, "batch_size=2", "render.enabled=false",
                                                       "plots.enabled=false")))
    preds = [out / f"submission/sequences/08/predictions/{i:06d}.label" for i in range(2)]
    gts = [small_root / f"sequences/08/labels/{i:06d}.label" for i in range(2)]
    _, miou = reference_iou(preds, gts)
    assert res["scans"] == 2 and res["miou_semantickitti"] == pytest.approx(miou, abs=1e-12)
    assert res["miou_nuscenes"] >= res["miou_semantickitti"]
    assert not (out / "confusion_matrix.png").exists()


def test_eval_bad_inputs(small_root, tmp_path):
    tool = load_tool()
    ckpt = write_ckpt(tmp_path / "best.pt", tiny_model())
    with pytest.raises(FileNotFoundError, match=r"checkpoint not found: .*missing\.pt"):
        tool.evaluate(compose_eval(_overrides(small_root, tmp_path / "missing.pt", tmp_path / "o1")))
    c20 = write_ckpt(tmp_path / "c20.pt", tiny_model(num_classes=20))
    with pytest.raises(ValueError, match=r"c20\.pt does not fit MinkUNet \(num_classes: checkpoint 20, model 19\)"):
        tool.evaluate(compose_eval(_overrides(small_root, c20, tmp_path / "o2")))
    with pytest.raises(ValueError, match=r"best\.pt was trained with model .*MinkUNet, but the config builds .*SPVCNN"):
        tool.evaluate(compose_eval(_overrides(small_root, ckpt, tmp_path / "o3", "model=spvcnn")))
    with pytest.raises(FileNotFoundError, match=r"sequence folder not found: .*sequences/05"):
        tool.evaluate(compose_eval(_overrides(small_root, ckpt, tmp_path / "o4", "sequences=[5]")))
    with pytest.raises(ValueError, match="render.scan='08/000009'"):
        tool.evaluate(compose_eval(_overrides(small_root, ckpt, tmp_path / "o5", "render.scan=08/000009",
                                              "submission.enabled=false", "plots.enabled=false")))
    with pytest.raises(ValueError, match="split must be one of"):
        tool.evaluate(compose_eval(_overrides(small_root, ckpt, tmp_path / "o6", "split=dev")))


def test_eval_test_split_without_labels(small_root, tmp_path):
    """split=test: no labels needed, only the (validated) submission is written."""
    root = tmp_path / "kitti"
    for seq in (11, 12):
        (root / f"sequences/{seq}/velodyne").mkdir(parents=True)
        for i in range(2):
            src = small_root / f"sequences/08/velodyne/{i:06d}.bin"
            (root / f"sequences/{seq}/velodyne/{i:06d}.bin").write_bytes(src.read_bytes())
    ckpt = write_ckpt(tmp_path / "best.pt", tiny_model())
    out = tmp_path / "eval"
    res = load_tool().evaluate(compose_eval(_overrides(root, ckpt, out, "split=test", "sequences=[11]",
                                                       "render.enabled=false")))
    assert "miou" not in res and res["submission"]["scans"] == 2 and not (out / "iou.json").exists()
    assert validate_semantic_kitti_submission(out / "submission.zip", root, sequences=[11])["scans"] == 2
    with pytest.raises(SubmissionError, match='"sequences/12/" missing'):
        validate_semantic_kitti_submission(out / "submission.zip", root, sequences=[11, 12])


@pytest.mark.slow
def test_eval_cli_real_scan(tmp_path):
    """``python tools/eval.py`` end to end on the real scan (subprocess, full-size render)."""
    if not REAL.is_dir():
        pytest.skip("real SemanticKITTI scan not available")
    ckpt = write_ckpt(tmp_path / "best.pt", tiny_model())
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"), *_overrides(REAL, ckpt, out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submission:" in proc.stdout and "(1 scans, valid)" in proc.stdout
    res = json.loads((out / "metrics.json").read_text())
    _, miou = reference_iou([out / "submission/sequences/08/predictions/000000.label"],
                            [REAL / "sequences/08/labels/000000.label"])
    assert res["miou_semantickitti"] == pytest.approx(miou, abs=1e-12)
    assert (out / "render_08_000000.png").stat().st_size > 10000
