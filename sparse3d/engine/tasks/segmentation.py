"""Semantic segmentation task: globally normalized cross-entropy and confusion-matrix mIoU.

Models map a voxel ``SparseTensor`` to ``[N_voxels, num_classes]`` logits; batches carry ``lidar``
(SparseTensor), ``targets`` ``[N_voxels]`` and, for point-level scoring, ``lidar_inverse`` ``[P]`` and
``targets_mapped`` ``[P]`` (see :mod:`sparse3d.datasets.transforms`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...datasets.tta import point_scores
from ...metrics.segmentation import ConfusionMatrix
from .. import distributed as D

__all__ = ["SegmentationTask", "segmentation_loss", "format_iou_table"]


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                      world_size: int = 1, weight: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Globally normalized (optionally class-weighted) cross-entropy.

    Args:
        logits: ``[N, C]`` float. targets: ``[N]`` int64 (``ignore_index`` dropped).
        world_size: number of DDP ranks; the valid count is summed over ranks.
        weight: ``[C]`` class weights; the normalizer is then the summed weight of the valid targets
            (as ``F.cross_entropy(weight=...)``'s mean), also summed over ranks.

    Returns:
        ``(loss, n_valid_local)``: ``loss = sum_CE_local * world_size / n_valid_global`` (the plain
        mean when not distributed; 0 when no target is valid anywhere).
    """
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [N, C] and targets [N], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    loss_sum = F.cross_entropy(logits.float(), targets, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = targets != ignore_index
    n_valid = valid.sum()
    norm = n_valid if weight is None else weight[targets[valid]].sum()
    n_global = D.all_reduce_sum(norm) if world_size > 1 else norm
    return loss_sum * world_size / n_global.clamp(min=1).to(loss_sum.dtype), n_valid


def format_iou_table(cm: ConfusionMatrix, class_names: Optional[Sequence[str]] = None) -> str:
    """Per-class IoU table plus mIoU under both conventions (absent classes marked)."""
    tp, fp, fn = cm.stats()
    iou = cm.iou()
    names = list(class_names) if class_names else [str(i) for i in range(cm.num_classes)]
    w = max(12, max(len(n) for n in names))
    lines = [f"{'class':<{w}}  {'IoU':>7}  {'points':>10}"]
    for i, n in enumerate(names):
        absent = int(tp[i] + fp[i] + fn[i]) == 0
        lines.append(f"{n:<{w}}  {'absent' if absent else f'{100 * float(iou[i]):6.2f}%':>7}  {int(tp[i] + fn[i]):>10}")
    lines.append(f"mIoU (all {cm.num_classes} classes, absent = 0; semantic-kitti-api): {100 * cm.miou('semantickitti'):.2f}%")
    lines.append(f"mIoU (present classes only; nuScenes nanmean): {100 * cm.miou('nuscenes'):.2f}%")
    lines.append(f"accuracy: {100 * cm.accuracy():.2f}%")
    return "\n".join(lines)


class SegmentationTask:
    r"""Voxel/point semantic segmentation.

    Args:
        num_classes: number of training classes. ignore_index: target id left out of loss and metrics.
        miou_convention: ``"semantickitti"`` (absent class = 0) or ``"nuscenes"`` (nanmean); the monitored
            ``miou`` uses it.
        eval_level: ``"point"`` (voxel predictions mapped back to every point through ``lidar_inverse``,
            averaged over the views of :class:`~sparse3d.datasets.tta.RotationViews` batches)
            or ``"voxel"``.
        class_weighting: cross-entropy class weights from the training label counts
            (``datamodule.class_counts()``, read in :meth:`setup`): ``"none"``, ``"inv_sqrt"`` or ``"inv_log"``
            (:func:`sparse3d.nn.functional.class_weights`).
        lovasz_weight: weight of the Lovász-Softmax term added to the cross-entropy (0 = off). Under DDP
            it is computed per rank (the Jaccard surrogate does not decompose over ranks).
    """

    monitor = "miou"

    def __init__(self, num_classes: int, ignore_index: int = 255, miou_convention: str = "semantickitti",
                 eval_level: str = "point", class_weighting: str = "none", lovasz_weight: float = 0.0) -> None:
        if miou_convention not in ("semantickitti", "nuscenes"):
            raise ValueError(f"miou_convention must be 'semantickitti' or 'nuscenes', got {miou_convention!r}")
        if eval_level not in ("point", "voxel"):
            raise ValueError(f"eval_level must be 'point' or 'voxel', got {eval_level!r}")
        self.num_classes, self.ignore_index = int(num_classes), int(ignore_index)
        self.miou_convention, self.eval_level = miou_convention, eval_level
        if class_weighting not in ("none", "inv_sqrt", "inv_log"):
            raise ValueError(f"class_weighting must be 'none', 'inv_sqrt' or 'inv_log', got {class_weighting!r}")
        if not float(lovasz_weight) >= 0:
            raise ValueError(f"lovasz_weight must be >= 0, got {lovasz_weight!r}")
        self.class_weighting, self.lovasz_weight = class_weighting, float(lovasz_weight)
        self.weight: Optional[torch.Tensor] = None

    def setup(self, datamodule: Any) -> None:
        """Class weights from ``datamodule.class_counts()`` (``[num_classes]`` training label counts)."""
        if self.class_weighting == "none":
            return
        if not hasattr(datamodule, "class_counts"):
            raise ValueError(f"class_weighting={self.class_weighting!r} needs datamodule.class_counts()")
        from ...nn.functional.loss import class_weights
        counts = torch.as_tensor(datamodule.class_counts())
        if counts.shape != (self.num_classes,):
            raise ValueError(f"class_counts() gave shape {tuple(counts.shape)}, expected ({self.num_classes},)")
        self.weight = class_weights(counts, self.class_weighting)

    def training_step(self, net: nn.Module, batch: Dict[str, Any], world_size: int = 1):
        """``(loss, {"n_valid": ...})``; the loss is :func:`segmentation_loss` of ``net(batch["lidar"])``."""
        logits = net(batch["lidar"])
        w = None if self.weight is None else self.weight.to(logits.device)
        loss, n_valid = segmentation_loss(logits, batch["targets"], self.ignore_index, world_size, w)
        logs = {"n_valid": float(n_valid), "loss_ce": float(loss.detach())}
        if self.lovasz_weight > 0:
            from ...nn.functional.loss import lovasz_softmax
            lz = lovasz_softmax(torch.softmax(logits.float(), 1), batch["targets"], self.ignore_index)
            loss = loss + self.lovasz_weight * lz
            logs["loss_lovasz"] = float(lz.detach())
        return loss, logs

    @torch.no_grad()
    def validate(self, model: nn.Module, loader, device: torch.device) -> Dict[str, Any]:
        """``{"miou", "miou_semantickitti", "miou_present", "accuracy", "iou" [C], "confusion"}`` over
        ``loader`` (summed over DDP ranks)."""
        cm = ConfusionMatrix(self.num_classes, self.ignore_index)
        for batch in loader:
            logits = model(batch["lidar"])
            if self.eval_level == "point" and "lidar_inverse" in batch and "targets_mapped" in batch:
                cm.update(point_scores(logits, batch).argmax(1), batch["targets_mapped"])
            else:
                cm.update(logits.argmax(1), batch["targets"])
        cm.all_reduce()
        return {"miou": cm.miou(self.miou_convention), "miou_semantickitti": cm.miou("semantickitti"),
                "miou_present": cm.miou("nuscenes"), "accuracy": cm.accuracy(), "iou": cm.iou(),
                "confusion": cm}

    def format_result(self, result: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
        """Per-class IoU table of a :meth:`validate` result."""
        return format_iou_table(result["confusion"], class_names)
