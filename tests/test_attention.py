"""gencore.ops.attention: fused kernels vs the float64 reference (FlashAttention's error rule),
gradcheck, opcheck, torch.compile, masks, GQA, odd sizes, strides, bad input."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gencore.ops import attention
from gencore.ops._attention import cuda_kernel_covers
from gencore.ops.reference import attention_reference
from gencore.ops.rng import philox_seed_offset
from gencore.tolerance import attention_l1, within_2x

from _helpers import ALL_DEVICES, need_fused

LOW = [torch.float32, torch.bfloat16, torch.float16]


def make(B, H, Hkv, Sq, Sk, D, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Sq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Sk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Sk, D, generator=g, dtype=torch.float64)
    dout = torch.randn(B, H, Sq, D, generator=g, dtype=torch.float64)
    return [t.to(device=device, dtype=dtype) for t in (q, k, v, dout)]


def run(fn, q, k, v, dout, **kw):
    """(out, dq, dk, dv) of fn at the given inputs."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = fn(q, k, v, **kw)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), dout)
    return out.detach(), dq, dk, dv


def need_case(device, dtype, D):
    """need_fused, and on CUDA only what the tensor-core kernel runs (bf16/fp16, head dim 64, 96,
    128): impl="fused" refuses the rest there (test_cuda_refuses_other_cases)."""
    need_fused("attention", device)
    if torch.device(device).type == "cuda" and not cuda_kernel_covers(dtype, D):
        pytest.skip(f"the CUDA kernel does not run {dtype} at head dim {D}")


def fused(q, k, v, seed=None, **kw):
    """The fused op; `seed` seeds dropout through a fresh generator (the same mask as ref's)."""
    if seed is not None:
        kw["generator"] = torch.Generator().manual_seed(seed)
    need_case(q.device, q.dtype, q.shape[-1])
    return attention(q, k, v, impl="fused", **kw)


def ref(q, k, v, causal=False, key_padding_mask=None, scale=None, seed=None, **kw):
    """The reference; keyword features as attention's, dropout's keep-mask from `seed`."""
    if seed is not None:
        kw["seed_offset"] = philox_seed_offset(torch.Generator().manual_seed(seed))
    return attention_reference(q, k, v, causal, key_padding_mask, scale, **kw)[0]


def probs(q, k, causal=False, key_padding_mask=None, scale=None, **kw):
    """The reference's attention probabilities (B, H, S_q, S_k): its output for v = identity
    (with dropout: P times the keep-mask / (1 - p))."""
    eye = torch.eye(k.shape[2], dtype=q.dtype, device=q.device).expand(k.shape[0], k.shape[1], -1, -1)
    return ref(q, k, eye, causal, key_padding_mask, scale, **kw)


def assert_within_2x(exact, base, got, inputs, base_name, **kw):
    """out, dq, dk, dv: the fused error vs the float64 `exact` <= 2x the error of `base`, plus one
    rounding of each reduction (gencore.tolerance)."""
    q, k, v, dout = (t.double() for t in inputs)
    scale = kw.get("scale") or 1.0 / math.sqrt(q.shape[-1])
    l1 = attention_l1(q, k, v, dout, probs(q, k, **kw), scale)
    for name, e, s, f in zip(("out", "dq", "dk", "dv"), exact, base, got):
        assert f.dtype == inputs[0].dtype and f.shape == e.shape, name
        verdict = within_2x(e, s, f, l1[name])
        assert verdict.passed, f"{name}: fused err {verdict.error:.3g} > tolerance {verdict.tolerance:.3g} ({base_name})"


def check_flash_rule(q, k, v, dout, **kw):
    """Fused error vs the float64 reference <= 2x the error of the reference run in the inputs'
    own precision."""
    exact = run(ref, *(t.double() for t in (q, k, v, dout)), **kw)
    assert_within_2x(exact, run(ref, q, k, v, dout, **kw), run(fused, q, k, v, dout, **kw), (q, k, v, dout), "ref", **kw)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 4, 4, 128, 128, 64), (1, 4, 2, 77, 200, 32), (2, 2, 1, 64, 64, 128)])
def test_flash_rule(device, dtype, causal, shape):
    need_fused("attention", device)
    q, k, v, dout = make(*shape, dtype, device)
    check_flash_rule(q, k, v, dout, causal=causal)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", LOW)
def test_flash_rule_padding_and_gqa(device, dtype):
    need_fused("attention", device)
    q, k, v, dout = make(3, 6, 2, 50, 90, 64, dtype, device)
    mask = torch.rand(3, 90, generator=torch.Generator().manual_seed(1)) < 0.4
    check_flash_rule(q, k, v, dout, causal=True, key_padding_mask=mask.to(device))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("Sq", [1, 3, 4, 5])  # the CPU kernel's few-rows path ends at 4
@pytest.mark.parametrize("Sk,D", [(1, 8), (300, 64), (5000, 40)])
@pytest.mark.parametrize("key_layout", ["d-contiguous", "s-contiguous"])
def test_flash_rule_decode(device, dtype, Sq, Sk, D, key_layout):
    """Few queries against a KV cache: k, v are views of a longer cache buffer (non-contiguous),
    keys either row-major or transposed as KVCache stores them; GQA, padded keys, causal aligned
    to the newest key."""
    need_fused("attention", device)
    q, k, v, dout = make(2, 4, 2, Sq, Sk + 7, D, dtype, device)
    if key_layout == "s-contiguous":
        k = k.transpose(2, 3).contiguous().transpose(2, 3)
    k, v = k[:, :, :Sk], v[:, :, :Sk]
    mask = torch.rand(2, Sk, generator=torch.Generator().manual_seed(2)) < 0.3
    mask[:, -1] = False  # the newest key is always visible
    for causal in (False, True):
        check_flash_rule(q, k, v, dout, causal=causal, key_padding_mask=mask.to(device))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("S", [1, 17, 1000])
@pytest.mark.parametrize("D", [16, 40, 80, 256])
def test_odd_sizes(device, S, D):
    need_fused("attention", device)
    if S == 1000 and D == 256:
        pytest.skip("covered by the smaller head dims; slow reference")
    q, k, v, dout = make(1, 2, 1, S, S, D, torch.float32, device)
    check_flash_rule(q, k, v, dout, causal=True)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("gqa", [False, True])
@pytest.mark.parametrize("Sq", [2, 5])  # 2: the CPU kernel's few-rows (decoding) path
def test_gradcheck_fp64(device, causal, gqa, Sq):
    need_fused("attention", device)
    q, k, v, _ = make(1, 2, 1 if gqa else 2, Sq, 7, 16, torch.float64, device)
    mask = torch.tensor([[False, True, False, False, False, False, True]], device=device)
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.autograd.gradcheck(
        lambda q, k, v: fused(q, k, v, causal=causal, key_padding_mask=mask), (q, k, v))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("Sq,Sk", [(5, 12), (12, 5), (1, 30), (64, 130)])
def test_causal_bottom_right(device, Sq, Sk):
    """Query i sees keys j <= i + S_k - S_q; rows with none (S_q > S_k) are zeros, zero grad."""
    need_fused("attention", device)
    q, k, v, dout = make(2, 2, 2, Sq, Sk, 32, torch.float64, device)
    got = run(fused, q, k, v, dout, causal=True)
    want = run(ref, q, k, v, dout, causal=True)
    for f, r in zip(got, want):
        torch.testing.assert_close(f, r)
    # The reference itself against an explicit mask through SDPA.
    allowed = torch.arange(Sk)[None, :] <= torch.arange(Sq)[:, None] + (Sk - Sq)
    rows = allowed.any(-1)
    sdpa = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=allowed[rows].to(device))
    torch.testing.assert_close(got[0][:, :, rows], sdpa)
    assert (got[0][:, :, ~rows] == 0).all() and (got[1][:, :, ~rows] == 0).all()


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows(device, dtype):
    need_fused("attention", device)
    q, k, v, dout = make(3, 2, 2, 20, 20, 64, dtype, device)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0] = True          # batch 0: every key padded
    mask[1, :10] = True     # batch 1, causal: queries 0..9 see no key
    mask = mask.to(device)
    out, dq, dk, dv = run(fused, q, k, v, dout, causal=True, key_padding_mask=mask)
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
    assert (out[0] == 0).all() and (dq[0] == 0).all() and (dk[0] == 0).all() and (dv[0] == 0).all()
    assert (out[1, :, :10] == 0).all() and (dq[1, :, :10] == 0).all()
    assert (dk[1, :, :10] == 0).all() and (dv[1, :, :10] == 0).all()
    want = run(ref, *(t.double() for t in (q, k, v, dout)), causal=True, key_padding_mask=mask)
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for f, r in zip((out, dq, dk, dv), want):
        torch.testing.assert_close(f.double(), r, atol=tol, rtol=tol)
    _, lse = torch.ops.gencore.attention(q, k, v, mask, True, 0.125)
    assert torch.isneginf(lse[0]).all() and torch.isneginf(lse[1, :, :10]).all()


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_lse(device):
    need_case(device, torch.float32, 40)
    q, k, v, _ = make(2, 4, 2, 33, 47, 40, torch.float32, device)
    mask = (torch.arange(47) >= 40).expand(2, 47).to(device)
    out, lse = torch.ops.gencore.attention(q, k, v, mask, True, 0.3)
    r_out, r_lse = attention_reference(q.double(), k.double(), v.double(), True, mask, 0.3)
    torch.testing.assert_close(lse.double(), r_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), r_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_fused_qkv(device, dtype):
    """q, k, v as views of one fused projection (B, S, 3, H, D) -> (B, H, S, D) strides."""
    need_fused("attention", device)
    B, S, H, D = 2, 37, 4, 48
    qkv = torch.randn(B, S, 3, H, D, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    dout = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(4)).to(device, dtype).transpose(1, 2)
    got = run(fused, q, k, v, dout, causal=True)
    want = run(fused, *(t.contiguous() for t in (q, k, v, dout)), causal=True)
    for f, w in zip(got, want):
        torch.testing.assert_close(f, w, atol=0, rtol=0)
    check_flash_rule(q, k, v, dout, causal=True)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_scale_and_sdpa(device):
    need_fused("attention", device)
    q, k, v, _ = make(2, 3, 3, 40, 40, 64, torch.float32, device)
    for causal in (False, True):
        for scale in (None, 0.05):
            got = fused(q, k, v, causal=causal, scale=scale)
            want = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("Sq", [1, 9])  # 1: the CPU kernel's few-rows (decoding) path
def test_opcheck(device, Sq):
    dtype, D = (torch.bfloat16, 64) if device == "cuda" else (torch.float32, 32)
    need_case(device, dtype, D)
    q, k, v, _ = make(2, 4, 2, Sq, 13, D, dtype, device)
    mask = torch.zeros(2, 13, dtype=torch.bool, device=device)
    mask[1, 3] = True
    for t in (q, k, v):
        t.requires_grad_(True)
    for m, causal in ((None, False), (mask, True)):
        torch.library.opcheck(torch.ops.gencore.attention.default, (q, k, v, m, causal, 0.2))
    out, lse = torch.ops.gencore.attention(q, k, v, mask, True, 0.2)
    args = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse, mask, True, 0.2)
    torch.library.opcheck(torch.ops.gencore.attention_backward.default, args)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_compile_fullgraph(device):
    need_case(device, torch.float32, 32)
    q, k, v, dout = make(2, 4, 2, 24, 24, 32, torch.float32, device)
    mask = torch.zeros(2, 24, dtype=torch.bool, device=device)
    mask[0, -5:] = True

    def f(q, k, v):
        return attention(q, k, v, causal=True, key_padding_mask=mask, impl="fused") * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = run(lambda q, k, v: compiled(q, k, v), q, k, v, dout)
    want = run(f, q, k, v, dout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_reference_matches_sdpa():
    q, k, v, _ = make(2, 4, 2, 30, 30, 16, torch.float64, "cpu")
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[1, 20:] = True
    got = ref(q, k, v, causal=True, key_padding_mask=mask)
    allowed = torch.ones(30, 30, dtype=torch.bool).tril() & ~mask[:, None, None, :]
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    torch.testing.assert_close(got, want)


def test_reference_fallback_impl():
    q, k, v, _ = make(1, 2, 2, 8, 8, 16, torch.float32, "cpu")
    torch.testing.assert_close(attention(q, k, v, impl="reference"), ref(q, k, v))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_bad_input(device):
    q, k, v, _ = make(2, 4, 2, 8, 8, 16, torch.float32, device)
    with pytest.raises(ValueError, match="batch sizes differ"):
        attention(q, k[:1], v[:1])
    with pytest.raises(ValueError, match="head dims differ"):
        attention(q, k[..., :8], v[..., :8])
    with pytest.raises(ValueError, match="multiple of k/v heads"):
        attention(q, k[:, :1].expand(2, 3, 8, 16), v[:, :1].expand(2, 3, 8, 16))
    with pytest.raises(ValueError, match="same heads and length"):
        attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="4-d"):
        attention(q[0], k[0], v[0])
    with pytest.raises(TypeError, match="bool"):
        attention(q, k, v, key_padding_mask=torch.zeros(2, 8, device=device))
    with pytest.raises(ValueError, match=r"shape \(batch, S_k\)"):
        attention(q, k, v, key_padding_mask=torch.zeros(2, 7, dtype=torch.bool, device=device))
    with pytest.raises(TypeError, match="same dtype|one dtype"):
        attention(q, k.double(), v)
    with pytest.raises(TypeError, match="float32, float64"):
        attention(q.int(), k.int(), v.int())


def test_bad_input_reaches_kernel_checks():
    """The compiled op checks its inputs too (callers of torch.ops.gencore.attention)."""
    need_fused("attention", "cpu")
    q, k, v, _ = make(2, 4, 3, 8, 8, 16, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="multiple of k/v heads"):
        torch.ops.gencore.attention(q, k, v, None, False, 1.0)
    with pytest.raises(RuntimeError, match="key_padding_mask must be bool"):
        torch.ops.gencore.attention(q, k[:, :2], v[:, :2], torch.zeros(2, 8), False, 1.0)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("threads", [1, 2, 4])
def test_backward_few_kv_heads_any_threads(device, threads):
    """Batch x kv heads below the thread count: the CPU backward splits the keys into chunks and
    adds their dQ partial sums; results must not depend on the thread count."""
    need_fused("attention", device)
    q, k, v, dout = make(1, 4, 1, 300, 300, 64, torch.float32, device)
    mask = torch.zeros(1, 300, dtype=torch.bool, device=device)
    mask[0, 100:130] = True
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_flash_rule(q, k, v, dout, causal=True, key_padding_mask=mask)
    finally:
        torch.set_num_threads(old)


# -- CUDA: the tensor-core kernels (bf16/fp16, D 64/96/128), the one CUDA family -------------------
# The baseline is PyTorch's own SDPA in the same dtype: the fused error vs the float64 gold must
# stay within 2x SDPA's error on the same inputs (gencore.tolerance).

CUDA_ONLY = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
HALF = [torch.bfloat16, torch.float16]


def visible(Sq, Sk, causal, key_padding_mask):
    """(B or 1, Sq, Sk) bool: which keys each query attends (bottom-right causal, padding)."""
    allowed = torch.ones(1, Sq, Sk, dtype=torch.bool)
    if causal:
        allowed &= torch.arange(Sk)[None, :] <= torch.arange(Sq)[:, None] + (Sk - Sq)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask.cpu()[:, None, :]
    return allowed


def sdpa(q, k, v, causal=False, key_padding_mask=None, scale=None):
    """PyTorch's SDPA with gencore's semantics: bottom-right causal, key padding, GQA by repetition."""
    group = q.shape[1] // k.shape[1]
    k, v = (t.repeat_interleave(group, dim=1) for t in (k, v))
    Sq, Sk = q.shape[2], k.shape[2]
    if key_padding_mask is None and (not causal or Sq == Sk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    mask = visible(Sq, Sk, causal, key_padding_mask)[:, None].to(q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


def check_vs_sdpa(q, k, v, dout, **kw):
    """Fused out, dq, dk, dv vs the float64 reference: error <= 2x SDPA's error in the same dtype
    (rows that see no key have no SDPA value: there the reference in the inputs' dtype is the
    baseline, through check_flash_rule)."""
    if not visible(q.shape[2], k.shape[2], kw.get("causal", False), kw.get("key_padding_mask")).any(-1).all():
        return check_flash_rule(q, k, v, dout, **kw)
    exact = run(ref, *(t.double() for t in (q, k, v, dout)), **kw)
    assert_within_2x(exact, run(sdpa, q, k, v, dout, **kw), run(fused, q, k, v, dout, **kw), (q, k, v, dout), "SDPA", **kw)


@CUDA_ONLY
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("D", [64, 96, 128])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_head_dims(dtype, D, causal):
    need_fused("attention", "cuda")
    q, k, v, dout = make(2, 4, 4, 256, 256, D, dtype, "cuda", seed=D)
    check_vs_sdpa(q, k, v, dout, causal=causal)


@CUDA_ONLY
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Sq,Sk", [(1, 5003), (3, 3), (3, 127), (127, 3), (127, 1023), (1023, 1023), (5000, 64),
                                   (129, 129)])
def test_cuda_lengths(D, Sq, Sk):
    """Odd lengths and S_q != S_k both ways, causal (bottom-right; S_q > S_k leaves rows without
    keys) and not, GQA."""
    need_fused("attention", "cuda")
    q, k, v, dout = make(1, 4, 2, Sq, Sk, D, torch.bfloat16, "cuda", seed=Sq + Sk)
    for causal in (False, True):
        check_vs_sdpa(q, k, v, dout, causal=causal)


@CUDA_ONLY
@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_gqa_padding(dtype, causal):
    need_fused("attention", "cuda")
    q, k, v, dout = make(3, 8, 2, 300, 333, 128, dtype, "cuda", seed=11)
    mask = torch.rand(3, 333, generator=torch.Generator().manual_seed(12)) < 0.3
    mask[:, -1] = False  # every query sees the last key (SDPA has no value for rows without keys)
    check_vs_sdpa(q, k, v, dout, causal=causal, key_padding_mask=mask.cuda())
    mask[2] = True  # batch 2 sees nothing: zeros, zero gradients, lse -inf
    mask = mask.cuda()
    out, dq, dk, dv = run(fused, q, k, v, dout, causal=causal, key_padding_mask=mask)
    assert (out[2] == 0).all() and (dq[2] == 0).all() and (dk[2] == 0).all() and (dv[2] == 0).all()
    assert (dk[0][:, mask[0]] == 0).all() and (dv[0][:, mask[0]] == 0).all()
    _, lse = torch.ops.gencore.attention(q, k, v, mask, causal, 0.1)
    assert torch.isneginf(lse[2]).all() and torch.isfinite(lse[:2]).all()


@CUDA_ONLY
@pytest.mark.parametrize("D", [64, 96])
def test_cuda_non_contiguous(D):
    """q, k, v as views of one fused projection (B, S, 3, H, D); dout transposed; and a q whose
    data starts 1 element off 16-byte alignment (the wrapper copies it to aligned memory: the
    kernels move rows 16 bytes at a time)."""
    need_fused("attention", "cuda")
    B, S, H = 2, 333, 4
    qkv = torch.randn(B, S, 3, H, D, generator=torch.Generator().manual_seed(3)).to("cuda", torch.bfloat16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    dout = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(4)).to("cuda", torch.bfloat16).transpose(1, 2)
    check_vs_sdpa(q, k, v, dout, causal=True, scale=0.07)
    got = run(fused, q, k, v, dout, causal=True, scale=0.07)
    want = run(fused, *(t.contiguous() for t in (q, k, v, dout)), causal=True, scale=0.07)
    for f, w in zip(got, want):
        torch.testing.assert_close(f, w, atol=0, rtol=0)
    shifted = torch.empty(B * H * S * D + 1, device="cuda", dtype=torch.bfloat16)[1:].view(B, H, S, D)
    shifted.copy_(q)
    check_vs_sdpa(shifted, k, v, dout, causal=True)


@CUDA_ONLY
@pytest.mark.parametrize("D", [64, 128])
def test_cuda_mma_backward_deterministic(D):
    """The tensor-core backward has no atomics: dQ, dK, dV are bit-identical across runs."""
    need_fused("attention", "cuda")
    q, k, v, dout = make(2, 8, 2, 1000, 1000, D, torch.bfloat16, "cuda", seed=21)
    mask = (torch.rand(2, 1000, generator=torch.Generator().manual_seed(22)) < 0.2).cuda()
    first = run(fused, q, k, v, dout, causal=True, key_padding_mask=mask)
    for _ in range(2):
        again = run(fused, q, k, v, dout, causal=True, key_padding_mask=mask)
        for a, b in zip(first, again):
            assert torch.equal(a, b)


@CUDA_ONLY
@pytest.mark.parametrize("dtype,D", [(torch.float32, 64), (torch.float64, 64), (torch.bfloat16, 32),
                                     (torch.float16, 256), (torch.bfloat16, 80)])
def test_cuda_refuses_other_cases(dtype, D):
    """impl="fused" on CUDA names what the kernel cannot run and what to use; impl="auto" runs the
    same call on SDPA with gencore's semantics (bottom-right causal, key padding, GQA)."""
    need_fused("attention", "cuda")
    assert not cuda_kernel_covers(dtype, D)
    q, k, v, dout = make(2, 4, 2, 33, 47, D, dtype, "cuda", seed=51)
    mask = (torch.rand(2, 47, generator=torch.Generator().manual_seed(52)) < 0.3).cuda()
    mask[:, -1] = False
    with pytest.raises(RuntimeError, match=r"the CUDA kernel runs bfloat16 and float16 with head dim 64, 96 or "
                                           r"128 .*impl=\"auto\" or impl=\"sdpa\""):
        attention(q, k, v, causal=True, key_padding_mask=mask, impl="fused")
    got = attention(q, k, v, causal=True, key_padding_mask=mask, impl="auto")
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(got, sdpa(q, k, v, causal=True, key_padding_mask=mask), atol=tol, rtol=tol)


@CUDA_ONLY
@pytest.mark.parametrize("dtype", HALF)
def test_cuda_mma_small(dtype):
    """Small shapes for compute-sanitizer (memcheck, racecheck): every tensor-core path once."""
    need_fused("attention", "cuda")
    q, k, v, dout = make(1, 4, 2, 70, 150, 64, dtype, "cuda", seed=41)
    mask = (torch.rand(1, 150, generator=torch.Generator().manual_seed(42)) < 0.2).cuda()
    check_flash_rule(q, k, v, dout, causal=True, key_padding_mask=mask)
    for D in (96, 128):
        q, k, v, dout = make(1, 2, 2, 130, 70, D, dtype, "cuda", seed=D)
        check_flash_rule(q, k, v, dout, causal=True)


def test_gpu_check_script_smoke():
    """benchmarks/gpu/attention_check.py (the one-call GPU check) runs end to end on tiny shapes on
    the CPU kernels, so that a GPU session finds it working."""
    need_fused("attention", "cpu")
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu" / "attention_check.py"), "--smoke",
                          "--device", "cpu"], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(root)))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "PASS" in res.stdout and "| 1x2x70x64 | True | fwd+bwd | mma |" in res.stdout
