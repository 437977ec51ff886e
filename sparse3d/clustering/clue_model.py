r"""CLUE as a parameter-free "model" with the calorimeter model interface, and its parameter search.

:class:`CLUEClusterer` exposes ``forward(batch) -> {}`` and ``cluster(outputs, batch) -> list of
[N_e] int64`` like the learned models (``sparse3d.models.calo``), so validation, evaluation and
``tools/cluster.py`` treat CLUE and the networks alike (its "network time" is ~0; all of its
cost is clustering time). CLUE has no weights: its state is the
:class:`~sparse3d.clustering.clue.HGCalCLUEParams`, stored in ``state_dict()`` as the module's
extra state, so a checkpoint rebuilds the tuned clusterer with
``instantiate(cfg.model).load_state_dict(state["model"])``.

:func:`search_clue_params` tunes the parameters by a coordinate search over a grid: starting from
the current parameters, each parameter in turn takes the grid value that maximizes the score
(the task's monitored value on a subset of the training events), the others held fixed;
``passes`` rounds.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .clue import HGCalCLUEParams, clue_hgcal

__all__ = ["CLUEClusterer", "search_clue_params", "DEFAULT_CLUE_GRID", "PARAM_NAMES"]

PARAM_NAMES = tuple(f.name for f in fields(HGCalCLUEParams))
DEFAULT_CLUE_GRID: Dict[str, List[float]] = {
    "dc_si": [1.3, 1.8, 2.5],
    "rhoc_mip": [0.5, 1.0, 2.0, 4.0],
    "deltao_factor": [1.5, 2.0, 3.0],
    "dc_3d": [2.5, 3.5, 5.0],
    "rhoc_3d": [0.3, 0.7, 1.5],
    "deltac_3d": [3.0, 4.0, 6.0],
    "deltao_3d": [10.0, 15.0, 25.0],
    "layer_window": [3, 6, 10],
    "dc_scint": [4.0, 6.0, 9.0],
}


class CLUEClusterer(nn.Module):
    """Two-step HGCAL CLUE (:func:`~sparse3d.clustering.clue.clue_hgcal`) on each event of a batch.

    Args: the fields of :class:`~sparse3d.clustering.clue.HGCalCLUEParams` (defaults: its defaults).
    """

    instance_mode = "clue"

    def __init__(self, **params: Any) -> None:
        super().__init__()
        unknown = set(params) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown CLUE parameters {sorted(unknown)} (known: {list(PARAM_NAMES)})")
        self.params = HGCalCLUEParams(**params)

    def set_params(self, **params: Any) -> "CLUEClusterer":
        unknown = set(params) - set(PARAM_NAMES)
        if unknown:
            raise ValueError(f"unknown CLUE parameters {sorted(unknown)} (known: {list(PARAM_NAMES)})")
        merged = {**asdict(self.params), **params}
        merged["layer_window"] = int(merged["layer_window"])
        self.params = HGCalCLUEParams(**merged)
        return self

    def get_extra_state(self) -> Dict[str, Any]:
        return {"clue_params": asdict(self.params)}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or "clue_params" not in state:
            raise ValueError("CLUEClusterer state must be a dict with 'clue_params'")
        self.params = HGCalCLUEParams(**{**asdict(HGCalCLUEParams()), **state["clue_params"]})

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """No network: an empty output dict."""
        return {}

    @torch.no_grad()
    def cluster(self, outputs: Dict[str, torch.Tensor], batch: Dict[str, Any]) -> List[np.ndarray]:
        """Per event ``[N_e]`` int64 labels (-1 = outlier / noise) from the batch's ``points``
        ``[P, 4]`` (b, x, y, z cm), ``layer`` ``[P]`` (1-based) and ``energy`` ``[P]`` GeV."""
        for k in ("points", "layer", "energy", "offsets"):
            if k not in batch:
                raise ValueError(f"CLUE needs batch['{k}']")
        pts = batch["points"].detach().cpu().numpy()
        layer = batch["layer"].detach().cpu().numpy()
        energy = batch["energy"].detach().cpu().numpy()
        off = batch["offsets"].detach().cpu().numpy()
        out = []
        for s, e in zip(off[:-1], off[1:]):
            out.append(clue_hgcal(pts[s:e, 1], pts[s:e, 2], pts[s:e, 3], layer[s:e], energy[s:e], self.params))
        return out

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.params).items())


def search_clue_params(model: CLUEClusterer, score: Callable[[CLUEClusterer], float],
                       grid: Optional[Dict[str, Sequence[float]]] = None, passes: int = 2,
                       log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Coordinate search (module docstring); leaves the best parameters in ``model``.

    Args:
        model: the clusterer (its current parameters are the start point).
        score: ``score(model) -> float`` (higher is better), e.g. PQ on training events.
        grid: ``{param: [values]}`` (default :data:`DEFAULT_CLUE_GRID`). passes: search rounds.
        log: called with one line per improvement.

    Returns:
        ``{"params": best params dict, "score": best score, "trials": [{"params", "score"}, ...]}``.
    """
    grid = dict(DEFAULT_CLUE_GRID if grid is None else grid)
    unknown = set(grid) - set(PARAM_NAMES)
    if unknown:
        raise ValueError(f"unknown CLUE grid parameters {sorted(unknown)} (known: {list(PARAM_NAMES)})")
    if not isinstance(passes, int) or passes < 1:
        raise ValueError(f"passes must be a positive int, got {passes!r}")
    for k, vals in grid.items():
        if len(vals) == 0:
            raise ValueError(f"grid['{k}'] is empty")
    trials: List[Dict[str, Any]] = []
    seen: Dict[tuple, float] = {}

    def run(params: Dict[str, Any]) -> float:
        key = tuple(sorted(params.items()))
        if key not in seen:
            model.set_params(**params)
            seen[key] = float(score(model))
            trials.append({"params": dict(params), "score": seen[key]})
        return seen[key]

    best = asdict(model.params)
    best_score = run(best)
    if log is not None:
        log(f"CLUE search: start -> score {best_score:.4f}")
    for _ in range(passes):
        changed = False
        for k, vals in grid.items():
            for v in vals:
                cand = {**best, k: type(best[k])(v)}
                s = run(cand)
                if s > best_score + 1e-12:
                    best, best_score, changed = cand, s, True
                    if log is not None:
                        log(f"CLUE search: {k}={v} -> score {best_score:.4f}")
        if not changed:
            break
    model.set_params(**best)
    return {"params": best, "score": best_score, "trials": trials}
