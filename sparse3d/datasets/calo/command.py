"""Command line for the calorimeter data: ``tools/make_data.py calo ...``.

Examples::

    python tools/make_data.py calo --out data/calo --n-events 200 --seed 0
    python tools/make_data.py calo --out data/calo_pu --n-events 200 --seed 1 --pileup 30
    python tools/make_data.py calo --out data/calo --formats root,npz,h5 --h5-showers 500

Writes ``<out>/<name>.root`` (streamed in chunks), optionally ``<out>/<name>_npz/`` (one
file per event) and ``<out>/<name>_<particle>_showers.h5`` (CaloChallenge single showers),
and prints a one-line summary per output.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional

import numpy as np

__all__ = ["add_subparser", "build_parser", "run", "cli"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="data/calo", help="output directory (default: data/calo)")
    p.add_argument("--name", default=None, help="file stem (default: calo_seed<seed>_n<n>[_pu<pileup>])")
    p.add_argument("--n-events", type=int, default=200, help="events to generate (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="stream seed; event i uses rng([seed, i])")
    p.add_argument("--start", type=int, default=0, help="index of the first event (default: 0)")
    p.add_argument("--formats", default="root", help="comma list of root,npz,h5 (default: root)")
    p.add_argument("--chunk", type=int, default=200, help="events per ROOT basket / memory chunk")
    p.add_argument("--n-particles", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"))
    p.add_argument("--energy", type=float, nargs=2, default=(2.0, 100.0), metavar=("EMIN", "EMAX"),
                   help="particle energy range in GeV, log-uniform")
    p.add_argument("--pileup", type=float, default=0.0, help="mean number of pileup particles per event")
    p.add_argument("--noise-hits", type=float, default=200.0, help="mean noise-only hits per event")
    p.add_argument("--h5-particle", default="electron", choices=("electron", "photon", "pion"))
    p.add_argument("--h5-showers", type=int, default=200, help="single showers in the HDF5 file")
    p.add_argument("--quiet", action="store_true")


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``calo`` on an ``argparse`` subparsers object; sets ``func=run``."""
    p = subparsers.add_parser("calo", help="synthetic HGCAL-like calorimeter events",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="make_data.py calo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


def run(args: argparse.Namespace) -> dict:
    """Generate and write; returns ``{"root": path, "npz": dir, "h5": path, "stats": {...}}``."""
    from .generator import CaloGenConfig, generate_event, generate_single_showers
    from .geometry import default_geometry
    from .io_h5 import write_calochallenge
    from .io_npz import write_npz
    from .io_root import RootWriter

    formats = {f.strip() for f in args.formats.split(",") if f.strip()}
    unknown = formats - {"root", "npz", "h5"}
    if unknown or not formats:
        raise ValueError(f"--formats must be a comma list of root,npz,h5; got {args.formats!r}")
    if args.n_events < 0 or args.chunk < 1:
        raise ValueError("--n-events must be >= 0 and --chunk >= 1")
    cfg = CaloGenConfig(n_particles=tuple(args.n_particles), energy_range=tuple(args.energy),
                        pileup=args.pileup, noise_hits=args.noise_hits)
    name = args.name or f"calo_seed{args.seed}_n{args.n_events}" + (f"_pu{args.pileup:g}" if args.pileup else "")
    os.makedirs(args.out, exist_ok=True)
    out = {}
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr))
    hits, parts = [], []
    t0 = time.perf_counter()
    if formats & {"root", "npz"}:
        geom = default_geometry()
        root_path = os.path.join(args.out, f"{name}.root")
        npz_dir = os.path.join(args.out, f"{name}_npz")
        writer = RootWriter(root_path).__enter__() if "root" in formats else None
        try:
            for c0 in range(args.start, args.start + args.n_events, args.chunk):
                c1 = min(c0 + args.chunk, args.start + args.n_events)
                evs = [generate_event(cfg, args.seed, i, geom) for i in range(c0, c1)]
                hits += [e.n_hits for e in evs]
                parts += [int((~e.particles["is_pu"]).sum()) for e in evs]
                if writer is not None:
                    writer.write(evs)
                if "npz" in formats:
                    os.makedirs(npz_dir, exist_ok=True)
                    for i, e in zip(range(c0, c1), evs):
                        write_npz(os.path.join(npz_dir, f"event_{i:06d}.npz"), e)
                say(f"[calo] {c1 - args.start}/{args.n_events} events")
        finally:
            if writer is not None:
                writer.__exit__(None, None, None)
        if "root" in formats:
            out["root"] = root_path
        if "npz" in formats:
            out["npz"] = npz_dir
    dt = time.perf_counter() - t0
    if "h5" in formats:
        e, s = generate_single_showers(args.h5_showers, args.h5_particle, seed=args.seed)
        h5_path = os.path.join(args.out, f"{name}_{args.h5_particle}_showers.h5")
        write_calochallenge(h5_path, e, s, attrs={"n_layers": 50, "n_alpha": 16, "particle": args.h5_particle,
                                                  "r_edges_cm": np.array([0, .5, 1, 1.5, 2, 3, 4, 6, 10, 20.])})
        out["h5"] = h5_path
    stats = {"n_events": len(hits), "hits_mean": float(np.mean(hits)) if hits else 0.0,
             "particles_mean": float(np.mean(parts)) if parts else 0.0,
             "seconds_per_event": dt / max(len(hits), 1)}
    out["stats"] = stats
    for k in ("root", "npz", "h5"):
        if k in out:
            say(f"[calo] wrote {out[k]}")
    say(f"[calo] {stats['n_events']} events, {stats['hits_mean']:.0f} hits/event, "
        f"{stats['particles_mean']:.1f} particles/event, {1e3 * stats['seconds_per_event']:.0f} ms/event")
    return out


def cli(argv: Optional[List[str]] = None) -> dict:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run; the ``calo`` entry point."""
    return run(build_parser().parse_args(argv))
