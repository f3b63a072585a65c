"""Which device a run uses: `resolve_device("auto")` is the current CUDA device when one is
visible, else the CPU. Every verb of the `gencore` command and the Trainer resolve `--device`
through this one function, so a wrong name fails the same way everywhere, before any work.
"""
from __future__ import annotations

import os
from typing import List, Union

import torch

__all__ = ["available_devices", "describe_device", "resolve_device"]


def _backend(device_type: str):
    """torch.cuda, torch.xpu, torch.mps...: the module that says whether that device type is
    available here; None for the CPU and for names torch has no module for."""
    mod = getattr(torch, device_type, None) if device_type != "cpu" else None
    return mod if hasattr(mod, "is_available") else None


def _count(device_type: str) -> int:
    mod = _backend(device_type)
    if mod is None or not mod.is_available():
        return 0
    return mod.device_count() if hasattr(mod, "device_count") else 1


def available_devices() -> List[str]:
    """'cpu', then every CUDA device this process sees ('cuda:0', 'cuda:1', ...)."""
    return ["cpu"] + [f"cuda:{i}" for i in range(_count("cuda"))]


def _unavailable(spec: str, device_type: str) -> str:
    if device_type == "cuda":
        if torch.version.cuda is None:
            why = f"torch {torch.__version__} is a CPU-only build"
        else:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            why = (f"torch is built with CUDA {torch.version.cuda} but sees no CUDA device"
                   + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else ""))
    else:
        why = f"torch sees no {device_type} device here"
    return f"device {spec!r} is not available: {why}"


def resolve_device(spec: Union[str, torch.device, None] = "auto") -> torch.device:
    """The torch.device for `spec`: "auto" (or None) = the current CUDA device if CUDA is
    available, else the CPU; "cpu"; "cuda" (the current CUDA device); "cuda:N"; or another
    device type torch reports available. Raises ValueError naming the available devices when
    `spec` is not a device name or that device is not here."""
    valid = f"available devices: {', '.join(['auto'] + available_devices())}"
    if spec is None or spec == "auto":
        spec = "cuda" if _count("cuda") else "cpu"
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError):
        raise ValueError(f"{spec!r} is not a device name (expected auto, cpu, cuda or cuda:N); "
                         f"{valid}") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    count = _count(dev.type)
    if count == 0:
        raise ValueError(f"{_unavailable(str(spec), dev.type)}; {valid}")
    if dev.index is None:
        index = torch.cuda.current_device() if dev.type == "cuda" else 0
        return torch.device(dev.type, index)
    if dev.index >= count:
        raise ValueError(f"device {str(spec)!r} does not exist: this machine has {count} "
                         f"{dev.type} device{'s' if count > 1 else ''}; {valid}")
    return dev


def describe_device(dev: torch.device) -> str:
    """'cuda:0 (NVIDIA H200)' or 'cpu (2 threads)': the line a run prints about its device."""
    if dev.type == "cuda":
        return f"{dev} ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        n = torch.get_num_threads()
        return f"cpu ({n} thread{'s' if n > 1 else ''})"
    return str(dev)
