"""BEVFusion training extras: the camera branch's perspective auxiliary head, and camera_from_epoch (LiDAR phase
then fusion in one run), with the trainer's set_epoch hook."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("nuscenes")

from sparse3d.datasets.nuscenes.module import collate_nuscenes  # noqa: E402
from sparse3d.engine.tasks.bevfusion import BEVFusionTask  # noqa: E402
from sparse3d.engine.trainer import Trainer  # noqa: E402
from sparse3d.models.bevfusion.bevfusion import BEVFusion  # noqa: E402
from sparse3d.models.bevfusion.camera import CameraEncoder, PerspectiveHead, perspective_targets  # noqa: E402
from sparse3d.models.bevfusion.fuser import ConvFuser  # noqa: E402

from test_bevfusion_smoke import Fuser, PointsToBEV, PoolTransform, TinyBackbone, TinyNeck, _heads  # noqa: E402
from test_nuscenes_module import make_dm, tiny_root  # noqa: E402


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    dm = make_dm(tiny_root(tmp_path_factory))
    return collate_nuscenes([dm.val_dataset()[i] for i in range(2)])


def _camera(c=8, aux=True):
    return CameraEncoder(TinyBackbone(), TinyNeck(), PoolTransform(c),
                         aux_head=PerspectiveHead(8, 10, hidden_channels=8) if aux else None)


def _fusion(camera_from_epoch=0, aux=True, **kw):
    torch.manual_seed(0)
    return BEVFusion({"camera": _camera(aux=aux), "lidar": PointsToBEV()}, fuser=ConvFuser([8, 8], 8, residual=1),
                     decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads(), camera_from_epoch=camera_from_epoch, **kw)


def test_perspective_aux_head_loss_in_training_only(batch):
    model = _fusion(loss_scale={"camera": 0.5}).train()
    out = model(batch)
    logits = out["camera_aux"]
    B, N = batch["img"].shape[:2]
    assert logits.shape[:2] == (B * N, 11)
    terms = model.loss(out, batch)
    head = model.encoders["camera"].aux_head
    targets = perspective_targets(batch["gt_boxes"], batch["gt_labels"], batch["camera2lidar"],
                                  batch["camera_intrinsics"], batch["img_aug_matrix"], batch["lidar_aug_matrix"],
                                  batch["img"].shape[-2:], logits.shape[-2:], background=10)
    assert (targets < 10).any() and (targets == 10).any()
    want = 0.5 * head.loss(logits, targets)
    assert float(terms["camera/loss_perspective"].detach()) == pytest.approx(float(want.detach()), rel=1e-6)
    loss, logs = BEVFusionTask().training_step(model, batch, 1)
    assert "camera/loss_perspective" in logs
    loss.backward()
    for mod in (head, model.encoders["camera"].backbone):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    model.eval()
    with torch.no_grad():
        out = model(batch)
        assert "camera_aux" not in out and "camera/loss_perspective" not in model.loss(out, batch)
    plain = _fusion(aux=False).train()
    assert "camera/loss_perspective" not in plain.loss(plain(batch), batch)


def test_camera_from_epoch_lidar_phase_then_fusion(batch):
    model = _fusion(camera_from_epoch=2).train()
    vt = model.encoders["camera"].vtransform
    assert model.camera_active and "trained_epoch" in model.state_dict()        # never given an epoch: camera on
    assert "trained_epoch" not in _fusion().state_dict()                         # unchanged without staging
    model.set_epoch(0)
    assert not model.camera_active
    out = model(batch)
    assert vt.calls == [] and "camera_aux" not in out
    lidar = model.encoders["lidar"](batch["points"])
    want = model.fuser([torch.zeros_like(lidar), lidar])
    torch.testing.assert_close(out["bev"], want)
    loss, _ = BEVFusionTask().training_step(model, batch, 1)
    loss.backward()
    assert all(p.grad is None for p in model.encoders["camera"].parameters())
    assert all(p.grad is not None for p in model.encoders["lidar"].parameters())
    model.set_epoch(1)
    model.eval()
    with torch.no_grad():
        model(batch)
    assert vt.calls == []                                   # validation in the LiDAR phase: as trained
    # a LiDAR-phase checkpoint keeps its phase; a fusion-phase one runs the camera
    fresh = _fusion(camera_from_epoch=2)
    fresh.load_state_dict(model.state_dict())
    assert not fresh.camera_active
    model.set_epoch(2)
    model.train()
    out = model(batch)
    assert len(vt.calls) == 1 and "camera_aux" in out
    fresh.load_state_dict(model.state_dict())
    assert fresh.camera_active
    # checkpoints across the two kinds load both ways: unstaged ones count as fully trained
    plain = _fusion()
    plain.load_state_dict(model.state_dict())
    fresh.set_epoch(0)
    fresh.load_state_dict(plain.state_dict())
    assert fresh.camera_active and int(fresh.trained_epoch) == -1


def test_camera_from_epoch_zeros_take_the_fusers_camera_width(batch):
    """The zeros get the camera's width from the fuser's in_channels (encoders run in the order camera, lidar)."""
    torch.manual_seed(0)
    model = BEVFusion({"lidar": PointsToBEV(), "camera": CameraEncoder(TinyBackbone(), TinyNeck(), PoolTransform(6))},
                      fuser=ConvFuser([6, 8], 8, residual=1), decoder=nn.Conv2d(8, 8, 3, padding=1), heads=_heads(),
                      camera_from_epoch=1)
    assert list(model.encoders) == ["camera", "lidar"]
    model.set_epoch(0)
    assert model(batch)["bev"].shape[1] == 8
    model.set_epoch(1)
    assert model(batch)["bev"].shape[1] == 8


def test_camera_from_epoch_bad_configuration():
    with pytest.raises(ValueError, match="camera_from_epoch must be >= 0"):
        _fusion(camera_from_epoch=-1)
    with pytest.raises(ValueError, match="needs both encoders and a fuser"):
        BEVFusion({"camera": _camera()}, heads=_heads(), camera_from_epoch=1)
    with pytest.raises(ValueError, match="fuser with in_channels"):
        BEVFusion({"camera": _camera(), "lidar": PointsToBEV()}, fuser=Fuser(), heads=_heads(), camera_from_epoch=1)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        _fusion(camera_from_epoch=1).set_epoch(-1)


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


class _DM:
    def _loader(self, distributed=False):
        return torch.utils.data.DataLoader([torch.ones(1)] * 2, batch_size=1, collate_fn=lambda xs: {"x": xs[0]})

    train_dataloader = val_dataloader = _loader


class _Task:
    monitor = "score"

    def training_step(self, net, batch, world_size=1):
        return (net.w - batch["x"]).pow(2).sum(), {}

    def validate(self, model, loader, device):
        return {"score": -float(model.w.detach().sub(1).abs())}


def test_trainer_calls_set_epoch_before_every_epoch_and_after_resume(tmp_path):
    model = _Recorder()
    opt = lambda p: torch.optim.SGD(p, 0.1)  # noqa: E731
    Trainer(max_epochs=2, progress=False, tensorboard=False).fit(model, opt, _DM(), tmp_path / "a", task=_Task())
    assert model.epochs == [0, 1]
    again = _Recorder()
    Trainer(max_epochs=4, progress=False, tensorboard=False).fit(
        again, opt, _DM(), tmp_path / "b", task=_Task(), resume=tmp_path / "a" / "checkpoints" / "last.pt")
    assert again.epochs == [2, 3]
