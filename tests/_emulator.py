"""Builds and runs the CUDA emulator's drivers (tests/cuda_emulator/), for the emulated tests.

A build is one driver compiled with g++ against emu_sm80.h: plain, or under AddressSanitizer and
UndefinedBehaviorSanitizer ("asan"), optionally with a -D macro (the planted-bug builds). Builds
are made once per test session, in parallel, and cached by their flags. A run picks the schedule
(GENCORE_EMU_SCHEDULE: "wait", the copies land at wait_group; "ahead", at issue, one warp running
ahead to each barrier) and the seed of the thread orders.
"""
from __future__ import annotations

import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Iterable, Tuple

import pytest

from test_cuda_build import NVCC, cuda_include

EMU = Path(__file__).resolve().parent / "cuda_emulator"
SANITIZE = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer"]
needs_toolkit = pytest.mark.skipif(NVCC is None, reason="needs the CUDA toolkit headers (nvcc on PATH)")

# (driver source name, sanitized, extra flags: -D macros; "-O0" where compile time matters more
# than run time: a sanitized -O1 build compiles 2.5x slower and runs 3x faster)
Build = Tuple[str, bool, Tuple[str, ...]]

# Every build the emulated tests use (test_attention_emulated.py, test_ops_emulated.py): the first
# module to ask compiles them all at once, so that both cores work on them together.
ATTENTION, ATTENTION_ASAN = ("attention_driver.cpp", False, ()), ("attention_driver.cpp", True, ())
PLANT_OOB = ("attention_driver.cpp", True, ("-DGENCORE_PLANT_BUG=1", "-O0"))  # delta read one past a row's end
PLANT_RACE = ("attention_driver.cpp", False, ("-DGENCORE_PLANT_BUG=2",))     # prefetch above the barrier
PLANT_WINDOW = ("attention_driver.cpp", False, ("-DGENCORE_PLANT_BUG=3",))   # window's lower bound one off
OPS, OPS_ASAN = ("ops_driver.cpp", False, ()), ("ops_driver.cpp", True, ("-O0",))
ALL_BUILDS = [ATTENTION_ASAN, PLANT_OOB, OPS_ASAN, ATTENTION, PLANT_RACE, PLANT_WINDOW, OPS]  # longest first

_lock = threading.Lock()
_built: Dict[Build, Path] = {}


def _compile(out_dir: Path, build: Build) -> Path:
    source, sanitized, extra = build
    tag = "-".join([Path(source).stem, "asan" if sanitized else "plain"] + [f.strip("-").replace("=", "").lower() for f in extra])
    exe = out_dir / tag
    cmd = ["g++", "-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-Wno-unknown-pragmas", f"-I{cuda_include()}",
           *(SANITIZE if sanitized else []), *extra, str(EMU / source), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    return exe


def build_all(out_dir: Path, builds: Iterable[Build] = ALL_BUILDS) -> Dict[Build, Path]:
    """Compiles ALL_BUILDS and `builds` not made yet (in parallel, one per core) and returns the
    ones asked for."""
    builds = list(dict.fromkeys(builds))
    with _lock:
        todo = [b for b in dict.fromkeys(ALL_BUILDS + builds) if b not in _built]
        with ThreadPoolExecutor(max_workers=max(1, min(len(todo), os.cpu_count() or 1))) as pool:
            for b, exe in zip(todo, pool.map(lambda b: _compile(out_dir, b), todo)):
                _built[b] = exe
        return {b: _built[b] for b in builds}


def run(exe: Path, workdir: Path, schedule: str = "wait", seed: int = 1, sanitized: bool = False,
        check: bool = True) -> subprocess.CompletedProcess:
    """Runs a driver on workdir's inputs; with check, fails the test on a non-zero exit."""
    env = dict(os.environ, GENCORE_EMU_SEED=str(seed), GENCORE_EMU_SCHEDULE=schedule)
    if sanitized:
        env["ASAN_OPTIONS"] = "detect_leaks=0:detect_stack_use_after_return=0"
    res = subprocess.run([str(exe), str(workdir)], capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert res.returncode == 0, res.stderr[-4000:]
    return res
