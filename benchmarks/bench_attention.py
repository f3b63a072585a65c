"""Attention benchmarks: gencore fused vs the reference vs F.scaled_dot_product_attention.

    python -m pytest benchmarks/bench_attention.py --benchmark-json /tmp/at.json -q
    python benchmarks/report.py /tmp/at.json --markdown

Groups: "attention <B,H,S,D> <dtype> causal=<..> <fwd|fwd+bwd>"; extra_info: impl, peak_mb, and on
a GPU tflops (FLOPs 4*B*H*S_q*S_k*D forward, halved when causal; forward+backward 3.5x forward).
GPU cases: issue 12's bf16 shapes (GPU_CASES). benchmarks/gpu/attention_check.py is the one-call
GPU check (errors, CUDA-event timings).

peak_mb, CPU: the peak resident-set growth during one extra call made just for it. For that call
glibc's mmap threshold is set to 64 KiB (every block of 64 KiB or more, torch's or a kernel's own
std::vector scratch, is mapped on allocation and unmapped on free), malloc_trim(0) hands free heap
pages back, and the kernel's high-water mark is reset through /proc/self/clear_refs; peak = VmHWM -
VmRSS before. This counts every byte actually touched, whoever allocated it (torch.profiler would
miss non-torch scratch buffers). The timed calls then run with the threshold at 32 MiB, glibc's
own ceiling, i.e. the warmed-up state of a long-running process: with 64 KiB every call would
page-fault all its scratch memory afresh and the timings would measure the kernel's page-fault
handling. On CUDA: torch.cuda.max_memory_allocated() growth.
The reference is left out at S = 4096 and on the GPU: each of its S x S intermediates is 0.5 GiB at
S = 4096.
"""
from __future__ import annotations

import ctypes
import pytest
import torch
import torch.nn.functional as F

from gencore import _backend
from gencore.nn import KVCache
from gencore.ops import attention

M_MMAP_THRESHOLD = -3
try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: peaks come out as RSS growth without the allocator settings
    _LIBC = None


def _mmap_threshold(nbytes: int) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, nbytes)


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def peak_mb(fn, device) -> float | None:
    """Peak memory growth (MiB) during one call of fn."""
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    _mmap_threshold(64 * 1024)
    try:
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            return None
        before = _status_kb("VmRSS")
        fn()
        return max(0, _status_kb("VmHWM") - before) / 1024
    finally:
        _mmap_threshold(32 * 2**20)


CPU_SHAPES = [(8, 8, 256, 64), (8, 8, 512, 64), (1, 8, 4096, 64)]
# bf16 on CPU (what bf16 autocast training sends to attention): gpt-text's shape and two larger.
CPU_BF16_SHAPES = [(12, 4, 64, 32), (8, 8, 256, 64), (8, 8, 512, 64)]
# Issue 12's GPU cases, bf16: (shape, causal, mode).
GPU_CASES = [
    ((4, 16, 4096, 128), False, "fwd"),
    ((4, 16, 4096, 128), False, "fwd+bwd"),
    ((4, 16, 4096, 128), True, "fwd"),
    ((4, 16, 4096, 128), True, "fwd+bwd"),
    ((8, 16, 2048, 64), True, "fwd+bwd"),
    ((1, 16, 16384, 128), True, "fwd+bwd"),
]
NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _case_id(device, shape, dtype, causal, mode):
    return f"{device}-{'x'.join(map(str, shape))}-{dtype}-{'causal' if causal else 'full'}-{mode}"


def cases():
    for shape in CPU_SHAPES:
        for causal in (True, False):
            for mode in ("fwd", "fwd+bwd"):
                yield pytest.param("cpu", shape, torch.float32, causal, mode,
                                   id=_case_id("cpu", shape, "f32", causal, mode))
    for shape in CPU_BF16_SHAPES:
        for mode in ("fwd", "fwd+bwd"):
            yield pytest.param("cpu", shape, torch.bfloat16, True, mode,
                               id=_case_id("cpu", shape, "bf16", True, mode))
    for shape, causal, mode in GPU_CASES:
        yield pytest.param("cuda", shape, torch.bfloat16, causal, mode, marks=NO_GPU,
                           id=_case_id("cuda", shape, "bf16", causal, mode))


def attention_flops(shape, causal: bool, mode: str) -> float:
    """4*B*H*S^2*D forward, halved when causal; forward+backward 3.5x the forward."""
    B, H, S, D = shape
    return 4 * B * H * S * S * D * (0.5 if causal else 1.0) * (3.5 if mode == "fwd+bwd" else 1.0)


IMPLS = {
    "fused": lambda q, k, v, causal: attention(q, k, v, causal=causal, impl="fused"),
    "reference": lambda q, k, v, causal: attention(q, k, v, causal=causal, impl="reference"),
    "torch": lambda q, k, v, causal: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
}


def _unavailable(impl, device, S=0):
    """Why impl does not run for this device and length, or None."""
    if impl == "reference" and (S >= 4096 or device == "cuda"):
        return "reference: its S x S intermediates (0.5 GiB each at S = 4096) do not fit the time"
    if impl == "fused" and not _backend.has_kernel("attention", device):
        return f"no fused {device} attention kernel in this build: {_backend.reason()}"
    return None


def training_calls(device, shape, dtype, causal, mode):
    """{impl: one call}: forward under no_grad, or forward and backward on fresh leaves."""
    g = torch.Generator().manual_seed(0)
    q, k, v, dout = (torch.randn(*shape, generator=g).to(device, dtype) for _ in range(4))
    out = {}
    for impl, fn_impl in IMPLS.items():
        out[impl] = _unavailable(impl, device, shape[2])
        if out[impl]:
            continue
        if mode == "fwd":
            def fn(fn_impl=fn_impl):
                with torch.no_grad():
                    fn_impl(q, k, v, causal)
        else:
            qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

            def fn(fn_impl=fn_impl, qg=qg, kg=kg, vg=vg):
                fn_impl(qg, kg, vg, causal).backward(dout)
                qg.grad = kg.grad = vg.grad = None
        out[impl] = fn
    return out


@pytest.mark.parametrize("device,shape,dtype,causal,mode", list(cases()))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_attention(compare, benchmark, device, shape, dtype, causal, mode, impl):
    B, H, S, D = shape
    make = lambda: training_calls(device, shape, dtype, causal, mode)  # noqa: E731
    call = make()[impl]
    if not isinstance(call, str):
        call()  # the first call's one-time costs stay out of the peak
        benchmark.extra_info["peak_mb"] = peak_mb(call, device)
    st = compare(f"attention <{B},{H},{S},{D}> {str(dtype).replace('torch.', '')} causal={causal} {mode}",
                 impl, make, device, min_reps=10 if device == "cuda" else 5)
    if device == "cuda" and st:
        benchmark.extra_info["tflops"] = attention_flops(shape, causal, mode) / st["median"] / 1e12


# One decoding step with a KV cache: one query per sequence against the cached keys, k/v as
# gencore.nn.KVCache hands them over (views of its buffers), no autograd. Each impl gets the key
# layout it reads fastest: transposed for gencore's kernel, row-major for PyTorch's.
DECODE_SHAPES = [(1, 4, 256, 32), (1, 12, 1024, 64), (8, 8, 512, 64)]  # B, H, cached keys, D


def decode_calls(shape):
    B, H, Sk, D = shape
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g)
    kv = [torch.randn(B, H, Sk, D, generator=g) for _ in range(2)]
    out = {}
    for impl, fn_impl in IMPLS.items():
        out[impl] = _unavailable(impl, "cpu")
        if out[impl]:
            continue
        k, v, _ = KVCache(transposed_keys=impl != "torch").append(*kv)

        def run(fn_impl=fn_impl, k=k, v=v):
            with torch.inference_mode():
                # No mask: the one query sees every cached key (SDPA's is_causal=True would align
                # the mask top-left and leave the query only the first key).
                fn_impl(q, k, v, False)
        out[impl] = run
    return out


@pytest.mark.parametrize("shape", DECODE_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("impl", list(IMPLS))
def test_attention_decode(compare, shape, impl):
    B, H, Sk, D = shape
    compare(f"attention decode <{B},{H},1 vs {Sk},{D}> float32", impl, lambda: decode_calls(shape))


# issue 20's features (window, packed documents, dropout, bool mask), fwd+bwd on CPU, each against
# the best built-in way to the same result (gencore/bench_cases.py's _feature_case says which):
# the same cases `gencore bench --record` times for the auto table.
#     python -m pytest benchmarks/bench_attention.py -k features -q
def _feature_cases():
    from gencore import bench_cases
    return [c for c in bench_cases.cases("cpu") if any(f" {kind}/" in c.id for kind, *_ in bench_cases.FEATURE_CASES)]


def _feature_calls(case):
    calls = {impl: fn for impl, fn in case.make().items() if impl in ("fused", "sdpa", "torch")}
    calls["fused"] = _unavailable("fused", "cpu") or calls["fused"]
    return calls


@pytest.mark.parametrize("case", _feature_cases(), ids=lambda c: c.id.split("/")[2].replace(" ", "-") + "-" + c.id.split("/")[3])
@pytest.mark.parametrize("impl", ["fused", "sdpa", "torch"])
def test_attention_features(compare, case, impl):
    compare(f"attention features {case.id}", impl, lambda: _feature_calls(case))
