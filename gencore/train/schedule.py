"""Learning-rate schedules whose state is plain numbers (checkpoint-friendly)."""
from __future__ import annotations

import math

from torch.optim.lr_scheduler import LRScheduler

__all__ = ["DECAY_SHAPES", "WarmupDecay", "warmup_decay_factor"]

DECAY_SHAPES = ("cosine", "linear")


def warmup_decay_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.1,
                        shape: str = "cosine", decay_frac: float = 1.0) -> float:
    """Linear warmup from 1/warmup to 1 over `warmup_steps`; then flat, and over the last
    `decay_frac` of the steps after warmup a decay (`shape` "cosine" or "linear") to `min_ratio`
    at `total_steps` (flat after). decay_frac 1: decay straight after warmup (nanoGPT);
    below 1: warmup-stable-decay (WSD)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = decay_frac * (total_steps - warmup_steps)
    if decay_steps <= 0:
        return 1.0
    t = min(1.0, max(0.0, (step - (total_steps - decay_steps)) / decay_steps))
    fall = 0.5 * (1 + math.cos(math.pi * t)) if shape == "cosine" else 1 - t
    return min_ratio + (1 - min_ratio) * fall


class WarmupDecay(LRScheduler):
    """lr = base_lr * warmup_decay_factor(step, ...); `step()` once per optimizer step."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.1,
                 shape: str = "cosine", decay_frac: float = 1.0, last_epoch: int = -1):
        if shape not in DECAY_SHAPES:
            raise ValueError(f"WarmupDecay: shape must be one of {list(DECAY_SHAPES)}, got {shape!r}")
        if not 0.0 <= decay_frac <= 1.0:
            raise ValueError(f"WarmupDecay: decay_frac must be in [0, 1], got {decay_frac!r}")
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio
        self.shape, self.decay_frac = shape, decay_frac
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        f = warmup_decay_factor(self.last_epoch, self.warmup_steps, self.total_steps,
                                self.min_ratio, self.shape, self.decay_frac)
        return [base * f for base in self.base_lrs]
