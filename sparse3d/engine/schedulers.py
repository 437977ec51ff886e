"""Learning-rate schedules stepped once per optimizer step."""
from __future__ import annotations

import math
from typing import List

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

__all__ = ["CosineWarmupLR", "cosine_warmup_factor"]


def cosine_warmup_factor(step: int, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> float:
    """Multiplier of the base lr at ``step``: linear warmup from ``1/(warmup_steps+1)`` to 1 over
    ``warmup_steps`` steps, then cosine decay from 1 to ``min_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class CosineWarmupLR(LRScheduler):
    """Cosine schedule with linear warmup, per iteration (spvnas ``cosine_schedule_with_warmup``).

    Args:
        optimizer: the optimizer.
        total_steps: optimizer steps of the whole run (epochs * steps per epoch).
        warmup_steps: linear warmup length; ``warmup_ratio`` (fraction of ``total_steps``) is
            used instead when given.
        min_lr_ratio: final lr as a fraction of the base lr.
    """

    def __init__(self, optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
                 warmup_ratio: float | None = None, min_lr_ratio: float = 0.0, last_epoch: int = -1) -> None:
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive int, got {total_steps!r}")
        if warmup_ratio is not None:
            if not 0 <= warmup_ratio < 1:
                raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
            warmup_steps = int(round(warmup_ratio * total_steps))
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.total_steps, self.warmup_steps, self.min_lr_ratio = total_steps, warmup_steps, min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        f = cosine_warmup_factor(self.last_epoch, self.total_steps, self.warmup_steps, self.min_lr_ratio)
        return [base * f for base in self.base_lrs]
