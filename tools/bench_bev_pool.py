#!/usr/bin/env python
"""CPU benchmark of BEV pooling at BEVFusion's realistic size, in one run.

Geometry: a nuScenes-like rig of 6 cameras (FRONT, FRONT_RIGHT, BACK_RIGHT, BACK, BACK_LEFT,
FRONT_LEFT; yaw 0, -55, -110, 180, 110, 55 deg; f = 0.48 x 1266 px, 0.48 x 809 px for BACK),
images 256 x 704 (resize 0.48 + crop), features 32 x 88, ``dbound = (1, 60, 0.5)`` (D = 118),
``xbound = ybound = (-54, 54, 0.6)`` (180 x 180), ``zbound = (-10, 10, 20)`` (1 cell), C = 80:
6 x 118 x 32 x 88 = 1,993,728 frustum points. The LSS chain (:func:`frustum_geometry`) gives
their cells; the out-of-grid points are dropped (as BEVFusion does before ``bev_pool``) and the
features of the kept points are ``depth x context`` with random softmax depth and context.

Timed (median of ``--repeats`` runs after a warm-up, so no numba compilation is timed; wall time
and process CPU time of all threads; ``--threads`` threads for torch and numba):

Plan profile: rank pass, counting sort + intervals (vs a torch stable argsort of the same ranks).

A. Kernel only -- the ``[M, C]`` features of the kept points are given:

* ``A naive index_add``: :func:`sparse3d.ops.bev_pool.reference.bev_pool_naive` -- flat rank, then
  ONE ``torch.Tensor.index_add`` of the ``[M, C]`` features into the flattened ``[B*Z*X*Y, C]``
  output, reshaped/permuted to ``[B, C, Z, X, Y]``. This is "the naive torch scatter".
* ``A numba, plan recomputed``: :func:`bev_pool` (ranks + counting sort + intervals in the call).
* ``A numba, cached plan``: :func:`bev_pool_with_plan` with the plan built once beforehand.
* ``A torch intervals, cached plan``: the device-agnostic torch path (1 run).
* backward of both (naive: autograd of ``index_add`` = ``index_select``; numba: gather).
* ``stream-read floor``: ``feats.sum(0)``, one sequential read of the features. Both the naive
  scatter and the interval kernel must read all ``M x C`` floats once, so this bounds any
  speed-up of section A (memory bandwidth).

B. Splat -- the LSS depthnet outputs are given: depth probabilities ``[B*N, D, fH*fW]`` and
context ``[B*N, fH*fW, C]`` (what BEVFusion's ``LSSTransform`` pools):

* ``B naive splat``: BEVFusion's path with its CUDA kernel replaced by the naive scatter --
  outer product ``depth x context`` -> ``[B*N*D*fH*fW, C]``, keep the in-grid rows (``x[kept]``),
  ``bev_pool_naive`` (the ``index_add`` above).
* ``B fused numba``: :func:`bev_pool_depth` (BEVPoolv2 style: ``depth[p] * context[pixel(p)]`` read
  on the fly, the product is never built) over a plan of all frustum points with a validity mask,
  cached or recomputed in the call; and the backward of both.

Usage: ``python tools/bench_bev_pool.py [--threads 2] [--repeats 3] [--json out.json]``
(``--small`` for a quick run on a reduced size). Times are printed; nothing is gated on them.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

import sparse3d  # noqa: F401  (first: sets OMP_WAIT_POLICY=PASSIVE before torch loads libgomp)
import torch  # noqa: E402

from sparse3d.models.bevfusion.camera.vtransform import create_frustum, frustum_geometry, geometry_to_cells
from sparse3d.nn.functional.bev_pool import BEVPoolPlan, bev_pool, bev_pool_depth, bev_pool_with_plan
from sparse3d.utils.threads import sync_numba_threads
from sparse3d.ops.bev_pool import numba_cpu, reference

__all__ = ["main", "nuscenes_rig"]


def nuscenes_rig(n_cam: int = 6, image_size=(256, 704), resize: float = 0.48, crop=(32, 176)):
    """float32 (camera2lidar ``[1, N, 4, 4]``, intrinsics, img_aug ``[1, N, 4, 4]``, lidar_aug ``[1, 4, 4]``)."""
    yaws = [0.0, -55.0, -110.0, 180.0, 110.0, 55.0][:n_cam]
    c2l = torch.eye(4, dtype=torch.float64).repeat(1, n_cam, 1, 1)
    K = torch.eye(4, dtype=torch.float64).repeat(1, n_cam, 1, 1)
    aug = torch.eye(4, dtype=torch.float64).repeat(1, n_cam, 1, 1)
    for i, yaw in enumerate(yaws):
        a = math.radians(yaw)
        fwd = torch.tensor([math.cos(a), math.sin(a), 0.0], dtype=torch.float64)
        right = torch.tensor([math.sin(a), -math.cos(a), 0.0], dtype=torch.float64)
        down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
        c2l[0, i, :3, :3] = torch.stack([right, down, fwd], 1)
        c2l[0, i, :3, 3] = torch.tensor([1.0 * math.cos(a), 0.5 * math.sin(a), 0.3], dtype=torch.float64)
        f = 809.0 if abs(yaw) == 180.0 else 1266.0
        K[0, i, 0, 0] = K[0, i, 1, 1] = f
        K[0, i, 0, 2], K[0, i, 1, 2] = 800.0, 450.0
        aug[0, i, 0, 0] = aug[0, i, 1, 1] = resize
        aug[0, i, 0, 3], aug[0, i, 1, 3] = -crop[0], -crop[1]
    return c2l.float(), K.float(), aug.float(), torch.eye(4).unsqueeze(0)


def _time(fn, repeats: int, warmup: int = 1):
    """(median wall seconds, median process CPU seconds) over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        out = fn()
        del out
    ws, cs = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        ws.append(time.perf_counter() - t)
        cs.append(time.process_time() - c)
        del out
    return statistics.median(ws), statistics.median(cs)


def _time_backward(make, repeats: int):
    """Like :func:`_time` for ``make() -> (output, grad)``; only ``output.backward(grad)`` is timed."""
    def once():
        o, w = make()
        t, c = time.perf_counter(), time.process_time()
        o.backward(w)
        return time.perf_counter() - t, time.process_time() - c
    once()
    runs = [once() for _ in range(repeats)]
    return statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)


def _bench_kernel(depth, context, cells, batch, valid, grid, r: int, res: dict):
    """Plan profile and section A (features of the kept points given); frees the ``[M, C]`` buffer on return."""
    B, X, Y, Z = grid
    BN, D, HW = depth.shape
    C = context.shape[2]
    kept = valid.nonzero().squeeze(1)
    g_k, b_k = cells.index_select(0, kept).int().contiguous(), batch.index_select(0, kept).int().contiguous()
    # kept features: depth x context, built in one [M, C] buffer
    pix = reference.frustum_pixel_index(valid.numel(), D, HW).index_select(0, kept)
    feats = torch.empty(kept.numel(), C)
    torch.index_select(context.view(-1, C), 0, pix, out=feats)
    feats.mul_(depth.view(-1).index_select(0, kept).unsqueeze(1))
    del pix
    tm = {}
    # --- plan profile (numba; warmed up first so no compilation is timed) ---
    plan = BEVPoolPlan.build(g_k, b_k, B, X, Y, Z)
    prof = {}
    prof["ranks"] = _time(lambda: numba_cpu.compute_ranks(g_k.numpy(), b_k.numpy(), B, X, Y, Z), r)
    ranks = numba_cpu.compute_ranks(g_k.numpy(), b_k.numpy(), B, X, Y, Z)
    prof["counting_sort+intervals"] = _time(lambda: numba_cpu.build_intervals(ranks, B * Z * X * Y), r)
    prof["torch_stable_argsort (comparison)"] = _time(lambda: torch.sort(torch.from_numpy(ranks), stable=True), r)
    res["intervals"] = plan.n_intervals

    # --- A. kernel only: feats [M, C] of the kept points given ---
    ref = reference.bev_pool_naive(feats, g_k, b_k, B, X, Y, Z)
    res["max_abs_diff_numba_vs_naive"] = float((bev_pool_with_plan(feats, plan) - ref).abs().max())
    res["max_abs_out"] = float(ref.abs().max())
    w = torch.randn_like(ref)
    tm["A naive index_add"] = _time(lambda: reference.bev_pool_naive(feats, g_k, b_k, B, X, Y, Z), r)
    tm["A numba, plan recomputed"] = _time(lambda: bev_pool(feats, g_k, b_k, B, X, Y, Z), r)
    tm["A numba, cached plan"] = _time(lambda: bev_pool_with_plan(feats, plan), r)
    tm["A plan build"] = _time(lambda: BEVPoolPlan.build(g_k, b_k, B, X, Y, Z), r)
    tplan = BEVPoolPlan.build(g_k, b_k, B, X, Y, Z, impl="torch")
    tm["A torch intervals, cached plan"] = _time(lambda: bev_pool_with_plan(feats, tplan, impl="torch"), 1)
    tm["A naive backward"] = _time_backward(
        lambda: (reference.bev_pool_naive(feats.detach().requires_grad_(), g_k, b_k, B, X, Y, Z), w), r)
    tm["A numba backward"] = _time_backward(lambda: (bev_pool_with_plan(feats.detach().requires_grad_(), plan), w), r)
    tm["stream-read floor (feats.sum(0))"] = _time(lambda: feats.sum(0), r)
    return prof, tm, w


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--channels", type=int, default=80)
    ap.add_argument("--small", action="store_true", help="reduced size (quick check)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    nt = sync_numba_threads()
    C = args.channels
    if args.small:
        image, feat, dbound, xb = (128, 352), (16, 44), (1.0, 60.0, 2.0), (-54.0, 54.0, 1.2)
    else:
        image, feat, dbound, xb = (256, 704), (32, 88), (1.0, 60.0, 0.5), (-54.0, 54.0, 0.6)
    zb = (-10.0, 10.0, 20.0)
    c2l, K, aug, laug = nuscenes_rig(6, image, 0.48 * image[1] / 704, (32 * image[1] / 704, 176 * image[0] / 256))
    frustum = create_frustum(image, feat, dbound)
    geom = frustum_geometry(frustum, c2l, K, aug, laug)  # [1, 6, D, fH, fW, 3]
    B, N, D, fH, fW, _ = geom.shape
    HW = fH * fW
    cells, batch, valid = geometry_to_cells(geom, xb, xb, zb)
    X = Y = int(round((xb[1] - xb[0]) / xb[2]))
    Z = 1
    M_all = valid.numel()
    gen = torch.Generator().manual_seed(0)
    depth = torch.randn(B * N, D, HW, generator=gen).softmax(1).contiguous()
    context = torch.randn(B * N, HW, C, generator=gen)
    res = {"threads": nt, "cameras": N, "depth_bins": D, "feature_hw": [fH, fW], "channels": C,
           "grid": [X, Y, Z], "frustum_points": M_all, "kept_points": int(valid.sum()),
           "feats_MB": round(int(valid.sum()) * C * 4 / 2 ** 20, 1)}
    print(f"# {N} cams x {D} depth bins x {fH}x{fW} feats = {M_all} frustum points, {res['kept_points']} in the "
          f"{X}x{Y}x{Z} grid; C={C}; feats {res['feats_MB']} MB; {nt} threads", flush=True)
    r = args.repeats
    prof, tm, w = _bench_kernel(depth, context, cells, batch, valid, (B, X, Y, Z), r, res)

    # --- B. splat: depth [BN, D, HW] and context [BN, HW, C] given (what the LSS depthnet outputs) ---
    ci, bi = cells.int(), batch.int()

    def naive_splat(d=depth, c=context):
        f = (d.unsqueeze(-1) * c.unsqueeze(1)).reshape(-1, C)  # BEVFusion: depth x context, [B*N*D*fH*fW, C]
        return reference.bev_pool_naive(f[valid], ci[valid], bi[valid], B, X, Y, Z)  # x[kept], then the scatter

    fplan = BEVPoolPlan.build(ci, bi, B, X, Y, Z, valid=valid)
    out = bev_pool_depth(depth, context, fplan)
    ref = naive_splat()
    res["max_abs_diff_fused_vs_naive"] = float((out - ref).abs().max())
    del out, ref
    tm["B naive splat (product + filter + index_add)"] = _time(naive_splat, r)
    tm["B fused numba, plan recomputed"] = _time(
        lambda: bev_pool_depth(depth, context, BEVPoolPlan.build(ci, bi, B, X, Y, Z, valid=valid)), r)
    tm["B fused numba, cached plan"] = _time(lambda: bev_pool_depth(depth, context, fplan), r)
    tm["B naive splat backward"] = _time_backward(
        lambda: (naive_splat(depth.detach().requires_grad_(), context.detach().requires_grad_()), w), r)
    tm["B fused numba backward"] = _time_backward(
        lambda: (bev_pool_depth(depth.detach().requires_grad_(), context.detach().requires_grad_(), fplan), w), r)

    res["plan_profile_s"] = {k: {"wall": v[0], "cpu": v[1]} for k, v in prof.items()}
    res["times_s"] = {k: {"wall": v[0], "cpu": v[1]} for k, v in tm.items()}

    def ratio(a, b):
        return {"wall": tm[a][0] / tm[b][0], "cpu": tm[a][1] / tm[b][1]}

    res["speedups"] = {
        "A numba cached plan vs naive index_add": ratio("A naive index_add", "A numba, cached plan"),
        "A numba recomputed plan vs naive index_add": ratio("A naive index_add", "A numba, plan recomputed"),
        "A backward": ratio("A naive backward", "A numba backward"),
        "B fused cached plan vs naive splat": ratio("B naive splat (product + filter + index_add)",
                                                    "B fused numba, cached plan"),
        "B fused recomputed plan vs naive splat": ratio("B naive splat (product + filter + index_add)",
                                                        "B fused numba, plan recomputed"),
        "B backward": ratio("B naive splat backward", "B fused numba backward"),
    }
    print(f"{'':46s} {'wall ms':>9s} {'cpu ms':>9s}   (cpu = process time, all threads)")
    for k, (a, b) in list(prof.items()) + list(tm.items()):
        print(f"{k:46s} {a * 1e3:9.1f} {b * 1e3:9.1f}")
    for k, v in res["speedups"].items():
        print(f"speedup {k:44s} wall {v['wall']:6.1f}x  cpu {v['cpu']:6.1f}x")
    print(f"max |numba - naive| = {res['max_abs_diff_numba_vs_naive']:.3g}, max |fused - naive splat| = "
          f"{res['max_abs_diff_fused_vs_naive']:.3g} (max |out| {res['max_abs_out']:.3g})")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
