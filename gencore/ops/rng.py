"""Seeds for gencore's counter-based RNG, drawn from torch generators."""
from __future__ import annotations

from typing import Optional

import torch


def philox_seed_offset(generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A CPU int64 tensor [seed, offset] for the Philox stream of one op call.

    Drawn from `generator`, or from torch's default CPU generator when None, whatever device the
    op runs on: `torch.manual_seed(s)` then repeats a run, and gives the same samples on CPU and
    CUDA. A CUDA generator lends its own Philox state (initial seed, offset) and is advanced, as
    torch's CUDA random ops advance it, so it never reads back from the device.
    """
    if generator is not None and generator.device.type == "cuda":
        offset = generator.get_offset()
        generator.set_offset(offset + 4)
        return torch.tensor([generator.initial_seed() & ((1 << 62) - 1), offset],
                            dtype=torch.int64)
    return torch.randint(0, 1 << 62, (2,), dtype=torch.int64, generator=generator)
