"""Synthetic HGCAL-like generator (physics sanity, determinism) and its ROOT / npz / HDF5 I/O."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

pytest.importorskip("uproot")
pytest.importorskip("awkward")
pytest.importorskip("h5py")

import awkward as ak  # noqa: E402
import uproot  # noqa: E402

from sparse3d.datasets.calo import (  # noqa: E402
    CaloEvent, CaloGenConfig, RootWriter, add_subparser, cli, default_geometry, generate_event, generate_events,
    generate_single_showers, iterate_npz_dir, iterate_root, read_calochallenge, read_npz, read_root,
    validate_event, write_calochallenge, write_npz, write_npz_dir, write_root)
from sparse3d.datasets.calo.generator import _directions  # noqa: E402
from sparse3d.datasets.calo.io_root import HIT_BRANCHES, PARTICLE_BRANCHES, TRUTH_BRANCHES  # noqa: E402
from sparse3d.datasets.calo.showers import R_MOLIERE, em_deposits, hadron_deposits  # noqa: E402

HIT_KEYS = ("x", "y", "z", "energy", "time", "layer", "truth_idx", "truth_frac")


@pytest.fixture(scope="module")
def geom():
    return default_geometry()


@pytest.fixture(scope="module")
def events(geom):
    return [generate_event(None, 7, i, geom) for i in range(6)]


def assert_events_equal(a: CaloEvent, b: CaloEvent, keys=HIT_KEYS):
    for k in keys:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    for k in a.particles:
        np.testing.assert_array_equal(a.particles[k], b.particles[k], err_msg=k)


def _em_showers(geom, energy, photon, n, rng):
    """``n`` EM showers at normal incidence through (90, 0) cm."""
    vtx = np.tile([90.0, 0.0, 0.0], (n, 1))
    d = np.tile([0.0, 0.0, 1.0], (n, 1))
    return em_deposits(geom, np.full(n, float(energy)), np.full(n, photon), np.ones(n), vtx, d, np.arange(n), rng)


# ----------------------------------------------------------------------------- geometry / generator


def test_geometry_layout(geom):
    assert geom.n_layers == 50
    assert geom.z[0] == pytest.approx(322.1)
    assert np.all(np.diff(geom.z) > 0)
    assert (geom.section == 0).sum() == 28
    cell_area = geom.pitch[:28] ** 2
    assert cell_area.min() == pytest.approx(0.52) and cell_area.max() == pytest.approx(1.18)
    assert geom.lambda_edges[-1] > 7.5 and geom.x0_edges[28] == pytest.approx(26.04)
    lo, hi = geom.r_range(322.1)
    assert np.arcsinh(322.1 / lo) == pytest.approx(3.0) and np.arcsinh(322.1 / hi) == pytest.approx(1.5)


def test_determinism_by_seed(geom):
    a = generate_event(None, 11, 3, geom)
    b = generate_event(None, 11, 3, geom)
    assert_events_equal(a, b)
    c = generate_event(None, 12, 3, geom)
    assert a.n_hits != c.n_hits or not np.array_equal(a.energy, c.energy)
    # an event does not depend on the chunk it is generated in
    batch = generate_events(3, seed=11, start=2)
    assert_events_equal(batch[1], a)


def test_event_content(events, geom):
    for ev in events:
        assert ev.n_hits > 50
        n_hard = int((~ev.particles["is_pu"]).sum())
        assert 2 <= n_hard <= 6
        assert ev.truth_idx.min() >= -1 and ev.truth_idx.max() < ev.n_particles
        assert (ev.truth_idx == -1).sum() > 100                        # noise hits
        assert np.all((ev.truth_frac > 0) & (ev.truth_frac <= 1.0 + 1e-6))
        assert ev.layer.min() >= 1 and ev.layer.max() <= 50
        assert np.all(np.abs(ev.z) >= 322.0)
        eta = np.arcsinh(ev.z / np.hypot(ev.x, ev.y))
        assert np.all((np.abs(eta) > 1.45) & (np.abs(eta) < 3.05))
        assert np.all(ev.energy > 0)
        # both endcaps, z flipped: hits of a particle are on its side
        for k in range(ev.n_particles):
            m = ev.truth_idx == k
            if m.any():
                assert np.all(np.sign(ev.z[m]) == np.sign(ev.particles["eta"][k]))
        rec = np.bincount(ev.truth_idx[ev.truth_idx >= 0], ev.energy[ev.truth_idx >= 0], ev.n_particles)
        np.testing.assert_allclose(ev.particles["rec_energy"], rec, rtol=1e-5)
        # the reconstructed energy of EM particles is close to their true energy
        em = np.abs(ev.particles["pdgid"]) != 211
        np.testing.assert_array_less(ev.particles["rec_energy"][em], 1.1 * ev.particles["energy"][em])
    assert {22, 11, 211} <= {abs(int(p)) for ev in events for p in ev.particles["pdgid"]}
    assert any((ev.z < 0).any() for ev in events) and any((ev.z > 0).any() for ev in events)


def test_noise_hits_about_one_mip(events, geom):
    for ev in events:
        noise = ev.truth_idx == -1
        mip = geom.mip_gev[ev.layer[noise] - 1]
        ratio = ev.energy[noise] / mip
        assert ratio.min() > 1.0 and np.median(ratio) < 1.3


def test_em_tmax_grows_with_log_energy(geom):
    """Shower maximum from the mean layer profile: t_max = ln(E/E_c) + const (slope ~1 per PDG)."""
    rng = np.random.default_rng(0)
    centres = 0.5 * (geom.x0_edges[1:] + geom.x0_edges[:-1])
    energies = np.array([4.0, 16.0, 64.0, 256.0])
    t_max = {}
    for photon in (False, True):
        out = []
        for e in energies:
            dep = _em_showers(geom, e, photon, 30, rng)
            prof = np.bincount(dep.layer, dep.e, geom.n_layers)
            m = (prof * centres).sum() / prof.sum()
            v = (prof * (centres - m) ** 2).sum() / prof.sum()
            alpha, beta = m * m / v, m / v            # Gamma fit by moments
            out.append((alpha - 1) / beta)
        t_max[photon] = np.array(out)
    slope = np.polyfit(np.log(energies), t_max[False], 1)[0]
    assert 0.8 < slope < 1.2
    assert np.all(np.diff(t_max[False]) > 0)
    # photons convert after ~9/7 X0: their maximum is later (C_gamma - C_e = +1)
    assert 0.5 < np.mean(t_max[True] - t_max[False]) < 2.0
    # 100 GeV: T_max = -1.396 + 1.007 ln(100 / 0.00536) = 8.5 X0
    assert np.interp(np.log(100.0), np.log(energies), t_max[False]) == pytest.approx(8.5, abs=1.0)


@pytest.mark.parametrize("energy", [5.0, 50.0])
def test_em_lateral_containment(geom, energy):
    rng = np.random.default_rng(1)
    dep = _em_showers(geom, energy, False, 20, rng)
    r = np.hypot(dep.x - 90.0, dep.y)
    frac_1 = dep.e[r < R_MOLIERE].sum() / dep.e.sum()
    frac_35 = dep.e[r < 3.5 * R_MOLIERE].sum() / dep.e.sum()
    assert 0.85 < frac_1 < 0.95          # ~90 % within 1 R_M
    assert frac_35 > 0.97                # ~99 % within 3.5 R_M
    # energy is conserved up to longitudinal leakage
    assert dep.e.sum() / (20 * energy) == pytest.approx(1.0, abs=0.05)


def test_em_sampling_resolution(geom):
    """sigma/E of the summed deposits ~ 0.22 / sqrt(E)."""
    rng = np.random.default_rng(2)
    e = 25.0
    dep = _em_showers(geom, e, False, 200, rng)
    tot = np.bincount(dep.owner, dep.e, 200)
    assert np.std(tot) / np.mean(tot) == pytest.approx(0.22 / np.sqrt(e), rel=0.3)


def test_hadron_showers(geom):
    rng = np.random.default_rng(3)
    n = 40
    d = _directions(np.full(n, 2.0), np.zeros(n))
    dep = hadron_deposits(geom, np.full(n, 50.0), np.ones(n), np.zeros((n, 3)), d, np.arange(n), rng)
    tot = np.bincount(dep.owner, dep.e, n)
    assert 0.7 < tot.mean() / 50.0 < 1.0                  # h/e < 1 plus leakage
    assert np.std(tot) / tot.mean() > 2 * 0.22 / np.sqrt(50.0)   # much worse than EM (f_em, h/e)
    assert dep.e[geom.section[dep.layer] == 1].sum() / dep.e.sum() > 0.3     # reaches deep into CE-H
    late = dep.t > 1.0
    assert late.any() and dep.e[late].sum() / dep.e.sum() == pytest.approx(0.1 * 0.7, abs=0.05)
    # the EM part is split in sub-clusters displaced from the axis
    z = geom.z[dep.layer]
    ax = z * d[dep.owner, 0] / d[dep.owner, 2]
    assert np.median(np.abs(dep.x - ax)) > 1.0


def test_event_times(events, geom):
    t = np.concatenate([ev.time for ev in events])
    e_mip = np.concatenate([ev.energy / geom.mip_gev[ev.layer - 1] for ev in events])
    em = np.concatenate([(ev.truth_idx >= 0) & (np.abs(ev.particles["pdgid"][np.maximum(ev.truth_idx, 0)]) != 211)
                         for ev in events])
    big = em & (e_mip > 50)
    assert np.std(t[big]) == pytest.approx(0.05, abs=0.02)    # ~50 ps resolution
    pion = np.concatenate([(ev.truth_idx >= 0) & (np.abs(ev.particles["pdgid"][np.maximum(ev.truth_idx, 0)]) == 211)
                           for ev in events])
    assert (t[pion] > 1.0).sum() > 0 and (t[em] > 1.0).mean() < 0.005   # late hits are hadronic


def test_pileup(geom):
    cfg = CaloGenConfig(pileup=30.0)
    ev = generate_event(cfg, 4, 0, geom)
    is_pu = ev.particles["is_pu"]
    assert 10 < is_pu.sum() < 60
    assert np.all(is_pu[np.argmax(~is_pu):] | ~is_pu[np.argmax(~is_pu):])
    lab = ev.labels()
    lab_pu = ev.labels(pileup_as_noise=True)
    pu_hit = (lab >= 0) & is_pu[np.maximum(lab, 0)]
    assert pu_hit.any() and np.all(lab_pu[pu_hit] == -1) and np.array_equal(lab_pu[~pu_hit], lab[~pu_hit])
    # PU vertices smear the hit times by ~0.2 ns
    assert np.std(ev.time[pu_hit & (ev.energy > 0.3)]) > 0.1


def test_config_validation():
    with pytest.raises(ValueError, match="n_particles"):
        CaloGenConfig(n_particles=(5, 2))
    with pytest.raises(ValueError, match="energy_range"):
        CaloGenConfig(energy_range=(0.0, 10.0))
    with pytest.raises(ValueError, match="eta_range"):
        CaloGenConfig(eta_range=(1.0, 2.0))
    with pytest.raises(ValueError, match="pileup"):
        CaloGenConfig(pileup=-1)


def test_zero_particles_event(geom):
    ev = generate_event(CaloGenConfig(n_particles=(0, 0), noise_hits=0), 0, 0, geom)
    assert ev.n_hits == 0 and ev.n_particles == 0
    assert ev.pepr_features().shape == (0, 9)


# ----------------------------------------------------------------------------- ROOT


def test_root_round_trip(tmp_path, events):
    path = tmp_path / "ev.root"
    assert write_root(path, iter(events), chunk_size=4) == len(events)
    keys = set(uproot.open(path)["Events"].keys())
    assert {"nRecHitHGC", "nMergedSimCluster", *HIT_BRANCHES.values(), *TRUTH_BRANCHES.values(),
            *PARTICLE_BRANCHES.values()} <= keys
    back = read_root(path)
    assert len(back) == len(events)
    for a, b in zip(events, back):
        assert_events_equal(a, b)
    part = read_root(path, entry_start=2, entry_stop=4)
    assert_events_equal(part[0], events[2])
    no_truth = read_root(path, truth=False)
    assert no_truth[0].truth_idx is None and no_truth[0].n_particles == 0


def test_root_streaming(tmp_path, events):
    path = tmp_path / "ev.root"
    write_root(path, events)
    chunks = list(iterate_root(path, step_size=4))
    assert [c.entry_start for c in chunks] == [0, 4]
    assert [len(c.events) for c in chunks] == [4, 2]
    for a, b in zip(events, [e for c in chunks for e in c.events]):
        assert_events_equal(a, b)
    full = next(iterate_root(path, step_size=10, all_branches=True))
    assert "nRecHitHGC" in full.arrays.fields
    with pytest.raises(ValueError, match="step_size"):
        next(iterate_root(path, step_size=0))


def test_root_writer_extras(tmp_path, events):
    path = tmp_path / "clusters.root"
    evs = events[:3]
    labels = [np.arange(e.n_hits, dtype=np.int32) % 3 for e in evs]
    with RootWriter(path) as w:
        w.write(evs, hit_extras={"clusterIdx": labels},
                records={"Cluster": {"energy": [np.array([1.0, 2.0], np.float32)] * 3}})
    t = uproot.open(path)["Events"]
    assert {"RecHitHGC_clusterIdx", "nCluster", "Cluster_energy"} <= set(t.keys())
    got = t["RecHitHGC_clusterIdx"].array()
    assert ak.to_list(ak.num(got)) == [e.n_hits for e in evs]
    np.testing.assert_array_equal(ak.to_numpy(got[1]), labels[1])
    with pytest.raises(ValueError, match="clusterIdx"):
        with RootWriter(tmp_path / "bad.root") as w:
            w.write(evs, hit_extras={"clusterIdx": [np.zeros(1)] * 3})


def test_root_empty_event(tmp_path, geom):
    empty = generate_event(CaloGenConfig(n_particles=(0, 0), noise_hits=0), 0, 0, geom)
    full = generate_event(None, 0, 1, geom)
    path = tmp_path / "e.root"
    write_root(path, [empty, full, empty])
    back = read_root(path)
    assert [e.n_hits for e in back] == [0, full.n_hits, 0]
    assert back[0].truth_idx.shape == (0,)


def _write_raw(path, branches: dict):
    with uproot.recreate(path) as f:
        f["Events"] = branches


def _raw_branches(n_hits=(3, 2), drop=None, override=None):
    rng = np.random.default_rng(0)
    out = {}
    for k, b in {**HIT_BRANCHES, "truth_idx": TRUTH_BRANCHES["truth_idx"]}.items():
        vals = [rng.uniform(1, 2, n).astype(np.float32) if k not in ("layer", "truth_idx")
                else np.ones(n, np.int32) if k == "layer" else np.zeros(n, np.int32) for n in n_hits]
        out[b] = ak.Array(vals)
    for k, b in PARTICLE_BRANCHES.items():
        out[b] = ak.Array([[1.0]] * len(n_hits)) if k != "pdgid" else ak.Array([[22]] * len(n_hits))
    out.update(override or {})
    if drop:
        out.pop(drop)
    return out


def test_root_missing_branch(tmp_path):
    p = tmp_path / "m.root"
    _write_raw(p, _raw_branches(drop="RecHitHGC_energy"))
    with pytest.raises(ValueError, match="RecHitHGC_energy"):
        read_root(p)
    with pytest.raises(ValueError, match="RecHitHGC_energy"):
        next(iterate_root(p))
    _write_raw(p, _raw_branches(drop=TRUTH_BRANCHES["truth_idx"]))
    with pytest.raises(ValueError, match="MergedSimClusterBestMatchIdx"):
        read_root(p)
    assert len(read_root(p, truth=False)) == 2         # no truth needed -> reads
    with pytest.raises(ValueError, match="no tree 'Other'"):
        read_root(p, tree="Other")
    with pytest.raises(FileNotFoundError):
        read_root(tmp_path / "nope.root")


def test_root_jagged_mismatch(tmp_path):
    p = tmp_path / "j.root"
    bad = ak.Array([np.ones(3, np.float32), np.ones(1, np.float32)])   # entry 1: 1 instead of 2
    _write_raw(p, _raw_branches(override={"RecHitHGC_time": bad}))
    with pytest.raises(ValueError, match=r"mismatch in entry 1.*RecHitHGC_time"):
        read_root(p)
    _write_raw(p, _raw_branches(override={"RecHitHGC_y": np.ones(2, np.float32)}))
    with pytest.raises(ValueError, match="RecHitHGC_y"):
        read_root(p)


def test_root_nan_and_negative_energy(tmp_path):
    p = tmp_path / "n.root"
    e = [np.array([1.0, np.nan, 2.0], np.float32), np.array([1.0, 1.0], np.float32)]
    _write_raw(p, _raw_branches(override={"RecHitHGC_energy": ak.Array(e)}))
    with pytest.raises(ValueError, match=r"entry 0: hit field 'energy' has NaN"):
        read_root(p)
    e = [np.array([1.0, -0.5, 2.0], np.float32), np.array([1.0, 1.0], np.float32)]
    _write_raw(p, _raw_branches(override={"RecHitHGC_energy": ak.Array(e)}))
    clipped = read_root(p)
    np.testing.assert_array_equal(clipped[0].energy, [1.0, 0.0, 2.0])
    assert clipped[0].n_hits == 3 and clipped[0].truth_idx.shape == (3,)
    dropped = read_root(p, negative="drop")
    np.testing.assert_array_equal(dropped[0].energy, [1.0, 2.0])
    assert dropped[0].truth_idx.shape == (2,) and dropped[0].x.shape == (2,)
    with pytest.raises(ValueError, match="negative"):
        read_root(p, negative="raise")
    with pytest.raises(ValueError, match="negative must be one of"):
        read_root(p, negative="ignore")


def test_validate_event_errors():
    ok = dict(x=np.zeros(2), y=np.zeros(2), z=np.zeros(2), energy=np.ones(2), time=np.zeros(2),
              layer=np.ones(2))
    with pytest.raises(ValueError, match="'time' has 3 entries"):
        validate_event(CaloEvent(**{**ok, "time": np.zeros(3)}))
    with pytest.raises(ValueError, match="'truth_idx' out of range"):
        validate_event(CaloEvent(**ok, truth_idx=np.array([0, 1])))
    ev = validate_event(CaloEvent(**ok))
    assert ev.energy.dtype == np.float32 and ev.layer.dtype == np.int32
    src = np.array([1.0, -1.0], np.float32)
    validate_event(CaloEvent(**{**ok, "energy": src}))
    assert src[1] == -1.0                      # clipping does not modify the caller's array


# ----------------------------------------------------------------------------- npz / HDF5


def test_npz_round_trip(tmp_path, events):
    paths = write_npz_dir(tmp_path / "npz", events[:3])
    assert len(paths) == 3
    for a, b in zip(events[:3], iterate_npz_dir(tmp_path / "npz")):
        assert_events_equal(a, b)
    with np.load(paths[0]) as d:
        f = d["recHitFeatures"]
        assert f.shape == (events[0].n_hits, 9) and d["recHitTruthClusterIdx"].shape == (events[0].n_hits, 1)
        np.testing.assert_allclose(f[:, 4], np.sqrt(f[:, 5] ** 2 + f[:, 6] ** 2 + f[:, 7] ** 2), rtol=1e-5)
        assert np.all(f[:, 2] == 0)


def test_npz_minimal_and_errors(tmp_path, events):
    ev = events[0]
    p = tmp_path / "min.npz"
    sparse_ids = ev.truth_idx * 3 + 5 * (ev.truth_idx >= 0)       # arbitrary ids, -1 kept
    np.savez(p, recHitFeatures=ev.pepr_features(), recHitTruthClusterIdx=sparse_ids[:, None])
    back = read_npz(p)
    np.testing.assert_array_equal(back.layer, ev.layer)            # layer recovered from |z|
    np.testing.assert_array_equal(back.truth_idx >= 0, ev.truth_idx >= 0)
    assert back.n_particles == len(np.unique(ev.truth_idx[ev.truth_idx >= 0]))
    np.savez(p, recHitTruthClusterIdx=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="recHitFeatures"):
        read_npz(p)
    np.savez(p, recHitFeatures=np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"\[N, 9\]"):
        read_npz(p)
    np.savez(p, recHitFeatures=np.zeros((2, 9), np.float32))
    with pytest.raises(ValueError, match="recHitTruthClusterIdx"):
        read_npz(p)
    assert read_npz(p, truth=False).n_hits == 2
    f = np.ones((2, 9), np.float32)
    f[1, 0] = np.nan
    np.savez(p, recHitFeatures=f)
    with pytest.raises(ValueError, match="'energy' has NaN"):
        read_npz(p, truth=False)
    with pytest.raises(FileNotFoundError):
        list(iterate_npz_dir(tmp_path / "empty_dir_that_does_not_exist"))
    write_npz(tmp_path / "e.npz", validate_event(CaloEvent(*(np.zeros(0),) * 6, truth_idx=np.zeros(0))))
    assert read_npz(tmp_path / "e.npz").n_hits == 0


def test_calochallenge_round_trip(tmp_path):
    e, s = generate_single_showers(6, "electron", energy_range=(5.0, 50.0), seed=0, n_alpha=4)
    assert e.shape == (6, 1) and s.shape == (6, 50 * 4 * 9)
    assert np.all(s >= 0)
    frac = s.sum(1) / e[:, 0]                                          # MeV, nearly contained
    assert np.all((frac > 0.5) & (frac < 1.5)) and abs(frac.mean() - 1.0) < 0.1
    vox = s.reshape(6, 50, 4, 9)
    assert vox[:, :, :, 0].sum() > vox[:, :, :, -1].sum()              # radial fastest: core bin first
    p = tmp_path / "s.h5"
    write_calochallenge(p, e, s, attrs={"n_alpha": 4})
    e2, s2, attrs = read_calochallenge(p)
    np.testing.assert_array_equal(e, e2)
    np.testing.assert_array_equal(s, s2)
    assert attrs["n_alpha"] == 4
    pe, ps = generate_single_showers(3, "pion", energy_range=(20.0, 20.0), seed=1)
    assert 0.4 < ps.sum(1).mean() / 20e3 < 1.0
    with pytest.raises(ValueError, match="particle"):
        generate_single_showers(1, "muon")


def test_calochallenge_bad_input(tmp_path):
    import h5py
    p = tmp_path / "b.h5"
    with h5py.File(p, "w") as f:
        f["incident_energies"] = np.ones((2, 1))
    with pytest.raises(ValueError, match="'showers'"):
        read_calochallenge(p)
    with h5py.File(p, "w") as f:
        f["incident_energies"] = np.ones((2, 1))
        f["showers"] = np.ones((3, 4))
    with pytest.raises(ValueError, match="N = 2"):
        read_calochallenge(p)
    with h5py.File(p, "w") as f:
        f["incident_energies"] = np.ones(2)
        f["showers"] = np.array([[1.0, np.nan], [1.0, 1.0]])
    with pytest.raises(ValueError, match="'showers' has NaN"):
        read_calochallenge(p)
    with h5py.File(p, "w") as f:
        f["incident_energies"] = np.ones(2)
        f["showers"] = np.array([[1.0, -1.0], [1.0, 1.0]])
    assert read_calochallenge(p)[1].min() == 0.0
    with pytest.raises(ValueError, match="negative"):
        read_calochallenge(p, negative="raise")
    with pytest.raises(ValueError, match="showers must be"):
        write_calochallenge(p, np.ones(2), np.ones((3, 4)))


# ----------------------------------------------------------------------------- CLI


def test_cli(tmp_path):
    out = cli(["--out", str(tmp_path), "--n-events", "3", "--chunk", "2", "--formats", "root,npz,h5",
               "--h5-showers", "2", "--quiet"])
    back = read_root(out["root"])
    assert len(back) == 3
    assert_events_equal(back[2], generate_event(None, 0, 2))
    assert len(list(iterate_npz_dir(out["npz"]))) == 3
    assert read_calochallenge(out["h5"])[0].shape == (2, 1)
    assert out["stats"]["n_events"] == 3 and out["stats"]["hits_mean"] > 0
    with pytest.raises(ValueError, match="formats"):
        cli(["--out", str(tmp_path), "--formats", "csv", "--quiet"])


def test_add_subparser(tmp_path):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd")
    add_subparser(sub)
    args = parser.parse_args(["calo", "--out", str(tmp_path), "--n-events", "1", "--pileup", "5", "--quiet"])
    out = args.func(args)
    assert out["root"].endswith("calo_seed0_n1_pu5.root")
    assert read_root(out["root"])[0].particles["is_pu"].any()
