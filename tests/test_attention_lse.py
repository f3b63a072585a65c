"""attention(..., return_lse=True): the row log-sum-exp, returned and differentiable. Fused vs the
reference (lse itself, the 2x rule on out/dq/dk/dv with a loss that reads the lse), chunked
attention combined through the lse equals the unchunked call (forward and gradients), fp64
gradcheck through the lse, opcheck with grad_lse, torch.compile, bad input. CPU; the CUDA kernels
take grad_lse through their delta (test_attention_emulated.py runs them)."""
import math

import pytest
import torch

from gencore.ops import attention
from gencore.ops.reference import attention_reference
from gencore.ops.rng import philox_seed_offset
from gencore.tolerance import attention_l1, within_2x

from _helpers import need_fused
from test_attention import make, probs
from test_attention_features import docs, random_mask

S = 130

CASES = {
    "plain": dict(),
    "causal gqa": dict(causal=True),
    "window softcap": dict(causal=True, window=(40, 0), softcap=4.0),
    "documents padding": dict(causal=True, document_ids=docs(2, S, [[40, 70], [5, 100]]),
                              key_padding_mask=random_mask((2, S), 0.2, 3)),
    "dropout mask": dict(attn_mask=random_mask((2, 1, S, S), 0.7, 4), dropout_p=0.2, seed=5),
}


def _kw(kw, impl):
    kw = dict(kw)
    seed = kw.pop("seed", None)
    if seed is not None:
        kw["generator"] = torch.Generator().manual_seed(seed)
    return dict(kw, impl=impl)


def run_lse(impl, q, k, v, dout, dlse, **kw):
    """(out, lse, dq, dk, dv) for the loss sum(out * dout) + sum(lse * dlse)."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out, lse = attention(q, k, v, return_lse=True, **_kw(kw, impl))
    seen = torch.isfinite(lse)
    loss = (out.double() * dout.double()).sum() + (torch.where(seen, lse, 0).double() * dlse).sum()
    dq, dk, dv = torch.autograd.grad(loss, (q, k, v))
    return out.detach(), lse.detach(), dq, dk, dv


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_lse_flash_rule(name, dtype):
    """lse equals the reference's; out, dq, dk, dv with a loss that reads lse within 2x of the
    reference's own error in that dtype."""
    need_fused("attention", "cpu")
    kw = CASES[name]
    q, k, v, dout = make(2, 4, 2, S, S, 32, dtype, "cpu", seed=1)
    dlse = torch.randn(2, 4, S, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = run_lse("reference", *(t.double() for t in (q, k, v, dout)), dlse, **kw)
    base = run_lse("reference", q, k, v, dout, dlse, **kw)
    got = run_lse("fused", q, k, v, dout, dlse, **kw)
    assert got[1].dtype == torch.float32 and got[1].shape == (2, 4, S)
    seen = torch.isfinite(exact[1])
    assert torch.equal(torch.isfinite(got[1]), seen) and torch.isneginf(got[1][~seen]).all()
    # lse: the 2x rule against the float64 reference's, with one float32 rounding of its size
    v_lse = within_2x(exact[1][seen], base[1][seen].double(), got[1][seen].double(), dtype=torch.float32)
    assert v_lse.passed, f"lse: err {v_lse.error:.3g} > tol {v_lse.tolerance:.3g}"
    qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
    pk = {f: x for f, x in kw.items() if f not in ("seed", "dropout_p")}
    # the lse term adds P * dlse to dS: size the rounding slack with |dlse| folded into dout's
    l1 = attention_l1(qd, kd, vd, dd.abs() + dlse.abs()[..., None], probs(qd, kd, **pk), 1 / math.sqrt(32))
    for i, name_ in ((0, "out"), (2, "dq"), (3, "dk"), (4, "dv")):
        verdict = within_2x(exact[i], base[i], got[i], l1[name_])
        assert verdict.passed, f"{name_}: err {verdict.error:.3g} > tol {verdict.tolerance:.3g}"


def test_lse_matches_reference_exactly_enough():
    """Without dropout, lse vs the float64 reference (including -inf rows)."""
    need_fused("attention", "cpu")
    q, k, v, _ = make(2, 4, 2, 33, 47, 40, torch.float32, "cpu")
    mask = torch.ones(2, 1, 33, 47, dtype=torch.bool)
    mask[1, :, 5] = False
    out, lse = attention(q, k, v, causal=True, attn_mask=mask, return_lse=True, impl="fused")
    r_out, r_lse = attention_reference(q.double(), k.double(), v.double(), True, attn_mask=mask)
    assert torch.isneginf(lse[1, :, 5]).all() and torch.isneginf(r_lse[1, :, 5]).all()
    torch.testing.assert_close(lse.double(), r_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), r_out, atol=1e-5, rtol=1e-5)


def combine(parts):
    """Attention over the union of key chunks from each chunk's (out, lse): weights exp(lse_c - lse)."""
    lses = torch.stack([l for _, l in parts])                    # (C, B, H, S_q)
    lse = torch.logsumexp(lses, dim=0)                           # (B, H, S_q)
    w = torch.exp(lses - lse).nan_to_num(0.0)                    # rows no chunk sees: 0
    out = sum(w[c][..., None] * o.to(w.dtype) for c, (o, _) in enumerate(parts))
    return out, lse


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_attention_through_lse(impl, dtype):
    """Two halves of the keys, each with its own attention call, combined by their lse, equal the
    call on all keys: outputs and the gradients of q, k, v (which flow through out and lse)."""
    if impl == "fused":
        need_fused("attention", "cpu")
    B, H, Hkv, Sq, Sk, D = 2, 4, 2, 70, 150, 32
    q, k, v, dout = make(B, H, Hkv, Sq, Sk, D, dtype, "cpu", seed=3)
    pad = random_mask((B, Sk), 0.2, 6)
    pad[0, 80:] = True  # batch 0: the second half sees nothing (its lse is -inf)

    def whole(q, k, v):
        return attention(q, k, v, key_padding_mask=pad, impl=impl)

    def chunked(q, k, v):
        h = Sk // 2
        parts = [attention(q, k[:, :, s], v[:, :, s], key_padding_mask=pad[:, s], return_lse=True, impl=impl)
                 for s in (slice(0, h), slice(h, Sk))]
        return combine(parts)[0].to(dtype)

    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    want = whole(*leaves)
    g_want = torch.autograd.grad(want, leaves, dout)
    got = chunked(*leaves)
    g_got = torch.autograd.grad(got, leaves, dout)
    tol = dict(atol=2e-5, rtol=2e-5) if dtype == torch.float32 else dict(atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(got, want, **tol)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(1, 2), softcap=0.7),
                                dict(causal=True, document_ids=torch.tensor([[0, 0, 0, 1, 1, 2, 2]])),
                                dict(dropout_p=0.3, seed=3)], ids=["causal", "window softcap", "docs", "dropout"])
@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_gradcheck_fp64_through_lse(impl, kw):
    if impl == "fused":
        need_fused("attention", "cpu")
    q, k, v, _ = make(1, 2, 1, 7, 7, 8, torch.float64, "cpu")
    w = torch.randn(1, 2, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [t.requires_grad_(True) for t in (q, k, v)]

    def f(q, k, v):
        out, lse = attention(q, k, v, return_lse=True, **_kw(kw, impl))
        return out, torch.where(torch.isfinite(lse), lse, 0) * w

    torch.autograd.gradcheck(f, leaves)
    # lse alone (grad_out absent)
    torch.autograd.gradcheck(lambda q, k, v: attention(q, k, v, return_lse=True, **_kw(kw, impl))[1], leaves)


def test_fully_masked_rows_lse_gradient_zero():
    """A row that sees no key: lse -inf, its gradient zero (no NaN), fused and reference."""
    q, k, v, _ = make(1, 2, 2, 6, 6, 8, torch.float32, "cpu")
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 2, :] = False
    for impl in ("fused", "reference"):
        if impl == "fused":
            need_fused("attention", "cpu")
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        out, lse = attention(*leaves, attn_mask=mask, return_lse=True, impl=impl)
        assert torch.isneginf(lse[..., 2]).all()
        (out.sum() + torch.where(torch.isfinite(lse), lse, 0).sum()).backward()
        for t in leaves:
            assert torch.isfinite(t.grad).all()
        assert (leaves[0].grad[:, :, 2] == 0).all()


def test_auto_returns_lse():
    """impl="auto" with return_lse runs the kernel (no built-in returns the lse)."""
    q, k, v, _ = make(1, 2, 2, 20, 20, 16, torch.float32, "cpu")
    out, lse = attention(q, k, v, causal=True, return_lse=True)
    r_out, r_lse = attention_reference(q, k, v, True)
    torch.testing.assert_close(out, r_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, r_lse, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="return_lse"):
        attention(q, k, v, return_lse=True, impl="sdpa")


def test_opcheck_grad_lse():
    need_fused("attention", "cpu")
    q, k, v, _ = make(2, 4, 2, 9, 9, 16, torch.float32, "cpu")
    so = philox_seed_offset(torch.Generator().manual_seed(0))
    out, lse = torch.ops.gencore.attention(q, k, v, None, True, 0.2, 3, -1, 2.5, None, None, 0.25, so)
    bargs = (torch.randn_like(out), q, k, v, out, lse, None, True, 0.2, 3, -1, 2.5, None, None, 0.25, so,
             torch.randn_like(lse))
    torch.library.opcheck(torch.ops.gencore.attention_backward.default, bargs)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    torch.library.opcheck(torch.ops.gencore.attention.default, (*leaves, None, True, 0.2))


def test_grad_lse_bad_shape():
    need_fused("attention", "cpu")
    q, k, v, _ = make(1, 2, 2, 5, 5, 8, torch.float32, "cpu")
    out, lse = torch.ops.gencore.attention(q, k, v, None, False, 0.3)
    with pytest.raises(RuntimeError, match="grad_lse must have lse's shape"):
        torch.ops.gencore.attention_backward(out, q, k, v, out, lse, None, False, 0.3, grad_lse=lse[0])


def test_compile_fullgraph_lse():
    need_fused("attention", "cpu")
    import torch._dynamo
    from torch._dynamo.utils import counters
    q, k, v, _ = make(2, 4, 2, 24, 24, 16, torch.float32, "cpu")

    def f(q, k, v):
        out, lse = attention(q, k, v, causal=True, return_lse=True, impl="fused")
        return out.sum() + lse.sum()

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    compiled(*leaves).backward()
    compiled(*leaves)
    leaves2 = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    f(*leaves2).backward()
    for a, b in zip(leaves, leaves2):
        torch.testing.assert_close(a.grad, b.grad)
    assert counters["stats"]["unique_graphs"] == 1
