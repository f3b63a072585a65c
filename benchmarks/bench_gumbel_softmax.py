"""Gumbel-softmax: fused vs reference vs F.gumbel_softmax (and torch.softmax, the floor).

    pytest benchmarks/bench_gumbel_softmax.py --benchmark-json out.json && python benchmarks/report.py out.json
"""
import os

import pytest
import torch
import torch.nn.functional as F

from gencore import _backend
from gencore.ops import gumbel_softmax

# `gencore bench --device` chooses; run directly: the GPU when there is one.
DEVICE = torch.device(os.environ.get("GENCORE_BENCH_DEVICE")
                      or ("cuda" if torch.cuda.is_available() else "cpu")).type
SHAPES = [(1280, 5000), (2048, 32000), (4096, 128)] + ([(8192, 32000)] if DEVICE == "cuda" else [])
DTYPES = [torch.float32] + ([torch.bfloat16] if DEVICE == "cuda" else [])
IMPLS = {
    "fused": lambda x, hard: gumbel_softmax(x, hard=hard, impl="fused"),
    "reference": lambda x, hard: gumbel_softmax(x, hard=hard, impl="reference"),
    "torch": lambda x, hard: F.gumbel_softmax(x, hard=hard),
    "softmax": lambda x, hard: torch.softmax(x, -1),  # reads and writes once: the floor
}


def calls(shape, dtype, hard, pass_):
    """{impl: one call}, or why an impl does not run."""
    x = torch.randn(shape, device=DEVICE, dtype=dtype, requires_grad=pass_ == "fwd+bwd")
    grad = torch.randn(shape, device=DEVICE, dtype=dtype)

    def call(fn):
        def run():
            if pass_ == "fwd":
                with torch.no_grad():
                    fn(x, hard)
            else:
                x.grad = None
                fn(x, hard).backward(grad)
        return run
    out = {impl: call(fn) for impl, fn in IMPLS.items()}
    if DEVICE == "cpu" and shape[0] * shape[1] > 20_000_000:
        out["reference"] = "reference: about 15 s a call at this size on a 2-core CPU (its ratio: the smaller shapes)"
    if not _backend.has_kernel("gumbel_softmax", DEVICE):
        out["fused"] = f"no fused kernel: {_backend.reason()}"
    if hard:
        out["softmax"] = "the softmax floor is listed with the soft cases"
    return out


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("hard", [False, True], ids=["soft", "hard"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gumbel_softmax(compare, benchmark, shape, dtype, hard, pass_, impl):
    numel = shape[0] * shape[1]
    benchmark.extra_info["bytes"] = numel * dtype.itemsize * (2 if pass_ == "fwd" else 5)
    # torch takes about 2 s a call at 2048 x 32000 on a 2-core CPU: 3 repetitions there (the
    # first call, not a sample, warms up), the 0.3 s minimum elsewhere.
    big = DEVICE == "cpu" and numel > 20_000_000
    compare(f"gumbel_softmax {shape[0]}x{shape[1]} {str(dtype)[6:]} {'hard' if hard else 'soft'} {pass_}",
            impl, lambda: calls(shape, dtype, hard, pass_), DEVICE,
            **(dict(warmup=0, min_reps=3) if big else dict(warmup=1)))
