r"""BEVFusion evaluation on nuScenes-format data: detection submission JSON, the devkit's ``DetectionEval``
(``detection_cvpr_2019``: mAP, mATE, mASE, mAOE, mAVE, mAAE, NDS), BEV map-segmentation mIoU (max IoU over
thresholds 0.35..0.65 per class, as BEVFusion's ``evaluate_map``) and a BEV + camera visualization.

``evaluate(cfg)`` is the ``eval_fn`` of the BEVFusion experiments (``tools/eval.py``)::

    python tools/eval.py experiment=bevfusion_fusion_tiny checkpoint=outputs/.../checkpoints/best.pt

Boxes everywhere are ``[K, 9]`` (x, y, z (centre), l, w, h, yaw, vx, vy) in the augmented LiDAR frame of their
sample; :func:`boxes_to_global` moves them augmented LiDAR -> LiDAR -> ego -> global with the devkit's ``Box``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import torch

__all__ = ["DEFAULT_ATTRIBUTE", "MAP_THRESHOLDS", "default_attribute", "boxes_to_global", "detection_records",
           "validate_detection_submission", "write_detection_submission", "run_detection_eval", "MapIoU",
           "format_detection_metrics", "render_bevfusion_sample", "predict_split", "evaluate"]

# mmdet3d's nuScenes default attribute per class (used when the speed rule does not decide)
DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
                     "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
                     "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "",
                     "traffic_cone": ""}
_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")
MAP_THRESHOLDS = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65)
_TP_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE"}
_META_KEYS = ("use_camera", "use_lidar", "use_radar", "use_map", "use_external")


def default_attribute(name: str, velocity) -> str:
    """mmdet3d's rule: moving (speed > 0.2 m/s) vehicles ``vehicle.moving``, cycles ``cycle.with_rider``;
    standing pedestrians ``pedestrian.standing``, a stopped bus ``vehicle.stopped``; else the class default."""
    if name not in DEFAULT_ATTRIBUTE:
        raise ValueError(f"unknown detection class {name!r}")
    speed = math.hypot(float(velocity[0]), float(velocity[1]))
    if speed > 0.2:
        if name in _VEHICLES:
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
    else:
        if name == "pedestrian":
            return "pedestrian.standing"
        if name == "bus":
            return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def _quat(R: np.ndarray):
    from pyquaternion import Quaternion
    u, _, vt = np.linalg.svd(np.asarray(R, np.float64))  # re-orthonormalize (float32 round trips)
    return Quaternion(matrix=u @ vt, rtol=1e-6, atol=1e-6)


def boxes_to_global(boxes: np.ndarray, lidar_aug_matrix: np.ndarray, lidar2ego: np.ndarray,
                    ego2global: np.ndarray) -> list:
    """Devkit ``Box``es (global frame, ``wlh`` sizes, velocity ``(vx, vy, 0)``) of boxes ``[K, 9]`` given in the
    augmented LiDAR frame: undo ``lidar_aug_matrix`` (``[4, 4]``), then LiDAR -> ego -> global."""
    from nuscenes.utils.data_classes import Box
    from pyquaternion import Quaternion

    from ..datasets.nuscenes.module import transform_boxes

    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    if not np.isfinite(boxes).all():
        raise ValueError("boxes contain non-finite values")
    b = transform_boxes(boxes, np.linalg.inv(np.asarray(lidar_aug_matrix, np.float64)))
    q_le, q_eg = _quat(lidar2ego[:3, :3]), _quat(ego2global[:3, :3])
    out = []
    for x, y, z, l, w, h, yaw, vx, vy in b:
        box = Box([x, y, z], [w, l, h], Quaternion(axis=[0.0, 0.0, 1.0], radians=float(yaw)), velocity=(vx, vy, 0.0))
        box.rotate(q_le)
        box.translate(np.asarray(lidar2ego[:3, 3], np.float64))
        box.rotate(q_eg)
        box.translate(np.asarray(ego2global[:3, 3], np.float64))
        out.append(box)
    return out


def detection_records(sample_token: str, boxes, scores, labels, meta: Mapping[str, Any],
                      class_names: Sequence[str], attributes: Optional[Sequence[str]] = None,
                      max_boxes: int = 500) -> List[dict]:
    """Submission records of one sample: the ``max_boxes`` highest-scoring boxes, in the global frame.

    Args:
        boxes: ``[K, 9]`` augmented-LiDAR boxes; scores ``[K]``; labels ``[K]`` indices into ``class_names``.
        meta: the sample's ``metas`` entry (``lidar_aug_matrix``, ``lidar2ego``, ``ego2global``).
        attributes: per-box attribute names (default: :func:`default_attribute` of the global velocity).
    """
    boxes = np.asarray(boxes.detach().cpu() if torch.is_tensor(boxes) else boxes, np.float64).reshape(-1, 9)
    scores = np.asarray(scores.detach().cpu() if torch.is_tensor(scores) else scores, np.float64).reshape(-1)
    labels = np.asarray(labels.detach().cpu() if torch.is_tensor(labels) else labels, np.int64).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"sample {sample_token}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"sample {sample_token}: labels must be in [0, {len(class_names)}), got "
                         f"[{labels.min()}, {labels.max()}]")
    order = np.argsort(-scores, kind="stable")[:max_boxes]
    gboxes = boxes_to_global(boxes[order], np.asarray(meta["lidar_aug_matrix"], np.float64),
                             np.asarray(meta["lidar2ego"], np.float64), np.asarray(meta["ego2global"], np.float64))
    recs = []
    for j, (i, box) in enumerate(zip(order, gboxes)):
        name = class_names[labels[i]]
        vel = [float(box.velocity[0]), float(box.velocity[1])]
        attr = attributes[i] if attributes is not None else default_attribute(name, vel)
        recs.append({"sample_token": sample_token, "translation": [float(v) for v in box.center],
                     "size": [float(v) for v in box.wlh], "rotation": [float(v) for v in box.orientation.elements],
                     "velocity": vel, "detection_name": name, "detection_score": float(scores[i]),
                     "attribute_name": attr})
    return recs


def validate_detection_submission(sub: Mapping[str, Any], expected_tokens: Iterable[str],
                                  max_boxes: int = 500) -> None:
    """Raise ``ValueError`` naming the field unless ``sub`` follows the nuScenes detection submission rules: a
    ``meta`` block with the 5 boolean ``use_*`` keys; ``results`` keyed by exactly ``expected_tokens``; at most
    ``max_boxes`` boxes per sample; each box with its own ``sample_token``, 3-value ``translation`` and ``size``
    (positive), unit 4-value ``rotation``, 2-value ``velocity``, a detection class, a finite ``detection_score``
    and a valid ``attribute_name``."""
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES, DETECTION_NAMES

    if set(sub) != {"meta", "results"}:
        raise ValueError(f"submission must have exactly the keys 'meta' and 'results', got {sorted(sub)}")
    meta = sub["meta"]
    if not isinstance(meta, dict) or set(meta) != set(_META_KEYS) or \
            not all(isinstance(meta[k], bool) for k in _META_KEYS):
        raise ValueError(f"submission 'meta' must hold the booleans {list(_META_KEYS)}, got {meta!r}")
    results = sub["results"]
    want = set(expected_tokens)
    if set(results) != want:
        missing, extra = sorted(want - set(results)), sorted(set(results) - want)
        raise ValueError(f"submission 'results' sample tokens differ from the split: {len(missing)} missing "
                         f"{missing[:3]}, {len(extra)} extra {extra[:3]}")
    for tok, recs in results.items():
        if len(recs) > max_boxes:
            raise ValueError(f"sample {tok}: {len(recs)} boxes, at most {max_boxes} allowed")
        for r in recs:
            if r.get("sample_token") != tok:
                raise ValueError(f"sample {tok}: box with sample_token {r.get('sample_token')!r}")
            for key, n in (("translation", 3), ("size", 3), ("rotation", 4), ("velocity", 2)):
                v = r.get(key)
                if not isinstance(v, list) or len(v) != n or not all(isinstance(x, float) and math.isfinite(x)
                                                                     for x in v):
                    raise ValueError(f"sample {tok}: '{key}' must be a list of {n} finite floats, got {v!r}")
            if min(r["size"]) <= 0:
                raise ValueError(f"sample {tok}: 'size' must be positive, got {r['size']}")
            if abs(math.sqrt(sum(x * x for x in r["rotation"])) - 1.0) > 1e-3:
                raise ValueError(f"sample {tok}: 'rotation' must be a unit quaternion (w, x, y, z), got "
                                 f"{r['rotation']}")
            if r.get("detection_name") not in DETECTION_NAMES:
                raise ValueError(f"sample {tok}: 'detection_name' {r.get('detection_name')!r} is not a class")
            s = r.get("detection_score")
            if not isinstance(s, float) or not math.isfinite(s):
                raise ValueError(f"sample {tok}: 'detection_score' must be a finite float, got {s!r}")
            if r.get("attribute_name") not in ("", *ATTRIBUTE_NAMES):
                raise ValueError(f"sample {tok}: 'attribute_name' {r.get('attribute_name')!r} is not an attribute")


def write_detection_submission(path, results: Mapping[str, List[dict]], meta: Mapping[str, bool],
                               expected_tokens: Iterable[str]) -> Path:
    """Write ``{"meta", "results"}`` to ``path`` (tokens of ``expected_tokens`` without predictions get an empty
    list), after :func:`validate_detection_submission`."""
    expected = list(expected_tokens)
    sub = {"meta": {k: bool(meta.get(k, False)) for k in _META_KEYS},
           "results": {t: list(results.get(t, [])) for t in expected}}
    extra = set(results) - set(expected)
    if extra:
        raise ValueError(f"predictions for {len(extra)} samples outside the split, e.g. {sorted(extra)[:3]}")
    validate_detection_submission(sub, expected)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(sub))
    return path


def run_detection_eval(nusc, result_path, eval_set: str, output_dir, verbose: bool = False) -> Dict[str, Any]:
    """The devkit's ``DetectionEval`` (``detection_cvpr_2019``) on a written submission. Returns ``mAP``,
    ``mATE``, ``mASE``, ``mAOE``, ``mAVE``, ``mAAE``, ``NDS`` plus ``per_class`` (AP and TP errors) and writes
    ``metrics_summary.json`` to ``output_dir``."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ev = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(result_path), eval_set, str(output_dir),
                       verbose=verbose)
    metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    (output_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
    out: Dict[str, Any] = {"mAP": float(summary["mean_ap"]), "NDS": float(summary["nd_score"])}
    for k, name in _TP_NAMES.items():
        out[name] = float(summary["tp_errors"][k])
    out["per_class"] = {c: {"AP": float(ap), **{_TP_NAMES[k][1:]: float(v) for k, v in
                                                 summary["label_tp_errors"][c].items()}}
                        for c, ap in summary["mean_dist_aps"].items()}
    return out


class MapIoU:
    """BEV map-segmentation IoU accumulated over a split (BEVFusion ``evaluate_map``): per class and threshold
    ``t`` in :data:`MAP_THRESHOLDS`, ``IoU = TP / (TP + FP + FN)`` of ``prob >= t`` against the label, summed over
    all pixels; a class's IoU is its max over thresholds, ``miou`` the mean over classes."""

    def __init__(self, classes: Sequence[str], thresholds: Sequence[float] = MAP_THRESHOLDS) -> None:
        self.classes, self.thresholds = list(classes), torch.tensor(thresholds, dtype=torch.float64)
        self.tp = torch.zeros(len(self.classes), len(thresholds), dtype=torch.float64)
        self.fp, self.fn = self.tp.clone(), self.tp.clone()

    def update(self, probs: torch.Tensor, labels: torch.Tensor) -> None:
        """probs ``[B, C, X, Y]`` in [0, 1]; labels ``[B, C, X, Y]`` (nonzero = positive)."""
        if probs.shape != labels.shape or probs.ndim != 4 or probs.shape[1] != len(self.classes):
            raise ValueError(f"probs and labels must both be [B, {len(self.classes)}, X, Y], got "
                             f"{tuple(probs.shape)} and {tuple(labels.shape)}")
        C = len(self.classes)
        p = probs.detach().transpose(0, 1).reshape(C, -1).double().cpu()
        g = labels.detach().transpose(0, 1).reshape(C, -1).bool().cpu()
        for j, t in enumerate(self.thresholds):
            pr = p >= t
            self.tp[:, j] += (pr & g).sum(1).double()
            self.fp[:, j] += (pr & ~g).sum(1).double()
            self.fn[:, j] += (~pr & g).sum(1).double()

    def all_reduce(self) -> None:
        """Sum the counts over DDP ranks (no-op without a process group)."""
        from ..engine import distributed as D
        if D.is_distributed():
            import torch.distributed as dist
            dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else \
                torch.device("cpu")  # NCCL reduces CUDA tensors only
            for t in (self.tp, self.fp, self.fn):
                t.copy_(D.all_reduce_sum(t.to(dev)).cpu())

    def compute(self) -> Dict[str, Any]:
        """``{"map_miou", "map_iou": {class: IoU@max}, "map_iou_thresholds": {class: [IoU per threshold]}}``."""
        ious = self.tp / (self.tp + self.fp + self.fn + 1e-7)
        best = ious.max(1).values
        return {"map_miou": float(best.mean()) if len(self.classes) else float("nan"),
                "map_iou": {c: float(best[i]) for i, c in enumerate(self.classes)},
                "map_iou_thresholds": {c: [float(v) for v in ious[i]] for i, c in enumerate(self.classes)}}


def format_detection_metrics(result: Mapping[str, Any]) -> str:
    """Text table of :func:`run_detection_eval` / map IoU results."""
    lines = []
    if "NDS" in result:
        lines.append("  ".join(f"{k} {result[k]:.4f}" for k in ("mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "NDS")))
        lines.append(f"{'class':<22}{'AP':>7}{'ATE':>7}{'ASE':>7}{'AOE':>7}{'AVE':>7}{'AAE':>7}")
        for c, m in result.get("per_class", {}).items():
            lines.append(f"{c:<22}" + "".join(f"{m[k]:7.3f}" for k in ("AP", "ATE", "ASE", "AOE", "AVE", "AAE")))
    if "map_miou" in result:
        lines.append(f"map mIoU {result['map_miou']:.4f}: " +
                     ", ".join(f"{c} {v:.3f}" for c, v in result.get("map_iou", {}).items()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- visualization
_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def render_bevfusion_sample(path, points: np.ndarray, gt_boxes: np.ndarray, pred_boxes: np.ndarray,
                            pred_scores: Optional[np.ndarray] = None, bev: Optional[np.ndarray] = None,
                            bev_range: Sequence[float] = (-51.2, 51.2, -51.2, 51.2),
                            image: Optional[np.ndarray] = None, lidar2image: Optional[np.ndarray] = None,
                            title: str = "", score_threshold: float = 0.1) -> Path:
    """PNG: left, the BEV (``bev`` ``[X, Y]`` feature magnitude as background when given, LiDAR points, GT boxes
    green, predictions red with alpha by score); right, ``image`` ``[H, W, 3]`` with the boxes projected through
    ``lidar2image`` ``[4, 4]`` (boxes and points in the image's LiDAR frame)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..datasets.nuscenes.render import box_corners

    pred_boxes = np.asarray(pred_boxes, np.float64).reshape(-1, 9)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 9)
    scores = np.ones(len(pred_boxes)) if pred_scores is None else np.asarray(pred_scores, np.float64)
    keep = scores >= score_threshold
    pred_boxes, scores = pred_boxes[keep], scores[keep]
    ncol = 2 if image is not None else 1
    fig, axes = plt.subplots(1, ncol, figsize=(7 * ncol, 7), squeeze=False)
    ax = axes[0, 0]
    x0, x1, y0, y1 = bev_range
    if bev is not None:
        ax.imshow(np.asarray(bev, np.float64).T, origin="lower", extent=(x0, x1, y0, y1), cmap="viridis",
                  interpolation="nearest")
    if len(points):
        sub = points[:: max(1, len(points) // 30000)]
        ax.scatter(sub[:, 0], sub[:, 1], s=0.2, c="white" if bev is not None else "k", alpha=0.5, linewidths=0)
    for boxes, color, alphas in ((gt_boxes, "lime", np.ones(len(gt_boxes))), (pred_boxes, "red", scores)):
        if not len(boxes):
            continue
        corners = box_corners(boxes[:, :7])[:, [0, 1, 5, 4, 0], :2]  # top face outline (+z), closed
        for c, b, a in zip(corners, boxes, alphas):
            ax.plot(c[:, 0], c[:, 1], color=color, lw=1.0, alpha=float(np.clip(a, 0.2, 1.0)))
            ax.plot([b[0], (c[0, 0] + c[1, 0]) / 2], [b[1], (c[0, 1] + c[1, 1]) / 2], color=color, lw=0.8)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.set_xlabel("LiDAR x (m)")
    ax.set_ylabel("LiDAR y (m)")
    ax.set_title(f"BEV {title}: GT green, prediction red")
    if image is not None:
        ax = axes[0, 1]
        ax.imshow(image)
        H, W = image.shape[:2]
        for boxes, color in ((gt_boxes, "lime"), (pred_boxes, "red")):
            if not len(boxes) or lidar2image is None:
                continue
            corners = box_corners(boxes[:, :7]).reshape(-1, 3)
            p = np.concatenate([corners, np.ones((len(corners), 1))], 1) @ np.asarray(lidar2image).T
            p = p.reshape(-1, 8, 4)
            for q in p:
                if (q[:, 2] < 0.5).any():
                    continue
                uv = q[:, :2] / q[:, 2:3]
                if (np.abs(uv - [W / 2, H / 2]) > [1.5 * W, 1.5 * H]).any():
                    continue
                for i, j in _EDGES:
                    ax.plot(uv[[i, j], 0], uv[[i, j], 1], color=color, lw=0.8)
        ax.set_xlim(0, W)
        ax.set_ylim(H, 0)
        ax.set_title("camera: GT green, prediction red")
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- driver
def _model_meta(model) -> Dict[str, bool]:
    mods = set(getattr(model, "modalities", ()))
    return {"use_camera": "camera" in mods, "use_lidar": "lidar" in mods, "use_radar": False, "use_map": False,
            "use_external": False}


def _move(batch: Dict[str, Any], device: torch.device) -> Dict[str, Any]:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.to(device)
        elif isinstance(v, list) and v and torch.is_tensor(v[0]):
            out[k] = [t.to(device) for t in v]
        else:
            out[k] = v
    return out


@torch.no_grad()
def predict_split(model, loader, device, class_names: Sequence[str], keep_first: int = 1,
                  progress: bool = False) -> Dict[str, Any]:
    """Run ``model`` over ``loader``: submission records per sample token, map IoU counts (when the model has a
    map head and the batches carry ``gt_masks_bev``) and the raw outputs of the first ``keep_first`` samples."""
    model.eval()
    results: Dict[str, List[dict]] = {}
    miou = None
    kept: List[dict] = []
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc="eval", leave=False, dynamic_ncols=True)
    for batch in it:
        batch = _move(batch, device)
        outputs = model(batch)
        preds = model.predict(outputs, batch)
        for i, (p, meta) in enumerate(zip(preds, batch["metas"])):
            if "boxes" in p:
                results[meta["token"]] = detection_records(meta["token"], p["boxes"], p["scores"], p["labels"], meta,
                                                           class_names)
            if "masks" in p and "gt_masks_bev" in batch:
                if miou is None:
                    classes = list(getattr(model, "map_classes", None) or range(p["masks"].shape[0]))
                    miou = MapIoU([str(c) for c in classes])
                miou.update(p["masks"][None].float(), batch["gt_masks_bev"][i:i + 1])
            if len(kept) < keep_first:
                bev = outputs.get("bev") if isinstance(outputs, dict) else None
                kept.append({"pred": {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in p.items()},
                             "meta": meta, "points": batch["points"][i].cpu(), "gt_boxes": batch["gt_boxes"][i].cpu(),
                             "bev": None if bev is None else bev[i].norm(dim=0).cpu()})
    return {"results": results, "map": miou, "kept": kept}


def _render_kept(kept: Dict[str, Any], dm, out: Path) -> Path:
    """BEV + front-camera PNG of one predicted sample, everything moved to the un-augmented LiDAR frame."""
    import copy

    from ..datasets.nuscenes.module import transform_boxes, transform_points

    meta = kept["meta"]
    Linv = np.linalg.inv(np.asarray(meta["lidar_aug_matrix"], np.float64))
    pts = transform_points(kept["points"].numpy(), Linv)
    gtb = transform_boxes(kept["gt_boxes"].numpy().astype(np.float64), Linv)
    pb = transform_boxes(np.asarray(kept["pred"].get("boxes", np.zeros((0, 9))), np.float64).reshape(-1, 9), Linv)
    img, l2i = None, None
    cam = "CAM_FRONT"
    ld = copy.copy(dm.loader)  # shares the devkit index; one camera with its image
    ld.cameras, ld.load_images = (cam,), True
    sample = ld.nusc.get("sample", meta["token"])
    if cam in sample["data"]:
        info = ld.load_cameras(sample, np.asarray(meta["lidar2ego"]), np.asarray(meta["ego2global"]))
        img, l2i = info["images"][0], info["lidar2image"][0]
    r = dm.point_cloud_range
    return render_bevfusion_sample(out / f"bev_{meta['token']}.png", pts, gtb, pb, kept["pred"].get("scores"),
                                   bev=None if kept["bev"] is None else kept["bev"].numpy(),
                                   bev_range=(r[0], r[3], r[1], r[4]), image=img, lidar2image=l2i,
                                   title=meta["token"][:8])


def evaluate(cfg) -> Dict[str, Any]:
    """``tools/eval.py`` entry of the BEVFusion experiments (``eval_fn``). Uses ``cfg.dataset``, ``cfg.model``,
    ``cfg.checkpoint``, ``cfg.output_dir`` and optionally ``split`` (``val``/``train`` or a split name),
    ``device``, ``num_threads``, ``progress``. Writes ``submission.json``, ``metrics.json``, the devkit's
    ``detection/metrics_summary.json`` and ``bev_<token>.png``; returns the metrics."""
    from hydra.utils import instantiate

    from .predict import load_model_weights

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    dev = str(cfg.get("device", "cpu") or "cpu")
    device = torch.device("cuda" if dev == "auto" and torch.cuda.is_available() else "cpu" if dev == "auto" else dev)
    out = Path(str(cfg.output_dir))
    out.mkdir(parents=True, exist_ok=True)
    dm = instantiate(cfg.dataset)
    model = instantiate(cfg.model)
    state = load_model_weights(model, str(cfg.checkpoint), expected_target=cfg.model.get("_target_"))
    model.to(device)
    split = cfg.get("split", "val")
    split = {"val": dm.val_split, "train": dm.train_split, None: dm.val_split}.get(split, split)
    ds = dm.dataset(split, False, None)
    from torch.utils.data import DataLoader

    from ..datasets.nuscenes.module import collate_nuscenes
    loader = DataLoader(ds, batch_size=int(cfg.get("batch_size", 1) or 1), shuffle=False,
                        num_workers=int(cfg.get("num_workers", 0) or 0), collate_fn=collate_nuscenes)
    pred = predict_split(model, loader, device, dm.class_names, progress=bool(cfg.get("progress", False)))
    result: Dict[str, Any] = {"checkpoint": str(cfg.checkpoint), "epoch": state.get("epoch"), "split": split,
                              "samples": len(ds), "output_dir": str(out)}
    if getattr(model, "has_object_head", True):
        sub = write_detection_submission(out / "submission.json", pred["results"], _model_meta(model),
                                         dm.loader.split_tokens(split))
        result["submission"] = str(sub)
        det = run_detection_eval(ds.nusc, sub, split, out / "detection")
        result.update(det)
    if pred["map"] is not None:
        result.update(pred["map"].compute())
    if pred["kept"]:
        result["render"] = str(_render_kept(pred["kept"][0], dm, out))
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(format_detection_metrics(result), flush=True)
    print(f"results: {out}", flush=True)
    return result
