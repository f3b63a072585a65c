"""One-call GPU check of gencore's CUDA attention (the tensor-core kernels, the one CUDA family)
against a float64 gold, and timed against PyTorch's SDPA. Plain python + torch; about a minute on
an H200 (--quick: fewer timing rounds).

    MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 GENCORE_CUDA=1 python3 setup.py build_ext --inplace
    PYTHONPATH=$PWD python3 benchmarks/gpu/attention_check.py [--quick] [--json FILE]

(`--smoke --device cpu` runs the same code on tiny shapes on the CPU kernels: the test suite does
that, so the script cannot break unnoticed between GPU sessions.)

0. The profiler's kernel names: the tensor-core kernels run (no silent fallback).
1. Small odd shapes (lengths 1, 3, 127, 1023, 5000-ish, S_q != S_k, GQA, padding, D 64/96/128,
   bf16 and fp16, causal and not): the error vs the float64 reference within 2x SDPA's error on
   the same inputs (gencore.tolerance.within_2x, the rule of tests/test_attention.py), forward and
   all three gradients, with the outputs' memory poisoned with NaN before each call.
2. Issue 12's shapes (bf16): errors of out and of the gradients on a slice (batch 0, heads 0-1;
   heads are independent, so the slice's gold is exact) for mma and SDPA, then CUDA-event timings
   (warm-up, median of N) of both.
3. The keyword features (window, softcap, document_ids, attn_mask, dropout; issue 20): forward
   and gradients within 2x the reference's own error in the inputs' precision (SDPA has no
   softcap and draws another dropout mask), then fused vs SDPA with the equivalent mask timed
   forward+backward on one longer shape per feature (one line each).
The table comes last: shape, mode, variant, max errors vs gold (and SDPA's), ms, TFLOP/s (FLOPs
4*B*H*S^2*D forward, halved when causal, forward+backward 3.5x), time / SDPA time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

from gencore import _backend
from gencore.ops import attention
from gencore.ops.reference import attention_reference
from gencore.ops.rng import philox_seed_offset
from gencore.timing import round_robin
from gencore.tolerance import attention_l1, within_2x

# Issue 12's cases and the FLOP count are benchmarks/bench_attention.py's.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_attention import GPU_CASES, attention_flops  # noqa: E402

ODD = [  # B, H, Hkv, Sq, Sk, D, dtype, causal, padding
    (1, 4, 2, 1, 5003, 64, torch.bfloat16, False, False),
    (1, 4, 2, 3, 3, 128, torch.float16, True, False),
    (1, 4, 4, 127, 1023, 96, torch.bfloat16, True, True),
    (1, 4, 4, 1023, 127, 64, torch.float16, True, False),
    (2, 8, 2, 1023, 1023, 128, torch.bfloat16, True, True),
    (1, 4, 1, 5000, 64, 64, torch.bfloat16, False, True),
    (2, 4, 4, 129, 129, 96, torch.float16, False, False),
    (2, 6, 3, 300, 333, 128, torch.float16, True, True),
]
SMOKE_GPU_CASES = [((1, 2, 70, 64), False, "fwd"), ((1, 2, 70, 64), True, "fwd+bwd")]
SMOKE_ODD = [(1, 2, 1, 5, 9, 64, torch.bfloat16, True, True), (1, 2, 2, 17, 17, 96, torch.float16, False, False)]
VARIANTS = ["mma"]
DEVICE = "cuda"
NAMES = ("out", "dq", "dk", "dv")


def poison(*tensors_like) -> None:
    """Leaves NaN in the caching allocator's free blocks of these sizes, so that outputs that land
    there and are not fully written show up."""
    junk = [torch.full_like(t, float("nan")) for t in tensors_like]
    del junk


def visible(Sq, Sk, causal, pad):
    allowed = torch.ones(1, Sq, Sk, dtype=torch.bool, device=DEVICE)
    if causal:
        i = torch.arange(Sq, device=allowed.device)[:, None]
        allowed = allowed & (torch.arange(Sk, device=allowed.device)[None, :] <= i + (Sk - Sq))
    if pad is not None:
        allowed = allowed & ~pad[:, None, :]
    return allowed


def sdpa(q, k, v, causal=False, pad=None, scale=None):
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    if pad is None and (not causal or q.shape[2] == k.shape[2]):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = visible(q.shape[2], k.shape[2], causal, pad)[:, None]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def gencore_fused(q, k, v, causal=False, pad=None, scale=None):
    return attention(q, k, v, causal=causal, key_padding_mask=pad, scale=scale, impl="fused")


def gold(q, k, v, causal=False, pad=None, scale=None):
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return attention_reference(q, k, v, causal, pad, scale)[0]


def out_and_grads(fn, q, k, v, dout, with_grad=True, **kw):
    q, k, v = (t.detach().clone().requires_grad_(with_grad) for t in (q, k, v))
    poison(q, k, v)
    out = fn(q, k, v, **kw)
    if not with_grad:
        return [out.detach()]
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), dout)]


def l1_sizes(q, k, v, dout, causal=False, pad=None, scale=None):
    """attention_l1's reduction sizes, in the order of out_and_grads (gencore.tolerance)."""
    q, k, v, dout = (t.double() for t in (q, k, v, dout))
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    eye = torch.eye(k.shape[2], dtype=q.dtype, device=q.device).expand(*k.shape[:2], -1, -1)
    probs = attention_reference(q, k, eye, causal, pad, scale)[0]
    sizes = attention_l1(q, k, v, dout, probs, scale)
    return [sizes[n] for n in NAMES]


def max_err(got, exact):
    """Max abs error over rows with a finite gold (SDPA has no value for rows without keys)."""
    return max((g.double() - e).abs().nan_to_num(nan=math.inf).max().item() for g, e in zip(got, exact))


def check_odd(cases, failures: list) -> int:
    n = 0
    for B, H, Hkv, Sq, Sk, D, dtype, causal, padding in cases:
        g = torch.Generator().manual_seed(Sq * 7 + Sk)
        q, k, v, dout = (torch.randn(*s, generator=g).to(DEVICE, dtype)
                         for s in ((B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D), (B, H, Sq, D)))
        pad = None
        if padding:
            pad = (torch.rand(B, Sk, generator=g) < 0.3).to(DEVICE)
            pad[:, -1] = False
        kw = dict(causal=causal, pad=pad)
        exact = out_and_grads(gold, *(t.double() for t in (q, k, v, dout)), **kw)
        rows = visible(Sq, Sk, causal, pad).any(-1)  # (B or 1, Sq)
        base = out_and_grads(sdpa if rows.all() else gold, q, k, v, dout, **kw)
        l1 = l1_sizes(q, k, v, dout, **kw)
        for variant in VARIANTS:
            got = out_and_grads(gencore_fused, q, k, v, dout, **kw)
            n += 1
            for name, e, s, f, size in zip(NAMES, exact, base, got, l1):
                verdict = within_2x(e, s, f, size)
                if not verdict.passed:
                    failures.append(f"odd {B, H, Hkv, Sq, Sk, D, str(dtype)[6:], causal, padding} {variant} "
                                    f"{name}: err {verdict.error:.3g} > tolerance {verdict.tolerance:.3g}")
    return n


# Kernel names each variant must launch for a (1, 2, 256, 128) bf16 forward + backward.
EXPECTED_KERNELS = {
    "mma": ("attention_forward_mma", "attention_delta", "attention_backward_dq_mma", "attention_backward_dkdv_mma"),
}


def check_kernels(failures: list) -> None:
    """Which attention kernels each variant launches (the profiler's CUDA kernel names)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, dout = (torch.randn(1, 2, 256, 128, generator=g, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for variant, expected in EXPECTED_KERNELS.items():
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                out_and_grads(gencore_fused, q, k, v, dout, causal=True)
                torch.cuda.synchronize()
        except Exception as exc:  # the profiler is a check of the setup, not of the kernels
            print(f"kernels of {variant}: profiler unavailable ({exc})")
            continue
        names = sorted({e.name.split("<")[0].split("::")[-1] for e in prof.events() if "attention" in e.name})
        print(f"kernels of {variant}: {names}", flush=True)
        missing = [n for n in expected if not any(n in name for name in names)]
        if missing:
            failures.append(f"variant {variant} did not launch {missing} (launched {names})")


def time_ms(fn, reps: int, warmup: int = 3) -> float:
    """Median milliseconds over `reps` calls: gencore.timing (CUDA events on the GPU)."""
    return round_robin({"fn": fn}, DEVICE, min_reps=reps, max_reps=reps, warmup=warmup)["fn"]["median"] * 1e3


def issue_rows(shapes, quick: bool, failures: list) -> list:
    rows = []
    for shape, causal, mode in shapes:
        B, H, S, D = shape
        g = torch.Generator(device=DEVICE).manual_seed(S + D)
        q, k, v, dout = (torch.randn(*shape, generator=g, device=DEVICE, dtype=torch.bfloat16) for _ in range(4))
        bwd = mode == "fwd+bwd"
        # Errors on the slice batch 0, heads 0-1.
        sl = [t[:1, :2] for t in (q, k, v, dout)]
        exact = out_and_grads(gold, *(t.double() for t in sl), with_grad=bwd, causal=causal)
        # Reduction sizes need S x S float64 matrices: the longest shapes keep the slack of |gold|.
        l1 = l1_sizes(*sl, causal=causal)[:len(exact)] if S <= 4096 else [None] * len(exact)
        errs, got = {}, {}
        for variant in ["sdpa", *VARIANTS]:
            fn = sdpa if variant == "sdpa" else gencore_fused
            got[variant] = out_and_grads(fn, *sl, with_grad=bwd, causal=causal)
            errs[variant] = (max_err(got[variant][:1], exact[:1]),
                             max_err(got[variant][1:], exact[1:]) if bwd else float("nan"))
        for variant in VARIANTS:
            for name, e, s, f, size in zip(NAMES, exact, got["sdpa"], got[variant], l1):
                verdict = within_2x(e, s, f, size)
                if not verdict.passed:
                    failures.append(f"issue {shape} causal={causal} {mode} {variant} {name}: err "
                                    f"{verdict.error:.3g} > tolerance {verdict.tolerance:.3g} (2x SDPA's)")
        del exact, l1, got
        # Timings on the whole shape.
        qg, kg, vg = (t.clone().requires_grad_(bwd) for t in (q, k, v))

        def call(fn):
            def go():
                if bwd:
                    out = fn(qg, kg, vg, causal=causal)
                    out.backward(dout)
                    qg.grad = kg.grad = vg.grad = None
                else:
                    with torch.no_grad():
                        fn(qg, kg, vg, causal=causal)
            return go

        reps = 5 if quick else 20
        ms = {"sdpa": time_ms(call(sdpa), reps), "mma": time_ms(call(gencore_fused), reps)}
        for variant in ["mma", "sdpa"]:
            e_out, e_grad = errs[variant]
            s_out, s_grad = errs["sdpa"]
            t = ms[variant]
            rows.append(dict(shape="x".join(map(str, shape)), causal=causal, mode=mode, variant=variant,
                             err_out=e_out, sdpa_err_out=s_out, err_grad=e_grad, sdpa_err_grad=s_grad, ms=t,
                             tflops=attention_flops(shape, causal, mode) / (t * 1e-3) / 1e12 if t == t else float("nan"),
                             vs_sdpa=t / ms["sdpa"]))
        print(f"done {shape} causal={causal} {mode}: mma {ms['mma']:.3f} ms, sdpa {ms['sdpa']:.3f} ms", flush=True)
        del q, k, v, dout, qg, kg, vg
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def _feature_kwargs(name, B, H, Sq, Sk, device):
    g = torch.Generator().manual_seed(len(name))
    if name == "window":
        return dict(causal=True, window=(256, 0))
    if name == "softcap":
        return dict(causal=True, softcap=30.0)
    if name == "documents":
        cut = sorted(torch.randint(1, Sk, (3,), generator=g).tolist())
        ids = torch.zeros(B, Sk, dtype=torch.int64)
        for c in cut:
            ids[:, c:] += 1
        return dict(causal=True, document_ids=ids.to(device))
    if name == "mask":
        m = torch.rand(1, H, Sq, Sk, generator=g) < 0.5
        m[..., : Sq // 2, Sk // 2:] = False  # an all-False quarter: skipped tiles
        return dict(attn_mask=m.to(device))
    return dict(causal=True, dropout_p=0.1)  # dropout


FEATURES = ("window", "softcap", "documents", "mask", "dropout")


def check_features(shape, time_shape, quick: bool, failures: list) -> list:
    """Feature checks on `shape` (B, H, S_q, S_k, D), timings on `time_shape` (B, H, S, D)."""
    lines = []
    B, H, Sq, Sk0, D = shape
    for name in FEATURES:
        Sk = Sq if name == "documents" else Sk0  # packed documents: S_q == S_k
        for dtype in (torch.bfloat16, torch.float16):
            g = torch.Generator().manual_seed(Sq + Sk + D)
            q, dout = (torch.randn(B, H, Sq, D, generator=g).to(DEVICE, dtype) for _ in range(2))
            k, v = (torch.randn(B, H // 2, Sk, D, generator=g).to(DEVICE, dtype) for _ in range(2))
            kw = _feature_kwargs(name, B, H, Sq, Sk, DEVICE)
            gen = lambda: dict(generator=torch.Generator().manual_seed(7)) if name == "dropout" else {}  # noqa: E731
            fn = lambda q, k, v, impl, **kw: attention(q, k, v, impl=impl, **kw, **gen())  # noqa: E731
            exact = out_and_grads(fn, *(t.double() for t in (q, k, v, dout)), impl="reference", **kw)
            base = out_and_grads(fn, q, k, v, dout, impl="reference", **kw)
            got = out_and_grads(fn, q, k, v, dout, impl="fused", **kw)
            qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
            eye = torch.eye(Sk, dtype=torch.float64, device=DEVICE).expand(B, H // 2, -1, -1)
            ref_kw = {key: val for key, val in kw.items() if key != "causal"}
            if name == "dropout":
                ref_kw["seed_offset"] = philox_seed_offset(torch.Generator().manual_seed(7))
            probs = attention_reference(qd, kd, eye, kw.get("causal", False), None, D ** -0.5, **ref_kw)[0]
            sizes = attention_l1(qd, kd, vd, dd, probs, D ** -0.5)
            for n, e, s_, f in zip(NAMES, exact, base, got):
                verdict = within_2x(e, s_, f, sizes[n])
                if not verdict.passed:
                    failures.append(f"feature {name} {str(dtype)[6:]} {shape} {n}: err {verdict.error:.3g} > "
                                    f"tolerance {verdict.tolerance:.3g} (2x the reference's own)")
    Bt, Ht, St, Dt = time_shape
    g = torch.Generator(device=DEVICE).manual_seed(St)
    q, k, v, dout = (torch.randn(*time_shape, generator=g, device=DEVICE, dtype=torch.bfloat16) for _ in range(4))
    for name in FEATURES:
        kw = _feature_kwargs(name, Bt, Ht, St, St, DEVICE)
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))

        def call(impl):
            def go():
                out = attention(qg, kg, vg, impl=impl, **kw)
                out.backward(dout)
                qg.grad = kg.grad = vg.grad = None
            return go
        reps = 3 if quick else 10
        # impl="sdpa": SDPA with the equivalent bool mask (softcap: the reference's composed ops).
        ms = {impl: time_ms(call(impl), reps, warmup=1) for impl in ("fused", "sdpa")}
        lines.append(f"feature {name:9s} {time_shape} bf16 fwd+bwd: fused {ms['fused']:.3f} ms, "
                     f"sdpa {ms['sdpa']:.3f} ms, x SDPA {ms['fused'] / ms['sdpa']:.2f}")
        print(lines[-1], flush=True)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timing rounds")
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes only (a test of this script)")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    args = ap.parse_args(argv)
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    if not _backend.has_kernel("attention", DEVICE):
        print(f"no {DEVICE} attention kernel in this build: {_backend.reason()}")
        return 2
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        print(f"{props.name}, {props.multi_processor_count} SMs, torch {torch.__version__}", flush=True)
    t0 = time.time()
    failures: list = []
    if DEVICE == "cuda":
        check_kernels(failures)
    n_odd = check_odd(SMOKE_ODD if args.smoke else ODD, failures)
    print(f"odd shapes: {n_odd} variant runs checked in {time.time() - t0:.0f} s", flush=True)
    shapes = SMOKE_GPU_CASES if args.smoke else GPU_CASES
    rows = issue_rows(shapes, args.quick, failures)
    feature_lines = check_features((1, 4, 70, 90, 64) if args.smoke else (2, 4, 333, 301, 128),
                                   (1, 2, 70, 64) if args.smoke else (1, 16, 2048, 128), args.quick, failures)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\ntotal {time.time() - t0:.0f} s")
    for line in failures:
        print("FAIL", line)
    print(f"{'PASS' if not failures else f'{len(failures)} FAILURES'}: {n_odd} odd-shape runs, "
          f"{len(shapes)} issue shapes x {len(VARIANTS)} variants, {len(FEATURES)} features x 2 dtypes")
    print("\n".join(feature_lines))
    print("| shape | causal | mode | variant | out err | SDPA out err | grad err | SDPA grad err | ms | TFLOP/s | x SDPA |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['shape']} | {r['causal']} | {r['mode']} | {r['variant']} | {r['err_out']:.2e} | "
              f"{r['sdpa_err_out']:.2e} | {r['err_grad']:.2e} | {r['sdpa_err_grad']:.2e} | {r['ms']:.3f} | "
              f"{r['tflops']:.0f} | {r['vs_sdpa']:.2f} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
