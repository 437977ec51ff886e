"""tools/cluster.py and sparse3d.clustering.pipeline: ROOT / npz in, ROOT with cluster branches out."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("uproot")

import awkward as ak  # noqa: E402
import uproot  # noqa: E402

from sparse3d.clustering.clue import clue_hgcal  # noqa: E402
from sparse3d.clustering.pipeline import cluster_file, cluster_table, input_kind, load_clusterer  # noqa: E402
from sparse3d.datasets.calo import CaloEvent, RootWriter, generate_event, write_npz_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NEW = ("RecHitHGC_ClusterIdx", "RecHitHGC_ClusterEnergy", "nCluster", "Cluster_energy", "Cluster_x", "Cluster_y",
       "Cluster_z", "Cluster_nHits")


def _tool():
    spec = importlib.util.spec_from_file_location("cluster_tool", REPO / "tools" / "cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _empty_event():
    z = np.zeros(0, np.float32)
    parts = {k: np.zeros(0, d) for k, d in (("energy", np.float32), ("eta", np.float32), ("phi", np.float32),
                                             ("pdgid", np.int32), ("is_pu", bool), ("rec_energy", np.float32))}
    return CaloEvent(z, z, z, z, z, np.zeros(0, np.int32), np.zeros(0, np.int32), z, parts)


@pytest.fixture(scope="module")
def events():
    evs = [generate_event(None, 21, i) for i in range(5)]
    evs[2].energy[:3] = -0.01      # negative energies: clipped, hits kept
    evs.insert(3, _empty_event())  # zero-hit event passes through
    return evs


@pytest.fixture(scope="module")
def root_file(tmp_path_factory, events):
    p = tmp_path_factory.mktemp("cl") / "in.root"
    with RootWriter(p) as w:
        w.write(events[:4], hit_extras={"flag": [np.arange(e.n_hits, dtype=np.int16) for e in events[:4]]})
        w.write(events[4:], hit_extras={"flag": [np.arange(e.n_hits, dtype=np.int16) for e in events[4:]]})
    return p


def _read(path):
    with uproot.open(path) as f:
        return f["Events"].arrays(library="ak")


def test_root_round_trip(root_file, events, tmp_path):
    model, collate = load_clusterer(algo="clue")
    s = cluster_file(root_file, tmp_path / "out.root", model, collate, step_size=100, progress=False)
    assert s.events == 6 and s.hits == sum(e.n_hits for e in events) and s.panoptic is not None
    inp, out = _read(root_file), _read(tmp_path / "out.root")
    assert set(inp.fields) | set(NEW) == set(out.fields)
    for f in inp.fields:   # input branches copied unchanged (negative energies as written)
        assert ak.to_list(out[f]) == ak.to_list(inp[f]), f
    n_hits = ak.to_numpy(out["nRecHitHGC"])
    assert n_hits.tolist() == [e.n_hits for e in events] and n_hits[3] == 0
    assert ak.num(out["RecHitHGC_ClusterIdx"]).tolist() == n_hits.tolist()
    assert ak.num(out["Cluster_energy"]).tolist() == ak.to_list(out["nCluster"])
    assert out["nCluster"][3] == 0 and s.clusters == int(ak.sum(out["nCluster"]))
    for i, ev in enumerate(events):
        idx = ak.to_numpy(out["RecHitHGC_ClusterIdx"][i])
        e = np.maximum(ev.energy, 0)
        want = clue_hgcal(ev.x, ev.y, ev.z, ev.layer, e) if ev.n_hits else np.zeros(0, np.int64)
        # same partition as CLUE, renumbered by decreasing energy
        assert np.array_equal(idx >= 0, want >= 0)
        assert len({(a, b) for a, b in zip(idx[idx >= 0], want[want >= 0])}) == len(set(want[want >= 0]))
        ce = ak.to_numpy(out["Cluster_energy"][i])
        assert np.all(np.diff(ce) <= 0)
        np.testing.assert_allclose(ce, np.bincount(idx[idx >= 0], e[idx >= 0], ce.size), rtol=1e-5)
        np.testing.assert_allclose(ak.to_numpy(out["RecHitHGC_ClusterEnergy"][i])[idx >= 0], ce[idx[idx >= 0]])
        assert np.all(ak.to_numpy(out["RecHitHGC_ClusterEnergy"][i])[idx < 0] == 0)
        assert ak.to_numpy(out["Cluster_nHits"][i]).tolist() == np.bincount(idx[idx >= 0], minlength=ce.size).tolist()


def test_chunked_equals_one_shot(root_file, tmp_path):
    model, collate = load_clusterer(algo="clue")
    cluster_file(root_file, tmp_path / "a.root", model, collate, step_size=100, batch_size=8, progress=False)
    cluster_file(root_file, tmp_path / "b.root", model, collate, step_size=2, batch_size=1, progress=False)
    a, b = _read(tmp_path / "a.root"), _read(tmp_path / "b.root")
    assert a.fields == b.fields
    for f in a.fields:
        assert ak.to_list(a[f]) == ak.to_list(b[f]), f


def test_tool_cli_npz_and_clue_params(events, tmp_path, capsys):
    write_npz_dir(tmp_path / "npz", events)
    assert input_kind([tmp_path / "npz"]) == "npz"
    s = _tool().main([str(tmp_path / "npz"), "-o", str(tmp_path / "npz.root"), "--algo", "clue", "--step-size", "4",
                      "--clue-params", json.dumps({"params": {"dc_si": 2.5}}), "--no-progress", "--name", "CLUE"])
    out = _read(tmp_path / "npz.root")
    assert s.events == 6 and "6 events" in capsys.readouterr().out
    assert {"RecHitHGC_CLUEIdx", "RecHitHGC_CLUEEnergy", "nCLUE", "CLUE_energy", "RecHitHGC_energy",
            "MergedSimCluster_energy"} <= set(out.fields)
    assert ak.num(out["RecHitHGC_CLUEIdx"]).tolist() == [e.n_hits for e in events]


def test_checkpoint_clusterer(root_file, tmp_path):
    """A tools/train.py-style checkpoint (CLUE: parameters in the model state) drives the tool."""
    import torch
    from omegaconf import OmegaConf

    from sparse3d.clustering.clue_model import CLUEClusterer
    from sparse3d.engine.checkpoint import save_checkpoint
    cfg = OmegaConf.create({"model": {"_target_": "sparse3d.clustering.clue_model.CLUEClusterer"},
                            "dataset": {"_target_": "sparse3d.datasets.calo.module.CaloDataModule",
                                        "root": str(tmp_path / "unused"), "features": ["energy", "time"]}})
    tuned = CLUEClusterer(dc_si=2.5, layer_window=3)
    save_checkpoint(tmp_path / "best.pt", {"model": tuned.state_dict(), "cfg": OmegaConf.to_yaml(cfg)})
    model, collate = load_clusterer(tmp_path / "best.pt")
    assert model.params == tuned.params and collate.features.names == ("energy", "time")
    _tool().main([str(root_file), "-o", str(tmp_path / "c.root"), "--checkpoint", str(tmp_path / "best.pt"),
                  "--no-progress", "--threads", "1"])
    assert "RecHitHGC_ClusterIdx" in _read(tmp_path / "c.root").fields
    torch.set_num_threads(2)


def test_bad_inputs(root_file, tmp_path):
    model, collate = load_clusterer(algo="clue")
    # missing branch, named
    data = _read(root_file)
    with uproot.recreate(tmp_path / "m.root") as f:
        f["Events"] = {k: data[k] for k in ("RecHitHGC_x", "RecHitHGC_y")}
    with pytest.raises(ValueError, match="RecHitHGC_z"):
        cluster_file(tmp_path / "m.root", tmp_path / "o.root", model, collate, progress=False)
    # NaN energies, named
    ev = generate_event(None, 3, 0)
    ev.energy[5] = np.nan
    with RootWriter(tmp_path / "nan.root") as w:
        w.write([ev])
    with pytest.raises(ValueError, match="'energy' has NaN"):
        cluster_file(tmp_path / "nan.root", tmp_path / "o.root", model, collate, progress=False)
    # jagged mismatch, named
    flat = {k: data[k] for k in ("RecHitHGC_x", "RecHitHGC_y", "RecHitHGC_z", "RecHitHGC_time", "RecHitHGC_layer")}
    flat["RecHitHGC_energy"] = data["RecHitHGC_energy"][:, :-1]
    with uproot.recreate(tmp_path / "j.root") as f:
        f["Events"] = flat
    with pytest.raises(ValueError, match="jagged length mismatch"):
        cluster_file(tmp_path / "j.root", tmp_path / "o.root", model, collate, progress=False)
    with pytest.raises(ValueError, match="also an input"):
        cluster_file(root_file, root_file, model, collate, progress=False)
    with pytest.raises(ValueError, match="already has the branch"):
        cluster_file(root_file, tmp_path / "o.root", model, collate, name="MergedSimCluster", progress=False)
    with pytest.raises(ValueError, match="step_size"):
        cluster_file(root_file, tmp_path / "o.root", model, collate, step_size=0, progress=False)
    with pytest.raises(ValueError, match="all ROOT or all npz"):
        input_kind([root_file, _npz(tmp_path)])
    with pytest.raises(FileNotFoundError):
        input_kind([tmp_path / "nope.root"])
    with pytest.raises(ValueError, match="exactly one"):
        load_clusterer()
    with pytest.raises(SystemExit):
        _tool().main([str(root_file), "-o", str(tmp_path / "x.root")])   # neither --checkpoint nor --algo


def _npz(tmp_path):
    write_npz_dir(tmp_path / "one", [generate_event(None, 1, 0)])
    return tmp_path / "one"


def test_cluster_table_ordering():
    ev = generate_event(None, 4, 0)
    lab = np.where(np.arange(ev.n_hits) % 3 == 0, 7, np.where(np.arange(ev.n_hits) % 3 == 1, 2, -1))
    hi, he, cl = cluster_table(ev, lab)
    assert hi.dtype == np.int32 and he.dtype == np.float32 and set(np.unique(hi)) <= {-1, 0, 1}
    assert cl["energy"][0] >= cl["energy"][1] and cl["nHits"].sum() == (lab >= 0).sum()
    e = np.maximum(ev.energy.astype(np.float64), 0)
    m = hi == 0
    np.testing.assert_allclose(cl["x"][0], (e[m] * ev.x[m]).sum() / e[m].sum(), rtol=1e-5)


def test_workers_give_the_same_labels(events, root_file, tmp_path):
    """Batches side by side on 2 single-thread workers: the same labels as the plain loop (Calo-SPVCNN + mean-shift)."""
    import torch

    from conftest import torch_threads
    from sparse3d.clustering.pipeline import cluster_events
    from sparse3d.datasets.calo.module import CaloCollate
    from sparse3d.models.calo import CaloSPVCNN
    torch.manual_seed(0)
    m = CaloSPVCNN(in_channels=3, cr=0.25, res_blocks=1, devoxelize="nearest", min_count=5).eval()
    col = CaloCollate()
    with torch_threads(1):
        a, tn, tc = cluster_events(m, col, events, batch_size=2)
    with torch_threads(2):
        b, *_ = cluster_events(m, col, events, batch_size=2, workers=2)
    assert len(a) == len(b) == len(events) and tn > 0 and tc > 0
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert any((x >= 0).any() for x in a)          # some hits are clustered
    clue, ccol = load_clusterer(algo="clue")
    cluster_file(root_file, tmp_path / "w1.root", clue, ccol, batch_size=2, progress=False)
    cluster_file(root_file, tmp_path / "w2.root", clue, ccol, batch_size=2, progress=False, workers=2)
    w1, w2 = _read(tmp_path / "w1.root"), _read(tmp_path / "w2.root")
    assert all(ak.to_list(w1[f]) == ak.to_list(w2[f]) for f in w1.fields)
    with pytest.raises(ValueError, match="workers"):
        cluster_file(root_file, tmp_path / "w3.root", clue, ccol, workers=0, progress=False)
