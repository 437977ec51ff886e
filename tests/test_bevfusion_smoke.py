"""BEVFusion end to end: composition (camera-only / LiDAR-only / fusion), the training task, and tools/train.py +
tools/eval.py (devkit DetectionEval, map mIoU, submission, PNG) on the tiny synthetic nuScenes."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("nuscenes")

from sparse3d.datasets.nuscenes.module import collate_nuscenes  # noqa: E402
from sparse3d.engine.tasks.bevfusion import BEVFusionTask  # noqa: E402
from sparse3d.models.bevfusion.bevfusion import BEVFusion  # noqa: E402
from sparse3d.models.bevfusion.heads import TransFusionBBoxCoder, TransFusionHead  # noqa: E402
from sparse3d.models.bevfusion.map_head import BEVSegmentationHead  # noqa: E402

from test_configs import compose_train  # noqa: E402
from test_nuscenes_module import TINY, make_dm, tiny_root  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PCR = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
GRID = 32  # 3.2 m cells for the stand-in tests


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tiny_root(tmp_path_factory)


@pytest.fixture(scope="module")
def batch(root):
    dm = make_dm(root)
    return collate_nuscenes([dm.val_dataset()[i] for i in range(2)])


# ---------------------------------------------------------------------------------------------- stand-ins
class PointsToBEV(nn.Module):
    """LiDAR stand-in: point count + mean height per 3.2 m cell -> 1x1 conv."""

    def __init__(self, c=8):
        super().__init__()
        self.proj = nn.Conv2d(2, c, 1)

    def forward(self, points):
        maps = []
        for p in points:
            ij = ((p[:, :2] + 51.2) / 3.2).long().clamp(0, GRID - 1)
            idx = ij[:, 0] * GRID + ij[:, 1]
            cnt = torch.zeros(GRID * GRID).index_add_(0, idx, torch.ones(len(p)))
            z = torch.zeros(GRID * GRID).index_add_(0, idx, p[:, 2])
            maps.append(torch.stack([cnt.log1p(), z / cnt.clamp(min=1)]).view(2, GRID, GRID))
        return self.proj(torch.stack(maps))


class TinyBackbone(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 8, 3, 2, 1)

    def forward(self, x):
        a = self.c1(x)
        return [a, self.c2(a)]


class TinyNeck(nn.Module):
    def forward(self, feats):
        return [feats[1]]


class PoolTransform(nn.Module):
    """Camera stand-in view transform (contract signature): mean image feature broadcast onto the grid."""

    def __init__(self, c=8):
        super().__init__()
        self.proj = nn.Conv2d(8, c, 1)
        self.calls = []

    def forward(self, img_feats, points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix):
        self.calls.append((img_feats.shape, camera2lidar.shape, lidar_aug_matrix.shape, len(points)))
        g = img_feats.mean(dim=(1, 3, 4))[:, :, None, None].expand(-1, -1, GRID, GRID)
        return self.proj(g.contiguous())


class CameraModule(nn.Module):
    """A camera encoder given as one module with named batch arguments (as ``CameraEncoder``)."""

    def __init__(self):
        super().__init__()
        self.backbone, self.vt = TinyBackbone(), PoolTransform()

    def forward(self, img, points, camera2lidar, camera_intrinsics, img_aug_matrix, lidar_aug_matrix):
        B, N = img.shape[:2]
        f = self.backbone(img.flatten(0, 1))[1]
        return self.vt(f.view(B, N, *f.shape[1:]), points, camera2lidar, camera_intrinsics, img_aug_matrix,
                       lidar_aug_matrix)


class Fuser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(16, 8, 1)

    def forward(self, xs):
        return self.conv(torch.cat(xs, 1))


def _heads(obj=True, map_=True):
    h = {}
    if obj:
        coder = TransFusionBBoxCoder(PCR, (0.4, 0.4), 8)
        h["object"] = TransFusionHead(8, 10, num_proposals=10, hidden_channels=16, num_heads=2, ffn_channels=16,
                                      bbox_coder=coder)
    if map_:
        h["map"] = BEVSegmentationHead(8, dict(input_scope=((-51.2, 51.2, 3.2), (-51.2, 51.2, 3.2)),
                                               output_scope=((-25.0, 25.0, 0.5), (-25.0, 25.0, 0.5))))
    return h


def _camera_parts():
    return {"backbone": TinyBackbone(), "neck": TinyNeck(), "vtransform": PoolTransform()}


@pytest.mark.parametrize("kind", ["camera", "camera_module", "lidar", "fusion"])
def test_composition_forward_loss_predict(batch, kind):
    torch.manual_seed(0)
    enc = {"camera": {"camera": _camera_parts()}, "camera_module": {"camera": CameraModule()},
           "lidar": {"lidar": PointsToBEV()}, "fusion": {"camera": _camera_parts(), "lidar": PointsToBEV()}}[kind]
    model = BEVFusion(enc, fuser=Fuser() if kind == "fusion" else None, decoder=nn.Conv2d(8, 8, 3, padding=1),
                      heads=_heads())
    assert model.modalities == (["camera", "lidar"] if kind == "fusion" else [kind.split("_")[0]])
    assert model.has_object_head and model.map_classes == list(BEVSegmentationHead(8).classes)
    model.eval()  # deterministic (dropout off, BN running stats) to compare the task's sum with the terms
    with torch.no_grad():
        out = model(batch)
        terms = model.loss(out, batch)
    assert out["bev"].shape == (2, 8, GRID, GRID) and out["map"].shape == (2, 6, 100, 100)
    assert out["object"]["heatmap"].shape == (2, 10, 10)
    assert {"object/loss_heatmap", "object/loss_cls", "object/loss_bbox", "stats/object/matched_ious"} <= set(terms)
    assert {f"map/{c}/focal" for c in model.map_classes} <= set(terms)
    task = BEVFusionTask()
    loss, logs = task.training_step(model, batch, 1)
    want = sum(float(v) for k, v in terms.items() if not k.startswith("stats/"))
    assert loss.ndim == 0 and float(loss.detach()) == pytest.approx(want, rel=1e-4)
    assert logs["loss"] == pytest.approx(want, rel=1e-4)
    model.train()
    loss, _ = task.training_step(model, batch, 1)
    loss.backward()
    grads = [p.grad for p in model.encoders.parameters()]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    preds = model.predict(model(batch), batch)
    assert len(preds) == 2
    for p in preds:
        assert p["boxes"].shape[1] == 9 and len(p["scores"]) == len(p["labels"]) == len(p["boxes"]) <= 10
        assert p["masks"].shape == (6, 100, 100) and 0 <= float(p["masks"].min()) <= float(p["masks"].max()) <= 1
    if kind == "camera":
        vt = model.encoders["camera"]["vtransform"]
        assert vt.calls[0][0][:2] == (2, 6) and vt.calls[0][1] == (2, 6, 4, 4) and vt.calls[0][3] == 2


def test_single_head_models(batch):
    m = BEVFusion({"lidar": PointsToBEV()}, heads=_heads(obj=False))
    assert not m.has_object_head
    p = m.predict(m(batch))
    assert set(p[0]) == {"masks"}
    m = BEVFusion({"lidar": PointsToBEV()}, heads=_heads(map_=False))
    assert m.map_classes is None
    assert set(m.loss(m(batch), batch)) == {"object/loss_heatmap", "object/loss_cls", "object/loss_bbox",
                                            "stats/object/matched_ious"}


def test_bn_momentum_override():
    from sparse3d import nn as spnn
    dec = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8, momentum=0.01))
    enc = nn.Sequential()
    enc.add_module("bn", spnn.BatchNorm(4))
    lidar = PointsToBEV()
    lidar.extra = enc
    m = BEVFusion({"lidar": lidar}, decoder=dec, heads=_heads(), bn_momentum=0.1)
    bns = [x for x in m.modules() if isinstance(x, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) >= 3 and all(x.momentum == 0.1 for x in bns)
    assert BEVFusion({"lidar": PointsToBEV()}, decoder=nn.Sequential(nn.BatchNorm2d(8, momentum=0.01)),
                     heads=_heads(map_=False)).decoder[0].momentum == 0.01
    with pytest.raises(ValueError, match="bn_momentum"):
        BEVFusion({"lidar": PointsToBEV()}, heads=_heads(), bn_momentum=0.0)


def test_init_from_lidar_checkpoint(tmp_path):
    """Fusion initialized from a LiDAR-only checkpoint (upstream's recipe): every same-name, same-shape tensor
    loads; the camera branch and the fuser keep their fresh init."""
    torch.manual_seed(0)
    lidar = BEVFusion({"lidar": PointsToBEV()}, decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads())
    ck = tmp_path / "last.pt"
    torch.save({"model": lidar.state_dict(), "epoch": 3}, ck)
    torch.manual_seed(1)
    fresh = BEVFusion({"camera": _camera_parts(), "lidar": PointsToBEV()}, fuser=Fuser(),
                      decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads())
    torch.manual_seed(1)
    fused = BEVFusion({"camera": _camera_parts(), "lidar": PointsToBEV()}, fuser=Fuser(),
                      decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads(), init_from=str(ck))
    src, new, ref = lidar.state_dict(), fused.state_dict(), fresh.state_dict()
    assert sorted(fused.init_report["loaded"]) == sorted(src) and fused.init_report["skipped"] == []
    for k, v in new.items():
        torch.testing.assert_close(v, src[k] if k in src else ref[k], rtol=0, atol=0, msg=k)
    assert any(k.startswith("fuser.") for k in new) and not any(k.startswith("fuser.") for k in src)
    # a bare state dict works too; shape mismatches are skipped, not loaded
    bad = dict(src)
    bad["decoder.weight"] = torch.zeros(8, 8, 1, 1)
    rep = fresh.load_matching(bad)
    assert "decoder.weight" in rep["skipped"] and "decoder.bias" in rep["loaded"]
    with pytest.raises(ValueError, match="no tensor"):
        fresh.load_matching({"other.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match="init_from"):
        fresh.load_matching([1, 2])


def test_lidar_parts_mapping(batch):
    class Vox(nn.Module):
        def forward(self, points):
            return points

    class Back(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = PointsToBEV()

        def forward(self, x, batch_size):
            assert batch_size == len(x)
            return self.inner(x)

    m = BEVFusion({"lidar": {"voxelize": Vox(), "backbone": Back()}}, heads=_heads(obj=False))
    assert m(batch)["bev"].shape == (2, 8, GRID, GRID)


def test_bad_configuration(batch):
    with pytest.raises(ValueError, match="fuser is required"):
        BEVFusion({"camera": _camera_parts(), "lidar": PointsToBEV()}, heads=_heads())
    with pytest.raises(ValueError, match="unknown keys"):
        BEVFusion({"radar": PointsToBEV()}, heads=_heads())
    with pytest.raises(ValueError, match="at least one"):
        BEVFusion({"lidar": PointsToBEV()}, heads={})
    with pytest.raises(ValueError, match="heads: unknown"):
        BEVFusion({"lidar": PointsToBEV()}, heads={"occupancy": nn.Identity()})
    with pytest.raises(ValueError, match="missing \\['vtransform'\\]"):
        BEVFusion({"camera": {"backbone": TinyBackbone(), "neck": TinyNeck()}}, heads=_heads())
    with pytest.raises(TypeError, match="encoders.lidar"):
        BEVFusion({"lidar": 3}, heads=_heads())
    m = BEVFusion({"camera": _camera_parts()}, heads=_heads())
    with pytest.raises(ValueError, match="batch\\['img'\\]"):
        m({k: v for k, v in batch.items() if k != "img"})
    m = BEVFusion({"lidar": PointsToBEV()}, heads=_heads())
    with pytest.raises(ValueError, match="gt_masks_bev"):
        m.loss(m(batch), {k: v for k, v in batch.items() if k != "gt_masks_bev"})
    with pytest.raises(ValueError, match="monitor"):
        BEVFusionTask(monitor="miou")


def test_empty_point_cloud_sample(batch):
    b = dict(batch)
    b["points"] = [torch.zeros(0, 5), batch["points"][1]]
    m = BEVFusion({"lidar": PointsToBEV()}, heads=_heads())
    out = m(b)
    assert torch.isfinite(out["bev"]).all()
    assert torch.isfinite(BEVFusionTask().training_step(m, b, 1)[0])


def test_task_validate_scores_with_devkit(root):
    """validate() through a progress-bar-wrapped loader: devkit NDS keys + map mIoU; monitor present."""
    from tqdm import tqdm
    dm = make_dm(root)
    torch.manual_seed(0)
    model = BEVFusion({"lidar": PointsToBEV()}, decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads()).eval()
    # the map head must see the datamodule's 100 x 100 map grid
    res = BEVFusionTask().validate(model, tqdm(dm.val_dataloader(distributed=False), disable=True), torch.device("cpu"))
    for k in ("nds", "NDS", "mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "map_miou"):
        assert isinstance(res[k], float) and 0.0 <= res[k] <= 1.0, k
    assert set(res["per_class"]) == set(dm.class_names) and set(res["map_iou"]) == set(model.map_classes)
    text = BEVFusionTask().format_result(res)
    assert "NDS" in text and "map mIoU" in text
    m2 = BEVFusion({"lidar": PointsToBEV()}, heads=_heads(obj=False)).eval()
    res = BEVFusionTask(monitor="map_miou").validate(m2, dm.val_dataloader(distributed=False), torch.device("cpu"))
    assert "nds" not in res and 0.0 <= res["map_miou"] <= 1.0
    with pytest.raises(ValueError, match="monitor 'nds'"):
        BEVFusionTask().validate(m2, dm.val_dataloader(distributed=False), torch.device("cpu"))
    with pytest.raises(TypeError, match="NuScenesDataset"):
        BEVFusionTask().validate(model, [dict()], torch.device("cpu"))


# ---------------------------------------------------------------------------------------------- tools end to end
def _tool(name):
    spec = importlib.util.spec_from_file_location(f"sparse3d_tools_{name}", REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _synth_overrides(root):
    out = [f"dataset.dataroot={root}", "dataset.num_workers=0", "dataset.final_dim=[64,112]",
           "dataset.resize_lim=[0.6,0.7]", "dataset.map_xbound=[-25.0,25.0,0.5]", "dataset.map_ybound=[-25.0,25.0,0.5]"]
    for k, v in TINY.items():
        out.append(f"dataset.synthetic.{k}=" + (f"[{v[0]},{v[1]}]" if isinstance(v, tuple) else str(v)))
    return out + ["dataset.synthetic.n_val=1"]   # TINY: 1 train + 1 val scene


SMALL_LIDAR = ["model.encoders.lidar.backbone.output_channels=8", "model.encoders.lidar.backbone.base_channels=8",
               "model.encoders.lidar.backbone.encoder_channels=[[8,8],[8,8],[8,8]]",
               "model.decoder.backbone.in_channels=24", "model.decoder.backbone.out_channels=[16,16]",
               "model.decoder.backbone.layer_nums=[1,1]", "model.decoder.neck.in_channels=[16,16]",
               "model.decoder.neck.out_channels=[16,16]", "model.heads.object.in_channels=32",
               "model.heads.object.hidden_channels=32", "model.heads.object.num_heads=4",
               "model.heads.object.ffn_channels=64", "model.heads.object.num_proposals=20",
               "model.heads.map.in_channels=32"]
SMALL_CAMERA = ["model.encoders.camera.vtransform.feature_size=[8,14]", "model.heads.object.num_proposals=20"]


def _train_and_eval(root, tmp_path, experiment, overrides, epochs=1):
    from test_eval import compose_eval
    common = [f"experiment={experiment}", *_synth_overrides(root), *overrides]
    cfg = compose_train([*common, f"paths.output_root={tmp_path}", f"trainer.max_epochs={epochs}",
                         "trainer.progress=false", "trainer.val_every=1"])
    res = _tool("train").train(cfg)
    run = Path(cfg.paths.run_dir)
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
    assert res["monitor"] == "nds" and 0.0 <= res["nds"] <= 1.0 and 0.0 <= res["map_miou"] <= 1.0
    ecfg = compose_eval([*common, f"checkpoint={run / 'checkpoints' / 'best.pt'}", f"output_dir={tmp_path / 'eval'}",
                         "progress=false"])
    assert ecfg.eval_fn == "sparse3d.evaluation.bevfusion.evaluate"
    out = _tool("eval").evaluate(ecfg)
    ev = tmp_path / "eval"
    sub = json.loads((ev / "submission.json").read_text())
    assert set(sub["results"]) == set(make_dm(root).loader.split_tokens("mini_val"))
    metrics = json.loads((ev / "metrics.json").read_text())
    for k in ("mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "NDS", "map_miou"):
        assert k in metrics and k in out
    assert (ev / "detection" / "metrics_summary.json").is_file()
    png = Path(out["render"])
    assert png.is_file() and png.stat().st_size > 20000
    return res, out, sub


def test_tools_train_eval_lidar_small(root, tmp_path):
    """Fast smoke: LiDAR-only with small widths, one epoch, then tools/eval.py."""
    res, out, sub = _train_and_eval(root, tmp_path, "bevfusion_lidar_tiny",
                                    [*SMALL_LIDAR, "dataset.max_train_samples=2"])
    assert sub["meta"] == {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                           "use_external": False}
    assert res["global_step"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["bevfusion_camera_tiny", "bevfusion_fusion_tiny"])
def test_tools_train_eval_camera_and_fusion(root, tmp_path, experiment):
    fusion = experiment == "bevfusion_fusion_tiny"
    staged = ["model.camera_from_epoch=1"] if fusion else []   # epoch 1 LiDAR only, epoch 2 fusion (+ aux head)
    res, out, sub = _train_and_eval(root, tmp_path, experiment, SMALL_CAMERA + staged, epochs=2)
    assert sub["meta"]["use_camera"] and sub["meta"]["use_lidar"] == fusion
    assert res["global_step"] == 4
    if fusion:
        state = torch.load(next(tmp_path.glob("**/checkpoints/last.pt")), map_location="cpu", weights_only=False)
        assert int(state["model"]["trained_epoch"]) == 1
        assert any(k.startswith("encoders.camera.aux_head.") for k in state["model"])


# ---------------------------------------------------------------------------------------------- DDP validation
def _standin_model():
    torch.manual_seed(0)
    return BEVFusion({"lidar": PointsToBEV()}, decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads()).eval()


def _ddp_validate_worker(rank, world, port, root, out_dir):
    import os
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from sparse3d.engine.distributed import cleanup, init_distributed
    assert init_distributed("gloo")
    dm = make_dm(Path(root))
    loader = dm.val_dataloader(distributed=True)
    res = BEVFusionTask(eval_dir=str(Path(out_dir) / "ddp")).validate(_standin_model(), loader, torch.device("cpu"))
    torch.save({"n": len(loader.sampler), "res": res}, Path(out_dir) / f"rank{rank}.pt")
    cleanup()


@pytest.mark.slow
def test_ddp_validate_equals_single_process(root, tmp_path):
    """Uneven val shards (2 + 1 samples): gathered predictions and summed map counts give the single-process
    metrics on every rank."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_validate_worker, args=(2, port, str(root), str(tmp_path)), nprocs=2, join=True)
    single = BEVFusionTask(eval_dir=str(tmp_path / "single")).validate(
        _standin_model(), make_dm(root).val_dataloader(distributed=False), torch.device("cpu"))
    subs = [json.loads((tmp_path / d / "submission.json").read_text()) for d in ("ddp", "single")]
    assert subs[0]["results"].keys() == subs[1]["results"].keys()
    assert sum(len(v) for v in subs[1]["results"].values()) == 30  # 10 proposals x 3 samples, all gathered
    for tok, recs in subs[1]["results"].items():
        got = subs[0]["results"][tok]
        assert len(got) == len(recs)
        for a, b in zip(got, recs):
            assert a["detection_name"] == b["detection_name"]
            assert a["translation"] == pytest.approx(b["translation"], abs=1e-4)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert (r0["n"], r1["n"]) == (2, 1)
    for r in (r0["res"], r1["res"]):
        for k in ("nds", "mAP", "mATE", "map_miou"):
            assert r[k] == pytest.approx(single[k], abs=1e-6), k
        assert r["map_iou"] == pytest.approx(single["map_iou"], abs=1e-9)
