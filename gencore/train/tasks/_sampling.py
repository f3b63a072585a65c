"""Seeded sampling for the tasks' samples and metrics."""
from __future__ import annotations

import torch


def seeded_generator(module: torch.nn.Module, seed: int) -> torch.Generator:
    """A fresh generator on the module's device: the same seed gives the same samples, and the
    global RNG streams (the training run's) are not touched."""
    dev = next(module.parameters()).device
    return torch.Generator(device=dev).manual_seed(seed)
