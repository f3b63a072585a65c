"""What `impl="auto"` runs: the one place that names a call's case and answers, from evidence
about this machine, whether the fused kernel or the built-in runs it.

DESIGN.md's rule: auto is never slower than PyTorch. It runs the fused kernel for a case only
where the kernel has passed its check on this machine and evidence about this machine shows it
faster than the built-in beyond the noise margin (`MARGIN`); everywhere else the built-in with the
op's semantics (attention: `F.scaled_dot_product_attention`; gan_loss: the composed built-ins;
gumbel_softmax: torch's own `F.gumbel_softmax`, which draws torch's noise, not gencore's).

A case is what an op's `case` function names for a call: dtype, features, pass (fwd or fwd+bwd)
and a size class (powers of 4 of the work), e.g. "float32 causal fwd+bwd 1G-4G". Evidence for a
case, in order (`decide`):
1. the user's records (`gencore bench --record`, gencore.records.local_dir()),
2. the project's records for this machine class, shipped in the package (gencore/records/),
3. this machine's calibration cache (gencore/ops/calibration.py, keyed by CPU model or GPU,
   threads, torch, ISA path and the kernel sources),
4. a first-use calibration: the op's `gencore check` cases in a child process (once per op and
   device), then the kernel timed against the built-in on the call's own shapes, about a second;
   its answer goes to the cache,
5. none (calibration off: GENCORE_AUTOTUNE=0 or `set_autotune(False)`): the built-in.

Records and cache entries older than the kernel sources they measured are no evidence.
`gencore info` prints, per op, device and case, what auto runs and where that came from.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch

from .. import _backend, _device

FUSED, BUILTIN, REFERENCE = "fused", "builtin", "reference"
# The fused kernel is picked only where it is at least this much faster than the built-in: two
# equal implementations timed in one round-robin run read within 0.95-1.05 of each other.
MARGIN = 1.05


@dataclass(frozen=True)
class OpSpec:
    """How auto sees one op (registered by the op's own module).

    key(**facts): a cheap hashable of what the pick depends on (the per-call cache key).
    case(**facts): the case's name (dtype, features, pass, size class): evidence is kept per name;
        None for a call the kernel does not cover (auto runs the built-in).
    calls(device, **facts): {"fused": f, "builtin": f} zero-argument calls that time this case
        on the call's own shapes (fresh random inputs; the call's masks where it has some).
    builtin: the op's impl name for its built-in ("sdpa", "torch", "builtin"): what records call
        the alternative to the kernel.
    """
    op: str
    key: Callable[..., tuple]
    case: Callable[..., str]
    calls: Callable[..., Dict[str, Callable[[], object]]]
    builtin: str


_SPECS: Dict[str, OpSpec] = {}
_CHOSEN: Dict[tuple, str] = {}        # (op, device type, key) -> FUSED or BUILTIN
_BY_CASE: Dict[tuple, dict] = {}      # (op, device type, case) -> the decision with its source
_LOCK = threading.RLock()
_UNDECIDED: set = set()               # (op, device type, case) with no evidence yet
_generation = [0]                     # counts the decisions made since start (see generation())
_autotune: Optional[bool] = None      # None: GENCORE_AUTOTUNE decides


_MEMOS: list = []                     # ops' own memos of choose's answers (cleared with it)


def register(op: str, *, key, case, calls, builtin: str = "builtin", memo: Optional[dict] = None) -> None:
    """Registers an op with auto. `memo`: a dict where the op keeps choose's answers by a key of
    its own (a fast path's), cleared whenever auto forgets its decisions."""
    _SPECS[op] = OpSpec(op, key, case, calls, builtin)
    if memo is not None:
        _MEMOS.append(memo)


def builtin_impl(op: str) -> str:
    """The impl name of the op's built-in (what records compare the kernel with)."""
    return _SPECS[op].builtin


def set_autotune(enabled: Optional[bool]) -> None:
    """Turns first-use calibration on or off for this process (None: back to GENCORE_AUTOTUNE).
    Off, auto decides from records and the calibration cache only: deterministic."""
    global _autotune
    _autotune = enabled
    clear()


def autotune_enabled() -> bool:
    if _autotune is not None:
        return _autotune
    return os.environ.get("GENCORE_AUTOTUNE", "1") != "0"


def clear() -> None:
    """Forgets this process's decisions (they are made again from the evidence on next use)."""
    _CHOSEN.clear()
    _BY_CASE.clear()
    _UNDECIDED.clear()
    for memo in _MEMOS:
        memo.clear()
    _generation[0] += 1


_backend.on_cpu_capability_change(clear)  # another ISA path is another machine class


def generation() -> int:
    """A number that changes whenever a decision is made or forgotten: a caller that caches what
    it derived from `peek` keeps it while this stays the same."""
    return _generation[0]


def machine(device_type: str) -> str:
    return _device.machine_class(device_type)


def size_class(n: int) -> str:
    """The power-of-4 range a size falls in: 4096 -> "4K-16K", 5000 -> "4K-16K"."""
    k = max(0, (max(int(n), 1).bit_length() - 1) // 2)
    return f"{_short(4 ** k)}-{_short(4 ** (k + 1))}"


def _short(n: int) -> str:
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= unit:
            return f"{n // unit}{suffix}"
    return str(n)


def case_name(op: str, **facts) -> str:
    return _SPECS[op].case(**facts)


# -- the decision --------------------------------------------------------------------------------

def choose(op: str, impl: str, device_type: str, **facts) -> str:
    """What one call runs: FUSED, BUILTIN or REFERENCE.

    impl is "auto", "fused", "reference" or the op's built-in name ("sdpa" for attention, "torch"
    for gumbel_softmax, "builtin" for gan_loss). "fused" demands the compiled kernel (a clear
    error without it); "auto" decides from the evidence (see the module docstring), once per call
    key and process: after the first call of a kind this is a dictionary read."""
    if impl == "auto":
        spec = _SPECS[op]
        if torch.compiler.is_compiling():  # traced code gets the pick eager code has, no I/O
            case = spec.case(**facts)
            if case is None or not _backend.has_kernel(op, device_type):
                return BUILTIN
            return _known(op, device_type, case)
        key = (op, device_type, spec.key(**facts))
        pick = _CHOSEN.get(key)
        if pick is None:
            pick = _CHOSEN[key] = FUSED if _pick(spec, device_type, facts) == FUSED else BUILTIN
        return pick
    if impl == "fused":
        if _backend.has_kernel(op, device_type):
            return FUSED
        why = _backend.reason() or f"this build has no {device_type} kernel"
        raise RuntimeError(f"gencore.ops: impl='fused' asked for {op} on {device_type}, but {why}")
    if impl == "reference":
        return REFERENCE
    spec = _SPECS[op]
    if impl == spec.builtin:
        return BUILTIN
    names = ("auto", "fused", "reference", spec.builtin)
    raise ValueError(f"impl must be one of {', '.join(repr(n) for n in names)}, got {impl!r}")


@torch.compiler.assume_constant_result
def _known(op: str, device_type: str, case: str) -> str:
    found = _BY_CASE.get((op, device_type, case))
    if found is None:
        found = decide(op, device_type, case, calibrate=False)
    return found["pick"]


def _pick(spec: OpSpec, device_type: str, facts: dict) -> str:
    if device_type not in ("cpu", "cuda"):
        return BUILTIN
    if not _backend.has_kernel(spec.op, device_type):
        _backend.warn_fallback(spec.op, device_type)
        return BUILTIN
    case = spec.case(**facts)
    if case is None:  # a call the kernel does not cover (e.g. float32 attention on CUDA)
        return BUILTIN
    found = _BY_CASE.get((spec.op, device_type, case))
    if found is None:
        found = decide(spec.op, device_type, case, facts=facts)
    return found["pick"]


def peek(op: str, device_type: str, **facts) -> Optional[str]:
    """What auto would run for such a call from the evidence at hand, without calibrating: FUSED,
    BUILTIN, or None where a calibration would decide (auto is on and there is no evidence)."""
    if device_type not in ("cpu", "cuda") or not _backend.has_kernel(op, device_type):
        return BUILTIN
    spec = _SPECS[op]
    key = (op, device_type, spec.key(**facts))
    if key in _CHOSEN:
        return _CHOSEN[key]
    case = spec.case(**facts)
    if case is None:
        return BUILTIN
    found = decide(op, device_type, case, calibrate=False)
    if found["source"] == "none" and autotune_enabled():
        return None
    return found["pick"]


def decide(op: str, device_type: str, case: str, *, facts: Optional[dict] = None,
           calibrate: bool = True) -> dict:
    """The decision for a case, from the first evidence found (module docstring): a dict with
    "pick", "source" ("your records", "project records", "calibrated", "check failed", "none"),
    and where timed, "fused_s" and "builtin_s". Calibrates only with `facts` and autotune on."""
    from .. import records
    from . import calibration
    memo = (op, device_type, case)
    found = _BY_CASE.get(memo)
    if found is not None:
        return found
    if memo in _UNDECIDED and not (calibrate and facts is not None and autotune_enabled()):
        return {"pick": BUILTIN, "source": "none"}
    spec = _SPECS[op]
    with _LOCK:
        cls = machine(device_type)
        found = None
        for source, directory in _record_folders():
            found = records.decision(op, case, spec.builtin, cls, directory, MARGIN)
            if found is not None:
                found["source"] = source
                break
        if found is not None and found["pick"] == FUSED and not _passed_here(op, device_type):
            found = calibration.cached(op, device_type, case)  # the failed check, named
        if found is None:
            found = calibration.cached(op, device_type, case)
        if found is None and calibrate and facts is not None and autotune_enabled():
            found = calibration.calibrate(spec, device_type, case, facts, MARGIN)
        if found is None:
            found = {"pick": BUILTIN, "source": "none"}
        if found["source"] == "none" and not calibrate:
            _UNDECIDED.add(memo)
        else:
            _UNDECIDED.discard(memo)
            _BY_CASE[memo] = found
            _generation[0] += 1
    return found


def _passed_here(op: str, device_type: str) -> bool:
    """Records say how fast a kernel is, not that it is right on this machine: a records pick
    needs the op's check too. With calibration on, the check runs (once, in a child process)
    where it has not; with it off, only a cached failure vetoes (no child process)."""
    from . import calibration
    if autotune_enabled():
        return calibration.checked(op, device_type)
    outcome = calibration.check_outcome(op, device_type)
    return outcome is None or bool(outcome["passed"])


def _record_folders():
    """(source, folder) of the records auto reads, in order; GENCORE_PROJECT_RECORDS=0 leaves out
    the project's (to see what a machine class never measured gets)."""
    from .. import records
    folders = [("your records", records.local_dir())]
    if os.environ.get("GENCORE_PROJECT_RECORDS", "1") != "0":
        folders.append(("project records", records.PACKAGE_DIR))
    return folders


def decisions(device_type: str) -> Dict[tuple, dict]:
    """Every decision this process knows or can find for the device type, {(op, case): decision}:
    the cases with records (yours, the project's) or calibrated here, and those used so far."""
    from .. import records
    from . import calibration
    out = {}
    cls = machine(device_type)
    cases = set()
    for _, directory in _record_folders():
        cases |= records.cases(cls, directory)
    cases |= set(calibration.cached_cases(device_type))
    cases |= {(op, case) for (op, dev, case) in _BY_CASE if dev == device_type}
    for op, case in sorted(cases):
        if op in _SPECS:
            out[(op, case)] = decide(op, device_type, case, calibrate=False)
    return out

