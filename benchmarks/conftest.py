"""pytest-benchmark settings shared by every suite: record the device and thread count with the
results."""
import torch

from _device import DEVICE
from gencore._device import describe_device, resolve_device


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json.setdefault("extra_info", {})["torch_threads"] = torch.get_num_threads()
    output_json["extra_info"]["torch_version"] = torch.__version__
    output_json["extra_info"]["device"] = describe_device(resolve_device(DEVICE))
