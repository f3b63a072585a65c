"""Shared by the image tasks: unconditional seeded samples, and digit-space metrics next to their
real-data floor."""
from __future__ import annotations

from typing import Callable, Dict, Optional

import torch

from ._sampling import seeded_generator

DIGIT_SHAPE = (1, 8, 8)


def unconditional_samples(model: torch.nn.Module, n: int, prompt: Optional[str],
                          seed: int) -> torch.Tensor:
    """Task.generate for an image model with `sample(n, generator=)`: it takes no prompt."""
    if prompt is not None:
        raise ValueError("this recipe generates images unconditionally: it takes no prompt")
    return model.sample(n, generator=seeded_generator(model, seed))


def digit_image_metrics(sample: Callable[[int, torch.Generator], torch.Tensor], n: int,
                        generator: torch.Generator, batch: int = 512) -> Dict[str, float]:
    """Frechet distance and KID of n generated digits against the real test split, with the
    floor (real train vs real test) beside them: fd, fd_floor, kid, kid_std, kid_floor,
    kid_floor_std (gencore.metrics.image_metrics)."""
    from ...metrics import image_metrics
    fake = torch.cat([sample(min(batch, n - i), generator).float().cpu()
                      for i in range(0, n, batch)])
    return image_metrics(fake)
