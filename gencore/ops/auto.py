"""What `impl="auto"` runs: one table, per op, machine class and case, each row resting on
benchmark records.

DESIGN.md's rule: auto is never slower than PyTorch. It takes the fused kernel only where a record
of the project's benchmarks (benchmarks/records/<machine>.json, made by `gencore bench --record`
from gencore/bench_cases.py) shows it at least as fast as what auto would run instead, on that
machine class and case; everywhere else it runs:
- attention: `F.scaled_dot_product_attention` (ops/attention.py's `attention_sdpa`),
- gan_loss: the composed built-ins (the reference: softplus, relu, means),
- gumbel_softmax: the reference, since no built-in draws gencore's counter-based noise
  (`F.gumbel_softmax` samples other noise, so it cannot stand in for the op).

Machine classes: "cpu-avx2", "cpu-avx512", "cpu-default" (the ISA the CPU kernels were built
for) and "cuda-sm80", "cuda-sm90", ...: a measurement on one is no evidence for another. A class
with no row of its own runs the built-in. Each row names the bench cases it rests on (`cases`);
tests/test_auto.py fails when a FUSED row's records show the fused median slower, when a FUSED
row cites no record, or when a record is older than the kernel sources it measured.

A user's own records (`gencore bench --record`, written to gencore.records.local_dir()) take
precedence on that machine: where they time every case of a row, the row's pick follows them.
`gencore info` prints the table and what this machine runs.
"""
from __future__ import annotations

import warnings
from typing import Dict, NamedTuple, Tuple

import torch

from .. import _backend

FUSED, BUILTIN, REFERENCE = "fused", "builtin", "reference"


class Rule(NamedTuple):
    op: str
    machine: str              # machine class, e.g. "cpu-avx2", "cuda-sm90"
    case: str                 # a case name the op computes for a call, or "*" for the rest
    pick: str                 # FUSED or BUILTIN
    cases: Tuple[str, ...]    # the bench case ids (gencore/bench_cases.py) the pick rests on
    note: str = ""            # for a BUILTIN row without records: why


def _ids(op: str, device: str, case: str, shapes, mode: str) -> Tuple[str, ...]:
    return tuple(f"{op}/{device}/{case}/{s}/{mode}" for s in shapes)


_TRAIN = ("B8-H8-Sq512-Sk512-D64", "B4-H8-Sq256-Sk256-D64", "B12-H4-Sq64-Sk64-D32")
_GQA_TRAIN = ("B4-H8-Hkv2-Sq256-Sk256-D64", "B8-H4-Hkv2-Sq256-Sk256-D32")  # grouped-query
_DECODE = ("B1-H8-Sq1-Sk128-D64", "B1-H12-Sq1-Sk1024-D64", "B8-H12-Sq1-Sk1024-D64",
           "B8-H12-Sq1-Sk64-D64", "B1-H12-Sq1-Sk4096-D64")
_DECODE_SMALL = ("B1-H4-Sq1-Sk64-D32", "B1-H4-Sq1-Sk128-D32", "B4-H4-Sq1-Sk64-D32")
_GUMBEL = tuple(f"gumbel_softmax/cpu/*/{s}/{m}" for s in ("64x100", "256x32000", "1280x5000")
                for m in ("fwd", "fwd+bwd"))
_GAN = _ids("gan_loss", "cpu", "*", ("bce-discriminator-n64", "bce-discriminator-n4096",
                                     "bce-discriminator-n1048576"), "fwd+bwd")
_CPU_ATTENTION = {
    "float32 causal": _ids("attention", "cpu", "float32 causal", _TRAIN + _GQA_TRAIN, "fwd+bwd"),
    "bfloat16 causal": _ids("attention", "cpu", "bfloat16 causal", _TRAIN + _GQA_TRAIN, "fwd+bwd"),
    "float32 decode": _ids("attention", "cpu", "float32 decode", _DECODE, "fwd"),
    "bfloat16 decode": _ids("attention", "cpu", "bfloat16 decode", _DECODE, "fwd"),
    "float32 decode small": _ids("attention", "cpu", "float32 decode small", _DECODE_SMALL, "fwd"),
    "bfloat16 decode small": _ids("attention", "cpu", "bfloat16 decode small", _DECODE_SMALL, "fwd"),
    "*": _ids("attention", "cpu", "float32 full", _TRAIN[1:], "fwd+bwd"),
}
# The keyword features (issue 20): one case each, the built-in being SDPA with the equivalent mask
# (window, bool mask), SDPA's own dropout, SDPA on the same tokens padded per document, or the
# eager composition for soft-capped scores (no built-in caps them); a padded causal batch too,
# with and without dropout.
_FEATURES = {"window": "B1-H8-Sq2048-Sk2048-D64-w256", "documents": "B1-H8-Sq2048-Sk2048-D64-docs4",
             "dropout": "B8-H8-Sq512-Sk512-D64-p0.1", "mask": "B2-H8-Sq1024-Sk1024-D64-prefix",
             "softcap": "B4-H8-Sq512-Sk512-D64-cap50", "window+softcap": "B1-H8-Sq2048-Sk2048-D64-w256-cap50",
             "causal+padding": "B8-H8-Sq512-Sk512-D64-pad", "dropout+padding": "B8-H8-Sq512-Sk512-D64-pad-p0.1"}
for _dtype in ("float32", "bfloat16"):
    for _name, _shape in _FEATURES.items():
        _CPU_ATTENTION[f"{_dtype} {_name}"] = _ids("attention", "cpu", f"{_dtype} {_name}", (_shape,), "fwd+bwd")

_NO_GPU = ("no record: this kernel has not run on a GPU since it was written (no GPU lent since "
           "the tensor-core rewrite)")

RULES = (
    # AVX2 (2-core AMD EPYC): benchmarks/records/cpu-avx2.json.
    Rule("gumbel_softmax", "cpu-avx2", "*", FUSED, _GUMBEL),
    Rule("gan_loss", "cpu-avx2", "*", FUSED, _GAN),
    Rule("attention", "cpu-avx2", "float32 causal", FUSED, _CPU_ATTENTION["float32 causal"]),
    Rule("attention", "cpu-avx2", "bfloat16 causal", FUSED, _CPU_ATTENTION["bfloat16 causal"]),
    Rule("attention", "cpu-avx2", "float32 decode", BUILTIN, _CPU_ATTENTION["float32 decode"]),
    Rule("attention", "cpu-avx2", "bfloat16 decode", FUSED, _CPU_ATTENTION["bfloat16 decode"]),
    Rule("attention", "cpu-avx2", "float32 decode small", BUILTIN, _CPU_ATTENTION["float32 decode small"]),
    Rule("attention", "cpu-avx2", "bfloat16 decode small", BUILTIN, _CPU_ATTENTION["bfloat16 decode small"]),
    Rule("attention", "cpu-avx2", "*", BUILTIN, _CPU_ATTENTION["*"]),
    *(Rule("attention", "cpu-avx2", f"{d} {f}", FUSED, _CPU_ATTENTION[f"{d} {f}"])
      for d in ("float32", "bfloat16") for f in _FEATURES),
    # AVX-512: no record of the current kernels yet (the machines of this session were AVX2):
    # the built-ins until one is made (`gencore bench --record --out benchmarks/records`).
    *(Rule(op, "cpu-avx512", "*", BUILTIN, (), "no record of the current kernels on AVX-512")
      for op in ("gumbel_softmax", "gan_loss", "attention")),
    *(Rule(op, f"cuda-sm{arch}", "*", BUILTIN, (), _NO_GPU)
      for arch in (80, 90) for op in ("gumbel_softmax", "gan_loss", "attention")),
)

_TABLE: Dict[tuple, Rule] = {(r.op, r.machine, r.case): r for r in RULES}
_MACHINE: Dict[str, str] = {}       # device type -> machine class, filled on first use
_PICKS: Dict[tuple, str] = {}       # (op, device type, case) -> pick, after local records


def machine(device_type: str) -> str:
    """This process's machine class for a device type (CUDA: the current device's)."""
    m = _MACHINE.get(device_type)
    if m is None:
        from .. import records
        m = _MACHINE[device_type] = records.machine_class(device_type)
    return m


def rule(op: str, machine_class: str, case: str = "*"):
    """The table's row for a call, or None (the built-in)."""
    return _TABLE.get((op, machine_class, case)) or _TABLE.get((op, machine_class, "*"))


def _local_pick(r: Rule, device_type: str):
    """The pick a user's own records make for the row, or None where they do not time it all."""
    from .. import bench_cases, records
    if not r.cases:
        return None
    try:
        times = records.medians(records.load(r.machine, records.local_dir()))
    except ValueError as exc:
        warnings.warn(f"gencore: ignoring local benchmark records: {exc}", RuntimeWarning)
        return None
    wins = records.fused_wins(times, r.op, r.cases, bench_cases.ALTERNATIVE[r.op])
    return None if wins is None else (FUSED if wins else BUILTIN)


# A constant under torch.compile: traced code gets the pick eager code gets, without tracing the
# records' file reads.
@torch.compiler.assume_constant_result
def pick(op: str, device_type: str, case: str = "*") -> str:
    """FUSED or BUILTIN: what auto runs for this op, device type and case on this machine."""
    key = (op, device_type, case)
    choice = _PICKS.get(key)
    if choice is None:
        if device_type not in ("cpu", "cuda"):
            choice = BUILTIN
        else:
            r = rule(op, machine(device_type), case)
            choice = BUILTIN if r is None else (_local_pick(r, device_type) or r.pick)
        _PICKS[key] = choice
    return choice


def resolve(op: str, impl: str, device_type: str, case: str = "*",
            builtin_name: str = "builtin") -> str:
    """What one call runs: FUSED, BUILTIN or REFERENCE.

    impl is "auto", "fused", "reference" or the op's name for its built-in (`builtin_name`, e.g.
    "sdpa" for attention). "fused" demands the compiled kernel (a clear error without it); "auto"
    follows the table, and where the table says fused but this build has no kernel for the device,
    runs the built-in with one warning (see _backend.warn_fallback).
    """
    if impl == "auto":
        if pick(op, device_type, case) == BUILTIN:
            return BUILTIN
        if _backend.has_kernel(op, device_type):
            return FUSED
        _backend.warn_fallback(op, device_type)
        return BUILTIN
    if impl == "fused":
        if _backend.has_kernel(op, device_type):
            return FUSED
        why = _backend.reason() or f"this build has no {device_type} kernel"
        raise RuntimeError(f"gencore.ops: impl='fused' asked for {op} on {device_type}, but {why}")
    if impl == "reference":
        return REFERENCE
    if impl == builtin_name:
        return BUILTIN
    names = ("auto", "fused", "reference") + ((builtin_name,) if builtin_name != "builtin" else ())
    raise ValueError(f"impl must be one of {', '.join(repr(n) for n in names)}, got {impl!r}")
