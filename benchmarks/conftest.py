"""pytest-benchmark settings shared by every suite: record the thread count with the results."""
import torch


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json.setdefault("extra_info", {})["torch_threads"] = torch.get_num_threads()
    output_json["extra_info"]["torch_version"] = torch.__version__
