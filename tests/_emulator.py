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

Build = Tuple[str, bool, Tuple[str, ...]]  # (driver source name, sanitized, extra flags)

_lock = threading.Lock()
_built: Dict[Build, Path] = {}


def _compile(out_dir: Path, build: Build) -> Path:
    source, sanitized, extra = build
    tag = "-".join([Path(source).stem, "asan" if sanitized else "plain"] + [f.strip("-D=").lower() for f in extra])
    exe = out_dir / tag
    cmd = ["g++", "-std=c++17", "-O1", "-U_FORTIFY_SOURCE", "-Wno-unknown-pragmas", f"-I{cuda_include()}",
           *(SANITIZE if sanitized else []), *extra, str(EMU / source), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"{' '.join(cmd)}\n{res.stderr[-4000:]}"
    return exe


def build_all(out_dir: Path, builds: Iterable[Build]) -> Dict[Build, Path]:
    """Compiles the builds not made yet (in parallel, one per core) and returns every one asked for."""
    builds = list(dict.fromkeys(builds))
    with _lock:
        todo = [b for b in builds if b not in _built]
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
