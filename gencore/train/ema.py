"""Exponential moving average of a module's weights."""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
import torch.nn as nn

__all__ = ["EMA"]


class EMA:
    """Keeps `shadow = decay * shadow + (1 - decay) * param` for every floating-point parameter
    (buffers are copied). `module` is the averaged copy (eval mode, no grads): sample from it.
    With `warmup=True` the effective decay is min(decay, (1 + n) / (10 + n)) after n updates, so
    early averages are not dominated by the random initialisation."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module, skip: Optional[torch.Tensor] = None) -> None:
        """`skip`: a 0-dim bool tensor; where it is True (a step whose update was skipped) the
        average is left as it is, decided on the device (no host read). `num_updates` counts
        calls either way."""
        self.num_updates += 1
        n = self.num_updates
        d = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        w = 1.0 - d if skip is None else (~skip).to(torch.float32) * (1.0 - d)
        for s, p in zip(self.module.parameters(), model.parameters()):
            if s.dtype.is_floating_point:
                s.lerp_(p.detach(), w if skip is None else w.to(s.dtype))
            elif skip is None:
                s.copy_(p)
            else:
                s.copy_(torch.where(skip, s, p))
        for s, b in zip(self.module.buffers(), model.buffers()):
            s.copy_(b if skip is None else torch.where(skip, s, b))

    def state_dict(self) -> Dict:
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "module": self.module.state_dict()}

    def load_state_dict(self, state: Dict) -> None:
        self.decay, self.warmup = state["decay"], state["warmup"]
        self.num_updates = state["num_updates"]
        self.module.load_state_dict(state["module"])
