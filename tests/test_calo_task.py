"""CaloTask (training step, PQ validation, DDP reduction), CLUE parameter search, calo evaluation tables."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import compose_config
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("uproot")

from sparse3d.clustering.clue import clue_hgcal  # noqa: E402
from sparse3d.clustering.clue_model import CLUEClusterer, search_clue_params  # noqa: E402
from sparse3d.datasets.calo.module import CaloDataModule, ensure_calo_synth  # noqa: E402
from sparse3d.engine.tasks.calo import CaloTask, format_panoptic_table, run_clue_search  # noqa: E402
from sparse3d.evaluation import calo as EC  # noqa: E402
from sparse3d.metrics.panoptic import PanopticQuality  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(seed=11, n_train=4, n_val=3, n_test=2, n_test_pileup=2, pileup=10.0)


class PerfectModel(nn.Module):
    """Stand-in with the calo model interface: clusters = truth, semantic logits = truth (+ a linear
    layer so that the loss has gradients). The loss is a mean over events of per-event CE."""

    instance_mode = "offset"

    def __init__(self, in_channels: int = 3, perfect: bool = True) -> None:
        super().__init__()
        self.lin = nn.Linear(in_channels, 2)
        self.perfect = perfect

    def forward(self, batch):
        return {"semantic_logits": self.lin(batch["feats"]) + 100.0 * F.one_hot(batch["semantic"], 2)}

    def loss(self, outputs, batch):
        logits = self.lin(batch["feats"])
        off = batch["offsets"].tolist()
        per = [F.cross_entropy(logits[s:e], batch["semantic"][s:e]) for s, e in zip(off[:-1], off[1:]) if e > s]
        loss = torch.stack(per).mean()
        return loss, {"ce": float(loss.detach())}

    def cluster(self, outputs, batch):
        off = batch["offsets"].tolist()
        lab = batch["cluster_idx"].cpu().numpy()
        if not self.perfect:
            lab = np.full_like(lab, -1)
        return [lab[s:e] for s, e in zip(off[:-1], off[1:])]


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    root = tmp_path_factory.mktemp("calo_task") / "synth"
    d = CaloDataModule(root, synthetic=TINY, batch_size=2, val_batch_size=2)
    d.prepare_data()
    return d


# ----------------------------------------------------------------------------- task


def test_validate_perfect_model_gives_pq_one(dm):
    task = CaloTask()
    r = task.validate(PerfectModel().eval(), dm.val_dataloader(distributed=False), torch.device("cpu"))
    for k in ("pq", "sq", "rq", "pq_event", "wpq", "wsq", "wrq", "wpq_event", "sem_acc", "sem_iou_signal"):
        assert r[k] == pytest.approx(1.0), k
    assert r["n_events"] == 3 and np.isfinite(r["loss"]) and r["net_ms"] >= 0 and r["cluster_ms"] >= 0
    assert r["panoptic"]["count"]["fp"] == 0 and r["panoptic"]["count"]["fn"] == 0
    assert r["panoptic"]["count"]["tp"] == sum(np.unique(e.truth_idx[e.truth_idx >= 0]).size for e in dm.events("val"))
    text = task.format_result(r)
    assert "hit-count" in text and "energy-weighted" in text and "100.00" in text


def test_validate_matches_panoptic_quality(dm):
    """All-noise predictions: PQ 0 and FN = every true cluster; same numbers as PanopticQuality."""
    r = CaloTask(monitor="wpq").validate(PerfectModel(perfect=False).eval(), dm.val_dataloader(distributed=False),
                                         torch.device("cpu"))
    ref = PanopticQuality()
    for e in dm.events("val"):
        ref.update(np.full(e.n_hits, -1), e.labels(True), e.energy)
    want = ref.compute()
    for k in ("count", "energy"):
        for m in ("pq", "sq", "rq", "tp", "fp", "fn", "pq_event"):
            assert r["panoptic"][k][m] == pytest.approx(want[k][m]), (k, m)
    assert r["pq"] == 0 and r["panoptic"]["count"]["fn"] > 0


def test_training_step_and_bad_args(dm):
    model = PerfectModel()
    batch = next(iter(dm.train_dataloader(distributed=False)))
    loss, logs = CaloTask().training_step(model, batch, 1)
    loss.backward()
    assert loss.ndim == 0 and np.isfinite(loss.item()) and set(logs) == {"ce"}
    assert model.lin.weight.grad is not None

    class Wrapped(nn.Module):   # DDP-like: the loss comes from .module
        def __init__(self, m):
            super().__init__()
            self.module = m

        def forward(self, b):
            return self.module(b)

    loss2, _ = CaloTask().training_step(Wrapped(model), batch, 1)
    assert torch.allclose(loss, loss2)
    with pytest.raises(ValueError, match="monitor"):
        CaloTask(monitor="miou")
    with pytest.raises(ValueError, match="iou_threshold"):
        CaloTask(iou_threshold=0.3)


def test_validate_rejects_wrong_label_count(dm):
    class Bad(PerfectModel):
        def cluster(self, outputs, batch):
            return [np.zeros(1, np.int64) for _ in range(batch["offsets"].numel() - 1)]

    with pytest.raises(ValueError, match="labels for event"):
        CaloTask().validate(Bad().eval(), dm.val_dataloader(distributed=False), torch.device("cpu"))


def _ddp_worker(rank, world, tmp, root):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = PerfectModel()
        net = nn.parallel.DistributedDataParallel(model)
        d = CaloDataModule(root, synthetic=TINY, batch_size=3, rotate=False, flip_endcap=False)
        evs = d.events("train")
        mine = evs[:3] if rank == 0 else evs[3:]   # uneven: 3 and 1 events
        loss, _ = CaloTask().training_step(net, d.collate.events(mine), world)
        loss.backward()
        val = CaloTask().validate(model.eval(), d.val_dataloader(rank=rank, world_size=world), torch.device("cpu"))
        torch.save({"grad": model.lin.weight.grad.clone(), "val": val["panoptic"], "n": val["n_events"]},
                   f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_sums_emulated(dm, monkeypatch):
    """Two ranks emulated in one process (``all_reduce_sum`` patched to add the other rank's share):
    the averaged gradients equal the single-process gradient over all events, and the reduced
    validation equals the single-process one."""
    from sparse3d.engine import distributed as D
    evs = dm.events("train")
    shards = [evs[:3], evs[3:]]   # uneven: 3 and 1 events
    grads = []
    for r in range(2):
        torch.manual_seed(0)
        model = PerfectModel()
        monkeypatch.setattr(D, "all_reduce_sum", lambda t: t * 0 + len(evs))
        loss, _ = CaloTask().training_step(model, dm.collate.events(shards[r]), 2)
        loss.backward()
        grads.append(model.lin.weight.grad.clone())
    torch.manual_seed(0)
    model = PerfectModel()
    monkeypatch.undo()
    loss, _ = CaloTask().training_step(model, dm.collate.events(evs), 1)
    loss.backward()
    torch.testing.assert_close((grads[0] + grads[1]) / 2, model.lin.weight.grad, rtol=1e-5, atol=1e-6)

    task, cpu = CaloTask(), torch.device("cpu")
    single = task.validate(CLUEClusterer(), dm.val_dataloader(distributed=False), cpu)
    other = {}
    monkeypatch.setattr(D, "all_reduce_sum", lambda t: other.setdefault("v", t.clone()))
    task.validate(CLUEClusterer(), dm.val_dataloader(rank=1, world_size=2), cpu)
    monkeypatch.setattr(D, "all_reduce_sum", lambda t: t + other["v"])
    both = task.validate(CLUEClusterer(), dm.val_dataloader(rank=0, world_size=2), cpu)
    assert single["panoptic"]["count"]["tp"] > 0 and both["n_events"] == 3
    for k in ("count", "energy"):
        for m, v in single["panoptic"][k].items():
            assert both["panoptic"][k][m] == pytest.approx(v, rel=1e-12), (k, m)


@pytest.mark.slow
def test_ddp_loss_normalization_and_val_reduction(dm, tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_ddp_worker, args=(2, str(tmp_path), str(dm.root)), nprocs=2, join=True)
    torch.manual_seed(0)
    model = PerfectModel()
    loss, _ = CaloTask().training_step(model, dm.collate.events(dm.events("train")), 1)
    loss.backward()
    single = CaloTask().validate(model.eval(), dm.val_dataloader(distributed=False), torch.device("cpu"))
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=False)
        torch.testing.assert_close(got["grad"], model.lin.weight.grad, rtol=1e-5, atol=1e-6)
        assert got["n"] == 3
        assert got["val"] == single["panoptic"]


# ----------------------------------------------------------------------------- CLUE


def test_clue_clusterer_interface_and_state(dm):
    m = CLUEClusterer(dc_si=2.5)
    batch = dm.collate.events(dm.events("val")[:2])
    labs = m.cluster(m(batch), batch)
    for ev, lab in zip(dm.events("val")[:2], labs):
        np.testing.assert_array_equal(lab, clue_hgcal(ev.x, ev.y, ev.z, ev.layer, ev.energy, m.params))
    m2 = CLUEClusterer()
    m2.load_state_dict(m.state_dict())
    assert m2.params == m.params and m2.params.dc_si == 2.5
    with pytest.raises(ValueError, match="unknown CLUE parameters"):
        CLUEClusterer(dc=1.0)


def test_search_clue_params_finds_grid_optimum():
    m = CLUEClusterer()
    found = search_clue_params(m, lambda mm: -(mm.params.dc_si - 2.5) ** 2 - (mm.params.rhoc_mip - 2.0) ** 2,
                               {"dc_si": [1.3, 1.8, 2.5], "rhoc_mip": [1.0, 2.0, 4.0]}, passes=3)
    assert found["params"]["dc_si"] == 2.5 and found["params"]["rhoc_mip"] == 2.0
    assert m.params.dc_si == 2.5 and found["score"] == 0.0
    assert len(found["trials"]) == len({tuple(sorted(t["params"].items())) for t in found["trials"]})
    with pytest.raises(ValueError, match="unknown CLUE grid"):
        search_clue_params(m, lambda mm: 0.0, {"radius": [1]})
    with pytest.raises(ValueError, match="passes"):
        search_clue_params(m, lambda mm: 0.0, passes=0)


def test_run_clue_search_writes_checkpoint(dm, tmp_path):
    from sparse3d.clustering.pipeline import load_clusterer
    res = run_clue_search(CLUEClusterer(), dm, CaloTask(), tmp_path / "run", cfg_yaml="",
                          grid={"dc_si": [1.3, 2.5], "layer_window": [3, 6]}, n_events=3, verbose=False)
    assert res["monitor"] == "pq" and res["best_miou"] == res["pq"] and 0 <= res["pq"] <= 1
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()
    saved = json.loads((tmp_path / "run" / "clue_params.json").read_text())
    assert saved["params"] == res["clue_params"]
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    m = CLUEClusterer()
    m.load_state_dict(state["model"])
    assert m.params.dc_si == res["clue_params"]["dc_si"]
    with pytest.raises(ValueError, match="cfg"):   # no config stored: not usable by tools/cluster.py
        load_clusterer(tmp_path / "run" / "checkpoints" / "best.pt")


# ----------------------------------------------------------------------------- Hydra route + evaluation


def _compose(name, overrides):
    return compose_config(name, overrides)


def _tiny_overrides(root):
    return [f"dataset.root={root}", *(f"dataset.synthetic.{k}={v}" for k, v in TINY.items())]


def test_fit_clue_and_evaluate_through_configs(dm, tmp_path, capsys):
    from hydra.utils import get_method
    cfg = _compose("train", ["experiment=calo_clue", *_tiny_overrides(dm.root), f"paths.run_dir={tmp_path / 'run'}",
                             "clue_search.n_events=2", "clue_search.passes=1", "~clue_search.grid",
                             "+clue_search.grid={dc_si:[1.8,2.5]}"])
    assert cfg.fit_fn == "sparse3d.engine.tasks.calo.fit_clue"
    res = get_method(cfg.fit_fn)(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    assert ckpt.is_file() and "panoptic quality on 3 validation events" in capsys.readouterr().out
    assert res["clue_params"]["dc_si"] in (1.8, 2.5)

    results = tmp_path / "results"
    gravnet = {"method": "GravNet+OC", "model_class": "GravNetOC", "experiment": "calo_gravnet", "num_threads": 2,
               "device": "cpu", "splits": {s: _fake_split(2, net=50.0) for s in ("test", "test_pu")}}
    results.mkdir()
    (results / "calo_gravnet.json").write_text(json.dumps(gravnet))
    ecfg = _compose("eval", ["experiment=calo_clue", *_tiny_overrides(dm.root), f"checkpoint={ckpt}",
                             f"output_dir={tmp_path / 'eval'}", f"calo_eval.results_dir={results}", "num_threads=2",
                             "progress=false"])
    assert ecfg.eval_fn == "sparse3d.evaluation.calo.evaluate"
    out = get_method(ecfg.eval_fn)(ecfg)
    ev = tmp_path / "eval"
    for f in ("calo_result.json", "calo_table.md", "calo_table.json", "response_resolution_test.png",
              "efficiency_test_pu.png", "event_display_test_truth.png", "event_display_test_pred.png"):
        assert (ev / f).is_file(), f
    assert out["method"] == "CLUE" and out["clue_params"]["dc_si"] == res["clue_params"]["dc_si"]
    assert out["splits"]["test"]["n_events"] == 2 and out["splits"]["test_pu"]["n_events"] == 2
    row = out["table"][0]
    assert out["has_network"] is False and row["speedup_net"] is None     # CLUE has no network
    assert row["speedup_total"] == pytest.approx(60.0 / row["total_ms"])
    md = (ev / "calo_table.md").read_text()
    assert "| CLUE | test | 2 |" in md and "energy-weighted IoU" in md
    thr = md.split("Network throughput")[-1] if "Network throughput" in md else ""
    assert "| CLUE |" not in thr          # no network: no throughput row
    comp = (results / "comparison.md").read_text()
    assert "GravNet+OC" in comp and "CLUE" in comp and (results / "calo_clue.json").is_file()


def _fake_split(n, net, pq=0.5):
    pan = {"pq": pq, "sq": 0.9, "rq": pq / 0.9, "pq_event": pq + 0.01, "sq_event": 0.9, "rq_event": 0.6,
           "tp": 5, "fp": 1, "fn": 2, "n_events": n}
    return {"n_events": n, "panoptic": {"count": pan, "energy": pan},
            "net_ms": {"mean": net, "median": net, "p90": net}, "cluster_ms": {"mean": 10.0, "median": 10.0, "p90": 10.0},
            "total_ms": {"mean": net + 10.0, "median": net + 10.0, "p90": net + 10.0}}


def test_combine_results_and_table(tmp_path):
    mk = (lambda m, c, net, pq, thr=2: {"method": m, "model_class": c, "num_threads": thr, "device": "cpu",
                                        "splits": {"test": _fake_split(100, net, pq), "test_pu": _fake_split(50, net, pq)}})
    res = [mk("Calo-SPVCNN", "CaloSPVCNN", 5.0, 0.8), mk("GravNet+OC", "GravNetOC", 56.0, 0.75),
           mk("CLUE", "CLUEClusterer", 0.01, 0.6, thr=1)]
    rows = EC.combine_results(res)
    assert [(r["method"], r["split"]) for r in rows][:3] == [("Calo-SPVCNN", "test"), ("GravNet+OC", "test"),
                                                              ("CLUE", "test")]
    assert rows[0]["speedup_net"] == pytest.approx(56.0 / 5.0) and rows[1]["speedup_net"] == pytest.approx(1.0)
    assert rows[2]["speedup_net"] is None   # other thread count: no speedup
    md = EC.write_comparison(res, tmp_path)
    text = md.read_text()
    assert "| Calo-SPVCNN | test | 100 | 90.0 | 88.9 | 80.0 | 81.0 |" in text and "11.2x" in text
    assert json.loads((tmp_path / "comparison.json").read_text())[0]["pq"] == 0.8
    paths = []
    for i, r in enumerate(res):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(r))
    assert EC.combine_results(paths) == rows
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a calorimeter evaluation result"):
        EC.combine_results([tmp_path / "bad.json"])
    with pytest.raises(FileNotFoundError):
        EC.combine_results([tmp_path / "missing.json"])


def test_evaluate_events_perfect_model(dm):
    r = EC.evaluate_events(PerfectModel().eval(), dm.events("test_pu"), dm.collate, warmup=1, keep=(1,))
    assert r["panoptic"]["count"]["pq"] == pytest.approx(1.0) and r["panoptic"]["energy"]["pq"] == pytest.approx(1.0)
    assert r["n_events"] == 2 and set(r["labels"]) == {1}
    eff = r["response"]["all"]["efficiency"]
    assert np.nanmin(eff) == 1.0 and np.nanmax(r["response"]["all"]["fake_rate"]) == 0.0
    assert set(r["response"]) == {"all", "photon", "electron", "pion"}
    assert EC.method_name(PerfectModel()) == "PerfectModel" and EC.method_name(CLUEClusterer()) == "CLUE"
    assert "PQ_ev" in format_panoptic_table(r["panoptic"])


def test_network_throughput_counts_every_event(dm):
    events = dm.events("test_pu")                    # 2 events

    class Counting(PerfectModel):
        calls, rows = 0, 0

        def forward(self, batch):
            Counting.calls += 1
            Counting.rows += int(batch["offsets"].numel() - 1)
            return super().forward(batch)

    m = Counting().eval()
    tp = EC.network_throughput(m, events, dm.collate, [1, 2], repeats=2)
    assert set(tp) == {1, 2}
    for v in tp.values():
        assert v["wall_ms"] > 0 and v["cpu_ms"] >= 0 and v["wall_ms_min"] <= v["wall_ms"]
    # bs 1: 2 warm-up + 2 x 2 timed calls; bs 2: 1 warm-up + 2 x 1 timed; every timed pass sees both events
    assert Counting.calls == (2 + 4) + (1 + 2) and Counting.rows == (2 + 4) + (2 + 4)
    assert all(v["workers"] == 1 and set(v["modes"]) == {1} for v in tp.values())
    Counting.calls = Counting.rows = 0
    tp = EC.network_throughput(m, events, dm.collate, [1], repeats=2, workers=[1, 2])
    v = tp[1]
    assert set(v["modes"]) == {1, 2} and v["workers"] in (1, 2)
    assert v["wall_ms"] == min(mv["wall_ms"] for mv in v["modes"].values())
    # warm-up: 2 calls (1 worker) + 2 calls (2 workers: 4 batches asked, 2 exist); timed: 2 repeats x 2 modes x 2
    assert Counting.calls == 4 + 8 and Counting.rows == 4 + 8
    assert EC.network_throughput(m, [], dm.collate, [4]) == {}
    with pytest.raises(ValueError, match="batch_sizes"):
        EC.network_throughput(m, events, dm.collate, [0])


def test_throughput_speedups_in_table():
    def res(m, c, wall):
        sp = _fake_split(10, 5.0)
        sp["throughput"] = {"8": {"wall_ms": wall, "cpu_ms": wall, "wall_ms_min": wall}}
        return {"method": m, "model_class": c, "num_threads": 1, "device": "cpu", "splits": {"test": sp}}
    rows = EC.combine_results([res("Calo-SPVCNN", "CaloSPVCNN", 2.0), res("GravNet+OC", "GravNetOC", 30.0)])
    assert rows[0]["throughput"][8]["speedup"] == pytest.approx(15.0)
    assert rows[1]["throughput"][8]["speedup"] == pytest.approx(1.0)
    md = EC.table_markdown(rows)
    assert "batch 8: speedup" in md and "| Calo-SPVCNN | test | 2.00 / 2.00 | 15.0x |" in md


@pytest.mark.parametrize("experiment", ["calo_spvcnn", "calo_gravnet"])
def test_experiment_trains_and_evaluates(dm, tmp_path, experiment):
    """Tiny smoke test of the configs: compose -> Trainer.fit with CaloTask (1 epoch) -> eval_fn."""
    from hydra.utils import get_method, instantiate
    small = ["model.cr=0.25", "+model.max_iter=20"] if experiment == "calo_spvcnn" else ["model.k=8"]
    cfg = _compose("train", [f"experiment={experiment}", *_tiny_overrides(dm.root), *small,
                             "trainer.max_epochs=1", "trainer.progress=false", "trainer.tensorboard=false",
                             "dataset.batch_size=4", "dataset.val_batch_size=4"])
    assert cfg.task._target_ == "sparse3d.engine.tasks.calo.CaloTask" and cfg.experiment_name == experiment
    datamodule, model, task = instantiate(cfg.dataset), instantiate(cfg.model), instantiate(cfg.task)
    assert model.in_channels == datamodule.in_channels
    res = instantiate(cfg.trainer).fit(model, instantiate(cfg.optim.optimizer), datamodule, tmp_path / "run",
                                       scheduler=instantiate(cfg.optim.scheduler), cfg_yaml="x: 1", task=task)
    assert res["monitor"] == "pq" and 0.0 <= res["pq"] <= 1.0 and np.isfinite(res["loss"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    ecfg = _compose("eval", [f"experiment={experiment}", *_tiny_overrides(dm.root), *small, f"checkpoint={ckpt}",
                             f"output_dir={tmp_path / 'eval'}", f"calo_eval.results_dir={tmp_path / 'res'}",
                             "calo_eval.max_events=1", "calo_eval.warmup=0", "calo_eval.plots=false",
                             "calo_eval.pileup=false", "progress=false"])
    out = get_method(ecfg.eval_fn)(ecfg)
    assert out["model_class"] == type(model).__name__ and list(out["splits"]) == ["test"]
    assert (tmp_path / "eval" / "calo_table.md").is_file() and (tmp_path / "res" / f"{experiment}.json").is_file()
