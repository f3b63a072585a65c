"""Benchmark records: the measurements impl="auto" rests on.

A record is one implementation's time on one benchmark case, on one machine class, with what
produced it: {"op", "case", "impl", "median_s", "iqr_s", "reps", "machine", "machine_info",
"torch", "commit", "dirty", "sources", "bytes", "flops", "time", "auto_case"}. `sources` is the
digest of the files that make up the op's kernel on that device and its Python entry point
(`sources_digest`), so a record older than the code it measured is recognisable without reading
commit dates, and is no evidence. `auto_case` is the case ops/auto.py names for the benchmark's
call: records decide that case (`decision`).

Records of a machine class live in one JSON file, `<machine>.json`: the project's own inside the
package (gencore/project_records/, so an installed wheel has them; written there only by
`gencore bench --record --out gencore/project_records`), a user's own under `local_dir()` (written
by `gencore bench --record`; they take precedence on that machine).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch

from . import _atomic, _device
from .provenance import code_version

_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = _ROOT / "project_records"
machine_class = _device.machine_class


def machine_info(device_type: str) -> dict:
    if device_type == "cuda":
        return {"gpu": torch.cuda.get_device_name(), "torch_cuda": torch.version.cuda}
    return {"cpu": _device.cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "cpu_isa": _device.cpu_isa_path()}


# The files each op's kernel is made of, per device (relative to the repository root), and every
# header they include (followed through `#include "..."`).
_SOURCES = {
    "cpu": ("csrc/cpu/{op}.cpp", "csrc/{op}_*.cpp", "gencore/ops/_{op}.py"),
    "cuda": ("csrc/cuda/{op}*.cu", "csrc/cuda/{op}.cpp", "csrc/{op}_*.cpp", "gencore/ops/_{op}.py"),
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


def provenance() -> dict:
    """commit and dirty flag of the checkout (empty outside one; read once a process), torch
    version."""
    commit, dirty = code_version()
    return {"commit": commit or "", "dirty": bool(dirty), "torch": torch.__version__}


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
                bytes_moved: float = 0.0, flops: float = 0.0, auto_case: Optional[str] = None) -> dict:
    return {"op": op, "case": case, "impl": impl, "median_s": stats["median"],
            "iqr_s": stats["iqr"], "reps": stats["reps"], "machine": machine_class(device_type),
            "machine_info": machine_info(device_type), **provenance(),
            "sources": sources_digest(op, device_type), "bytes": bytes_moved, "flops": flops,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "auto_case": auto_case}


def medians(records: Iterable[dict]) -> Dict[tuple, float]:
    """{(op, case, impl): median_s}."""
    return {(r["op"], r["case"], r["impl"]): r["median_s"] for r in records}


@functools.lru_cache(maxsize=None)
def _digest(op: str, device_type: str) -> Optional[str]:
    return sources_digest(op, device_type)


def is_current(record: dict) -> bool:
    """Whether a record measured the kernel sources of this checkout (True outside a source
    checkout, where the package's records came with its kernels)."""
    digest = _digest(record["op"], record.get("machine", "cpu").split("-")[0])
    return digest is None or record.get("sources") == digest


_LOADED: Dict[tuple, List[dict]] = {}


def _current(machine: str, directory: Path) -> List[dict]:
    """The records of `directory` for the machine class that can decide auto: current, and
    naming their auto case; read once per file version."""
    path = Path(directory) / f"{machine}.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return []
    key = (str(path), stamp)
    if key not in _LOADED:
        _LOADED[key] = [r for r in load(machine, directory) if r.get("auto_case") and is_current(r)]
    return _LOADED[key]


def speaks_for_this_machine(record: dict) -> bool:
    """Whether a record measured this machine: the same CPU model and torch threads (CPU), or
    the same GPU (CUDA). The ISA class alone is no evidence: a kernel that wins on a 2-thread Zen 4
    may lose on a 64-core Xeon with the same AVX-512; such a machine calibrates instead."""
    info = record.get("machine_info") or {}
    if record.get("machine", "").startswith("cuda"):
        return torch.cuda.is_available() and info.get("gpu") == torch.cuda.get_device_name()
    return info.get("cpu") == _device.cpu_model() and info.get("threads") == torch.get_num_threads()


def _evidence(machine: str, directory: Path) -> List[dict]:
    """The current records of `directory` that speak for this machine."""
    return [r for r in _current(machine, directory) if speaks_for_this_machine(r)]


def cases(machine: str, directory: Path) -> set:
    """{(op, auto case)} that the current records of `directory` time on this machine."""
    return {(r["op"], r["auto_case"]) for r in _evidence(machine, directory)}


def decision(op: str, auto_case: str, builtin: str, machine: str, directory: Path,
             margin: float) -> Optional[dict]:
    """What the records of `directory` say auto should run for an op's case: {"pick": "fused"}
    where every benchmark of the case has the kernel faster than `builtin` (and than "torch",
    PyTorch's own call, where recorded) by `margin`,
    {"pick": "builtin"} where one does not, None where no benchmark of the case has both."""
    by_bench: Dict[str, dict] = {}
    for r in _evidence(machine, directory):
        if r["op"] == op and r["auto_case"] == auto_case and r["impl"] in ("fused", builtin, "torch"):
            by_bench.setdefault(r["case"], {})[r["impl"]] = r
    # The kernel must beat the faster of gencore's built-in route and PyTorch's own call: for a
    # plain call auto's route is PyTorch's call itself (the attention fast path), which the
    # route's own benchmark (the checked path) overstates.
    pairs = [(b["fused"], min((b[i] for i in (builtin, "torch") if i in b), key=lambda r: r["median_s"]))
             for b in by_bench.values() if "fused" in b and builtin in b]
    if not pairs:
        return None
    wins = all(f["median_s"] * margin <= b["median_s"] for f, b in pairs)
    slowest = max(pairs, key=lambda p: p[0]["median_s"] / p[1]["median_s"])
    return {"pick": "fused" if wins else "builtin", "fused_s": slowest[0]["median_s"],
            "builtin_s": slowest[1]["median_s"], "benchmarks": len(pairs),
            "commit": slowest[0].get("commit", "")[:10], "when": slowest[0].get("time", "")[:10]}


def promise_breaks(machine: str, directory: Path, slack: float = 1.05) -> List[str]:
    """The current records where impl="auto" took more than `slack` times PyTorch's own function
    ("torch"): DESIGN.md's promise, whatever auto picked."""
    times = medians(_current(machine, directory))
    out = []
    for (op, case, impl), t in sorted(times.items()):
        if impl != "auto" or (op, case, "torch") not in times:
            continue
        base = times[(op, case, "torch")]
        if t > base * slack:
            out.append(f"{machine} {case}: auto {t * 1e6:.1f} us vs torch {base * 1e6:.1f} us "
                       f"({base / t:.2f}x)")
    return out
