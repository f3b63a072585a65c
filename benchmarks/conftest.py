"""pytest-benchmark settings shared by every suite: the device `gencore bench --device` chose, and
the device and thread count recorded with the results.

GENCORE_BENCH_DEVICE (set by `gencore bench`: "cpu", "cuda:0", ...) keeps the benchmarks that
time that device type and makes a chosen CUDA device the current one. A benchmark times the
device its `device` parameter names; a test named `*_cuda` times CUDA; the rest time their
suite's DEVICE, or the CPU. Unset (pytest run directly), every benchmark runs, each CUDA one
skipped where there is no GPU.

A perf run writes no records: auto's evidence comes only from `gencore bench --record`
(gencore/bench_cases.py timed by gencore/timing.py, written by gencore/records.py).
"""
import os

import torch

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
