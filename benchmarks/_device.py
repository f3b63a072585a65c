"""The device every suite times: GENCORE_BENCH_DEVICE (`gencore bench --device` sets it), else
"auto": the first CUDA device when there is one, else the CPU. A chosen CUDA device becomes the
current one, so the suites name it by its type ("cuda")."""
import os

import torch

from gencore._device import resolve_device

_device = resolve_device(os.environ.get("GENCORE_BENCH_DEVICE", "auto"))
if _device.type == "cuda":
    torch.cuda.set_device(_device)
DEVICE = _device.type


def sync() -> None:
    """Waits for the device's queued work, so that a timed call includes it."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
