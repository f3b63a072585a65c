"""Shared test helpers: which devices to test, and how to demand a fused kernel."""
import os

import pytest
import torch

from gencore import _backend

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# CUDA cases are listed on every machine and skipped where no GPU is visible, so a CPU-only run
# shows what it did not check.
ALL_DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


def need_fused(op: str, device: str) -> None:
    """Skips a fused-kernel test where the kernel is not built, unless GENCORE_REQUIRE_C=1 (set by
    `make test` and CI), where a missing kernel is a failure: CI must test the kernels."""
    if _backend.has_kernel(op, torch.device(device).type):
        return
    why = _backend.reason() or f"no {device} kernel for {op} in this build"
    if os.environ.get("GENCORE_REQUIRE_C") == "1":
        pytest.fail(f"GENCORE_REQUIRE_C=1 but the fused {op} kernel is unavailable: {why}")
    pytest.skip(why)
