"""CaloDataModule: generated default set, features, collate, DDP sharding, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("uproot")
pytest.importorskip("awkward")

import awkward as ak  # noqa: E402
import uproot  # noqa: E402

from sparse3d.datasets.calo import CaloEvent, RootWriter, generate_event, write_npz_dir  # noqa: E402
from sparse3d.datasets.calo.module import (CaloCollate, CaloDataModule, CaloEventDataset, HitFeatures,  # noqa: E402
                                           ensure_calo_synth, load_events)

TINY = dict(seed=5, n_train=5, n_val=3, n_test=2, n_test_pileup=2, pileup=20.0)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("calo") / "synth"
    ensure_calo_synth(root, **TINY)
    return root


@pytest.fixture(scope="module")
def dm(synth_root):
    d = CaloDataModule(synth_root, synthetic=TINY, batch_size=2, val_batch_size=2, seed=3)
    d.prepare_data()
    return d


def _event(n, seed=0, n_part=2, truth=True):
    rng = np.random.default_rng(seed)
    kw = dict(x=rng.normal(50, 5, n).astype(np.float32), y=rng.normal(50, 5, n).astype(np.float32),
              z=np.full(n, 330.0, np.float32), energy=rng.uniform(0.01, 1, n).astype(np.float32),
              time=rng.normal(0, 0.05, n).astype(np.float32), layer=rng.integers(1, 29, n).astype(np.int32))
    if not truth:
        return CaloEvent(**kw)
    parts = dict(energy=np.full(n_part, 10.0, np.float32), eta=np.full(n_part, 2.0, np.float32),
                 phi=np.zeros(n_part, np.float32), pdgid=np.full(n_part, 22, np.int32),
                 is_pu=np.array([False] * (n_part - 1) + [True]) if n_part else np.zeros(0, bool),
                 rec_energy=np.ones(n_part, np.float32))
    idx = rng.integers(-1, n_part, n).astype(np.int32) if n_part else np.full(n, -1, np.int32)
    return CaloEvent(**kw, truth_idx=idx, truth_frac=np.ones(n, np.float32), particles=parts)


# ----------------------------------------------------------------------------- generation


def test_prepare_data_writes_splits_and_meta(dm, synth_root):
    for s, n in (("train", 5), ("val", 3), ("test", 2), ("test_pu", 2)):
        assert (synth_root / f"{s}.root").is_file()
        assert len(dm.events(s)) == n
    meta = json.loads((synth_root / "synth_meta.json").read_text())
    assert meta["params"]["n_train"] == 5 and meta["params"]["pileup"] == 20.0
    assert meta["params"]["generator"]["pileup"] == 0.0 and len(meta["params"]["generator_hash"]) == 16
    # pileup only in test_pu
    assert not any(e.particles["is_pu"].any() for s in ("train", "val", "test") for e in dm.events(s))
    assert any(e.particles["is_pu"].any() for e in dm.events("test_pu"))
    # deterministic: the events are the generator's stream seed + k
    ev = generate_event(None, TINY["seed"] + 1, 2)
    got = dm.events("val")[2]
    np.testing.assert_array_equal(got.energy, ev.energy)
    np.testing.assert_array_equal(got.truth_idx, ev.truth_idx)


def test_prepare_data_idempotent_and_regenerates(tmp_path):
    root = tmp_path / "s"
    params = dict(TINY, n_train=2, n_val=1, n_test=1, n_test_pileup=0)
    ensure_calo_synth(root, **params)
    stamp = (root / "train.root").stat().st_mtime_ns
    ensure_calo_synth(root, **params)
    assert (root / "train.root").stat().st_mtime_ns == stamp
    ensure_calo_synth(root, **dict(params, n_train=3))
    assert len(load_events(root / "train.root")) == 3
    assert CaloDataModule(root, synthetic=dict(params, n_train=3)).events("test_pu") == []   # empty split
    ensure_calo_synth(root, **dict(params, n_train=3, generator={"noise_hits": 10.0}))
    assert json.loads((root / "synth_meta.json").read_text())["params"]["generator"]["noise_hits"] == 10.0


def test_prepare_data_bad_params(tmp_path):
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="not a generated"):
        ensure_calo_synth(tmp_path / "foreign", **TINY)
    with pytest.raises(ValueError, match="n_val"):
        ensure_calo_synth(tmp_path / "a", **dict(TINY, n_val=-1))
    with pytest.raises(ValueError, match="synthetic.pileup"):
        ensure_calo_synth(tmp_path / "a", **dict(TINY, generator={"pileup": 3}))
    with pytest.raises(ValueError, match="synthetic.generator"):
        ensure_calo_synth(tmp_path / "a", **dict(TINY, generator={"bogus": 1}))
    with pytest.raises(ValueError, match="unknown synthetic keys"):
        CaloDataModule(tmp_path / "a", synthetic={"n_tain": 3})
    with pytest.raises(ValueError, match="batch_size"):
        CaloDataModule(tmp_path / "a", batch_size=0)
    with pytest.raises(FileNotFoundError, match="train"):
        CaloDataModule(tmp_path / "missing").prepare_data()


# ----------------------------------------------------------------------------- features / collate


def test_features_documented_values():
    ev = _event(4)
    ev.energy[:] = [0.0, 0.0085, 1.0, 10.0]
    ev.time[:] = [0.0, 0.1, -0.1, 20.0]
    f = HitFeatures(("energy", "time", "layer", "x", "z", "eta"))(ev)
    assert f.shape == (4, 6) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, 0], np.log1p(ev.energy / 0.0085) / 5, rtol=1e-6)
    np.testing.assert_allclose(f[:, 1], np.arcsinh(ev.time / 0.1) / 5, rtol=1e-6)
    np.testing.assert_allclose(f[:, 2], ev.layer / 50, rtol=1e-6)
    np.testing.assert_allclose(f[:, 3], ev.x / 100, rtol=1e-6)
    np.testing.assert_allclose(f[:, 4], (330.0 - 322.1) / 100, rtol=1e-5)
    assert np.all(f[:, 5] > 0.5)
    assert HitFeatures()(_event(0)).shape == (0, 3)
    with pytest.raises(ValueError, match="features"):
        HitFeatures(("energy", "colour"))
    with pytest.raises(ValueError, match="energy_scale"):
        HitFeatures(energy_scale=0)


def test_collate_shapes_offsets(dm):
    evs = dm.events("train")[:3]
    b = dm.collate.events(evs, ["a", "b", "c"])
    n = [e.n_hits for e in evs]
    p = sum(n)
    assert b["points"].shape == (p, 4) and b["points"].dtype == torch.float32
    assert b["feats"].shape == (p, 3) and b["feats"].dtype == torch.float32
    for k, dt in (("energy", torch.float32), ("time", torch.float32), ("layer", torch.int64),
                  ("cluster_idx", torch.int64), ("semantic", torch.int64)):
        assert b[k].shape == (p,) and b[k].dtype == dt, k
    assert b["offsets"].tolist() == [0, n[0], n[0] + n[1], p]
    assert b["event_id"] == ["a", "b", "c"] and len(b["particles"]) == 3 and b["has_truth"]
    for i, e in enumerate(evs):
        s, t = b["offsets"][i], b["offsets"][i + 1]
        assert (b["points"][s:t, 0] == i).all()
        np.testing.assert_array_equal(b["points"][s:t, 1].numpy(), e.x)
        np.testing.assert_array_equal(b["cluster_idx"][s:t].numpy(), e.truth_idx)
    assert torch.equal(b["semantic"], (b["cluster_idx"] >= 0).long())
    assert dm.in_channels == 3 and dm.class_names is None


def test_collate_zero_hit_event_and_no_truth():
    c = CaloCollate()
    b = c.events([_event(5), _event(0, n_part=0), _event(3)])
    assert b["offsets"].tolist() == [0, 5, 5, 8] and b["points"].shape == (8, 4)
    assert b["points"][:, 0].tolist() == [0] * 5 + [2] * 3
    empty = c.events([_event(0, n_part=0)])
    assert empty["feats"].shape == (0, 3) and empty["offsets"].tolist() == [0, 0]
    nt = c.events([_event(4, truth=False)])
    assert not nt["has_truth"] and (nt["cluster_idx"] == -1).all()


def test_pileup_as_noise():
    ev = _event(50, n_part=3)   # particle 2 is pileup
    with_pu = CaloCollate(pileup_as_noise=False).events([ev])["cluster_idx"]
    no_pu = CaloCollate(pileup_as_noise=True).events([ev])["cluster_idx"]
    assert (with_pu == 2).any() and not (no_pu == 2).any()
    assert torch.equal(no_pu[with_pu != 2], with_pu[with_pu != 2])


def test_augmentation_keeps_geometry_and_labels(dm):
    torch.manual_seed(0)
    ds = dm.train_dataset()
    raw = dm.events("train")
    flipped = rotated = 0
    for i in range(len(ds)):
        a, e = ds[i]["event"], raw[i]
        np.testing.assert_allclose(np.hypot(a.x, a.y), np.hypot(e.x, e.y), rtol=1e-5, atol=1e-3)
        np.testing.assert_array_equal(np.abs(a.z), np.abs(e.z))
        np.testing.assert_array_equal(a.truth_idx, e.truth_idx)
        flipped += bool(np.any(np.sign(a.z) != np.sign(e.z)))
        rotated += not np.allclose(a.x, e.x)
    assert flipped > 0 and rotated == len(ds)   # seeded: torch RNG
    assert dm.val_dataset()[0]["event"] is dm.events("val")[0]   # no augmentation outside training


# ----------------------------------------------------------------------------- loaders


def test_train_loader_ddp_sharding(dm):
    seen = []
    for rank in range(2):
        loader = dm.train_dataloader(rank=rank, world_size=2)
        loader.sampler.set_epoch(1)
        ids = [i for b in loader for i in b["event_id"]]
        assert len(ids) == 3   # 5 events padded to 6, 3 per rank
        seen.append(ids)
    assert set(seen[0]) | set(seen[1]) == {f"train/{i}" for i in range(5)}
    one = [i for b in dm.train_dataloader(distributed=False) for i in b["event_id"]]
    assert sorted(one) == sorted(f"train/{i}" for i in range(5))


def test_val_and_test_loaders_shard_without_padding(dm):
    shards = [[i for b in dm.val_dataloader(rank=r, world_size=2) for i in b["event_id"]] for r in range(2)]
    assert shards == [["val/0", "val/2"], ["val/1"]]
    assert [b["event_id"] for b in dm.test_dataloader(pileup=True)] == [["test_pu/0"], ["test_pu/1"]]


# ----------------------------------------------------------------------------- bad input


def _write_tree(path, branches):
    """NanoML naming: records -> ``<name>_<field>`` with counter ``n<name>``."""
    with uproot.recreate(path) as f:
        t = f.mktree("Events", {k: v.type.content for k, v in branches.items()}, counter_name=lambda c: "n" + c,
                     field_name=lambda outer, inner: f"{outer}_{inner}")
        t.extend(branches)


def _good_branches(events):
    from sparse3d.datasets.calo.io_root import events_to_branches
    return events_to_branches(events)


def test_bad_root_missing_branch(tmp_path):
    data = _good_branches([_event(6), _event(4)])
    hits = data["RecHitHGC"]
    data["RecHitHGC"] = ak.zip({f: hits[f] for f in hits.fields if f != "time"})
    _write_tree(tmp_path / "m.root", data)
    dm = CaloDataModule(tmp_path, files={"train": str(tmp_path / "m.root")})
    with pytest.raises(ValueError, match="RecHitHGC_time"):
        dm.events("train")


def test_bad_root_jagged_mismatch(tmp_path):
    data = _good_branches([_event(6), _event(4)])
    hits = data.pop("RecHitHGC")
    flat = {f"RecHitHGC_{f}": hits[f] for f in hits.fields}
    flat["RecHitHGC_energy"] = ak.Array([[0.1] * 6, [0.2] * 5])
    _write_tree(tmp_path / "j.root", {**flat, **data})
    with pytest.raises(ValueError, match="jagged length mismatch in entry 1"):
        load_events(tmp_path / "j.root")


def test_bad_root_nan_energy(tmp_path):
    ev = _event(6)
    ev.energy[3] = np.nan
    with RootWriter(tmp_path / "n.root") as w:
        w.write([_event(2), ev])
    with pytest.raises(ValueError, match="'energy' has NaN"):
        CaloEventDataset(tmp_path / "n.root")


def test_negative_energy_rules_and_zero_hit_event(tmp_path):
    ev = _event(6)
    ev.energy[[1, 4]] = -0.5
    with RootWriter(tmp_path / "neg.root") as w:
        w.write([ev, _event(0, n_part=0)])
    clipped = load_events(tmp_path / "neg.root")
    assert clipped[0].n_hits == 6 and clipped[0].energy[1] == 0 and clipped[1].n_hits == 0
    assert load_events(tmp_path / "neg.root", negative="drop")[0].n_hits == 4
    with pytest.raises(ValueError, match="negative"):
        load_events(tmp_path / "neg.root", negative="raise")
    dm = CaloDataModule(tmp_path, files={"train": str(tmp_path / "neg.root")}, negative="drop", batch_size=2,
                        rotate=False, flip_endcap=False)
    b = next(iter(dm.train_dataloader(distributed=False)))
    assert b["points"].shape[0] == 4 and (b["energy"] >= 0).all()
    with pytest.raises(ValueError, match="negative"):
        CaloDataModule(tmp_path, negative="zero")


def test_npz_source_and_bad_sources(tmp_path):
    evs = [generate_event(None, 9, i) for i in range(2)]
    write_npz_dir(tmp_path / "npz", evs)
    ds = CaloEventDataset(tmp_path / "npz", name="npz")
    assert len(ds) == 2 and ds[1]["event_id"] == "npz/1"
    np.testing.assert_array_equal(ds[0]["event"].energy, evs[0].energy)
    with pytest.raises(FileNotFoundError):
        load_events(tmp_path / "nope.root")
    with pytest.raises(TypeError, match="CaloEvent"):
        CaloEventDataset([1, 2])
