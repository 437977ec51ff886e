"""tools/bench.py: runs end to end in --quick mode and writes a complete JSON (never asserts on timings)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

BENCH = REPO / "tools" / "bench.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("sparse3d_tools_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = _load_bench()


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.fixture(scope="module")
def quick_json(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--threads", "1", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sparse3d" in proc.stdout and "ratio" in proc.stdout  # the printed table
    return json.loads(out.read_text())


def test_quick_json_has_every_case(quick_json):
    meta, rows = quick_json["meta"], quick_json["results"]
    names = bench.all_case_names(bf16=True)
    assert meta["cases"] == names
    assert meta["quick"] is True and meta["repeats"] == 1
    assert all(_finite(v) and v > 0 for v in meta["peak_gflops"].values())
    inputs = list(meta["inputs"])
    assert inputs == ["synthetic"]
    got = {(r["case"], r["input"]) for r in rows}
    assert got == {(n, i) for n in names for i in inputs}
    has_spconv = meta["spconv_version"] is not None
    for r in rows:
        name = r["case"]
        assert _finite(r["sparse3d_s"]) and r["sparse3d_s"] > 0, name
        assert len(r["times_s"]["sparse3d"]) == 1, name
        for key in ("ratio_vs_spconv_1t", "ratio_vs_spconv_nt", "roofline_sparse3d", "roofline_spconv_1t",
                    "roofline_spconv_nt", "me_reference_s", "ratio_vs_me", "macs", "dtype", "note"):
            assert key in r, (name, key)
        spconv_applies = has_spconv and "train" not in name and not name.endswith("_bf16")
        for impl in ("spconv_1t", "spconv_nt"):
            if spconv_applies:
                assert _finite(r[f"{impl}_s"]) and r[f"{impl}_s"] > 0, (name, impl)
                assert _finite(r[f"ratio_vs_{impl}"]), (name, impl)
            else:
                assert r[f"{impl}_s"] is None and r[f"ratio_vs_{impl}"] is None, (name, impl)
        if name == "kmap_subm3":
            assert r["macs"] is None and r["pairs"] > 0
        else:
            assert r["macs"] > 0 and _finite(r["roofline_sparse3d"]), name
        if name in bench.ME_REFERENCE_S:
            assert r["me_reference_s"] == bench.ME_REFERENCE_S[name] and _finite(r["ratio_vs_me"]), name
    train = {r["case"]: r for r in rows if r["case"].startswith("minkunet_train") and r["dtype"] == "fp32"}
    assert train["minkunet_train_cr1.0"]["me_reference_s"] == 8.7
    assert train["minkunet_train_cr0.5"]["me_reference_s"] == 6.2
    fwd = {r["case"]: r["macs"] for r in rows if r["case"].startswith("minkunet_fwd") and r["dtype"] == "fp32"}
    # training step MACs are counted as 3x forward
    assert train["minkunet_train_cr1.0"]["macs"] == 3 * fwd["minkunet_fwd_cr1.0"]


def test_synthetic_scan_deterministic_small():
    a = bench.synthetic_scan(seed=3, beams=8, azimuth_steps=64, max_range=20.0)
    b = bench.synthetic_scan(seed=3, beams=8, azimuth_steps=64, max_range=20.0)
    c = bench.synthetic_scan(seed=4, beams=8, azimuth_steps=64, max_range=20.0)
    assert a.dtype == np.float32 and a.shape[1] == 4 and len(a) > 100
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    r = np.linalg.norm(a[:, :3] - np.array([0, 0, 1.73], np.float32), axis=1)
    assert r.max() < 20.5 and a[:, 2].min() > -0.2  # nothing below the ground plane beyond noise


@pytest.mark.slow
def test_synthetic_scan_default_size():
    coords, feats = bench.voxelize(bench.synthetic_scan())
    assert 80_000 <= len(coords) <= 100_000  # ~90k voxels at 0.05 m, like the real scan (94,444)
    assert coords.shape[1] == 4 and feats.shape == (len(coords), 4)


def test_case_selection_and_args():
    names = bench.all_case_names(bf16=False)
    assert not any(n.endswith("_bf16") for n in names)
    assert bench.select_cases(["subm3_c16"], False) == ["subm3_c16_built", "subm3_c16_cached"]
    assert bench.select_cases(None, True) == bench.all_case_names(True)
    with pytest.raises(SystemExit):
        bench.select_cases(["no_such_case"], True)
    a = bench.parse_args(["--quick"])
    assert a.repeats == 1 and a.inputs == ["synthetic"] and a.warmup == 0
    with pytest.raises(SystemExit):
        bench.parse_args(["--threads", "0"])


def test_bench_calo_interleaved_ratios():
    """tools/bench_calo.py: both networks on the same batches; speedup = median per-repeat ratio."""
    spec = importlib.util.spec_from_file_location("sparse3d_tools_bench_calo", REPO / "tools" / "bench_calo.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from sparse3d.datasets.calo import CaloGenConfig, generate_events
    from sparse3d.datasets.calo.module import CaloCollate
    spv, cfg = mod._model("calo_spvcnn", None)
    gn, _ = mod._model("calo_gravnet", None)
    assert type(spv).__name__ == "CaloSPVCNN" and type(gn).__name__ == "GravNetOC"
    events = generate_events(3, CaloGenConfig(n_particles=(1, 2)), seed=3)
    res = mod.bench(spv, gn, events, CaloCollate(), [1, 2], [1], repeats=2)
    for bs in (1, 2):
        v = res[1][bs]
        assert all(_finite(v[k]) and v[k] > 0 for k in ("spvcnn_ms", "gravnet_ms", "speedup"))
        assert v["speedup_min"] <= v["speedup"] <= v["speedup_max"]
    # 2 threads: intra-op and 2 single-thread workers, each network reported at its faster mode
    res = mod.bench(spv, gn, events, CaloCollate(), [1], [2], repeats=2)
    v = res[2][1]
    assert set(v["modes"]) == {1, 2} and v["spvcnn_workers"] in (1, 2) and v["gravnet_workers"] in (1, 2)
    assert v["spvcnn_ms"] == min(m["spvcnn_ms"] for m in v["modes"].values())
    assert v["gravnet_ms"] == min(m["gravnet_ms"] for m in v["modes"].values())
    assert v["speedup_min"] <= v["speedup"] <= v["speedup_max"]
    assert set(mod.bench(spv, gn, events, CaloCollate(), [1], [2], repeats=1, workers=False)[2][1]["modes"]) == {1}


def test_bench_bev_pool_small_runs_and_agrees(tmp_path):
    """tools/bench_bev_pool.py --small end to end: every timing finite, the kernels equal the naive scatter."""
    out = tmp_path / "bev_pool.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "bench_bev_pool.py"), "--small", "--repeats", "1",
                        "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "speedup B fused cached plan vs naive splat" in r.stdout
    d = json.loads(out.read_text())
    assert d["max_abs_diff_numba_vs_naive"] <= 1e-5 * max(1.0, d["max_abs_out"])
    assert d["max_abs_diff_fused_vs_naive"] <= 1e-5 * max(1.0, d["max_abs_out"])
    assert d["times_s"] and all(_finite(v["wall"]) and v["wall"] > 0 for v in d["times_s"].values())
