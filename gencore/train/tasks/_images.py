"""Shared by the image tasks: digit-space metrics next to their real-data floor."""
from __future__ import annotations

from typing import Callable, Dict

import torch

DIGIT_SHAPE = (1, 8, 8)


def digit_image_metrics(sample: Callable[[int, torch.Generator], torch.Tensor], n: int,
                        generator: torch.Generator, batch: int = 512) -> Dict[str, float]:
    """Frechet distance and KID of n generated digits against the real test split, with the
    floor (real train vs real test) beside them: fd, fd_floor, kid, kid_std, kid_floor,
    kid_floor_std (gencore.metrics.image_metrics)."""
    from ...metrics import image_metrics
    fake = torch.cat([sample(min(batch, n - i), generator).float().cpu()
                      for i in range(0, n, batch)])
    return image_metrics(fake)
