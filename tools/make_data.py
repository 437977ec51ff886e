"""Generate the embedded datasets.

    python tools/make_data.py semantickitti --out data/semantickitti_synth --seed 0 [--train 48 --val 16]

Each dataset kind is a subcommand; the output is deterministic for the same arguments.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from sparse3d.datasets.semantic_kitti import LABELS
from sparse3d.datasets.synthetic_lidar import generate_synthetic_kitti


def _semantickitti(args: argparse.Namespace) -> None:
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.force and not (out / "synth_meta.json").exists():
            raise SystemExit(f"{out} exists and is not a generated set; pass --force to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    meta = generate_synthetic_kitti(out, seed=args.seed, n_train=args.train, n_val=args.val,
                                    azimuth_steps=args.azimuth_steps, spacing=args.spacing, verbose=True)
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s ({meta['seconds_per_scan']:.3f} s per scan)")
    for split, hist in meta["histogram"].items():
        total = sum(hist.values())
        if not total:
            continue
        print(f"{split}: {total} points")
        for k, v in hist.items():
            print(f"  {int(k):3d} {LABELS[int(k)]:<14s} {v:10d} {100 * v / total:6.2f}%")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="kind", required=True)
    sk = sub.add_parser("semantickitti", help="synthetic SemanticKITTI-format LiDAR scans")
    sk.add_argument("--out", default="data/semantickitti_synth")
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--train", type=int, default=48, help="training scans, spread over sequences 00-07, 09, 10")
    sk.add_argument("--val", type=int, default=16, help="validation scans (sequence 08)")
    sk.add_argument("--azimuth-steps", type=int, default=2000)
    sk.add_argument("--spacing", type=float, default=10.0, help="metres between consecutive scans")
    sk.add_argument("--force", action="store_true", help="overwrite a folder that is not a generated set")
    sk.set_defaults(func=_semantickitti)
    from sparse3d.datasets.calo import add_subparser as add_calo
    add_calo(sub)
    from sparse3d.datasets import nuscenes  # light import: the devkit loads lazily
    nu = sub.add_parser("nuscenes", help="synthetic nuScenes (v1.0-mini tables the real devkit loads)")
    nuscenes.add_arguments(nu)
    nu.set_defaults(func=nuscenes.run)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
