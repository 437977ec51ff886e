"""Training engine: trainer, checkpoints, schedules, seeding and DDP helpers."""
from .checkpoint import CHECKPOINT_KEYS, load_checkpoint, save_checkpoint
from .schedulers import CosineWarmupLR, cosine_warmup_factor
from .seed import get_rng_state, seed_everything, seed_worker, set_rng_state
from .tasks import SegmentationTask
from .trainer import Trainer, format_iou_table, segmentation_loss

__all__ = [
    "Trainer", "SegmentationTask", "segmentation_loss", "format_iou_table", "save_checkpoint", "load_checkpoint",
    "CHECKPOINT_KEYS", "CosineWarmupLR", "cosine_warmup_factor", "seed_everything", "seed_worker",
    "get_rng_state", "set_rng_state",
]
