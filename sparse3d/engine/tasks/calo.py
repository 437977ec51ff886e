r"""Calorimeter clustering task (Calo-SPVCNN, GravNet+OC) and the CLUE parameter-search entry point.

Models follow the calorimeter interface (``sparse3d.models.calo``): ``forward(batch) -> dict`` of
per-hit tensors, ``loss(outputs, batch) -> (loss, logs)`` and ``cluster(outputs, batch) -> list``
of ``[N_e]`` int64 labels per event (-1 = noise / unassigned). Batches come from
:class:`~sparse3d.datasets.calo.module.CaloDataModule` (``points``, ``feats``, ``energy``,
``cluster_idx``, ``semantic``, ``offsets``, ...).

**Loss normalization under DDP.** The model's loss is taken as a mean over the events of the
local batch; it is rescaled by ``B_local * world_size / B_global`` (``B`` = events), so that DDP's
gradient averaging yields the gradient of the mean over all events of the global batch, also when
the last batches differ in size across ranks.

**Validation** (:meth:`CaloTask.validate`) runs ``model.cluster`` and scores panoptic quality with
:mod:`sparse3d.metrics.panoptic` (IoU > 0.5, noise hits void), with **hit-count IoU** (keys
``pq, sq, rq``) and **energy-weighted IoU** (keys ``wpq, wsq, wrq``), each pooled over the whole
set (``PQ = SQ x RQ``) and averaged per event (``*_event``; these do not satisfy ``PQ = SQ x RQ``).
The sums behind every number are all-reduced over DDP ranks. It also reports the semantic
(signal vs noise) accuracy and signal IoU when the model outputs ``semantic_logits``, the
validation loss when the model has ``loss``, and network / clustering milliseconds per event.

**CLUE** has no weights; ``experiment=calo_clue`` sets ``fit_fn: sparse3d.engine.tasks.calo.fit_clue``,
which ``tools/train.py`` calls with the config instead of the gradient trainer (see :func:`fit_clue`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ...metrics.panoptic import WEIGHTINGS, PanopticQuality
from .. import distributed as D

__all__ = ["CaloTask", "fit_clue", "run_clue_search", "panoptic_summary", "format_panoptic_table",
           "MONITOR_KEYS"]

_PQ_FIELDS = ("tp", "fp", "fn", "iou_sum", "n_events", "n_scored", "pq_sum", "sq_sum", "rq_sum")
_PREFIX = {"count": "", "energy": "w"}
MONITOR_KEYS = tuple(f"{p}{m}{s}" for p in ("", "w") for m in ("pq", "sq", "rq") for s in ("", "_event"))


def _pq_vector(pq: PanopticQuality) -> List[float]:
    """The additive sums behind :meth:`PanopticQuality.compute`, per weighting, as one flat list."""
    out: List[float] = []
    for k in WEIGHTINGS:
        tot, evs = pq.totals[k], pq.per_event[k]
        scored = [s for s in evs if s.denom > 0]
        out += [tot.tp, tot.fp, tot.fn, tot.iou_sum, len(evs), len(scored), sum(s.pq for s in scored),
                sum(s.sq for s in scored), sum(s.rq for s in scored)]
    return out


def panoptic_summary(vec: Sequence[float]) -> Dict[str, Dict[str, float]]:
    """``{"count": {...}, "energy": {...}}`` with ``pq, sq, rq`` (pooled), ``pq_event, sq_event,
    rq_event`` (per-event means over events with TP + FP + FN > 0), ``tp, fp, fn, n_events`` from the
    flat sums of :func:`_pq_vector` (possibly summed over ranks)."""
    res = {}
    n = len(_PQ_FIELDS)
    for i, k in enumerate(WEIGHTINGS):
        d = dict(zip(_PQ_FIELDS, [float(v) for v in vec[i * n:(i + 1) * n]]))
        denom = d["tp"] + 0.5 * d["fp"] + 0.5 * d["fn"]
        ns = d["n_scored"]
        res[k] = {"pq": d["iou_sum"] / denom if denom else 0.0, "sq": d["iou_sum"] / d["tp"] if d["tp"] else 0.0,
                  "rq": d["tp"] / denom if denom else 0.0,
                  "pq_event": d["pq_sum"] / ns if ns else 0.0, "sq_event": d["sq_sum"] / ns if ns else 0.0,
                  "rq_event": d["rq_sum"] / ns if ns else 0.0,
                  "tp": int(d["tp"]), "fp": int(d["fp"]), "fn": int(d["fn"]), "n_events": int(d["n_events"])}
    return res


def format_panoptic_table(panoptic: Dict[str, Dict[str, float]], title: str = "") -> str:
    """Text table of :func:`panoptic_summary` (percentages), one row per IoU kind."""
    lines = [title] if title else []
    lines.append(f"{'IoU':<22}{'PQ':>7}{'SQ':>7}{'RQ':>7} | {'PQ_ev':>7}{'SQ_ev':>7}{'RQ_ev':>7} | "
                 f"{'TP':>6}{'FP':>6}{'FN':>6}")
    names = {"count": "hit-count", "energy": "energy-weighted"}
    for k in WEIGHTINGS:
        if k not in panoptic:
            continue
        r = panoptic[k]
        lines.append(f"{names[k]:<22}" + "".join(f"{100 * r[m]:7.2f}" for m in ("pq", "sq", "rq")) + " | "
                     + "".join(f"{100 * r[m]:7.2f}" for m in ("pq_event", "sq_event", "rq_event"))
                     + f" | {r['tp']:>6}{r['fp']:>6}{r['fn']:>6}")
    lines.append("PQ/SQ/RQ pooled over all events (PQ = SQ x RQ); *_ev: averaged per event. "
                 "Match IoU > 0.5, noise hits excluded.")
    return "\n".join(lines)


class CaloTask:
    r"""Panoptic clustering of calorimeter hits (module docstring).

    Args:
        monitor: key of :meth:`validate`'s result selecting ``best.pt``, one of ``MONITOR_KEYS``
            (``"pq"``: pooled hit-count PQ; ``"wpq"``: energy-weighted; ``*_event``: per-event means).
        iou_threshold: match threshold (>= 0.5). val_loss: also compute the loss on validation
            batches (when the model has ``loss``).
    """

    def __init__(self, monitor: str = "pq", iou_threshold: float = 0.5, val_loss: bool = True) -> None:
        if monitor not in MONITOR_KEYS:
            raise ValueError(f"monitor must be one of {MONITOR_KEYS}, got {monitor!r}")
        if not 0.5 <= iou_threshold < 1.0:
            raise ValueError(f"iou_threshold must be in [0.5, 1), got {iou_threshold!r}")
        self.monitor, self.iou_threshold, self.val_loss = monitor, float(iou_threshold), bool(val_loss)

    # ------------------------------------------------------------------ training
    def training_step(self, net: nn.Module, batch: Dict[str, Any], world_size: int = 1):
        """``(loss, logs)``: ``getattr(net, "module", net).loss(net(batch), batch)``, rescaled under DDP."""
        outputs = net(batch)
        loss, logs = getattr(net, "module", net).loss(outputs, batch)
        if world_size > 1:
            n_local = torch.tensor(float(batch["offsets"].numel() - 1), dtype=torch.float64, device=loss.device)
            n_global = D.all_reduce_sum(n_local)
            loss = loss * (n_local * world_size / n_global.clamp(min=1)).to(loss.dtype)
        return loss, {k: float(v) for k, v in (logs or {}).items()}

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self, model: nn.Module, loader, device: torch.device) -> Dict[str, Any]:
        """Scores over ``loader`` (batches on ``device``), summed over DDP ranks.

        Returns:
            floats ``pq, sq, rq, pq_event, sq_event, rq_event`` (hit-count IoU), the same with a
            ``w`` prefix (energy-weighted IoU), ``sem_acc``, ``sem_iou_signal`` (NaN without
            ``semantic_logits``), ``loss`` (NaN without), ``net_ms``, ``cluster_ms`` (per event),
            ``n_events``; and ``panoptic`` (:func:`panoptic_summary`).
        """
        pq = PanopticQuality(threshold=self.iou_threshold)
        sem = np.zeros(4)   # correct, total, signal intersection, signal union
        loss_sum, n_loss, t_net, t_cl, n_ev = 0.0, 0, 0.0, 0.0, 0
        has_loss = self.val_loss and hasattr(model, "loss")
        for batch in loader:
            t0 = time.perf_counter()
            out = model(batch)
            _sync(device)
            t1 = time.perf_counter()
            clusters = model.cluster(out, batch)
            t2 = time.perf_counter()
            t_net, t_cl = t_net + (t1 - t0), t_cl + (t2 - t1)
            off = batch["offsets"].cpu().numpy()
            b = off.size - 1
            if len(clusters) != b:
                raise ValueError(f"model.cluster returned {len(clusters)} label arrays for {b} events")
            truth = batch["cluster_idx"].cpu().numpy()
            energy = batch["energy"].float().cpu().numpy()
            for i in range(b):
                s, e = int(off[i]), int(off[i + 1])
                lab = np.asarray(clusters[i]).reshape(-1)
                if lab.shape[0] != e - s:
                    raise ValueError(f"model.cluster gave {lab.shape[0]} labels for event "
                                     f"{batch['event_id'][i]} with {e - s} hits")
                pq.update(lab, truth[s:e], np.maximum(energy[s:e], 0.0))
            n_ev += b
            if isinstance(out, dict) and "semantic_logits" in out:
                p = out["semantic_logits"].argmax(1)
                t = batch["semantic"]
                sem += [float((p == t).sum()), float(t.numel()), float(((p == 1) & (t == 1)).sum()),
                        float(((p == 1) | (t == 1)).sum())]
            if has_loss and b:
                loss, _ = model.loss(out, batch)
                loss_sum, n_loss = loss_sum + float(loss) * b, n_loss + b
        vec = _pq_vector(pq) + list(sem) + [loss_sum, n_loss, t_net, t_cl, n_ev]
        red = D.all_reduce_sum(torch.tensor(vec, dtype=torch.float64, device=device)).cpu().tolist()
        n_pq = 2 * len(_PQ_FIELDS)
        pan = panoptic_summary(red[:n_pq])
        sem_r = red[n_pq:n_pq + 4]
        loss_sum, n_loss, t_net, t_cl, n_ev = red[n_pq + 4:]
        res: Dict[str, Any] = {}
        for k in WEIGHTINGS:
            for m in ("pq", "sq", "rq", "pq_event", "sq_event", "rq_event"):
                res[_PREFIX[k] + m] = float(pan[k][m])
        nan = float("nan")
        res.update(sem_acc=sem_r[0] / sem_r[1] if sem_r[1] else nan,
                   sem_iou_signal=sem_r[2] / sem_r[3] if sem_r[3] else nan,
                   loss=loss_sum / n_loss if n_loss else nan,
                   net_ms=1e3 * t_net / n_ev if n_ev else nan, cluster_ms=1e3 * t_cl / n_ev if n_ev else nan,
                   n_events=float(n_ev), panoptic=pan)
        return res

    def format_result(self, result: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
        """PQ/SQ/RQ table (both IoU kinds) plus the semantic and timing lines."""
        pan = result.get("panoptic")
        if pan is None:
            return f"{self.monitor}: {result.get(self.monitor)}"
        n = int(result.get("n_events", 0))
        text = format_panoptic_table(pan, f"panoptic quality on {n} validation events (monitor: {self.monitor})")
        if np.isfinite(result.get("sem_acc", float("nan"))):
            text += (f"\nsemantic signal/noise: accuracy {100 * result['sem_acc']:.2f}%, "
                     f"signal IoU {100 * result['sem_iou_signal']:.2f}%")
        text += f"\nper event: network {result.get('net_ms', float('nan')):.1f} ms, " \
                f"clustering {result.get('cluster_ms', float('nan')):.1f} ms"
        return text


def _sync(device) -> None:
    if isinstance(device, torch.device) and device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- CLUE

def run_clue_search(model, datamodule, task: CaloTask, run_dir, cfg_yaml: str = "",
                    grid: Optional[Dict[str, Sequence[float]]] = None, n_events: Optional[int] = 64,
                    passes: int = 2, batch_size: int = 8, verbose: bool = True) -> Dict[str, Any]:
    """Tune a :class:`~sparse3d.clustering.clue_model.CLUEClusterer` on training events, validate it,
    and write ``<run_dir>/checkpoints/{best,last}.pt`` plus ``<run_dir>/clue_params.json``.

    Args:
        model: the clusterer (start point of the search). datamodule: a ``CaloDataModule``.
        task: scores candidates with ``task.validate`` on the first ``n_events`` training events
            (None: all; no augmentation) and reads ``task.monitor``.
        grid / passes: :func:`~sparse3d.clustering.clue_model.search_clue_params`.
        cfg_yaml: resolved config stored in the checkpoint (``state["cfg"]``).

    Returns:
        the validation result (:meth:`CaloTask.validate` keys) plus ``best_miou`` (= monitored value),
        ``monitor``, ``epoch`` = 0, ``global_step`` = 0, ``seconds``, ``clue_params``, ``search_score``.
    """
    from torch.utils.data import DataLoader, Subset

    from ...clustering.clue_model import search_clue_params
    from ..checkpoint import save_checkpoint
    from ..seed import get_rng_state

    t0 = time.perf_counter()
    device = torch.device("cpu")
    train = datamodule.dataset("train", train=False)
    if n_events is not None:
        train = Subset(train, range(min(int(n_events), len(train))))
    if len(train) == 0:
        raise ValueError("CLUE parameter search needs training events (the train split is empty)")
    loader = DataLoader(train, batch_size=batch_size, shuffle=False, collate_fn=datamodule.collate)
    batches = list(loader)   # a small subset: collate once

    def score(m) -> float:
        return float(task.validate(m, batches, device)[task.monitor])

    say = print if verbose else None
    found = search_clue_params(model, score, grid, passes, log=say)
    val = task.validate(model, datamodule.val_dataloader(distributed=False), device)
    result = dict(val)
    result.update(best_miou=float(val[task.monitor]), monitor=task.monitor, epoch=0, global_step=0,
                  seconds=time.perf_counter() - t0, clue_params=found["params"], search_score=found["score"])
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg_yaml:
        (run_dir / "config.yaml").write_text(cfg_yaml)
    state = {"model": model.state_dict(), "optimizer": None, "scheduler": None, "scaler": None, "epoch": 0,
             "global_step": 0, "best_miou": result["best_miou"], "rng": get_rng_state(), "cfg": cfg_yaml,
             "clue_search": {"params": found["params"], "score": found["score"], "trials": found["trials"],
                             "monitor": task.monitor, "n_events": len(train)}}
    for name in ("last.pt", "best.pt"):
        save_checkpoint(run_dir / "checkpoints" / name, state)
    (run_dir / "clue_params.json").write_text(json.dumps(
        {"params": found["params"], "search": {"monitor": task.monitor, "score": found["score"],
                                               "n_events": len(train), "trials": len(found["trials"])},
         "val": {k: v for k, v in val.items() if isinstance(v, float)}}, indent=2) + "\n")
    return result


def fit_clue(cfg) -> Dict[str, Any]:
    """``tools/train.py`` entry for ``experiment=calo_clue`` (``fit_fn``), called with the composed config.

    Builds ``cfg.dataset`` (generating the synthetic set), ``cfg.model`` (a ``CLUEClusterer``) and
    ``cfg.task``, runs :func:`run_clue_search` with ``cfg.clue_search`` (``grid``, ``n_events``,
    ``passes``, ``batch_size``) into ``cfg.paths.run_dir`` and prints the validation table.
    Single process (under ``torchrun`` only rank 0 searches; the others wait).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ..seed import seed_everything

    D.init_distributed()
    try:
        cfg.paths.run_dir = D.broadcast_object(str(cfg.paths.run_dir))
        result: Dict[str, Any] = {}
        if D.is_main_process():
            threads = OmegaConf.select(cfg, "trainer.num_threads", default=None)
            if threads:
                torch.set_num_threads(int(threads))
            seed_everything(int(cfg.seed))
            cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
            dm = instantiate(cfg.dataset)
            dm.prepare_data()
            model = instantiate(cfg.model)
            task = instantiate(cfg.task)
            search = OmegaConf.to_container(cfg.clue_search, resolve=True) if cfg.get("clue_search") else {}
            print(f"CLUE parameter search ({task.monitor}); run dir {cfg.paths.run_dir}", flush=True)
            result = run_clue_search(model, dm, task, cfg.paths.run_dir, cfg_yaml, **search)
            print(f"\nCLUE parameters: {result['clue_params']}")
            print(task.format_result(result, dm.class_names))
            print(f"checkpoints: {Path(cfg.paths.run_dir) / 'checkpoints'}", flush=True)
        D.barrier()
        return result
    finally:
        D.cleanup()
