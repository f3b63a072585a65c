"""What produced a result: the code (gencore's commit and whether the checkout had uncommitted
changes), torch, the device (the CPU and the ISA path gencore's kernels run, or the GPU) and the
command line. run.json and results.json of every run carry it, as benchmark records do, so that a
figure can be traced to the code and machine that made it.

    provenance(torch.device("cpu"))
    # {"gencore": "0.1.0", "commit": "52fddd1...", "dirty": False, "torch": "2.13.0+cpu",
    #  "python": "3.11.9", "device": "cpu", "cpu": "AMD EPYC ...", "cpu_isa": "AVX512",
    #  "threads": 2, "compiled_core": "AVX512", "command": "gencore train gpt-text --set lr=3e-3"}
"""
from __future__ import annotations

import functools
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

__all__ = ["provenance", "code_version", "command_line"]

_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=None)
def code_version() -> Tuple[Optional[str], Optional[bool]]:
    """(commit, dirty) of the checkout gencore runs from; (None, None) outside one (an installed
    package). Dirty: tracked files changed and not committed (the benchmark records excepted:
    writing them does not change the measured code). Read once per process."""
    if not (_ROOT / "gencore").is_dir() or not _git("rev-parse", "--is-inside-work-tree"):
        return None, None
    commit = _git("rev-parse", "HEAD") or None
    if commit is None:
        return None, None
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)gencore/project_records"))
    return commit, dirty


def command_line() -> str:
    """The command as typed, as near as the process can tell: `gencore ...` for the console
    script and `python -m gencore`, else the interpreter's arguments."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "gencore"
                 or Path(argv[0]).resolve() == _ROOT / "gencore" / "__main__.py"):
        argv[0] = "gencore"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return f"torchrun (WORLD_SIZE={os.environ['WORLD_SIZE']}) " + shlex.join(argv)
    return shlex.join(argv)


@functools.lru_cache(maxsize=None)
def provenance(device: Union[str, torch.device] = "cpu") -> Dict[str, Any]:
    """commit, dirty, versions, the device and the command line (JSON values)."""
    from . import __version__, _backend, _device
    device = torch.device(device)
    commit, dirty = code_version()
    out: Dict[str, Any] = {"gencore": __version__, "commit": commit, "dirty": dirty,
                           "torch": torch.__version__, "python": platform.python_version(),
                           "device": str(device)}
    if device.type == "cuda":
        out.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        try:
            out["sm"] = "{}{}".format(*torch.cuda.get_device_capability(device))
        except (RuntimeError, AssertionError):  # torch without CUDA (tests that fake a GPU)
            out["sm"] = None
    else:
        out.update(cpu=_device.cpu_model(), cpu_isa=_device.cpu_isa_path(),
                   threads=torch.get_num_threads())
    info = _backend.build_info()
    # The ISA path gencore's CPU kernels take (chosen at load), or why they are not used.
    out["compiled_core"] = info["cpu_capability"] if info else f"not used: {_backend.reason()}"
    out["command"] = command_line()
    return out
