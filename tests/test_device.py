"""--device: "auto" picks CUDA when there is one, else the CPU, for every verb; what was used is
printed and recorded; a device that is not here is a clear error; runs resume on another device."""
import json

import pytest
import torch

from _toy import lm_setup, toy_recipe
from gencore import cli
from gencore._device import available_devices, resolve_device
from gencore.recipes import register
from gencore.train import Trainer, TrainerConfig

register(toy_recipe())
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@pytest.fixture
def two_gpus(monkeypatch):
    """What torch reports on a machine with two CUDA devices (nothing is run on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Fake GPU")


def test_resolve_with_two_gpus(two_gpus):
    assert available_devices() == ["cpu", "cuda:0", "cuda:1"]
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cpu")) == resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'cuda:2' does not exist: this machine has 2 cuda "
                                         r"devices; available devices: auto, cpu, cuda:0, cuda:1"):
        resolve_device("cuda:2")


@no_cuda
def test_resolve_without_cuda():
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"'cuda' is not available: .*; available devices: auto, cpu$"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'cuda:1' is not available"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", ""])
def test_not_a_device_name(spec):
    with pytest.raises(ValueError, match=f"{spec!r} is not a device name .*available devices: auto, cpu"):
        resolve_device(spec)


@no_cuda
@pytest.mark.parametrize("verb", ["train", "demo", "sample", "bench"])
def test_every_verb_refuses_a_missing_cuda(verb, tmp_path, capsys):
    args = {"train": ["toy-char", "--out", tmp_path / "r"], "demo": ["--only", "toy-char", "--out", tmp_path],
            "sample": [tmp_path], "bench": ["-k", "x"]}[verb]
    assert cli.main([verb, *map(str, args), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "'cuda' is not available" in err and "available devices: auto, cpu" in err, err
    assert not (tmp_path / "r").exists()  # nothing was started


def test_train_says_and_records_the_device(tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", "toy-char", "--out", str(out), "--progress", "none", "--steps", "3"]) == 0
    want = str(resolve_device("auto"))
    assert f"toy-char: training on {want}" in capsys.readouterr().out
    assert json.loads((out / "run.json").read_text())["provenance"]["device"] == want
    assert json.loads((out / "results.json").read_text())["device"] == want


def test_auto_trains_on_cuda_where_there_is_one(two_gpus, tmp_path, capsys, monkeypatch):
    """The GPU code path, up to the point where a real device is needed: train, sample and bench
    resolve "auto" to cuda:0 and hand it on."""
    from gencore.recipes import run as run_mod
    seen = []

    def build_run(recipe, config, device, **kw):
        seen.append(device)
        raise ValueError("stopped before building (no real GPU)")
    monkeypatch.setattr(run_mod, "build_run", build_run)
    out = tmp_path / "r"
    assert cli.main(["train", "toy-char", "--out", str(out)]) == 2
    assert "toy-char: training on cuda:0 (Fake GPU)" in capsys.readouterr().out
    assert seen == [torch.device("cuda", 0)]
    assert json.loads((out / "run.json").read_text())["provenance"]["device"] == "cuda:0"

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd, env=None: calls.append(env) or 0)
    assert cli.main(["bench", "-k", "decode"]) == 0
    assert calls[0]["GENCORE_BENCH_DEVICE"] == "cuda:0"
    assert cli.main(["bench", "--device", "cpu"]) == 0
    assert calls[-2]["GENCORE_BENCH_DEVICE"] == "cpu"


def test_trainer_takes_auto():
    task, train, _ = lm_setup()
    trainer = Trainer(task, TrainerConfig(max_steps=1, device="auto", progress="none"), train)
    trainer.fit()
    assert trainer.device == resolve_device("auto")
    assert next(task.model.parameters()).device == trainer.device


@needs_cuda
@pytest.mark.parametrize("first,then", [("cuda", "cpu"), ("cpu", "cuda")])
def test_resume_on_another_device(first, then, tmp_path, capsys):
    """Checkpoints load onto the CPU and the trainer moves them to the device it runs on."""
    out = str(tmp_path / "r")
    common = ["--out", out, "--progress", "none"]
    assert cli.main(["train", "toy-char", *common, "--steps", "4", "--device", first]) == 0
    assert cli.main(["train", "toy-char", *common, "--steps", "7", "--resume", "--device", then]) == 0
    res = json.loads((tmp_path / "r" / "results.json").read_text())
    assert res["steps"] == 7 and res["device"].startswith(then)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["provenance"]["device"].startswith(first)
    capsys.readouterr()
    assert cli.main(["sample", out, "--n", "1", "--device", first]) == 0
    assert capsys.readouterr().out.strip()


def test_bench_device_keeps_that_devices_benchmarks():
    """`gencore bench --device cpu` (GENCORE_BENCH_DEVICE=cpu) collects no CUDA benchmark; pytest
    run directly lists them all (the CUDA ones skip without a GPU)."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def collected(**env):
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              os.path.join(root, "benchmarks", "bench_attention.py")],
                             capture_output=True, text=True, cwd=root, timeout=300,
                             env={**{k: v for k, v in os.environ.items()
                                     if k != "GENCORE_BENCH_DEVICE"}, "PYTHONPATH": root, **env})
        assert out.returncode == 0, out.stdout + out.stderr
        return [line for line in out.stdout.splitlines() if "::" in line]

    everything, cpu = collected(), collected(GENCORE_BENCH_DEVICE="cpu")
    assert any("cuda" in t for t in everything) and cpu
    assert not any("cuda" in t for t in cpu)
    assert set(cpu) == {t for t in everything if "cuda" not in t}
