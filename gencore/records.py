"""Benchmark records: the measurements impl="auto" rests on.

A record is one implementation's time on one benchmark case, on one machine class, with what
produced it: {"op", "case", "impl", "median_s", "iqr_s", "reps", "machine", "machine_info",
"torch", "commit", "dirty", "sources", "bytes", "flops", "time"}. `sources` is the digest of the
files that make up the op's kernel on that device and its Python entry point (`sources_digest`),
so a record older than the code it measured is recognisable without reading commit dates.

Records of a machine class live in one JSON file, `<machine>.json`: the project's own under
benchmarks/records/ (tests/test_auto.py checks the auto table against them), a user's own under
`local_dir()` (written by `gencore bench --record`; where they cover an auto row they take
precedence on that machine).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from . import _atomic, _backend

_ROOT = Path(__file__).resolve().parent
REPO_DIR = _ROOT.parent / "benchmarks" / "records"
# A fused median within this factor of the built-in's counts as "at least as fast": two equal
# implementations measured in one round-robin run read 0.95-1.05 of each other on a quiet machine.
NOISE = 0.95


def machine_class(device_type: str, index: Optional[int] = None) -> str:
    """"cpu-avx2", "cpu-avx512", "cpu-default" (the ISA the CPU kernels were built for; without a
    compiled core, the CPU's own), or "cuda-sm90" etc. (the device's compute capability)."""
    if device_type == "cpu":
        info = _backend.build_info()
        isa = info["cpu_capability"] if info else torch.backends.cpu.get_cpu_capability()
        return f"cpu-{isa.lower()}"
    if device_type == "cuda":
        major, minor = torch.cuda.get_device_capability(index)
        return f"cuda-sm{major}{minor}"
    return device_type


@functools.lru_cache(maxsize=None)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(device_type: str) -> dict:
    if device_type == "cuda":
        return {"gpu": torch.cuda.get_device_name(), "torch_cuda": torch.version.cuda}
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_isa": torch.backends.cpu.get_cpu_capability()}


# The files each op's kernel is made of, per device (relative to the repository root), and every
# header they include (followed through `#include "..."`).
_SOURCES = {
    "cpu": ("csrc/cpu/{op}.cpp", "gencore/ops/{op}.py"),
    "cuda": ("csrc/cuda/{op}*.cu", "csrc/cuda/{op}.cpp", "gencore/ops/{op}.py"),
}
_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)


def _with_includes(paths: Iterable[Path]) -> List[Path]:
    seen, todo = set(), list(paths)
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        if path.suffix in (".cpp", ".cu", ".h", ".cuh"):
            todo += [(path.parent / inc).resolve() for inc in _INCLUDE.findall(path.read_text())]
    return sorted(seen)


def sources_digest(op: str, device_type: str, root: Optional[Path] = None) -> Optional[str]:
    """sha256 (16 hex digits) of the op's kernel sources for the device; None outside a source
    checkout (an installed package has no csrc/)."""
    root = (root or _ROOT.parent).resolve()
    if not (root / "csrc").is_dir():
        return None
    patterns = _SOURCES.get(device_type.split("-")[0], ())
    files = _with_includes(p.resolve() for pat in patterns for p in root.glob(pat.format(op=op)))
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _git(*args) -> str:
    try:
        return subprocess.run(["git", "-C", str(_ROOT.parent), *args], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=None)
def _provenance() -> tuple:
    commit = _git("rev-parse", "HEAD")
    # Changes to the records themselves do not make the measured code dirty.
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      ":(exclude)benchmarks/records")) if commit else False
    return commit, dirty


def provenance() -> dict:
    """commit and dirty flag of the checkout (empty outside one; read once a process), torch
    version."""
    commit, dirty = _provenance()
    return {"commit": commit, "dirty": dirty, "torch": torch.__version__}


def local_dir() -> Path:
    """Where `gencore bench --record` writes this machine's records: $GENCORE_RECORDS_DIR, else
    ~/.cache/gencore/records."""
    env = os.environ.get("GENCORE_RECORDS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "gencore" / "records"


def load(machine: str, directory: Path) -> List[dict]:
    path = Path(directory) / f"{machine}.json"
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"benchmark records {path} are unreadable ({exc}); delete the file or "
                         f"write it anew with `gencore bench --record`") from exc
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ValueError(f"benchmark records {path}: expected {{\"records\": [...]}}")
    return data["records"]


def save(records: Iterable[dict], machine: str, directory: Path) -> Path:
    """Merges `records` into `<directory>/<machine>.json` (a newer record of the same op, case and
    impl replaces the older one), written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    merged = {(r["op"], r["case"], r["impl"]): r for r in load(machine, directory)}
    for r in records:
        merged[(r["op"], r["case"], r["impl"])] = r
    rows = sorted(merged.values(), key=lambda r: (r["op"], r["case"], r["impl"]))
    path = directory / f"{machine}.json"
    _atomic.write_text(path, json.dumps({"machine": machine, "records": rows}, indent=1) + "\n")
    return path


def make_record(op: str, case: str, impl: str, stats: dict, device_type: str, *,
                bytes_moved: float = 0.0, flops: float = 0.0) -> dict:
    return {"op": op, "case": case, "impl": impl, "median_s": stats["median"],
            "iqr_s": stats["iqr"], "reps": stats["reps"], "machine": machine_class(device_type),
            "machine_info": machine_info(device_type), **provenance(),
            "sources": sources_digest(op, device_type), "bytes": bytes_moved, "flops": flops,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def medians(records: Iterable[dict]) -> Dict[tuple, float]:
    """{(op, case, impl): median_s}."""
    return {(r["op"], r["case"], r["impl"]): r["median_s"] for r in records}


def fused_wins(times: Dict[tuple, float], op: str, cases: Iterable[str], builtin: str) -> Optional[bool]:
    """True where every case has both timings and fused is at least as fast as `builtin` (within
    NOISE), False where one case shows it slower, None where a timing is missing."""
    verdict = True
    for case in cases:
        fused, base = times.get((op, case, "fused")), times.get((op, case, builtin))
        if fused is None or base is None:
            return None
        if fused * NOISE > base:
            verdict = False
    return verdict


def table_problems(rules, directory: Path, alternative: Dict[str, str]) -> List[str]:
    """What is wrong between the auto table's rows and the records in `directory`: a FUSED row
    that cites no case, a cited case without both timings, a fused median slower than the
    alternative's, or a record older than the kernel sources it measured."""
    problems = []
    by_machine: Dict[str, List[dict]] = {}
    for r in rules:
        if r.pick != "fused":
            continue
        if not r.cases:
            problems.append(f"{r.op} {r.machine} {r.case!r}: a fused row that cites no record")
            continue
        recs = by_machine.setdefault(r.machine, load(r.machine, directory))
        found = {(x["op"], x["case"], x["impl"]): x for x in recs}
        digest = sources_digest(r.op, r.machine)
        alt = alternative[r.op]
        for case in r.cases:
            fused, base = found.get((r.op, case, "fused")), found.get((r.op, case, alt))
            if fused is None or base is None:
                problems.append(f"{r.op} {r.machine} {r.case!r}: no fused and {alt} record of {case}")
                continue
            if fused["median_s"] * NOISE > base["median_s"]:
                problems.append(f"{r.op} {r.machine} {r.case!r}: {case}: fused {fused['median_s'] * 1e6:.1f} us "
                                f"slower than {alt} {base['median_s'] * 1e6:.1f} us")
            if digest is not None and fused.get("sources") != digest:
                problems.append(f"{r.op} {r.machine} {r.case!r}: the record of {case} (commit "
                                f"{fused.get('commit', '?')[:10]}) is older than the kernel sources")
    return problems
