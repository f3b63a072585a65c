"""What every suite shares: one timing harness, the device `gencore bench --device` chose, and the
device and thread count recorded with the results.

Timing: a suite's test asks the `compare` fixture for its implementation's time. The first test of
a group to run times every implementation of the group with gencore.timing.round_robin (the
harness that writes auto's records and calibrates on first use: one call of each implementation
per repetition, in a shuffled order, so load from other processes hits them all alike), and each
test hands its implementation's samples to pytest-benchmark, whose tables, JSON, `--benchmark-save`
and `--benchmark-compare` work as always. Selecting one implementation (`-k fused`) still times
the whole group: the comparison is the measurement.

GENCORE_BENCH_DEVICE (set by `gencore bench`: "cpu", "cuda:0", ...) keeps the benchmarks that
time that device type and makes a chosen CUDA device the current one. A benchmark times the
device its `device` parameter names; a test named `*_cuda` times CUDA; the rest time their
suite's DEVICE, or the CPU. Unset (pytest run directly), every benchmark runs, each CUDA one
skipped where there is no GPU.

A perf run writes no records: auto's evidence comes only from `gencore bench --record`
(gencore/bench_cases.py timed by gencore/timing.py, written by gencore/records.py).
"""
import os
from typing import Callable, Dict, Union

import pytest
import torch

from gencore import timing
from gencore._device import describe_device, resolve_device

CHOSEN = os.environ.get("GENCORE_BENCH_DEVICE")


def _times_device(item) -> str:
    params = getattr(getattr(item, "callspec", None), "params", {})
    if "device" in params:
        return torch.device(params["device"]).type
    if item.originalname.endswith("_cuda"):
        return "cuda"
    return torch.device(getattr(item.module, "DEVICE", "cpu")).type


def pytest_collection_modifyitems(config, items):
    if not CHOSEN:
        return
    device = resolve_device(CHOSEN)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    keep = [item for item in items if _times_device(item) == device.type]
    dropped = [item for item in items if _times_device(item) != device.type]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json.setdefault("extra_info", {})["torch_threads"] = torch.get_num_threads()
    output_json["extra_info"]["torch_version"] = torch.__version__
    output_json["extra_info"]["device"] = (describe_device(resolve_device(CHOSEN)) if CHOSEN
                                           else "every device the suites name")


Calls = Dict[str, Union[Callable[[], object], str]]
# (group, device type) -> ({impl: round_robin stats not yet reported}, {impl: why it does not run})
_TIMED: Dict[tuple, tuple] = {}


def _report(benchmark, st: dict) -> None:
    """Hands round-robin samples to pytest-benchmark as this test's rounds. pytest-benchmark has no
    public way to take samples timed elsewhere; its fixture's `_make_stats` (pytest-benchmark 4 and
    5) does it, and tests/test_bench_suites.py fails if that stops working."""
    stats = benchmark._make_stats(st["calls_per_rep"])
    for sample in st["samples"]:
        stats.update(sample * st["calls_per_rep"])
    benchmark._mode = "gencore.timing.round_robin"  # the fixture counts as used


@pytest.fixture
def compare(benchmark):
    """compare(group, impl, make, device="cpu", **round_robin_options) -> impl's timing stats.

    make() returns {implementation: zero-argument call, or a string saying why that
    implementation does not run here}; a call must not synchronise a CUDA device itself (the
    harness times CUDA with events). The group is timed once, by its first test to run."""
    def run(group: str, impl: str, make: Callable[[], Calls], device: str = "cpu", **options):
        benchmark.group = group
        benchmark.extra_info["impl"] = impl
        key = (group, torch.device(device).type)
        if benchmark.disabled:  # --benchmark-disable: run the call once, time nothing
            call = make()[impl]
            if isinstance(call, str):
                pytest.skip(call)
            call()
            return None
        if key not in _TIMED:
            calls = make()
            runnable = {name: fn for name, fn in calls.items() if not isinstance(fn, str)}
            skipped = {name: why for name, why in calls.items() if isinstance(why, str)}
            _TIMED[key] = (timing.round_robin(runnable, key[1], **options), skipped)
            del calls, runnable
        timed, skipped = _TIMED[key]
        why = skipped.pop(impl, None)
        st = None if why else timed.pop(impl)
        if not timed and not skipped:  # every test of the group has had its answer
            del _TIMED[key]
        if why:
            pytest.skip(why)
        _report(benchmark, st)
        benchmark.extra_info["harness"] = "gencore.timing.round_robin"
        return st
    return run
