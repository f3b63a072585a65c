"""What `impl="auto"` runs: one table, per op, device and case, each row tied to its evidence.

DESIGN.md's rule: auto is never slower than PyTorch. It takes the fused kernel only where the
project's own benchmarks show it at least as fast as PyTorch's built-in on that device and case;
everywhere else it takes the built-in with gencore's exact semantics:
- attention: `F.scaled_dot_product_attention` (ops/attention.py's `attention_sdpa`),
- gan_loss: the composed built-ins (the reference: softplus, relu, means),
- gumbel_softmax: the reference, since no built-in draws gencore's counter-based noise
  (`F.gumbel_softmax` samples other noise, so it cannot stand in for the op).

A case that no row names falls to the op's `*` row for that device, and a device with no rows at
all (mps, xpu, ...) to the built-in. `gencore info` prints this table.
"""
from __future__ import annotations

from typing import NamedTuple

from .. import _backend

FUSED, BUILTIN, REFERENCE = "fused", "builtin", "reference"


class Rule(NamedTuple):
    op: str
    device: str    # torch device type: "cpu", "cuda"
    case: str      # a case name the op computes for a call, or "*" for the rest
    pick: str      # FUSED or BUILTIN
    evidence: str  # the benchmark behind the pick


RULES = (
    Rule("gumbel_softmax", "cpu", "*", FUSED,
         "bench_gumbel_softmax (1280x5000 f32, 2-core EPYC): fwd 17x, fwd+bwd 12x faster than "
         "F.gumbel_softmax; the reference is slower still"),
    Rule("gumbel_softmax", "cuda", "*", FUSED,
         "the reference is the only other implementation of gencore's noise (17x slower than "
         "fused on CPU; not timed on GPU); H200: fused 0.67-1.2x F.gumbel_softmax's speed, "
         "which draws other noise (issue 13)"),
    Rule("gan_loss", "cpu", "*", FUSED,
         "bench_gan_loss (sizes 64..1M, 1 thread): discriminator fwd+bwd 1.4-3.3x faster than the "
         "composed built-ins"),
    Rule("gan_loss", "cuda", "*", FUSED,
         "H200, bce discriminator fwd+bwd, n=64..2^24: fused 0.22-0.32 ms, composed built-ins "
         "0.38-0.49 ms"),
    Rule("attention", "cpu", "float32 causal", FUSED,
         "bench_attention (2-core, f32, no mask): causal fwd 1.0-1.3x, fwd+bwd 1.1-1.7x faster "
         "than SDPA; GPT train step at parity (bench_gpt)"),
    Rule("attention", "cpu", "bfloat16 causal", FUSED,
         "bench_attention -k 'cpu and bf16' (2-core EPYC, no mask; what bf16 autocast training "
         "sends): fwd 1.3-1.9x, fwd+bwd 1.7-3.7x faster than SDPA (gpt-text's (12,4,64,32): 3.7x)"),
    Rule("attention", "cpu", "float32 decode", FUSED,
         "bench_attention -k decode (1-4 queries vs a KV cache, f32): 1.0-1.3x faster than SDPA"),
    Rule("attention", "cpu", "*", BUILTIN,
         "bench_attention (2-core, f32): non-causal fwd 0.77-0.91x SDPA's speed; float16, bf16 "
         "decoding and masked calls not shown faster"),
    Rule("attention", "cuda", "*", BUILTIN,
         "H200 bf16: the fused kernels are 19-390x slower than SDPA (issue 12)"),
)

_TABLE = {(r.op, r.device, r.case): r.pick for r in RULES}


def pick(op: str, device_type: str, case: str = "*") -> str:
    """FUSED or BUILTIN: what the table says auto runs for this op, device and case."""
    choice = _TABLE.get((op, device_type, case))
    if choice is None:
        choice = _TABLE.get((op, device_type, "*"), BUILTIN)
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
