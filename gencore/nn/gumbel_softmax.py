"""GumbelSoftmax: a layer that samples relaxed one-hots, with a temperature you can anneal."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops.gumbel_softmax import gumbel_softmax


class GumbelSoftmax(nn.Module):
    """Samples Gumbel-softmax(logits / tau) along `dim` (gencore.ops.gumbel_softmax).

    `tau` is a plain attribute: set `layer.tau = ...` between steps to anneal it (it is stored in
    the state dict as a buffer, so checkpoints resume with the temperature they had).
    In eval mode the layer returns the deterministic argmax one-hot when `hard`, else the softmax
    of logits / tau (no noise), unless `sample_in_eval=True`.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, dim: int = -1,
                 sample_in_eval: bool = False, impl: str = "auto"):
        super().__init__()
        self.hard, self.dim, self.sample_in_eval, self.impl = hard, dim, sample_in_eval, impl
        self.register_buffer("_tau", torch.tensor(float(tau), dtype=torch.float64))
        self.tau = tau

    @property
    def tau(self) -> float:
        return float(self._tau)

    @tau.setter
    def tau(self, value: float) -> None:
        value = float(value)
        if not value > 0 or value == float("inf"):
            raise ValueError(f"GumbelSoftmax: tau must be a finite number > 0, got {value}")
        self._tau.fill_(value)

    def forward(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.training or self.sample_in_eval:
            return gumbel_softmax(logits, self.tau, self.hard, self.dim, generator, self.impl)
        if self.hard:
            index = logits.argmax(self.dim, keepdim=True)
            return torch.zeros_like(logits).scatter_(self.dim, index, 1.0)
        return torch.softmax(logits.float() / self.tau, self.dim).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, hard={self.hard}, dim={self.dim}"
