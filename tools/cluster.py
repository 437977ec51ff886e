"""Cluster calorimeter hits: ROOT / npz in, ROOT out with cluster branches (streamed in chunks).

    python tools/cluster.py events.root -o clustered.root --checkpoint outputs/calo_spvcnn/<run>/checkpoints/best.pt
    python tools/cluster.py events.root -o clustered.root --algo clue
    python tools/cluster.py data/calo/calo_seed0_n200_npz -o clustered.root --algo clue --clue-params '{"dc_si": 2.0}'
    python tools/cluster.py a.root b.root -o ab.root --checkpoint best.pt --step-size 500 --threads 2

The output has every input branch plus ``RecHitHGC_<name>Idx`` (int32 per hit, -1 = noise /
unclustered; clusters numbered by decreasing energy), ``RecHitHGC_<name>Energy`` (energy of the
hit's cluster) and the per-cluster collection ``<name>_{energy,x,y,z,nHits}`` with ``n<name>``
(default name ``Cluster``). See :mod:`sparse3d.clustering.pipeline`.
"""
import sparse3d  # noqa: F401  (before torch: passive OpenMP waiting)

import argparse
import json
from pathlib import Path
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cluster.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="ROOT file(s), or npz file(s) / folder(s) of npz files")
    p.add_argument("-o", "--output", required=True, help="output ROOT file")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="tools/train.py checkpoint (best.pt / last.pt) of a calo model")
    src.add_argument("--algo", choices=("clue",), help="a classical algorithm instead of a checkpoint")
    p.add_argument("--clue-params", default=None,
                   help="CLUE parameters as a JSON object or a JSON file (e.g. a run's clue_params.json)")
    p.add_argument("--name", default="Cluster", help="prefix of the new branches (default: Cluster)")
    p.add_argument("--step-size", type=int, default=200, help="events per read/write chunk (default: 200)")
    p.add_argument("--batch-size", type=int, default=4, help="events per model call (default: 4)")
    p.add_argument("--device", default="cpu", help="cpu | cuda (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--workers", type=int, default=1,
                   help="CPU: run this many batches side by side on single-thread workers (default: 1); "
                        "with N cores, --workers N --batch-size 32 is the fastest way for Calo-SPVCNN")
    p.add_argument("--tree", default="Events", help="tree name (default: Events)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _clue_params(text: Optional[str]):
    if not text:
        return None
    path = Path(text)
    d = json.loads(path.read_text()) if path.is_file() else json.loads(text)
    if isinstance(d, dict) and "params" in d and isinstance(d["params"], dict):
        d = d["params"]   # a run's clue_params.json
    if not isinstance(d, dict):
        raise ValueError(f"--clue-params must be a JSON object, got {text!r}")
    return d


def main(argv: Optional[List[str]] = None):
    args = build_parser().parse_args(argv)
    import torch

    from sparse3d.clustering.pipeline import cluster_file, load_clusterer

    if args.threads:
        torch.set_num_threads(args.threads)
    model, collate = load_clusterer(args.checkpoint, args.algo, _clue_params(args.clue_params), args.device)
    summary = cluster_file(args.inputs, args.output, model, collate, step_size=args.step_size,
                           batch_size=args.batch_size, device=args.device, name=args.name, tree=args.tree,
                           progress=not args.no_progress, workers=args.workers)
    print(f"[cluster] {type(model).__name__}: {summary.text()}", flush=True)
    return summary


if __name__ == "__main__":
    main()
