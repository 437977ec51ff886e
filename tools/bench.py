#!/usr/bin/env python
"""CPU benchmark of the sparse3d convolution core against spconv (and published MinkowskiEngine figures).

Cases (each on every input cloud; ``--cases`` selects by name or prefix):

======================  =============================================================
``kmap_subm3``          kernel map of a 3x3x3 submanifold conv (27 offsets), fresh cache
``subm3_c{C}_built``    subm 3x3x3 conv C->C, kernel map built inside the timed call
``subm3_c{C}_cached``   the same with the kernel map already cached (C = 16/32/64/128)
``down_k2s2_built``     k2 s2 downsampling conv 32->64, map built / ``_cached``
``inverse_k2s2``        its inverse (transposed) conv 64->32, map reused from the down conv
``minkunet_fwd_cr*``    MinkUNet18 forward, eval, no grad, all maps built (cr 0.5 / 1.0)
``minkunet_train_cr*``  training step: forward + cross-entropy + backward + SGD step
``*_bf16``              bf16 rows (autocast when the core supports it, else bf16 weights+feats)
======================  =============================================================

Implementations: ``sparse3d`` at ``--threads``; spconv (``ConvAlgo.Native``) at 1 thread
(``spconv_1t``) and at ``--threads`` (``spconv_nt``). spconv cannot train on the CPU
(its backward needs CUDA) and has no CPU bf16: those cells are ``n/a`` (JSON null).

Per cell: median of ``--repeats`` timed runs after ``--warmup`` runs. MACs are counted
from the real kernel-map pair counts (sum over layers of pairs*Cin*Cout, training = 3x
forward); roofline fraction = ``2*MACs/time / peak`` with ``peak`` the best ``torch.mm``
2048^3 GFLOP/s measured in this run at the same thread count and dtype.

Inputs: the real SemanticKITTI scan (seq 08, frame 0) voxelized at 0.05 m and a
deterministic synthetic HDL-64E-like scan (:func:`synthetic_scan`). ``--quick`` uses
a small synthetic scan and 1 repeat (for tests). Never gate anything on these times.

Usage::

    python tools/bench.py --threads 2 --repeats 5 --json bench.json
    python tools/bench.py --quick --json /tmp/q.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

import sparse3d  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads libgomp)
import torch

__all__ = ["main", "synthetic_scan", "voxelize", "all_case_names", "ME_REFERENCE_S"]

REPO = Path(__file__).resolve().parents[1]
KITTI_SCAN = REPO.parent / "shared" / "data" / "semantickitti" / "sequences" / "08" / "velodyne" / "000000.bin"
VOXEL = 0.05
SUBM_CHANNELS = (16, 32, 64, 128)
CRS = (0.5, 1.0)
BF16_CASES = ("subm3_c64_cached", "subm3_c128_cached", "minkunet_fwd_cr0.5", "minkunet_fwd_cr1.0",
              "minkunet_train_cr0.5", "minkunet_train_cr1.0")
# MinkowskiEngine 0.5.4 CPU, 2 threads, 88,730-voxel synthetic scan, median of 5
# (shared/reference/sparse-conv.md, "Measured on the project's machines"). Seconds.
ME_REFERENCE_S = {
    "subm3_c16_built": 0.079, "subm3_c16_cached": 0.026, "subm3_c32_built": 0.087, "subm3_c32_cached": 0.044,
    "subm3_c64_built": 0.140, "subm3_c64_cached": 0.088, "subm3_c128_built": 0.277, "subm3_c128_cached": 0.220,
    "down_k2s2_built": 0.056, "down_k2s2_cached": 0.024, "minkunet_fwd_cr1.0": 4.1,
    "minkunet_train_cr0.5": 6.2, "minkunet_train_cr1.0": 8.7,
}
IMPLS = ("sparse3d", "spconv_1t", "spconv_nt")


def all_case_names(bf16: bool = True) -> List[str]:
    names = ["kmap_subm3"]
    for c in SUBM_CHANNELS:
        names += [f"subm3_c{c}_built", f"subm3_c{c}_cached"]
    names += ["down_k2s2_built", "down_k2s2_cached", "inverse_k2s2"]
    names += [f"minkunet_fwd_cr{cr}" for cr in CRS] + [f"minkunet_train_cr{cr}" for cr in CRS]
    if bf16:
        names += [f"{n}_bf16" for n in BF16_CASES]
    return names


# ----------------------------------------------------------------------------- inputs
def synthetic_scan(seed: int = 0, beams: int = 64, azimuth_steps: int = 2000, max_range: float = 80.0,
                   height: float = 1.73, drop: float = 0.1) -> np.ndarray:
    """Ray-cast an HDL-64E-like sensor against a street scene.

    64 beams from +2 to -24.9 deg (upper half +2..-8.33, lower half -8.83..-24.9, as on the
    HDL-64E), ``azimuth_steps`` jittered azimuths per beam, sensor ``height`` m above a ground
    plane, building facades along both road sides (with gaps), cars and poles as boxes,
    2 cm range noise, ``drop`` fraction of returns lost. Deterministic given ``seed``.

    Returns:
        ``[P, 4]`` float32 (x, y, z, intensity); about 113k points / 90k voxels at 0.05 m by default.
    """
    rng = np.random.default_rng(seed)
    up = beams // 2
    elev = np.deg2rad(np.concatenate([np.linspace(2.0, -8.33, up), np.linspace(-8.83, -24.9, beams - up)]))
    az = np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False)[None, :]
    az = az + rng.uniform(0, 2 * np.pi / azimuth_steps, (beams, 1))
    el = np.broadcast_to(elev[:, None], az.shape)
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(-1, 3)
    o = np.array([0.0, 0.0, height])
    t = np.full(len(d), np.inf)
    down = d[:, 2] < -1e-6
    t[down] = -height / d[down, 2]
    boxes = []
    for side in (-1, 1):  # facades
        x = -max_range
        while x < max_range:
            length, gap, y0 = rng.uniform(8, 25), rng.uniform(1, 6), side * rng.uniform(11, 18)
            boxes.append(((x, min(y0, y0 + side * 6), 0.0), (x + length, max(y0, y0 + side * 6), rng.uniform(4, 12))))
            x += length + gap
    for _ in range(30):  # cars, none on top of the ego vehicle
        x, y = rng.uniform(-50, 50), rng.choice([-6.5, -3.5, 3.5, 6.5]) + rng.normal(0, 0.3)
        if abs(x) < 6 and abs(y) < 4:
            continue
        boxes.append(((x, y - 0.9, 0.0), (x + rng.uniform(3.8, 5.0), y + 0.9, rng.uniform(1.4, 1.8))))
    for _ in range(40):  # poles, trunks, signs
        x, y, w = rng.uniform(-60, 60), rng.choice([-1, 1]) * rng.uniform(7.8, 8.6), rng.uniform(0.1, 0.5)
        boxes.append(((x, y, 0.0), (x + w, y + w, rng.uniform(2.5, 7.0))))
    inv = 1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)
    for lo, hi in boxes:  # slab test
        t1, t2 = (np.asarray(lo) - o) * inv, (np.asarray(hi) - o) * inv
        tn, tf = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
        hit = (tn <= tf) & (tn > 0) & (tn < t)
        t = np.where(hit, tn, t)
    keep = np.isfinite(t) & (t < max_range) & (t > 1.0) & (rng.random(len(t)) >= drop)
    r = t[keep] + rng.normal(0, 0.02, int(keep.sum()))
    pts = o + d[keep] * r[:, None]
    return np.concatenate([pts, rng.uniform(0, 1, (len(pts), 1))], 1).astype(np.float32)


def voxelize(points: np.ndarray, voxel: float = VOXEL):
    """``points [P, 4]`` -> (coords ``[N, 4]`` int32 (0, x, y, z), feats ``[N, 4]`` float32 of one point per voxel)."""
    from sparse3d import sparse_quantize
    c, idx = sparse_quantize(points[:, :3], voxel, return_index=True)
    coords = np.concatenate([np.zeros((len(c), 1), np.int32), c], 1)
    return torch.from_numpy(coords), torch.from_numpy(np.ascontiguousarray(points[idx]))


def load_inputs(quick: bool, names: List[str]) -> Dict[str, dict]:
    out = {}
    for name in names:
        if name == "real":
            if not KITTI_SCAN.exists():
                print(f"# skipping input 'real': {KITTI_SCAN} not found")
                continue
            pts = np.fromfile(KITTI_SCAN, dtype=np.float32).reshape(-1, 4)
            src = str(KITTI_SCAN)
        elif name == "synthetic":
            pts = synthetic_scan(beams=8, azimuth_steps=128, max_range=20.0) if quick else synthetic_scan()
            src = "synthetic_scan(seed=0)" + (", quick: 8 beams x 128 azimuths, 20 m" if quick else "")
        else:
            raise ValueError(f"--inputs: unknown input {name!r} (choose from real, synthetic)")
        coords, feats = voxelize(pts)
        out[name] = {"coords": coords, "feats": feats, "points": len(pts), "voxels": len(coords), "source": src}
    return out


# ----------------------------------------------------------------------------- timing
def timeit(fn: Callable[[], object], repeats: int, warmup: int) -> List[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def gemm_peak(threads: int, dtype: torch.dtype, n: int = 2048, tries: int = 4) -> float:
    """Best ``torch.mm`` n^3 throughput in GFLOP/s at ``threads`` threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        best = min(timeit(lambda: torch.mm(a, b), tries, 0))
    finally:
        torch.set_num_threads(prev)
    return 2 * n ** 3 / best / 1e9


# ----------------------------------------------------------------------------- cases: sparse3d
def _s3d_tensor(feats, coords):
    from sparse3d import SparseTensor
    return SparseTensor(feats, coords, check=False)


def _conv_macs(model: torch.nn.Module, x) -> int:
    """MACs of one forward of ``model`` on ``x`` from real pair counts (Conv3d + Linear layers)."""
    from sparse3d.nn import Conv3d
    from sparse3d.nn.functional.kmap import get_kernel_map, get_transposed_kernel_map
    total = [0]

    def conv_hook(m, inp, out):
        x = inp[0]
        if m.kernel_size == (1, 1, 1) and m.stride == (1, 1, 1):
            pairs = len(x)
        elif m.transposed:
            pairs = get_transposed_kernel_map(x, m.kernel_size, m.stride, m.dilation)[0].num_pairs
        else:
            pairs = get_kernel_map(x, m.kernel_size, m.stride, m.dilation)[0].num_pairs
        total[0] += pairs * m.in_channels * m.out_channels

    def lin_hook(m, inp, out):
        total[0] += inp[0].shape[0] * m.in_features * m.out_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, Conv3d)]
    hooks += [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


class Case:
    """One benchmark case on one input: callables per implementation, MACs and pair counts."""

    def __init__(self, name: str, macs: Optional[int], pairs: Optional[int], fns: Dict[str, Optional[Callable]],
                 dtype: str = "fp32", note: str = "") -> None:
        self.name, self.macs, self.pairs, self.fns, self.dtype, self.note = name, macs, pairs, fns, dtype, note


def _autocast_ok() -> bool:
    """Whether the sparse3d core runs a wide conv (gather-GEMM-scatter) under CPU bf16 autocast."""
    from sparse3d import SparseTensor
    from sparse3d.nn import Conv3d
    g = torch.Generator().manual_seed(0)
    c = torch.unique(torch.randint(0, 6, (200, 3), generator=g), dim=0)
    c = torch.cat([torch.zeros(len(c), 1, dtype=c.dtype), c], 1).int()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = Conv3d(96, 96, 3)(SparseTensor(torch.randn(len(c), 96), c))
            y.feats.float().sum().backward()
        return True
    except Exception:  # noqa: BLE001 - any failure means: fall back to explicit bf16
        return False


def build_case(name: str, inp: dict, spconv_mod, twin_mod, autocast_ok: bool) -> Case:
    from sparse3d.models import MinkUNet
    from sparse3d.nn import Conv3d
    from sparse3d.nn.functional.kmap import get_kernel_map
    coords, pts = inp["coords"], inp["feats"]
    g = torch.Generator().manual_seed(0)
    bf16 = name.endswith("_bf16")
    base = name[: -len("_bf16")] if bf16 else name
    mode = "autocast" if autocast_ok else "cast"
    dtype_tag = f"bf16-{mode}" if bf16 else "fp32"
    note = "" if not bf16 or autocast_ok else "autocast fails in the core; bf16 weights+feats instead"

    def ctx():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 and autocast_ok else _Null()

    cast = (lambda t: t.to(torch.bfloat16)) if bf16 and not autocast_ok else (lambda t: t)

    if base == "kmap_subm3":
        f1 = torch.zeros(len(coords), 1)
        km = get_kernel_map(_s3d_tensor(f1, coords), (3, 3, 3), (1, 1, 1), (1, 1, 1))[0]
        fns = {"sparse3d": lambda: get_kernel_map(_s3d_tensor(f1, coords), (3, 3, 3), (1, 1, 1), (1, 1, 1))}
        if spconv_mod is not None:
            sp_in = twin_mod.to_spconv_tensor(f1, coords)
            sp = spconv_mod.pytorch
            args = (sp_in.indices, sp_in.batch_size, sp_in.spatial_shape, sp.ConvAlgo.Native,
                    [3] * 3, [1] * 3, [1] * 3, [1] * 3, [0] * 3, True, False)
            fns["spconv_1t"] = fns["spconv_nt"] = lambda: sp.ops.get_indice_pairs(*args)
        return Case(name, None, km.num_pairs, fns, dtype_tag, note)

    if base.startswith("subm3_c") or base.startswith("down_k2s2") or base == "inverse_k2s2":
        if base.startswith("subm3_c"):
            cin = cout = int(base.split("_")[1][1:])
            conv = Conv3d(cin, cout, 3)
        elif base.startswith("down"):
            cin, cout = 32, 64
            conv = Conv3d(cin, cout, 2, stride=2)
        else:
            cin, cout = 64, 32
            down = Conv3d(32, 64, 2, stride=2)
            conv = Conv3d(cin, cout, 2, stride=2, transposed=True)
        conv = conv.eval()
        cached = base.endswith("_cached") or base == "inverse_k2s2"
        feats = torch.randn(len(coords), 32 if base == "inverse_k2s2" else cin, generator=g)
        conv, feats = cast(conv), cast(feats)
        if base == "inverse_k2s2":
            with torch.no_grad():
                x_in = cast(down)(_s3d_tensor(feats, coords))
            x_in = x_in.replace(cast(torch.randn(len(x_in), cin, generator=g)))
        else:
            x_in = _s3d_tensor(feats, coords)
        with torch.no_grad():
            conv(x_in)  # fill the cache (cached cases) and count pairs
        if base == "inverse_k2s2":
            km = get_kernel_map(_s3d_tensor(feats, coords), (2, 2, 2), (2, 2, 2), (1, 1, 1))[0]
        else:
            km = get_kernel_map(x_in, conv.kernel_size, conv.stride, conv.dilation)[0]
        pairs = km.num_pairs

        def s3d():
            x = x_in if cached else _s3d_tensor(x_in.feats, x_in.coords)
            with torch.no_grad(), ctx():
                conv(x)
        fns = {"sparse3d": s3d}
        if spconv_mod is not None and not bf16:
            sp = spconv_mod.pytorch
            algo = sp.ConvAlgo.Native
            if base.startswith("subm3_c"):
                sconv = sp.SubMConv3d(cin, cout, 3, bias=False, indice_key="k", algo=algo)
            elif base.startswith("down"):
                sconv = sp.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key="k", algo=algo)
            else:
                sdown = sp.SparseConv3d(32, 64, 2, stride=2, bias=False, indice_key="k", algo=algo)
                sconv = sp.SparseInverseConv3d(cin, cout, 2, bias=False, indice_key="k", algo=algo)
            sconv = sconv.eval()
            base_t = twin_mod.to_spconv_tensor(x_in.feats if base != "inverse_k2s2" else feats, coords)
            with torch.no_grad():
                if base == "inverse_k2s2":
                    d = sdown(base_t)
                    sx = d.replace_feature(x_in.feats)
                else:
                    first = sconv(base_t)  # pairs now in first.indice_dict
                    reuse = first.indice_dict if base.startswith("subm3") and cached else None
                    sx = sp.SparseConvTensor(base_t.features, base_t.indices, base_t.spatial_shape,
                                             base_t.batch_size, indice_dict=reuse)

            if base == "down_k2s2_cached":
                # spconv only reuses pairs of subm and inverse convs: call its conv function on the stored pairs
                from spconv.pytorch import functional as Fsp
                data = first.indice_dict["k"]

                def spc():
                    with torch.no_grad():
                        Fsp.indice_conv(sx.features, sconv.weight, data.indice_pairs, data.indice_pair_num,
                                        data.out_indices.shape[0], algo)
            else:
                def spc():
                    x = sx if cached else sp.SparseConvTensor(sx.features, sx.indices, sx.spatial_shape,
                                                              sx.batch_size)
                    with torch.no_grad():
                        sconv(x)
            fns["spconv_1t"] = fns["spconv_nt"] = spc
        else:
            fns["spconv_1t"] = fns["spconv_nt"] = None
        return Case(name, pairs * cin * cout, pairs, fns, dtype_tag, note)

    if base.startswith("minkunet_"):
        kind, cr = base.split("_")[1], float(base.split("_cr")[1])
        torch.manual_seed(0)
        model = MinkUNet(in_channels=4, num_classes=19, cr=cr)
        macs = _conv_macs(model.eval(), _s3d_tensor(pts, coords))
        model, feats = cast(model), cast(pts)
        fns = {}
        if kind == "fwd":
            model.eval()

            def s3d():
                with torch.no_grad(), ctx():
                    model(_s3d_tensor(feats, coords))
            fns["sparse3d"] = s3d
            if spconv_mod is not None and not bf16:
                twin = twin_mod.load_from_sparse3d(twin_mod.SpconvMinkUNet(cr=cr), model).eval()
                t0 = twin_mod.to_spconv_tensor(pts, coords)
                SCT = spconv_mod.pytorch.SparseConvTensor

                def spc():
                    with torch.no_grad():
                        twin(SCT(t0.features, t0.indices, t0.spatial_shape, t0.batch_size))
                fns["spconv_1t"] = fns["spconv_nt"] = spc
            else:
                fns["spconv_1t"] = fns["spconv_nt"] = None
            return Case(name, macs, None, fns, dtype_tag, note)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        labels = torch.randint(0, 19, (len(coords),), generator=g)

        def step():
            with ctx():
                out = model(_s3d_tensor(feats, coords))
                loss = torch.nn.functional.cross_entropy(out.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        fns = {"sparse3d": step, "spconv_1t": None, "spconv_nt": None}
        train_note = "spconv: n/a (CPU backward needs CUDA)"
        return Case(name, 3 * macs, None, fns, dtype_tag, "; ".join(s for s in (note, train_note) if s))
    raise ValueError(f"unknown case {name!r}")


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- main
def _fmt_t(t: Optional[float]) -> str:
    if t is None:
        return "n/a"
    return f"{t * 1e3:8.1f} ms" if t < 1 else f"{t:8.2f} s "


def _fmt_r(r: Optional[float], pct: bool = False) -> str:
    if r is None:
        return "n/a"
    return f"{100 * r:.1f}%" if pct else f"{r:.2f}"


def _ratio(a, b):
    return a / b if (a is not None and b) else None


def print_table(results: List[dict], meta: dict, file=sys.stdout) -> None:
    nt = meta["threads"]
    print(f"# sparse3d vs spconv {meta.get('spconv_version') or '(absent)'}, torch {meta['torch']}, "
          f"{nt} threads, median of {meta['repeats']} after {meta['warmup']} warm-up", file=file)
    pk = meta["peak_gflops"]
    print(f"# torch.mm {meta['gemm_n']}^3 peak: fp32 {pk['fp32_nt']:.0f} GFLOP/s @{nt}t, {pk['fp32_1t']:.0f} @1t; "
          f"bf16 {pk['bf16_nt']:.0f} @{nt}t", file=file)
    la = meta.get("loadavg_1min") or {}
    if la.get("start") is not None:
        print(f"# 1-min load average at start / end: {la['start']:.1f} / {la['end']:.1f} on {meta['cpus']} cpus "
              "(above the cpu count the timings are contended; quote ratios, not absolute times)", file=file)
    for name, info in meta["inputs"].items():
        print(f"# input {name}: {info['voxels']} voxels from {info['points']} points ({info['source']})", file=file)
    print(f"# ratio = sparse3d / spconv (< 1: sparse3d faster); roof = (2*MACs/time)/peak; "
          f"spc1 = spconv single-threaded, spcN = spconv at {nt} threads; ME = MinkowskiEngine 0.5.4 CPU "
          f"reference (88.7k-voxel synthetic scan, 2 threads, not run here)", file=file)
    hdr = (f"{'case':26s} {'input':9s} {'dtype':13s} {'GMACs':>7s} {'sparse3d':>11s} {'spconv 1t':>11s} "
           f"{'spconv Nt':>11s} {'r/spc1':>6s} {'r/spcN':>6s} {'roof s3d':>8s} {'roof spc1':>9s} "
           f"{'roof spcN':>9s} {'ME ref':>10s} {'r/ME':>5s}")
    for section, pred in (("fp32", lambda r: r["dtype"] == "fp32"), ("bf16", lambda r: r["dtype"] != "fp32")):
        rows = [r for r in results if pred(r)]
        if not rows:
            continue
        print(f"\n## {section}", file=file)
        print(hdr, file=file)
        print("-" * len(hdr), file=file)
        for r in rows:
            gm = f"{r['macs'] / 1e9:7.2f}" if r["macs"] else "    n/a"
            print(f"{r['case']:26s} {r['input']:9s} {r['dtype']:13s} {gm} {_fmt_t(r['sparse3d_s']):>11s} "
                  f"{_fmt_t(r['spconv_1t_s']):>11s} {_fmt_t(r['spconv_nt_s']):>11s} "
                  f"{_fmt_r(r['ratio_vs_spconv_1t']):>6s} {_fmt_r(r['ratio_vs_spconv_nt']):>6s} "
                  f"{_fmt_r(r['roofline_sparse3d'], True):>8s} {_fmt_r(r['roofline_spconv_1t'], True):>9s} "
                  f"{_fmt_r(r['roofline_spconv_nt'], True):>9s} {_fmt_t(r['me_reference_s']):>10s} "
                  f"{_fmt_r(r['ratio_vs_me']):>5s}", file=file)
    notes = sorted({r["note"] for r in results if r["note"]})
    for n in notes:
        print(f"# note: {n}", file=file)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads for sparse3d and spconv_nt (default 2)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per cell; the median is reported (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs before timing (default 1; quick: 0)")
    p.add_argument("--quick", action="store_true", help="small synthetic cloud, 1 repeat (smoke test)")
    p.add_argument("--json", type=str, default=None, help="write results to this JSON file")
    p.add_argument("--cases", nargs="+", default=None,
                   help="case names or prefixes (default: all); e.g. subm3 minkunet_fwd kmap_subm3")
    p.add_argument("--inputs", nargs="+", default=None, help="real and/or synthetic (default: both; quick: synthetic)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="skip the bf16 rows")
    p.add_argument("--no-spconv", dest="spconv", action="store_false", help="skip spconv")
    p.add_argument("--list", action="store_true", help="print the case names and exit")
    a = p.parse_args(argv)
    if a.warmup is None:
        a.warmup = 0 if a.quick else 1
    if a.threads < 1 or a.repeats < 1 or a.warmup < 0:
        p.error("--threads and --repeats must be >= 1 and --warmup >= 0")
    if a.quick:
        a.repeats = 1
        a.inputs = a.inputs or ["synthetic"]
    a.inputs = a.inputs or ["real", "synthetic"]
    return a


def select_cases(patterns: Optional[List[str]], bf16: bool) -> List[str]:
    names = all_case_names(bf16)
    if not patterns:
        return names
    out = []
    for pat in patterns:
        hit = [n for n in names if n == pat or n.startswith(pat)]
        if not hit:
            raise SystemExit(f"--cases: no case matches {pat!r}; choose from {', '.join(names)}")
        out += [h for h in hit if h not in out]
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.list:
        print("\n".join(all_case_names(args.bf16)))
        return {}
    cases = select_cases(args.cases, args.bf16)
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads)
    spconv_mod = twin_mod = None
    if args.spconv:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import spconv
                import spconv.pytorch  # noqa: F401
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                import _spconv_minkunet as twin_mod
                spconv_mod = spconv
            except ImportError as e:
                print(f"# spconv unavailable ({e}); spconv columns are n/a")
    inputs = load_inputs(args.quick, args.inputs)
    n = 512 if args.quick else 2048
    peaks = {"fp32_nt": gemm_peak(args.threads, torch.float32, n), "fp32_1t": gemm_peak(1, torch.float32, n),
             "bf16_nt": gemm_peak(args.threads, torch.bfloat16, n)}
    autocast_ok = _autocast_ok() if any(c.endswith("_bf16") for c in cases) else True
    meta = {
        "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup, "quick": args.quick,
        "torch": torch.__version__, "spconv_version": getattr(spconv_mod, "__version__", None),
        "machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "peak_gflops": peaks, "gemm_n": n,
        "bf16_mode": "autocast" if autocast_ok else "cast",
        "inputs": {k: {kk: d[kk] for kk in ("points", "voxels", "source")} for k, d in inputs.items()},
        "cases": cases,
    }
    results = []
    for inp_name, inp in inputs.items():
        for name in cases:
            case = build_case(name, inp, spconv_mod, twin_mod, autocast_ok)
            times: Dict[str, Optional[List[float]]] = {}
            for impl in IMPLS:
                fn = case.fns.get(impl)
                if fn is None:
                    times[impl] = None
                    continue
                torch.set_num_threads(1 if impl == "spconv_1t" else args.threads)
                try:
                    times[impl] = timeit(fn, args.repeats, args.warmup)
                finally:
                    torch.set_num_threads(args.threads)
            med = {k: (statistics.median(v) if v else None) for k, v in times.items()}
            peak_nt = peaks["bf16_nt" if case.dtype != "fp32" else "fp32_nt"]

            macs = case.macs

            def roof(t, peak):
                return (2 * macs / t / 1e9) / peak if (macs and t) else None
            me = ME_REFERENCE_S.get(name)
            row = {
                "case": name, "input": inp_name, "voxels": inp["voxels"], "dtype": case.dtype, "macs": macs,
                "pairs": case.pairs, "sparse3d_s": med["sparse3d"], "spconv_1t_s": med["spconv_1t"],
                "spconv_nt_s": med["spconv_nt"],
                "ratio_vs_spconv_1t": _ratio(med["sparse3d"], med["spconv_1t"]),
                "ratio_vs_spconv_nt": _ratio(med["sparse3d"], med["spconv_nt"]),
                "roofline_sparse3d": roof(med["sparse3d"], peak_nt),
                "roofline_spconv_1t": roof(med["spconv_1t"], peaks["fp32_1t"]),
                "roofline_spconv_nt": roof(med["spconv_nt"], peaks["fp32_nt"]),
                "me_reference_s": me, "ratio_vs_me": _ratio(med["sparse3d"], me),
                "note": case.note, "times_s": times,
            }
            results.append(row)
            print(f"  {name:26s} {inp_name:9s} s3d {_fmt_t(row['sparse3d_s'])}  spc1 {_fmt_t(row['spconv_1t_s'])}"
                  f"  spcN {_fmt_t(row['spconv_nt_s'])}", flush=True)
            del case
    meta["loadavg_1min"] = {"start": load_start, "end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    print()
    print_table(results, meta)
    out = {"meta": meta, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, allow_nan=False))
        print(f"# wrote {args.json}")
    return out


if __name__ == "__main__":
    main()
