"""Atomic checkpoint files (temp file in the same folder + fsync + ``os.replace``).

State dict layout (shared with ``tools/eval.py``)::

    model        model.state_dict() (unwrapped from DDP)
    optimizer    optimizer.state_dict()
    scheduler    scheduler.state_dict() or None
    scaler       GradScaler.state_dict() or None
    epoch        epochs completed
    global_step  optimizer steps done
    best_miou    best validation mIoU so far
    rng          {"torch", "numpy", "python"} generator states
    cfg          resolved Hydra config as a YAML string

Files: ``<run_dir>/checkpoints/last.pt`` and ``best.pt``.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Union

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_KEYS"]

CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "global_step", "best_miou", "rng", "cfg")


def save_checkpoint(path: Union[str, os.PathLike], state: Dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically: readers see the old file or the complete new one."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def load_checkpoint(path: Union[str, os.PathLike], map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint dict. FileNotFoundError / ValueError name the file when it is missing,
    unreadable (truncated or corrupt) or not a checkpoint dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # torch raises RuntimeError / EOFError / UnpicklingError on bad files
        raise ValueError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
    if not isinstance(state, dict) or "model" not in state:
        raise ValueError(f"checkpoint {path} is not a sparse3d checkpoint (expected a dict with a 'model' key)")
    return state
