"""BEVFusion task: the sum of the head losses; validation by the nuScenes devkit (NDS) and map mIoU.

Batches come from :class:`sparse3d.datasets.nuscenes.module.NuScenesDataModule`; the model is a
:class:`sparse3d.models.bevfusion.bevfusion.BEVFusion` (``forward(batch)``, ``loss(outputs, batch)``,
``predict(outputs, batch)``). Validation writes a temporary detection submission for the loader's split and
scores it with ``nuscenes.eval.detection.evaluate.DetectionEval`` (``detection_cvpr_2019``) on the loader's own
devkit index, so the split, its sample tokens and the GT all come from the dataset.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

from .. import distributed as D

__all__ = ["BEVFusionTask"]


def _unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def _find_dataset(loader):
    """The ``NuScenesDataset`` behind ``loader`` (a DataLoader, possibly wrapped by a progress bar (``.iterable``)
    or a device-moving wrapper (``.loader``))."""
    obj = loader
    for _ in range(8):
        ds = getattr(obj, "dataset", None)
        if ds is not None:
            return ds
        nxt = getattr(obj, "iterable", None) or getattr(obj, "loader", None)
        if nxt is None:
            break
        obj = nxt
    raise TypeError(f"BEVFusionTask.validate needs a DataLoader over a NuScenesDataset (for the devkit split and "
                    f"tokens); got {type(loader).__name__} without a reachable .dataset")


class BEVFusionTask:
    r"""3D detection (+ BEV map segmentation) with the devkit's metrics.

    Args:
        monitor: ``"nds"`` (detection) or ``"map_miou"`` (map-only models); selects ``best.pt``.
        eval_dir: keep the devkit's ``metrics_summary.json`` and the submission of the last validation here
            (None: a temporary folder, removed afterwards).
        verbose: devkit progress output.

    Under DDP, each head loss is a mean over the local batch, so DDP's gradient averaging gives the
    global-batch gradient when the ranks hold equal batch sizes (the training sampler pads to that).
    """

    def __init__(self, monitor: str = "nds", eval_dir: Optional[str] = None, verbose: bool = False) -> None:
        if monitor not in ("nds", "map_miou", "mAP"):
            raise ValueError(f"monitor must be 'nds', 'mAP' or 'map_miou', got {monitor!r}")
        self.monitor, self.eval_dir, self.verbose = monitor, eval_dir, bool(verbose)

    def training_step(self, net: nn.Module, batch: Dict[str, Any], world_size: int = 1):
        """``(sum of the loss terms, {term: value, "loss": total})``; ``stats/`` entries are logged only."""
        model = _unwrap(net)
        outputs = net(batch)
        terms = model.loss(outputs, batch)
        losses = [v for k, v in terms.items() if not k.startswith("stats/")]
        if not losses:
            raise ValueError("the model returned no loss terms")
        loss = torch.stack([v.float() for v in losses]).sum()
        logs = {k: float(v.detach()) for k, v in terms.items()}
        logs["loss"] = float(loss.detach())
        return loss, logs

    @torch.no_grad()
    def validate(self, model: nn.Module, loader, device: torch.device) -> Dict[str, Any]:
        """``{"nds", "mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE", "NDS", "per_class"}`` (object head) and
        ``{"map_miou", "map_iou"}`` (map head) over ``loader``'s split (predictions gathered over DDP ranks)."""
        from ...evaluation.bevfusion import _model_meta, predict_split, run_detection_eval, \
            write_detection_submission

        model = _unwrap(model)
        ds = _find_dataset(loader)
        for attr in ("nusc", "split", "loader"):
            if not hasattr(ds, attr):
                raise TypeError(f"BEVFusionTask.validate: the validation dataset {type(ds).__name__} has no "
                                f"'{attr}' (expected a sparse3d.datasets.nuscenes.module.NuScenesDataset)")
        class_names = list(getattr(ds, "class_names", None) or _detection_classes())
        pred = predict_split(model, loader, device, class_names, keep_first=0)
        results = pred["results"]
        if D.is_distributed():
            import torch.distributed as dist
            parts = [None] * D.get_world_size()
            dist.all_gather_object(parts, results)
            results = {k: v for p in parts for k, v in p.items()}
        out: Dict[str, Any] = {}
        if getattr(model, "has_object_head", True):
            det = None
            if D.is_main_process():
                tokens = ds.loader.split_tokens(ds.split)
                with tempfile.TemporaryDirectory(prefix="sparse3d_bevfusion_val_") as tmp:
                    root = Path(self.eval_dir) if self.eval_dir else Path(tmp)
                    sub = write_detection_submission(root / "submission.json", results, _model_meta(model), tokens)
                    det = run_detection_eval(ds.nusc, sub, ds.split, root / "detection", verbose=self.verbose)
            det = D.broadcast_object(det) if D.is_distributed() else det
            out.update(det)
            out["nds"] = det["NDS"]
        m = pred["map"]
        if m is None and getattr(model, "map_classes", None):
            raise ValueError("the model has a map head but the validation batches carry no gt_masks_bev")
        if m is not None:
            m.all_reduce()
            out.update(m.compute())
        if self.monitor not in out:
            raise ValueError(f"monitor {self.monitor!r} is not produced by this model (got {sorted(out)})")
        return out

    def format_result(self, result: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
        """Devkit summary (mAP, TP errors, NDS, per-class AP/errors) and map IoU per class."""
        from ...evaluation.bevfusion import format_detection_metrics
        return format_detection_metrics(result)


def _detection_classes():
    from ...datasets.nuscenes.common import DETECTION_CLASSES
    return DETECTION_CLASSES
