#!/usr/bin/env python
"""Network time of Calo-SPVCNN vs GravNet+OC on the same events, interleaved in one run.

``tools/eval.py experiment=calo_*`` times each method in its own run; on a shared machine the load
changes between runs. Here both networks (built from ``configs/model/calo_spvcnn.yaml`` and
``calo_gravnet.yaml``, optionally with checkpoint weights) run on the SAME collated batches, and each
timed repeat runs SPVCNN then GravNet back to back, so the per-repeat ratio sees the same load. For
every thread count and batch size it prints the median per-event wall time of each network, the
median of the per-repeat ratios (GravNet / SPVCNN: the speedup), and the process CPU times.

Events: the synthetic test split at the default size (``configs/dataset/calo_synth.yaml``; generated
on first use), the first ``--events`` of them. Network time only (``model(batch)``, no clustering,
batches collated beforehand); the network time does not depend on the weights, so checkpoints are
optional.

Usage: ``python tools/bench_calo.py [--events 64] [--batch-sizes 1 8 32] [--threads 1 2] [--repeats 5]
[--spvcnn-ckpt best.pt] [--gravnet-ckpt best.pt] [--json out.json] [--no-fuse-bn] [--no-workers]``. Nothing is
gated on the times. At N > 1 threads each network is timed two ways, intra-op (every op split over the N
threads) and N single-thread workers running batches side by side
(:func:`sparse3d.utils.threads.concurrent_map`); the "best/best" speedup compares each at its faster way. As in ``tools/eval.py``, eval-mode batch norms are folded into the layer before them
(:func:`sparse3d.nn.utils.fuse_bn_eval`) unless ``--no-fuse-bn``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import sparse3d  # noqa: E402,F401  (before torch: passive OpenMP waiting)
import torch  # noqa: E402

from sparse3d.evaluation.calo import event_batches, time_pass  # noqa: E402


def _model(name: str, ckpt, fuse: bool = True):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from sparse3d.evaluation.predict import load_model_weights

    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        cfg = compose("train", [f"experiment={name}"])
    model = instantiate(cfg.model)
    if ckpt:
        load_model_weights(model, str(ckpt), expected_target=cfg.model._target_)
    model = model.eval()
    if fuse:
        from sparse3d.nn.utils import fuse_bn_eval
        model = fuse_bn_eval(model, inplace=True)
    return model, cfg


@torch.no_grad()
def bench(spv, gn, events, collate, batch_sizes, threads, repeats, workers=True):
    """``{threads: {bs: {...}}}`` with per-event ms (median) and the median per-repeat speedup.

    With ``threads > 1`` and ``workers``, each network is also timed with ``threads`` single-thread workers
    running batches side by side (``time_pass(..., workers=threads)``); ``speedup`` then compares each
    network at its faster mode within every repeat, and ``modes`` keeps every mode's figures."""
    import numba

    out = {}
    for th in threads:
        torch.set_num_threads(th)
        numba.set_num_threads(min(th, numba.config.NUMBA_NUM_THREADS))
        ws = [1, th] if (workers and th > 1) else [1]
        out[th] = {}
        for bs in batch_sizes:
            batches = event_batches(events, collate, bs)
            for m in (spv, gn):
                for w in ws:
                    time_pass(m, batches[:2 * w], len(events), workers=w)
            rows = []   # per repeat: {w: (spv (wall, cpu), gravnet (wall, cpu))}
            for _ in range(repeats):
                rows.append({w: (time_pass(spv, batches, len(events), workers=w),
                                 time_pass(gn, batches, len(events), workers=w)) for w in ws})
            med = statistics.median
            modes = {w: {"spvcnn_ms": med(r[w][0][0] for r in rows), "gravnet_ms": med(r[w][1][0] for r in rows),
                         "spvcnn_cpu_ms": med(r[w][0][1] for r in rows),
                         "gravnet_cpu_ms": med(r[w][1][1] for r in rows),
                         "speedup": med(r[w][1][0] / r[w][0][0] for r in rows)} for w in ws}
            best = [min(r[w][1][0] for w in ws) / min(r[w][0][0] for w in ws) for r in rows]
            sw = min(ws, key=lambda w: modes[w]["spvcnn_ms"])
            gw = min(ws, key=lambda w: modes[w]["gravnet_ms"])
            out[th][bs] = v = {"spvcnn_ms": modes[sw]["spvcnn_ms"], "gravnet_ms": modes[gw]["gravnet_ms"],
                               "spvcnn_cpu_ms": modes[sw]["spvcnn_cpu_ms"], "gravnet_cpu_ms": modes[gw]["gravnet_cpu_ms"],
                               "spvcnn_workers": sw, "gravnet_workers": gw, "speedup": med(best),
                               "speedup_min": min(best), "speedup_max": max(best), "modes": modes}
            for w in ws:
                mv = modes[w]
                tag = "intra-op" if w == 1 else f"{w} workers"
                print(f"threads {th}  batch {bs:3d}  {tag:9s}:  Calo-SPVCNN {mv['spvcnn_ms']:7.2f} ms/event "
                      f"(cpu {mv['spvcnn_cpu_ms']:7.2f})  GravNet+OC {mv['gravnet_ms']:7.2f} ms/event "
                      f"(cpu {mv['gravnet_cpu_ms']:7.2f})  speedup {mv['speedup']:5.1f}x", flush=True)
            if len(ws) > 1:
                print(f"threads {th}  batch {bs:3d}  best/best:  Calo-SPVCNN {v['spvcnn_ms']:7.2f} ms/event "
                      f"({sw} worker(s))  GravNet+OC {v['gravnet_ms']:7.2f} ms/event ({gw} worker(s))  speedup "
                      f"{v['speedup']:5.1f}x [{v['speedup_min']:.1f}-{v['speedup_max']:.1f}]", flush=True)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--spvcnn-ckpt", default=None)
    ap.add_argument("--gravnet-ckpt", default=None)
    ap.add_argument("--split", default="test", choices=["test", "test_pu", "val"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-fuse-bn", action="store_true", help="keep the batch norms (default: folded, as tools/eval.py)")
    ap.add_argument("--no-workers", action="store_true",
                    help="only intra-op threads (default: with N threads also time N single-thread workers)")
    a = ap.parse_args(argv)
    if a.events < 1 or a.repeats < 1 or min(a.batch_sizes) < 1 or min(a.threads) < 1:
        ap.error("--events, --repeats, --batch-sizes and --threads must be positive")
    os.environ.setdefault("SPARSE3D_ROOT", str(ROOT))
    spv, cfg = _model("calo_spvcnn", a.spvcnn_ckpt, not a.no_fuse_bn)
    gn, _ = _model("calo_gravnet", a.gravnet_ckpt, not a.no_fuse_bn)
    from hydra.utils import instantiate
    dm = instantiate(cfg.dataset)
    dm.prepare_data()
    events = dm.events(a.split)[:a.events]
    if not events:
        raise SystemExit(f"split {a.split!r} has no events")
    hits = sum(e.n_hits for e in events) / len(events)
    print(f"{len(events)} {a.split} events, {hits:.0f} hits/event; load average {os.getloadavg()}", flush=True)
    res = bench(spv, gn, events, dm.collate, a.batch_sizes, a.threads, a.repeats, not a.no_workers)
    payload = {"events": len(events), "split": a.split, "hits_per_event": hits, "load_after": os.getloadavg(),
               "results": {str(t): {str(b): v for b, v in r.items()} for t, r in res.items()}}
    if a.json:
        Path(a.json).write_text(json.dumps(payload, indent=1) + "\n")
    return payload


if __name__ == "__main__":
    main()
