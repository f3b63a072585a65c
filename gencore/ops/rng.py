"""Seeds for gencore's counter-based RNG, drawn from torch generators."""
from __future__ import annotations

from typing import Optional

import torch


def philox_seed_offset(generator: Optional[torch.Generator] = None,
                       device: Optional[torch.device] = None) -> torch.Tensor:
    """An int64 tensor [seed, offset] for the Philox stream of one op call.

    Drawn from `generator`, or from torch's default CPU generator when None, whatever device the
    op runs on: `torch.manual_seed(s)` then repeats a run, and gives the same samples on CPU and
    CUDA. A CUDA generator lends its own Philox state (initial seed, offset) and is advanced, as
    torch's CUDA random ops advance it, so it never reads back from the device. That tensor lives
    on the CPU, and the kernels take its values at launch.

    Under CUDA-graph capture on `device` (torch.cuda.graph, torch.compile's "reduce-overhead") a
    host draw would be baked into the graph and every replay would reuse one mask. There the
    pair is drawn on the device by a torch random op on the CUDA generator (`generator` if it is
    a CUDA one, else the device's default): torch's graph-safe protocol keeps that generator's
    Philox seed and offset in device tensors during capture and advances them at each replay
    (graphsafe_get_state / register_generator_state), so each replay draws a fresh pair. The
    kernels (attention's dropout, gumbel_softmax's noise) read it from device memory. The
    samples equal the CPU's for the same [seed, offset] values; the values differ from an eager
    run's (another stream).
    """
    if (device is not None and torch.device(device).type == "cuda"
            and torch.cuda.is_current_stream_capturing()):
        dev = torch.device(device)
        gen = generator if generator is not None and generator.device.type == "cuda" else None
        return torch.randint(0, 1 << 62, (2,), dtype=torch.int64, device=dev, generator=gen)
    if generator is not None and generator.device.type == "cuda":
        offset = generator.get_offset()
        generator.set_offset(offset + 4)
        return torch.tensor([generator.initial_seed() & ((1 << 62) - 1), offset],
                            dtype=torch.int64)
    return torch.randint(0, 1 << 62, (2,), dtype=torch.int64, generator=generator)
