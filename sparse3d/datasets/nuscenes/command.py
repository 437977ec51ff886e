"""Command line of the synthetic nuScenes writer (wired into ``tools/make_data.py nuscenes``)."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

__all__ = ["add_arguments", "run", "cli"]


def add_arguments(ap: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the writer's options to ``ap`` (a parser or a ``make_data.py`` sub-parser)."""
    ap.add_argument("--out", default="data/nuscenes_synth", help="dataroot to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--version", default="v1.0-mini", choices=("v1.0-mini", "v1.0-trainval"),
                    help="table folder; scene names come from the devkit's mini_* lists (then train/val) or train/val")
    ap.add_argument("--scenes", type=int, default=48, help="scenes (20 %% of them, at least 1, go to val)")
    ap.add_argument("--val", type=int, default=None, help="validation scenes (default 20 %%)")
    ap.add_argument("--keyframes", type=int, default=3, help="keyframes (samples) per scene, 0.5 s apart")
    ap.add_argument("--sweeps", type=int, default=9, help="LiDAR sweeps before each keyframe, 0.05 s apart")
    ap.add_argument("--width", type=int, default=400, help="camera image width")
    ap.add_argument("--height", type=int, default=225, help="camera image height")
    ap.add_argument("--azimuth-steps", type=int, default=1080, help="LiDAR firings per revolution (32 beams)")
    ap.add_argument("--objects", type=int, default=40, help="annotated agents per scene")
    ap.add_argument("--force", action="store_true", help="overwrite a folder that is not a generated set")
    return ap


def run(args: argparse.Namespace) -> dict:
    """Write the dataset described by parsed ``args`` and print a summary; returns the meta dict."""
    from .writer import write_nuscenes_synth

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        if not args.force and not (out / "synth_meta.json").exists():
            raise SystemExit(f"{out} exists and is not a generated set; pass --force to overwrite it")
        shutil.rmtree(out)
    meta = write_nuscenes_synth(out, seed=args.seed, n_scenes=args.scenes, n_keyframes=args.keyframes,
                                n_sweeps=args.sweeps, image_size=(args.width, args.height),
                                azimuth_steps=args.azimuth_steps, n_objects=args.objects, version=args.version,
                                n_val=args.val, verbose=True)
    print(f"wrote {out} ({meta['version']}) in {meta['seconds']:.1f} s: {meta['samples']} samples, "
          f"{meta['sample_data']} sample_data, {meta['annotations']} annotations, "
          f"{meta['mean_points_per_keyframe']:.0f} points per keyframe")
    print(f"train scenes {meta['train_scenes']}, val scenes {meta['val_scenes']}")
    print("annotations per class:", meta["class_counts"])
    return meta


def cli(argv=None) -> dict:
    """``argv`` -> :func:`run` (``argv=None`` reads ``sys.argv[1:]``)."""
    ap = argparse.ArgumentParser(prog="make_data.py nuscenes",
                                 description="Write a synthetic nuScenes (v1.0-mini format) that nuscenes-devkit "
                                             "loads unchanged; deterministic for the same arguments.")
    return run(add_arguments(ap).parse_args(argv))
