"""Shared test helpers: which devices to test, and how to demand a fused kernel."""
import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from gencore import _backend

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# CUDA cases are listed on every machine and skipped where no GPU is visible, so a CPU-only run
# shows what it did not check.
ALL_DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")),
]


# A Gumbel-softmax CPU kernel 1% off (more than a bfloat16 rounding): the reference's soft sample
# scaled by 1.01. Hard one-hots stay right; their straight-through gradient, computed from that
# soft sample, does not.
# (Python source: run it in a child process, or as its sitecustomize; registrations cannot be undone.)
WRONG_GUMBEL = """
import torch
from torch.utils._python_dispatch import TorchDispatchMode
import gencore
from gencore.ops.reference import gumbel_softmax_reference

def off_by_a_little(logits, seed_offset, tau, hard, dim):
    soft = gumbel_softmax_reference(logits, seed_offset[0], seed_offset[1], tau, False, dim) * 1.01
    if not hard:
        return soft, logits.new_empty((0,))
    return gumbel_softmax_reference(logits, seed_offset[0], seed_offset[1], tau, True, dim), soft

_lib = torch.library.Library("gencore", "IMPL")
_lib.impl("gumbel_softmax", off_by_a_little, "CPU")
"""


def need_fused(op: str, device: str) -> None:
    """Skips a fused-kernel test where the kernel is not built, unless GENCORE_REQUIRE_C=1 (set by
    `make test` and CI), where a missing kernel is a failure: CI must test the kernels."""
    if _backend.has_kernel(op, torch.device(device).type):
        return
    why = _backend.reason() or f"no {device} kernel for {op} in this build"
    if os.environ.get("GENCORE_REQUIRE_C") == "1":
        pytest.fail(f"GENCORE_REQUIRE_C=1 but the fused {op} kernel is unavailable: {why}")
    pytest.skip(why)


def auto_picks(monkeypatch, fused) -> None:
    """Makes impl="auto" decide every case by `fused(op, case) -> bool` (True: the fused kernel),
    as if records said so: a test of what follows from auto's pick brings its own evidence
    instead of reading this machine's."""
    from gencore.ops import auto
    monkeypatch.setattr(auto, "decide", lambda op, device_type, case, **_: {
        "pick": auto.FUSED if fused(op, case) else auto.BUILTIN, "source": "your records"})
    auto.clear()
    monkeypatch.setattr(auto, "_CHOSEN", {})


class OpsRun(TorchDispatchMode):
    """The names of the ATen and gencore ops that run inside it (the dispatcher's view: it sees
    what the C++ fast path runs too)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))

    def ran(self, fragment: str) -> bool:
        return any(fragment in name for name in self.names)
