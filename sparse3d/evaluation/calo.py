r"""Evaluation of calorimeter clustering (Calo-SPVCNN, GravNet+OC, CLUE) on the held-out sets.

:func:`evaluate` is the ``eval_fn`` of the ``calo_*`` experiments (``tools/eval.py`` calls it with the
composed config). On the ``test`` split and its pileup variant ``test_pu`` it runs the model one
event at a time (batch size 1, after ``warmup`` untimed events, ``torch.set_num_threads(num_threads)``)
and measures **network time** (``model(batch)``) and **clustering time** (``model.cluster``)
separately, per event. Scores:

- panoptic quality with **hit-count IoU** (``pq, sq, rq``) and **energy-weighted IoU** (``wpq, wsq,
  wrq``), pooled over the set (``PQ = SQ x RQ``) and averaged per event (``*_event``), IoU > 0.5,
  noise (and pileup, with the data module's ``pileup_as_noise``) hits void;
- efficiency, fake rate, response ``<E_reco / E_true>`` and resolution ``sigma/E`` vs the true
  particle energy with the ``a/sqrt(E) (+) b/E (+) c`` fit
  (:class:`~sparse3d.metrics.calo_response.ResponseMetric`, energy-weighted IoU > 0.5 matching),
  for all particles and per type (photons, electrons, charged pions).

Files written to ``output_dir``: ``calo_result.json`` (everything), ``calo_table.md`` /
``calo_table.json`` (the seed-style table: SQ, RQ, PQ, per-event latency, speedup vs GravNet),
``response_resolution_<split>.png``, ``efficiency_<split>.png``,
``event_display_<split>_{truth,pred}.png``. The result JSON is also copied to
``<results_dir>/<experiment_name>.json`` and the comparison of every result there is rewritten
(``comparison.md`` / ``comparison.json``, :func:`combine_results`). The speedup column compares
with the GravNet result (model class ``GravNetOC``) of ``calo_eval.gravnet_result`` or
``<results_dir>/*.json``, on the same split, number of events and threads.

Network **throughput** is measured as well (:func:`network_throughput`): the same events run through
``model(batch)`` in batches of each size of ``calo_eval.batch_sizes`` (offline reconstruction batches
events; batch 1 is the trigger-like latency above), per-event wall and CPU time, median of ``repeats``
passes; the speedup against GravNet+OC is given per batch size, each network at its faster way of
using the threads (intra-op, or batches side by side on single-thread workers; :func:`network_throughput`).

Options (``cfg.calo_eval``, all optional): ``warmup`` (3), ``max_events`` (null = all),
``pileup`` (true), ``plots`` (true: the PNGs), ``display_event`` (0; null: no event display),
``results_dir`` (``<paths.output_root>/calo_results``), ``gravnet_result`` (null), ``batch_sizes``
([8, 32]; [] to skip), ``repeats`` (3), ``fuse_bn`` (true), ``throughput_workers`` (null = ``[1,
num_threads]``: the throughput of each network is timed both with intra-op threads and with one
single-thread worker per thread running batches side by side, and the faster is reported and compared).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..engine.tasks.calo import panoptic_summary, _pq_vector
from ..metrics.calo_response import ResponseMetric
from ..metrics.panoptic import PanopticQuality
from ..utils.threads import concurrent_map

__all__ = ["evaluate", "evaluate_events", "network_throughput", "event_batches", "time_pass", "method_name",
           "result_row", "table_markdown", "write_table", "combine_results", "write_comparison", "EVAL_DEFAULTS", "PARTICLE_GROUPS"]

EVAL_DEFAULTS = {"warmup": 3, "max_events": None, "pileup": True, "plots": True, "display_event": 0,
                 "results_dir": None, "gravnet_result": None, "batch_sizes": [8, 32], "repeats": 3,
                 "fuse_bn": True, "throughput_workers": None}
PARTICLE_GROUPS = {"photon": 22, "electron": 11, "pion": 211}
_METHOD_NAMES = {"CaloSPVCNN": "Calo-SPVCNN", "GravNetOC": "GravNet+OC", "CLUEClusterer": "CLUE"}
_GRAVNET_CLASS = "GravNetOC"


def method_name(model) -> str:
    """Display name of a model ("Calo-SPVCNN", "GravNet+OC", "CLUE", else the class name)."""
    cls = type(model).__name__
    return _METHOD_NAMES.get(cls, cls)


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if np.isfinite(v) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, torch.Tensor):
        return _jsonable(x.tolist())
    return x


def _stats(ms: Sequence[float]) -> Dict[str, float]:
    a = np.asarray(ms, np.float64)
    if a.size == 0:
        return {"mean": float("nan"), "median": float("nan"), "p90": float("nan")}
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90))}


@torch.no_grad()
def evaluate_events(model, events, collate, device: Union[str, torch.device] = "cpu", warmup: int = 3,
                    name: str = "test", progress: bool = False, keep: Sequence[int] = (0,)) -> Dict[str, Any]:
    """Run ``model`` event by event; panoptic quality, response and latency.

    Args:
        model: calorimeter model (``forward``, ``cluster``) in eval mode on ``device``.
        events: list of :class:`~sparse3d.datasets.calo.event.CaloEvent` with truth.
        collate: :class:`~sparse3d.datasets.calo.module.CaloCollate` (features as in training).
        warmup: untimed events run first (the first ones of ``events``).
        keep: indices of events whose predicted labels are returned (event displays).

    Returns:
        dict ``n_events``, ``hits_mean``, ``panoptic`` (:func:`panoptic_summary`), ``net_ms`` /
        ``cluster_ms`` / ``total_ms`` (``mean``, ``median``, ``p90`` per event), ``response``
        (``"all"`` and per :data:`PARTICLE_GROUPS` name: ``ResponseMetric.compute()`` dicts) and
        ``labels`` ``{index: [N] int64}`` for ``keep``.
    """
    device = torch.device(device)

    def to_dev(b):
        return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for ev in list(events)[:max(0, int(warmup))]:
        b = to_dev(collate.events([ev], ["warmup"]))
        model.cluster(model(b), b)
    pq = PanopticQuality()
    resp = ResponseMetric()
    net, clu, hits, kept = [], [], [], {}
    from tqdm import tqdm
    for i, ev in enumerate(tqdm(events, desc=f"eval {name}", disable=not progress, leave=False, dynamic_ncols=True)):
        b = to_dev(collate.events([ev], [f"{name}/{i}"]))
        sync()
        t0 = time.perf_counter()
        out = model(b)
        sync()
        t1 = time.perf_counter()
        lab = np.asarray(model.cluster(out, b)[0]).reshape(-1).astype(np.int64)
        sync()
        t2 = time.perf_counter()
        net.append(1e3 * (t1 - t0))
        clu.append(1e3 * (t2 - t1))
        hits.append(ev.n_hits)
        if lab.shape[0] != ev.n_hits:
            raise ValueError(f"model.cluster gave {lab.shape[0]} labels for event {name}/{i} with {ev.n_hits} hits")
        truth = b["cluster_idx"].cpu().numpy()
        energy = np.maximum(ev.energy.astype(np.float64), 0.0)
        pq.update(lab, truth, energy)
        p = ev.particles
        resp.update(lab, truth, energy, truth_energy=p["energy"], truth_group=np.abs(p["pdgid"]))
        if i in keep:
            kept[i] = lab
    response = {"all": resp.compute()}
    for g, pdg in PARTICLE_GROUPS.items():
        response[g] = resp.compute(group=pdg)
    tot = [a + c for a, c in zip(net, clu)]
    return {"n_events": len(hits), "hits_mean": float(np.mean(hits)) if hits else 0.0,
            "panoptic": panoptic_summary(_pq_vector(pq)), "net_ms": _stats(net), "cluster_ms": _stats(clu),
            "total_ms": _stats(tot), "response": response, "labels": kept}


def event_batches(events, collate, batch_size: int, device: Union[str, torch.device] = "cpu") -> List[dict]:
    """``events`` cut into consecutive batches of ``batch_size`` (the last may be smaller), collated, on ``device``."""
    device = torch.device(device)
    events = list(events)
    out = []
    for i in range(0, len(events), batch_size):
        b = collate.events(events[i:i + batch_size], [f"b/{j}" for j in range(i, min(i + batch_size, len(events)))])
        out.append({k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()})
    return out


def time_pass(model, batches, n_events: int, device: Union[str, torch.device] = "cpu",
              workers: int = 1) -> Tuple[float, float]:
    """One pass of ``model(b)`` over ``batches``: ``(wall ms, process CPU ms)`` per event.

    ``workers > 1`` (CPU only): the batches run side by side on that many threads, each with one torch
    and numba thread (:func:`sparse3d.utils.threads.concurrent_map`), instead of one after another with
    the intra-op threads."""
    device = torch.device(device)
    if workers > 1 and device.type != "cpu":
        raise ValueError(f"workers > 1 is a CPU mode, got device {device}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t, c = time.perf_counter(), time.process_time()
    if workers > 1:
        concurrent_map(model, batches, workers)
    else:
        for b in batches:
            model(b)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 1e3 * (time.perf_counter() - t) / n_events, 1e3 * (time.process_time() - c) / n_events


def _worker_counts(workers, device: torch.device) -> List[int]:
    ws = sorted({max(1, int(w)) for w in (workers if isinstance(workers, (list, tuple)) else [workers])})
    return [w for w in ws if w == 1 or device.type == "cpu"] or [1]


@torch.no_grad()
def network_throughput(model, events, collate, batch_sizes: Sequence[int], device: Union[str, torch.device] = "cpu",
                       repeats: int = 3, workers: Union[int, Sequence[int]] = 1) -> Dict[int, Dict[str, Any]]:
    """Network time per event when ``events`` go through ``model(batch)`` in batches.

    For each batch size ``bs``, the events are cut into consecutive batches of ``bs`` (:func:`event_batches`);
    one untimed pass over the first two batches warms up, then ``repeats`` timed passes over all of them.
    Batches are collated before timing (data preparation is not network time).

    ``workers``: one count or several (CPU). 1 runs the batches one after another with the current
    torch threads (intra-op parallelism); ``w > 1`` runs ``w`` batches at a time on ``w`` single-thread
    workers (:func:`time_pass`). With several counts, each is timed (interleaved within every repeat)
    and the fastest is reported, so a network is compared at its best use of the same cores.

    Returns:
        ``{bs: {"wall_ms", "cpu_ms", "wall_ms_min", "workers", "modes"}}``: per-event wall-clock and process
        CPU time of the fastest worker count (median over the passes; ``wall_ms_min`` the fastest pass),
        in milliseconds; ``workers`` that count; ``modes`` the same figures for every count tried.
    """
    device = torch.device(device)
    events = list(events)
    out: Dict[int, Dict[str, Any]] = {}
    if not events:
        return out
    ws = _worker_counts(workers, device)
    for bs in batch_sizes:
        bs = int(bs)
        if bs < 1:
            raise ValueError(f"calo_eval.batch_sizes must be positive ints, got {bs}")
        batches = event_batches(events, collate, bs, device)
        for w in ws:
            time_pass(model, batches[:2 * w], len(events), device, w)
        runs: Dict[int, list] = {w: [] for w in ws}
        for _ in range(max(1, int(repeats))):
            for w in ws:
                runs[w].append(time_pass(model, batches, len(events), device, w))
        modes = {w: {"wall_ms": float(np.median([r[0] for r in rs])), "cpu_ms": float(np.median([r[1] for r in rs])),
                     "wall_ms_min": float(min(r[0] for r in rs))} for w, rs in runs.items()}
        best = min(modes, key=lambda w: modes[w]["wall_ms"])
        out[bs] = dict(modes[best], workers=best, modes=modes)
    return out


def _response_brief(s: dict) -> dict:
    fit = s.get("fit", {})
    keys = ("bins", "e_center", "e_mean", "n_true", "efficiency", "efficiency_err", "n_pred", "fake_rate",
            "fake_rate_err", "response", "response_err", "resolution", "resolution_err")
    return {**{k: s[k] for k in keys if k in s}, "response_mean": s.get("response_mean"),
            "fit": {k: fit.get(k) for k in ("a", "b", "c", "n_points")}}


# ----------------------------------------------------------------------------- tables

def result_row(result: Dict[str, Any], split: str) -> Dict[str, Any]:
    """One table row (floats; percentages as fractions) of a result JSON for ``split``."""
    s = result["splits"][split]
    c, e = s["panoptic"]["count"], s["panoptic"]["energy"]
    return {"method": result["method"], "model_class": result.get("model_class"), "split": split,
            "n_events": s["n_events"], "num_threads": result.get("num_threads"), "device": result.get("device"),
            "sq": c["sq"], "rq": c["rq"], "pq": c["pq"], "pq_event": c["pq_event"],
            "wsq": e["sq"], "wrq": e["rq"], "wpq": e["pq"], "wpq_event": e["pq_event"],
            "net_ms": s["net_ms"]["mean"], "cluster_ms": s["cluster_ms"]["mean"], "total_ms": s["total_ms"]["mean"],
            "speedup_net": None, "speedup_total": None, "has_network": result.get("has_network", True),
            "throughput": {int(k): dict(v, speedup=None) for k, v in (s.get("throughput") or {}).items()}}


def _add_speedups(rows: List[dict], reference: Optional[List[dict]] = None) -> List[dict]:
    """Fill ``speedup_net`` / ``speedup_total`` = GravNet time / this time for rows with a GravNet row of
    the same split, events and threads (in ``rows`` or ``reference``)."""
    refs = [r for r in list(rows) + list(reference or []) if r.get("model_class") == _GRAVNET_CLASS]
    for r in rows:
        for g in refs:
            if (g["split"], g["n_events"], g["num_threads"]) == (r["split"], r["n_events"], r["num_threads"]):
                for k, t in (("speedup_net", "net_ms"), ("speedup_total", "total_ms")):
                    if k == "speedup_net" and not r.get("has_network", True):
                        continue    # CLUE: no network, its time is all clustering
                    if g.get(t) and r.get(t):
                        r[k] = g[t] / r[t]
                for bs, v in ((r.get("throughput") or {}) if r.get("has_network", True) else {}).items():
                    gv = (g.get("throughput") or {}).get(bs)
                    if gv and gv.get("wall_ms") and v.get("wall_ms"):
                        v["speedup"] = gv["wall_ms"] / v["wall_ms"]
                        v["speedup_cpu"] = gv["cpu_ms"] / v["cpu_ms"] if v.get("cpu_ms") else None
                break
    return rows


def table_markdown(rows: List[dict], title: str = "") -> str:
    """The seed-style table: SQ / RQ / PQ (hit-count and energy-weighted IoU), latency, speedup."""
    def pct(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}"

    def ms(v):
        return "n/a" if v is None or not np.isfinite(v) else f"{v:.2f}"

    def x(v):
        return "n/a" if v is None else f"{v:.1f}x"

    lines = [f"## {title}", ""] if title else []
    lines += ["| method | split | events | SQ | RQ | PQ | PQ/event | wSQ | wRQ | wPQ | wPQ/event | "
              "network ms/event | clustering ms/event | total ms/event | network speedup vs GravNet | "
              "total speedup vs GravNet |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['split']} | {r['n_events']} | {pct(r['sq'])} | {pct(r['rq'])} | "
                     f"{pct(r['pq'])} | {pct(r['pq_event'])} | {pct(r['wsq'])} | {pct(r['wrq'])} | {pct(r['wpq'])} | "
                     f"{pct(r['wpq_event'])} | {ms(r['net_ms'])} | {ms(r['cluster_ms'])} | {ms(r['total_ms'])} | "
                     f"{x(r['speedup_net'])} | {x(r['speedup_total'])} |")
    threads = sorted({str(r.get("num_threads")) for r in rows})
    devices = sorted({str(r.get("device")) for r in rows})
    lines += ["", "SQ, RQ, PQ: hit-count IoU; wSQ, wRQ, wPQ: energy-weighted IoU (each hit weighted by its "
              "energy). Both pooled over all events (PQ = SQ x RQ); PQ/event and wPQ/event are per-event "
              "averages. A predicted and a true cluster match at IoU > 0.5; noise and pileup hits are excluded.",
              f"Latency per event at batch size 1 on {', '.join(devices)} with {', '.join(threads)} thread(s): "
              "network = model forward, clustering = model.cluster (CLUE: all of its time). Speedup = "
              "GravNet+OC time / method time on the same split, events and threads."]
    sizes = sorted({int(bs) for r in rows for bs in (r.get("throughput") or {})})
    if sizes:
        lines += ["", "Network throughput (same events in batches; ms per event, wall clock / process CPU; "
                  "speedup = GravNet+OC wall time / method wall time at the same batch size; each network at its "
                  "faster way of using the threads: intra-op, or [Nw] = N batches side by side on N "
                  "single-thread workers):", "",
                  "| method | split | " + " | ".join(f"batch {b}: ms/event | batch {b}: speedup" for b in sizes) + " |",
                  "|---|---|" + "---:|---:|" * len(sizes)]
        for r in rows:
            if r.get("has_network") is False:   # CLUE: nothing to batch, no network time
                continue
            tp = r.get("throughput") or {}
            cells = []
            for b in sizes:
                v = tp.get(b)
                cells += (["n/a", "n/a"] if not v else
                          [f"{ms(v.get('wall_ms'))} / {ms(v.get('cpu_ms'))}" +
                           (f" [{v['workers']}w]" if (v.get("workers") or 1) > 1 else ""), x(v.get("speedup"))])
            lines.append(f"| {r['method']} | {r['split']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(rows: List[dict], out_dir: Union[str, Path], stem: str = "calo_table", title: str = "") -> Path:
    """Write ``<stem>.md`` and ``<stem>.json``; returns the Markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(_jsonable(rows), indent=2) + "\n")
    md = out / f"{stem}.md"
    md.write_text(table_markdown(rows, title))
    return md


def _load(r) -> dict:
    if isinstance(r, dict):
        return r
    p = Path(r)
    if not p.is_file():
        raise FileNotFoundError(f"calorimeter result JSON not found: {p}")
    d = json.loads(p.read_text())
    if not isinstance(d, dict) or "splits" not in d or "method" not in d:
        raise ValueError(f"{p} is not a calorimeter evaluation result (no 'method' / 'splits')")
    return d


def combine_results(results: Iterable[Union[str, Path, dict]], splits: Optional[Sequence[str]] = None) -> List[dict]:
    """Rows of several result JSONs (SPVCNN, GravNet, CLUE, ...) for one comparison table, ordered by
    split then input order, with speedups against the GravNet+OC row of the same split."""
    loaded = [_load(r) for r in results]
    all_splits = splits or sorted({s for d in loaded for s in d["splits"]}, key=lambda s: (s != "test", s))
    rows = [result_row(d, s) for s in all_splits for d in loaded if s in d["splits"]]
    return _add_speedups(rows)


def write_comparison(results: Iterable[Union[str, Path, dict]], out_dir: Union[str, Path],
                     stem: str = "comparison", title: str = "Calorimeter clustering comparison") -> Path:
    """:func:`combine_results` written as ``<stem>.md`` / ``<stem>.json``; returns the Markdown path."""
    return write_table(combine_results(results), out_dir, stem, title)


# ----------------------------------------------------------------------------- entry point

def _options(cfg) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    opts = dict(EVAL_DEFAULTS)
    node = OmegaConf.select(cfg, "calo_eval", default=None)
    if node is not None:
        given = OmegaConf.to_container(node, resolve=True)
        unknown = set(given) - set(EVAL_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown calo_eval keys {sorted(unknown)} (allowed: {sorted(EVAL_DEFAULTS)})")
        opts.update(given)
    if opts["results_dir"] is None:
        root = OmegaConf.select(cfg, "paths.output_root", default="outputs")
        opts["results_dir"] = str(Path(root) / "calo_results")
    return opts


def _plots(r: dict, out: Path, split: str, events, method: str, display: int) -> Dict[str, str]:
    from ..metrics.calo_plots import plot_efficiency, plot_event_display, plot_response_resolution

    files, skipped = {}, []
    resp = r["response"]
    names = ["all"] + [g for g in PARTICLE_GROUPS if np.nansum(resp[g]["n_true"]) > 0]
    labels = ["all particles" if g == "all" else f"{g}s" for g in names]

    def has(key):   # a log-x panel needs at least one finite point
        return any(np.isfinite(resp[g][key]).any() for g in names)

    if has("response"):
        files["response"] = plot_response_resolution([resp[g] for g in names],
                                                     out / f"response_resolution_{split}.png", labels,
                                                     title=f"{method}, {split}")
    else:
        skipped.append("response_resolution: no matched clusters")
    if has("efficiency") and has("fake_rate"):
        files["efficiency"] = plot_efficiency([resp[g] for g in names], out / f"efficiency_{split}.png", labels,
                                              title=f"{method}, {split}")
    else:
        skipped.append("efficiency: no true or no predicted clusters")
    if skipped:
        files["skipped"] = "; ".join(skipped)
    if display in r["labels"]:
        ev = events[display]
        files["display_truth"] = plot_event_display(ev.x, ev.y, ev.z, ev.labels(pileup_as_noise=True),
                                                    out / f"event_display_{split}_truth.png", ev.energy,
                                                    title=f"{split}/{display} truth")
        files["display_pred"] = plot_event_display(ev.x, ev.y, ev.z, r["labels"][display],
                                                   out / f"event_display_{split}_pred.png", ev.energy,
                                                   title=f"{split}/{display} {method}")
    return {k: str(v) for k, v in files.items()}


def evaluate(cfg) -> Dict[str, Any]:
    """``tools/eval.py`` entry for the ``calo_*`` experiments (module docstring).

    Uses ``cfg.dataset``, ``cfg.model``, ``cfg.checkpoint`` (a ``tools/train.py`` checkpoint; may be
    null only for a parameter-free model such as CLUE, which then runs with its configured
    parameters), ``cfg.output_dir``, ``cfg.num_threads``, ``cfg.device``, ``cfg.progress``,
    ``cfg.experiment_name`` and ``cfg.calo_eval``. Returns the result dict (also ``calo_result.json``).
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from .predict import load_model_weights

    opts = _options(cfg)
    threads = OmegaConf.select(cfg, "num_threads", default=None)
    if threads:
        torch.set_num_threads(int(threads))
    dev_name = str(OmegaConf.select(cfg, "device", default="cpu"))
    device = torch.device("cuda" if dev_name == "auto" and torch.cuda.is_available() else
                          "cpu" if dev_name == "auto" else dev_name)
    progress = bool(OmegaConf.select(cfg, "progress", default=False))
    out = Path(str(cfg.output_dir))
    name = str(OmegaConf.select(cfg, "experiment_name", default="calo"))
    dm = instantiate(cfg.dataset)
    dm.prepare_data()
    model = instantiate(cfg.model)
    ckpt = OmegaConf.select(cfg, "checkpoint", default=None, throw_on_missing=False)
    epoch = None
    if ckpt:
        state = load_model_weights(model, str(ckpt), expected_target=cfg.model._target_)
        epoch = state.get("epoch")
    elif any(True for _ in model.parameters()):
        raise ValueError(f"checkpoint is required to evaluate {type(model).__name__} (checkpoint=<run>/checkpoints/best.pt)")
    model = model.to(device).eval()
    if opts["fuse_bn"]:   # fold eval-mode batch norms into the convs / linears before them (same outputs)
        from ..nn.utils import fuse_bn_eval
        model = fuse_bn_eval(model, inplace=True)
    method = method_name(model)
    n_threads = int(threads) if threads else torch.get_num_threads()
    tp_workers = opts["throughput_workers"]
    if tp_workers is None:   # both ways of using the threads: intra-op, and one single-thread worker per thread
        tp_workers = sorted({1, n_threads})
    result: Dict[str, Any] = {"method": method, "model_class": type(model).__name__, "experiment": name,
                              "checkpoint": None if not ckpt else str(ckpt), "epoch": epoch,
                              "num_threads": n_threads,
                              "device": str(device), "warmup": int(opts["warmup"]), "splits": {}, "plots": {},
                              "fused_bn": bool(opts["fuse_bn"]),
                              "has_network": any(True for _ in model.parameters())}
    if hasattr(model, "params") and hasattr(model.params, "__dataclass_fields__"):
        from dataclasses import asdict
        result["clue_params"] = asdict(model.params)
    splits = [("test", False)] + ([("test_pu", True)] if opts["pileup"] else [])
    display = int(opts["display_event"]) if opts["display_event"] is not None else -1
    for split, pu in splits:
        events = dm.events(split)
        if opts["max_events"] is not None:
            events = events[:int(opts["max_events"])]
        if not events:
            print(f"{split}: no events, skipped", flush=True)
            continue
        r = evaluate_events(model, events, dm.collate, device, opts["warmup"], split, progress,
                            keep=(display,) if display >= 0 else ())
        r["throughput"] = network_throughput(model, events, dm.collate, opts["batch_sizes"] or [], device,
                                             opts["repeats"], tp_workers)
        if opts["plots"]:
            result["plots"][split] = _plots(r, out, split, events, method, display)
        result["splits"][split] = {k: (v if k != "response" else {g: _response_brief(s) for g, s in v.items()})
                                   for k, v in r.items() if k != "labels"}
    ref_path = opts["gravnet_result"]
    results_dir = Path(opts["results_dir"])
    reference = []
    if ref_path:
        reference = [result_row(_load(ref_path), s) for s in result["splits"] if s in _load(ref_path)["splits"]]
    elif results_dir.is_dir():
        for p in sorted(results_dir.glob("*.json")):
            try:
                d = _load(p)
            except (ValueError, json.JSONDecodeError):
                continue
            if d.get("model_class") == _GRAVNET_CLASS and d.get("experiment") != name:
                reference += [result_row(d, s) for s in d["splits"]]
    rows = _add_speedups([result_row(result, s) for s in result["splits"]], reference)
    result["table"] = rows
    out.mkdir(parents=True, exist_ok=True)
    md = write_table(rows, out, "calo_table", title=f"{method} ({name})")
    payload = _jsonable(result)
    (out / "calo_result.json").write_text(json.dumps(payload, indent=2) + "\n")
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    known = []
    for p in sorted(results_dir.glob("*.json")):
        try:
            known.append(_load(p))
        except (ValueError, json.JSONDecodeError):
            continue
    if known:
        write_comparison(known, results_dir)
    print(md.read_text(), flush=True)
    print(f"results: {out} (comparison of {len(known)} method(s): {results_dir / 'comparison.md'})", flush=True)
    return result
