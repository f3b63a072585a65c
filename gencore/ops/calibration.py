"""First-use calibration for impl="auto" (ops/auto.py), and its cache on disk.

Where neither records nor the cache decide a case, the first call of that case:
1. runs the op's `gencore check` cases against the reference in a child process, once per op and
   device, so that a wrong or crashing kernel is never picked and cannot take this process down
   (a failure is reported once, naming what failed, and cached: auto then runs the built-in);
2. times the fused kernel against the built-in on the call's own shapes (gencore.timing's
   round robin, about a second), picking the kernel only where it wins by auto.MARGIN.

The answers are cached in one JSON file per machine setting under `cache_dir()` (default
~/.cache/gencore/autotune, or $GENCORE_CACHE_DIR/autotune), named by a digest of what makes them
valid: CPU model or GPU name, torch threads, torch version, the CPU ISA path, and the digest of the
compiled kernel sources. Another CPU, thread count, torch or kernel reads another file, as
`torch.backends.cudnn.benchmark` and Triton's autotuner measure once and keep the answer.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

import torch

from .. import _atomic, _backend, _device, timing

# Timing budget per case: the slower implementation runs for about this long (at least 3 calls).
SECONDS = 0.25
CHECK_TIMEOUT_S = 900


def cache_dir() -> Path:
    base = os.environ.get("GENCORE_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "gencore") / "autotune"


def validity(device_type: str) -> dict:
    """What a calibration's answer depends on (the cache file's key)."""
    info = _backend.build_info() or {}
    key = {"torch": torch.__version__, "kernels": info.get("source_hash"),
           "threads": torch.get_num_threads()}
    if device_type == "cuda":
        key.update(device=torch.cuda.get_device_name(), capability=_device.machine_class("cuda"))
    else:
        key.update(device=_device.cpu_model(), isa=_device.cpu_isa_path())
    return key


def cache_path(device_type: str) -> Path:
    key = json.dumps(validity(device_type), sort_keys=True)
    return cache_dir() / f"{device_type}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _load(device_type: str) -> dict:
    path = cache_path(device_type)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a torn or foreign file is no evidence; the next calibration rewrites it
    return data if isinstance(data, dict) else {}


def _store(device_type: str, section: str, name: str, entry: dict) -> None:
    data = _load(device_type)
    data["key"] = validity(device_type)
    data.setdefault(section, {})[name] = entry
    try:
        _atomic.write_text(cache_path(device_type), json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError as exc:  # a read-only home: the answer lives for this process only
        warnings.warn(f"gencore: could not write the autotune cache ({exc})", RuntimeWarning)


def cached(op: str, device_type: str, case: str) -> Optional[dict]:
    """The cached decision for a case, or None. A cached failed check decides every case."""
    data = _load(device_type)
    check = data.get("checks", {}).get(op)
    if check is not None and not check.get("passed"):
        return {"pick": "builtin", "source": "check failed", "failures": check.get("failures", []),
                "when": check.get("when")}
    entry = data.get("cases", {}).get(f"{op}/{case}")
    if entry is None:
        return None
    return dict(entry, source="calibrated")


def cached_cases(device_type: str) -> Iterable[Tuple[str, str]]:
    for name in _load(device_type).get("cases", {}):
        op, _, case = name.partition("/")
        yield op, case


def check_outcome(op: str, device_type: str) -> Optional[dict]:
    return _load(device_type).get("checks", {}).get(op)


_reported = set()


def checked(op: str, device_type: str) -> bool:
    """Whether the op's kernel passed its check on this machine; runs the check in a child
    process the first time (cached)."""
    outcome = check_outcome(op, device_type)
    if outcome is None:
        outcome = _run_check(op, device_type)
        _store(device_type, "checks", op, outcome)
        if not outcome["passed"] and (op, device_type) not in _reported:
            _reported.add((op, device_type))
            warnings.warn(
                f"gencore: the fused {op} kernel failed its check on this {device_type} "
                f"({'; '.join(outcome['failures'][:3]) or 'see `gencore check`'}); impl='auto' runs "
                f"the built-in for {op} here. `gencore check --op {op}` shows every case.",
                RuntimeWarning, stacklevel=6)
    return bool(outcome["passed"])


def _run_check(op: str, device_type: str) -> dict:
    device = f"cuda:{torch.cuda.current_device()}" if device_type == "cuda" else "cpu"
    env = dict(os.environ, GENCORE_AUTOTUNE="0", GENCORE_CPU_CAPABILITY=_device.cpu_isa_path())
    env.pop("GENCORE_DISABLE_C", None)
    t0 = time.time()
    cmd = [sys.executable, "-m", "gencore", "check", "--op", op, "--device", device]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
        passed = proc.returncode == 0
        lines = proc.stdout.splitlines()
        failures = [" ".join(line.split()) for line in lines if "FAIL" in line and not line.startswith("gencore")]
        if not passed and not failures:
            tail = (proc.stderr.strip().splitlines() or lines or [f"exit status {proc.returncode}"])[-1]
            failures = [f"the check process ended with status {proc.returncode}: {tail[:200]}"]
    except subprocess.TimeoutExpired:
        passed, failures = False, [f"the check did not finish in {CHECK_TIMEOUT_S} s"]
    return {"passed": passed, "failures": failures, "seconds": round(time.time() - t0, 1),
            "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def calibrate(spec, device_type: str, case: str, facts: dict, margin: float) -> Optional[dict]:
    """Checks the kernel (once), then times it against the built-in on the call's own shapes;
    returns and caches the decision. None where the inputs could not be made (no decision)."""
    if not checked(spec.op, device_type):
        return cached(spec.op, device_type, case)
    try:
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if device_type == "cuda" else []):
            calls = spec.calls(device_type, **facts)
            stats = timing.round_robin(calls, device_type, min_time=SECONDS, min_reps=3,
                                       max_reps=200, warmup=1)
    except Exception as exc:  # a case we cannot time is not a reason to fail the user's call
        warnings.warn(f"gencore: could not calibrate {spec.op} {case!r} ({type(exc).__name__}: "
                      f"{exc}); impl='auto' runs the built-in for it", RuntimeWarning)
        return None
    fused, builtin = stats["fused"]["median"], stats["builtin"]["median"]
    entry = {"pick": "fused" if fused * margin <= builtin else "builtin", "fused_s": fused,
             "builtin_s": builtin, "reps": stats["fused"]["reps"],
             "when": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    _store(device_type, "cases", f"{spec.op}/{case}", entry)
    return dict(entry, source="calibrated")


def forget() -> Dict[str, int]:
    """Deletes every cache file (`gencore info --recalibrate`); returns how many."""
    n = 0
    for path in cache_dir().glob("*.json"):
        path.unlink(missing_ok=True)
        n += 1
    return {"files": n}
