"""Trainer tasks: what one training step computes and how validation scores a model.

:class:`~sparse3d.engine.trainer.Trainer` owns the loop (optimizer, schedule, AMP, clipping, checkpoints,
TensorBoard, DDP); a task owns the rest. A task has

- ``monitor``: the key of ``validate``'s result that selects ``best.pt`` (higher is better);
- ``training_step(net, batch, world_size) -> (loss, logs)``: ``net`` may be DDP-wrapped; the loss is
  normalized so that DDP's gradient averaging gives the gradient of the global batch;
- ``validate(model, loader, device) -> dict``: the unwrapped model in eval mode; float values are logged as
  ``val/<key>``;
- ``format_result(result, class_names) -> str``: the text ``tools/train.py`` prints at the end.

Tasks are plain classes built by Hydra (``configs/task/``); there is no registry.
"""
from .bevfusion import BEVFusionTask
from .calo import CaloTask
from .segmentation import SegmentationTask, format_iou_table, segmentation_loss

__all__ = ["SegmentationTask", "CaloTask", "BEVFusionTask", "segmentation_loss", "format_iou_table"]
