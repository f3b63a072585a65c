"""Loads the compiled core `gencore._C` once and answers which fused kernels can run.

Importing gencore never fails because `_C` is missing or stale: the ops then fall back to PyTorch
built-ins with gencore's semantics, with one warning that says why. What impl="auto" picks where
`_C` is fine lives in gencore/ops/auto.py.

`_C` holds the CPU kernels compiled for every vector ISA (DEFAULT, AVX2, AVX512 on x86-64) and runs
the widest this CPU has; GENCORE_CPU_CAPABILITY=DEFAULT|AVX2|AVX512, read when `_C` loads, narrows
it, and `set_cpu_capability` switches it at run time.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from pathlib import Path
from typing import Iterator, List, Optional

import torch
from packaging.version import Version

_ROOT = Path(__file__).resolve().parent.parent

_module = None
_reason: Optional[str] = None  # why _C is not used; None when it is
_loaded = False
_warned = False
# (op, device type) -> kernel built; filled when each op module registers, so that the dispatch
# decision is a dict lookup that torch.compile traces without a graph break.
_kernels: dict[tuple[str, str], bool] = {}


def _csrc_hash() -> Optional[str]:
    """Hash of csrc/ as setup.py computes it, when this is a source checkout (editable install)."""
    csrc = _ROOT / "csrc"
    if not csrc.is_dir():
        return None
    h = hashlib.sha256()
    for path in sorted(p for p in csrc.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(_ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _check(info: dict) -> Optional[str]:
    built = Version(info["torch_version"])
    running = Version(Version(torch.__version__).base_version)
    if built != running:
        return f"gencore._C was built against torch {built} but torch {running} is running"
    here = _csrc_hash()
    if here is not None and here != info["source_hash"]:
        return "gencore._C is stale: csrc/ changed since it was built"
    return None


def load():
    """The `_C` module if it can be used, else None (and `reason()` says why)."""
    global _module, _reason, _loaded
    if _loaded:
        return _module
    _loaded = True
    if os.environ.get("GENCORE_DISABLE_C") == "1":
        _reason = "GENCORE_DISABLE_C=1 is set"
        return None
    try:
        from gencore import _C  # noqa: F401  (loading it registers torch.ops.gencore.*)
    except ImportError as exc:
        _reason = f"gencore._C is not built ({exc})"
        return None
    _reason = _check(_C.build_info())
    if _reason is None:
        _module = _C
    return _module


def reason() -> Optional[str]:
    load()
    return _reason


def build_info() -> Optional[dict]:
    mod = load()
    return dict(mod.build_info()) if mod is not None else None


def cpu_capability() -> str:
    """The vector ISA of the CPU kernels running: "DEFAULT", "AVX2" or "AVX512". Without `_C`,
    the ISA torch's own CPU kernels run, in the same names (anything else reads "DEFAULT")."""
    mod = load()
    if mod is not None:
        return mod.cpu_capability()
    isa = torch.backends.cpu.get_cpu_capability()
    return isa if isa in ("AVX2", "AVX512") else "DEFAULT"


def supported_cpu_capabilities() -> List[str]:
    """The ISAs of `_C`'s CPU kernels that this CPU runs, narrowest first (empty without `_C`)."""
    mod = load()
    return list(mod.supported_cpu_capabilities()) if mod is not None else []


def set_cpu_capability(name: str) -> str:
    """Runs the CPU kernels compiled for `name` (DEFAULT, AVX2 or AVX512) from now on, in this
    process, and returns the ISA that ran before. ValueError for an ISA this build lacks or this
    CPU cannot run; RuntimeError when `_C` is not used."""
    mod = load()
    if mod is None:
        raise RuntimeError(f"gencore: no CPU kernels to switch: {reason()}")
    previous = mod.set_cpu_capability(name)
    for callback in _on_switch:  # e.g. auto forgets decisions made for the other path
        callback()
    return previous


_on_switch: list = []


def on_cpu_capability_change(callback) -> None:
    """Calls `callback()` after every set_cpu_capability (ops/auto.py clears its decisions)."""
    _on_switch.append(callback)


@contextlib.contextmanager
def cpu_capability_path(name: str) -> Iterator[str]:
    """`with cpu_capability_path("AVX2"): ...` runs the CPU kernels of that ISA inside the block
    (tests, comparisons), then the previous ISA again."""
    previous = set_cpu_capability(name)
    try:
        yield name
    finally:
        set_cpu_capability(previous)


def _query_kernel(op: str, device_type: str) -> bool:
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if load() is None or key is None:
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"gencore::{op}", key)


def has_kernel(op: str, device_type: str) -> bool:
    """Whether `torch.ops.gencore.<op>` has a fused kernel for this device type ("cpu", "cuda")."""
    found = _kernels.get((op, device_type))
    if found is None:
        found = _kernels[(op, device_type)] = _query_kernel(op, device_type)
    return found


def warn_fallback(op: str, device_type: str) -> None:
    """One warning per process, the first time auto runs a built-in where a kernel was expected."""
    global _warned
    if _warned or torch.compiler.is_compiling():
        return
    _warned = True
    why = reason() or f"this build has no {device_type} kernel for {op}"
    warnings.warn(
        f"gencore: the fused kernels are not used ({why}); the ops run PyTorch's built-ins "
        "or their pure-PyTorch references. "
        "Build the kernels with `pip install --no-build-isolation -e .`; "
        "`python -m gencore info` shows what is built.",
        RuntimeWarning,
        stacklevel=4,  # the user's call (op -> auto.resolve -> here)
    )


def register_autograd_and_fake(op: str, *, fake, setup_context, backward) -> None:
    """Registers the Python halves of a compiled op (fake kernel, autograd) when `_C` is loaded."""
    for device_type in ("cpu", "cuda"):
        has_kernel(op, device_type)
    if load() is None:
        return
    torch.library.register_fake(f"gencore::{op}")(fake)
    torch.library.register_autograd(f"gencore::{op}", backward, setup_context=setup_context)


def register_fake(op: str, fake) -> None:
    """Registers only the fake kernel of a compiled op (one without autograd of its own)."""
    if load() is None:
        return
    torch.library.register_fake(f"gencore::{op}")(fake)
