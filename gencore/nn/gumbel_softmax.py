"""GumbelSoftmax: a layer that samples relaxed one-hots, with a temperature you can anneal."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops._gumbel_softmax import gumbel_softmax


class GumbelSoftmax(nn.Module):
    """Samples Gumbel-softmax(logits / tau) along `dim` (gencore.ops.gumbel_softmax).

    `tau` is a plain attribute (a Python float: no device read per forward): set
    `layer.tau = ...` between steps to anneal it. It is saved in the state dict as the module's
    extra state (a float, so checkpoints resume with the temperature they had, and `.half()` or
    `.to(dtype)` never round it).
    In eval mode the layer returns the deterministic argmax one-hot when `hard`, else the softmax
    of logits / tau (no noise), unless `sample_in_eval=True`.
    """

    def __init__(self, tau: float = 1.0, hard: bool = False, dim: int = -1,
                 sample_in_eval: bool = False, impl: str = "auto"):
        super().__init__()
        self.hard, self.dim, self.sample_in_eval, self.impl = hard, dim, sample_in_eval, impl
        self.tau = tau
        # state dicts written before tau was extra state hold it as a float64 buffer "_tau"
        self._register_load_state_dict_pre_hook(self._legacy_tau)

    @property
    def tau(self) -> float:
        return self._tau

    @tau.setter
    def tau(self, value: float) -> None:
        value = float(value)
        if not value > 0 or value == float("inf"):
            raise ValueError(f"GumbelSoftmax: tau must be a finite number > 0, got {value}")
        self._tau = value

    def get_extra_state(self) -> dict:
        return {"tau": self._tau}

    def set_extra_state(self, state: dict) -> None:
        self.tau = state["tau"]

    def _legacy_tau(self, state_dict, prefix, *args) -> None:
        old = state_dict.pop(prefix + "_tau", None)
        if old is not None and prefix + "_extra_state" not in state_dict:
            state_dict[prefix + "_extra_state"] = {"tau": float(old)}

    def forward(self, logits: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        if self.training or self.sample_in_eval:
            return gumbel_softmax(logits, self.tau, self.hard, self.dim, generator, self.impl)
        if self.hard:
            index = logits.argmax(self.dim, keepdim=True)
            return torch.zeros_like(logits).scatter_(self.dim, index, 1.0)
        return torch.softmax(logits.float() / self.tau, self.dim).to(logits.dtype)

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, hard={self.hard}, dim={self.dim}"
