"""Learning-rate schedules whose state is plain numbers (checkpoint-friendly)."""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import LRScheduler

__all__ = ["WarmupCosine", "warmup_cosine_factor"]


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int,
                         min_ratio: float = 0.1) -> float:
    """Linear warmup from 1/warmup to 1 over `warmup_steps`, then cosine decay to `min_ratio` at
    `total_steps` (and flat after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    t = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


class WarmupCosine(LRScheduler):
    """lr = base_lr * warmup_cosine_factor(step); `step()` once per optimizer step."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1,
                 last_epoch: int = -1):
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        f = warmup_cosine_factor(self.last_epoch, self.warmup_steps, self.total_steps, self.min_ratio)
        return [base * f for base in self.base_lrs]
