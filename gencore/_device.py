"""Which device a run uses: `resolve_device("auto")` is the current CUDA device when one is
visible, else the CPU. Every verb of the `gencore` command and the Trainer resolve `--device`
through this one function, so a wrong name fails the same way everywhere, before any work.
"""
from __future__ import annotations

import functools
import os
import platform
from typing import List, Union

import torch

__all__ = ["available_devices", "cpu_isa_path", "cpu_model", "describe_device", "machine_class",
           "resolve_device"]


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


def cpu_isa_path() -> str:
    """The vector ISA gencore's CPU kernels run with here: "AVX512", "AVX2" or "DEFAULT"."""
    from . import _backend
    return _backend.cpu_capability()


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_class(device_type: str) -> str:
    """Which benchmark records speak for this machine: "cpu-avx512", "cpu-avx2", "cpu-default"
    (the ISA path the CPU kernels run with), or "cuda-sm90" etc. (the current device's compute
    capability). A measurement on one class is no evidence for another."""
    if device_type == "cpu":
        return f"cpu-{cpu_isa_path().lower()}"
    if device_type == "cuda":
        major, minor = torch.cuda.get_device_capability()
        return f"cuda-sm{major}{minor}"
    return device_type
