"""Training engine: checkpoints, schedule, seeding, tools/train.py end to end on a tiny generated
set, exact resume, and DDP (2 gloo processes) gradients equal to one process on the whole batch."""
import importlib.util
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import sparse3d
from sparse3d import SparseTensor, sparse_collate
from sparse3d.engine import (CosineWarmupLR, get_rng_state, load_checkpoint, save_checkpoint,
                             seed_everything, segmentation_loss, set_rng_state)
from test_configs import compose_train

REPO = Path(__file__).resolve().parents[1]
TINY = ["dataset.synthetic.n_train=2", "dataset.synthetic.n_val=1", "dataset.synthetic.azimuth_steps=120",
        "dataset.synthetic.seed=3", "dataset.batch_size=1", "model.cr=0.125", "trainer.progress=false",
        "trainer.num_threads=2"]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    from sparse3d.datasets.synthetic_lidar import ensure_synthetic_kitti
    root = tmp_path_factory.mktemp("tinykitti") / "synth"
    ensure_synthetic_kitti(root, seed=3, n_train=2, n_val=1, azimuth_steps=120)
    return root


def _train_module():
    spec = importlib.util.spec_from_file_location("sparse3d_tools_train", REPO / "tools" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cfg(root, out, *extra):
    return compose_train([*TINY, f"dataset.root={root}", f"paths.output_root={out}", *extra])


# ---------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_atomic(tmp_path):
    p = tmp_path / "ck" / "last.pt"
    save_checkpoint(p, {"model": {"w": torch.arange(3)}, "epoch": 2})
    save_checkpoint(p, {"model": {"w": torch.arange(4)}, "epoch": 3})  # replaces
    st = load_checkpoint(p)
    assert st["epoch"] == 3 and torch.equal(st["model"]["w"], torch.arange(4))
    assert sorted(x.name for x in p.parent.iterdir()) == ["last.pt"]  # no temp files left


def test_checkpoint_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    p = tmp_path / "trunc.pt"
    save_checkpoint(p, {"model": {"w": torch.randn(1000)}})
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(ValueError, match="trunc.pt"):
        load_checkpoint(p)
    q = tmp_path / "other.pt"
    torch.save([1, 2], q)
    with pytest.raises(ValueError, match="other.pt.*not a sparse3d checkpoint"):
        load_checkpoint(q)
    with pytest.raises(TypeError, match="state"):
        save_checkpoint(tmp_path / "x.pt", [1])


def test_failed_save_keeps_old_file(tmp_path):
    p = tmp_path / "last.pt"
    save_checkpoint(p, {"model": {}, "epoch": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(p, {"model": {}, "bad": Boom()})
    assert load_checkpoint(p)["epoch"] == 1
    assert [x.name for x in tmp_path.iterdir()] == ["last.pt"]


# ---------------------------------------------------------------- schedule, seeds, loss
def test_cosine_warmup_schedule():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.24)
    s = CosineWarmupLR(opt, total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        s.step()
    assert lrs[0] == pytest.approx(0.24 / 3) and lrs[1] == pytest.approx(0.24 * 2 / 3)
    assert lrs[2] == pytest.approx(0.24)
    assert lrs[7] == pytest.approx(0.24 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10))))
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.024)  # at total_steps: min
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.24)
    s2 = CosineWarmupLR(opt2, total_steps=12, warmup_steps=2, min_lr_ratio=0.1)
    s2.load_state_dict(s.state_dict())
    assert s2.last_epoch == 12 and s2.get_last_lr() == s.get_last_lr()
    with pytest.raises(ValueError, match="total_steps"):
        CosineWarmupLR(opt, total_steps=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        CosineWarmupLR(opt, total_steps=5, warmup_ratio=1.5)
    assert CosineWarmupLR(opt, total_steps=100, warmup_ratio=0.05).warmup_steps == 5


def test_seed_and_rng_state():
    seed_everything(7)
    st = get_rng_state()
    a = (torch.rand(3), np.random.rand(3), __import__("random").random())
    set_rng_state(st)
    b = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    with pytest.raises(ValueError, match="seed"):
        seed_everything(-1)
    with pytest.raises(ValueError, match="numpy"):
        set_rng_state({"torch": st["torch"]})


def test_segmentation_loss_is_mean_ce():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3, 4, 255, 255, 1, 2, 0])
    loss, n = segmentation_loss(logits, y, 255)
    assert int(n) == 8
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y, ignore_index=255))
    loss0, _ = segmentation_loss(logits, torch.full((10,), 255), 255)
    assert float(loss0) == 0.0
    with pytest.raises(ValueError, match="logits"):
        segmentation_loss(logits, y[:3])


# ---------------------------------------------------------------- end to end
def test_data_module_loaders(tiny_root):
    from hydra.utils import instantiate
    cfg = _cfg(tiny_root, "/tmp/unused")
    dm = instantiate(cfg.dataset)
    tl, vl = dm.train_dataloader(), dm.val_dataloader()
    assert len(tl.dataset) == 2 and len(vl.dataset) == 1  # sequences 00, 01 / 08 of the small set
    b = next(iter(vl))
    assert isinstance(b["lidar"], SparseTensor) and b["lidar"].feats.shape[1] == 4
    assert len(b["targets"]) == len(b["lidar"].feats)
    views = cfg.dataset.tta_views   # the default experiment validates on 6 rotated views of each scan
    assert views == 6 and b["lidar"].coords[:, 0].unique().tolist() == list(range(views))
    assert len(b["lidar_inverse"]) == views * len(b["targets_mapped"])  # every point of the val scan, per view
    assert int(b["tta_inverse"].max()) + 1 == len(b["targets_mapped"])
    assert int(b["lidar_inverse"].max()) < len(b["lidar"].feats)



def test_data_module_rotation_range():
    """``rotate``: true = a full turn, false = off, ``(low, high)`` radians = that range (e.g. +-pi/4,
    the detection-style range the default experiment uses); anything else is a clear error."""
    from sparse3d.datasets.kitti_module import SemanticKITTIDataModule
    from sparse3d.datasets.transforms import RandomRotateZ

    def rot(dm):
        return [t for t in dm.train_transform().transforms if isinstance(t, RandomRotateZ)]

    full, = rot(SemanticKITTIDataModule("/unused", rotate=True))
    assert (full.low, full.high) == (0.0, 2 * math.pi)
    assert rot(SemanticKITTIDataModule("/unused", rotate=False)) == []
    r, = rot(SemanticKITTIDataModule("/unused", rotate=[-0.5, 0.25]))
    assert (r.low, r.high) == (-0.5, 0.25)
    pts = np.array([[1.0, 0.0, 0.0, 0.1]], np.float32)
    out = SemanticKITTIDataModule("/unused", rotate=(0.5, 0.5), scale=None).train_transform().transforms[0](
        {"points": pts})["points"]
    assert np.allclose(out[0, :2], [math.cos(0.5), math.sin(0.5)], atol=1e-6) and out[0, 3] == np.float32(0.1)
    for bad in ([0.3, 0.1], [0.1], "pi", [0.0, float("nan")]):
        with pytest.raises(ValueError, match="rotate"):
            SemanticKITTIDataModule("/unused", rotate=bad)

def test_tools_train_end_to_end(tiny_root, tmp_path, capsys):
    cfg = _cfg(tiny_root, tmp_path, "trainer.max_epochs=2", "trainer.grad_clip=1.0", "optim=adamw")
    res = _train_module().train(cfg)
    run = Path(cfg.paths.run_dir)
    assert run.parent == tmp_path / "spvcnn_semantic_kitti_synth"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    st = load_checkpoint(run / "checkpoints" / "last.pt")
    assert set(st) >= {"model", "optimizer", "scheduler", "scaler", "epoch", "global_step", "best_miou", "rng", "cfg"}
    assert st["epoch"] == 2 and st["global_step"] == 4 and st["scaler"] is None
    assert "SPVCNN" in st["cfg"] and (run / "config.yaml").read_text() == st["cfg"]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert 0.0 <= res["miou"] <= 1.0 and res["iou"].shape == (19,)
    out = capsys.readouterr().out
    assert "mIoU (all 19 classes" in out and "traffic-sign" in out


def test_bf16_autocast_step(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "trainer.max_epochs=1", "trainer.amp=true", "model=minkunet",
               "trainer.tensorboard=false")
    res = _train_module().train(cfg)
    assert res["global_step"] == 2 and math.isfinite(res["miou"])


def test_resume_gives_identical_weights(tiny_root, tmp_path, monkeypatch):
    """2 epochs straight == 1 epoch, then resume=true for the 2nd (SPVCNN: dropout + augmentation RNG)."""
    train = _train_module().train
    common = ["trainer.deterministic=true", "trainer.tensorboard=false", "trainer.max_epochs=2",
              "optim.scheduler.warmup_steps=1", "optim.scheduler.warmup_ratio=null"]
    cfg = _cfg(tiny_root, tmp_path / "a", *common)
    train(cfg)
    straight = load_checkpoint(Path(cfg.paths.run_dir) / "checkpoints" / "last.pt")

    # the second run is interrupted right after writing epoch 1's last.pt (a simulated crash)
    import sparse3d.engine.trainer as trainer_mod
    real_save = trainer_mod.save_checkpoint

    class Interrupted(Exception):
        pass

    def save_then_crash(path, state):
        real_save(path, state)
        if state["epoch"] == 1:
            raise Interrupted

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_then_crash)
    cfg1 = _cfg(tiny_root, tmp_path / "b", *common)
    with pytest.raises(Interrupted):
        train(cfg1)
    monkeypatch.setattr(trainer_mod, "save_checkpoint", real_save)
    cfg2 = _cfg(tiny_root, tmp_path / "b", *common, "resume=true")
    cfg2.paths.run_dir = str(Path(cfg1.paths.run_dir).parent / "resumed")
    res = train(cfg2)
    assert res["epoch"] == 2 and res["global_step"] == 4
    resumed = load_checkpoint(Path(cfg2.paths.run_dir) / "checkpoints" / "last.pt")
    assert straight["model"].keys() == resumed["model"].keys()
    for k, v in straight["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    assert straight["scheduler"]["last_epoch"] == resumed["scheduler"]["last_epoch"] == 4
    for a, b in zip(straight["optimizer"]["state"].values(), resumed["optimizer"]["state"].values()):
        assert a.keys() == b.keys()  # AdamW (the default recipe): step, exp_avg, exp_avg_sq
        for key in a:
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


def test_resume_true_without_checkpoint(tiny_root, tmp_path):
    cfg = _cfg(tiny_root, tmp_path, "resume=true")
    with pytest.raises(FileNotFoundError, match="no checkpoints/last.pt"):
        _train_module().train(cfg)


# ---------------------------------------------------------------- DDP gradients
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples():
    g = torch.Generator().manual_seed(1)
    out = []
    for n in (40, 25):  # uneven voxel counts per rank
        c = torch.zeros(n, 4, dtype=torch.int32)
        c[:, 1:] = torch.stack(torch.meshgrid(torch.arange(4), torch.arange(4), torch.arange(4), indexing="ij"),
                               -1).view(-1, 3)[torch.randperm(64, generator=g)[:n]] * 2
        y = torch.randint(0, 5, (n,), generator=g)
        y[torch.randperm(n, generator=g)[:5]] = 255
        out.append((SparseTensor(torch.randn(n, 4, generator=g), c), y))
    return out


def _models():
    """A BatchNorm-free sparse net, and MinkUNet with BN in eval mode (per-rank BN batch statistics
    would differ from the full batch's, and SyncBatchNorm has no CPU/gloo path)."""
    from sparse3d import nn as spnn
    from sparse3d.models.spvnas.minkunet import MinkUNet

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = spnn.Conv3d(4, 8, 3), spnn.Conv3d(8, 8, 2, stride=2)
            self.up, self.head = spnn.Conv3d(8, 8, 2, stride=2, transposed=True), torch.nn.Linear(16, 5)

        def forward(self, x):
            a = spnn.ReLU()(self.c1(x))
            b = self.up(spnn.ReLU()(self.c2(a)))
            return self.head(torch.cat([a.feats, b.feats], 1))

    torch.manual_seed(0)
    net = Net()
    torch.manual_seed(0)
    mink = MinkUNet(4, 5, cr=0.125).eval()
    return {"plain": net, "minkunet_bn_eval": mink}


def _ddp_worker(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from sparse3d.engine.distributed import cleanup, init_distributed
    assert init_distributed("gloo")
    x, y = _samples()[rank]
    x = sparse_collate([x])
    grads = {}
    for name, model in _models().items():
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss, _ = segmentation_loss(ddp(x), y, 255, world)
        loss.backward()
        grads[name] = [p.grad.clone() for p in model.parameters()]
    torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    cleanup()


def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    samples = _samples()
    x = sparse_collate([s[0] for s in samples])
    y = torch.cat([s[1] for s in samples])
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name, model in _models().items():
        loss, _ = segmentation_loss(model(x), y, 255, 1)
        loss.backward()
        assert len(r0[name]) == len(list(model.parameters())) > 0
        for p, g0, g1 in zip(model.parameters(), r0[name], r1[name]):
            torch.testing.assert_close(g0, g1, rtol=0, atol=0)  # all-reduced: identical on both ranks
            torch.testing.assert_close(g0, p.grad, rtol=1e-4, atol=1e-6)
            assert p.grad.abs().sum() > 0 or name == "minkunet_bn_eval"


@pytest.mark.slow
def test_torchrun_ddp_cli(tiny_root, tmp_path):
    """``torchrun --nproc_per_node 2 tools/train.py trainer=ddp`` on the tiny set (gloo, CPU)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(REPO / "tools" / "train.py"), "trainer=ddp", *TINY,
           f"dataset.root={tiny_root}", f"paths.output_root={tmp_path}", "trainer.max_epochs=1",
           "trainer.num_threads=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "spvcnn_semantic_kitti_synth").iterdir())
    assert len(runs) == 1  # both ranks share rank 0's run folder
    st = load_checkpoint(runs[0] / "checkpoints" / "last.pt")
    assert st["epoch"] == 1 and st["global_step"] == 1  # 2 scans, batch 1 per rank
    assert "mIoU (all 19 classes" in r.stdout


def test_train_cli_nproc_launches_local_ddp(tiny_root, tmp_path):
    """``python tools/train.py nproc=2``: the script starts 2 gloo DDP workers itself (torch's elastic launcher)."""
    cmd = [sys.executable, str(REPO / "tools" / "train.py"), "nproc=2", *TINY, f"dataset.root={tiny_root}",
           f"paths.output_root={tmp_path}", "trainer.max_epochs=1", "trainer.num_threads=1"]
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "spvcnn_semantic_kitti_synth").iterdir())
    assert len(runs) == 1  # both ranks share rank 0's run folder
    st = load_checkpoint(runs[0] / "checkpoints" / "last.pt")
    assert st["epoch"] == 1 and st["global_step"] == 1  # 2 scans, batch 1 per rank: one DDP step
    assert r.stdout.count("mIoU (all 19 classes") == 1  # rank 0 prints the table


def test_launch_local_runs_ranks_and_reports_failures():
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from sparse3d.engine.distributed import launch_local
    import _ddp_fns
    out = launch_local(_ddp_fns.rank_sum, 2, 10)
    assert out == {0: (0, 2, 21), 1: (1, 2, 21)}   # (0 + 10) + (1 + 10)
    omp = os.environ.get("OMP_NUM_THREADS")
    launch_local(_ddp_fns.rank_sum, 2, 0)
    assert os.environ.get("OMP_NUM_THREADS") == omp   # the workers' setting does not leak into this process
    with pytest.raises(ChildFailedError):
        launch_local(_ddp_fns.fail_on_rank1, 2)
    with pytest.raises(ValueError, match="nproc"):
        launch_local(_ddp_fns.rank_sum, 0, 1)
