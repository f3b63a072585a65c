"""Attention sinks (gpt-oss's s_aux): `sinks=` on attention and varlen_attn. Fused vs the float64
reference under the 2x rule (out, dq, dk, dv and the sinks' gradient), the reference vs gpt-oss's
eager formulation, fp64 gradcheck (sinks included), opcheck, bad input, and transformers' gpt-oss
trained on attn_implementation="gencore" against "eager"."""
import math

import pytest
import torch

from gencore.ops import attention, varlen_attn
from gencore.ops.reference import attention_reference
from gencore.tolerance import within_2x

from _helpers import need_fused
from test_attention import make
from test_attention_features import docs, random_mask

S = 130
SINKS = torch.tensor([0.3, -2.0, 1.5, 4.0])

CASES = {
    "plain": dict(),
    "causal": dict(causal=True),
    "window softcap": dict(causal=True, window=(40, 0), softcap=4.0),
    "documents padding": dict(causal=True, document_ids=docs(2, S, [[40, 70], [5, 100]]),
                              key_padding_mask=random_mask((2, S), 0.2, 3)),
    "dropout mask": dict(attn_mask=random_mask((2, 1, S, S), 0.7, 4), dropout_p=0.2, seed=5),
}


def run(impl, q, k, v, dout, sinks, seed=None, **kw):
    """(out, dq, dk, dv, dsinks)."""
    if seed is not None:
        kw["generator"] = torch.Generator().manual_seed(seed)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    s = sinks.detach().clone().requires_grad_(True)
    out = attention(*leaves, sinks=s, impl=impl, **kw)
    return (out.detach(), *torch.autograd.grad(out, [*leaves, s], dout))


def eager_gpt_oss(q, k, v, sinks, scale, mask):
    """transformers' gpt-oss eager attention: the sink concatenated as a column, softmax, dropped."""
    w = q @ k.transpose(-2, -1) * scale
    w = w.masked_fill(~mask, float("-inf"))
    sink = sinks.reshape(1, -1, 1, 1).expand(q.shape[0], -1, q.shape[-2], -1)
    combined = torch.cat([w, sink], dim=-1)
    combined = combined - combined.max(dim=-1, keepdim=True).values
    probs = torch.softmax(combined, dim=-1)[..., :-1]
    return probs @ v


@pytest.mark.parametrize("impl", ["fused", "sdpa"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES) + ["decode", "decode padding"])
def test_flash_rule(name, dtype, impl):
    """out, dq, dk, dv, dsinks within 2x the reference's own error in that dtype (GQA 4 on 2),
    for the fused kernel and for the built-in route (sinks as one more key of SDPA)."""
    if impl == "fused":
        need_fused("attention", "cpu")
    kw = dict(CASES.get(name, {}))
    q, k, v, dout = make(2, 4, 2, 1 if "decode" in name else S, S, 32, dtype, "cpu", seed=1)
    if name == "decode padding":  # batch 1 sees no key: out 0, its lse the sink
        kw["key_padding_mask"] = torch.zeros(2, S, dtype=torch.bool)
        kw["key_padding_mask"][1] = True
    exact = run("reference", *(t.double() for t in (q, k, v, dout)), SINKS.double(), **kw)
    base = run("reference", q, k, v, dout, SINKS, **kw)
    got = run(impl, q, k, v, dout, SINKS, **kw)
    for name_, e, b, f in zip(("out", "dq", "dk", "dv", "dsinks"), exact, base, got):
        assert f.shape == e.shape, name_
        # slack: one rounding of a sum of the reduction's size (|value| x rows it sums over)
        l1 = e.abs() + (dout.double().abs().sum() if name_ == "dsinks" else e.abs().amax())
        verdict = within_2x(e, b, f, l1, dtype=dtype)
        assert verdict.passed, f"{name_}: err {verdict.error:.3g} > tol {verdict.tolerance:.3g}"


def test_reference_is_gpt_oss_eager():
    q, k, v, _ = make(2, 4, 4, 9, 9, 8, torch.float64, "cpu")
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    want = eager_gpt_oss(q, k, v, SINKS.double(), 0.3, mask)
    got = attention_reference(q, k, v, True, None, 0.3, sinks=SINKS.double())[0]
    torch.testing.assert_close(got, want)


def test_lse_counts_the_sink_and_masked_rows():
    """lse includes the sink; a row that sees no key: out 0, lse = sink, and its gradients finite."""
    need_fused("attention", "cpu")
    q, k, v, dout = make(1, 4, 4, 6, 6, 8, torch.float32, "cpu")
    mask = torch.ones(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 2, :] = False
    for impl in ("fused", "reference"):
        out, lse = attention(q, k, v, attn_mask=mask, sinks=SINKS, return_lse=True, impl=impl)
        assert (out[:, :, 2] == 0).all()
        torch.testing.assert_close(lse[0, :, 2], SINKS)
    r_out, r_lse = attention_reference(q.double(), k.double(), v.double(), attn_mask=mask, sinks=SINKS.double())
    out, lse = attention(q, k, v, attn_mask=mask, sinks=SINKS, return_lse=True, impl="fused")
    torch.testing.assert_close(lse.double(), r_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), r_out, atol=1e-5, rtol=1e-5)
    # a -inf sink is no sink
    none = torch.full((4,), float("-inf"))
    torch.testing.assert_close(attention(q, k, v, sinks=none, impl="fused"), attention(q, k, v, impl="fused"))


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("kw", [dict(causal=True), dict(window=(1, 2), softcap=0.7),
                                dict(causal=True, dropout_p=0.3, seed=3)], ids=["causal", "window softcap", "dropout"])
def test_gradcheck_fp64(impl, kw):
    """q, k, v and sinks, through out and the lse."""
    if impl == "fused":
        need_fused("attention", "cpu")
    kw = dict(kw)
    seed = kw.pop("seed", None)
    q, k, v, _ = make(1, 2, 1, 5, 7, 8, torch.float64, "cpu")
    sinks = torch.tensor([0.2, -0.5], dtype=torch.float64)
    w = torch.randn(1, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    leaves = [t.requires_grad_(True) for t in (q, k, v, sinks)]

    def f(q, k, v, s):
        if seed is not None:
            kw["generator"] = torch.Generator().manual_seed(seed)
        out, lse = attention(q, k, v, sinks=s, return_lse=True, impl=impl, **kw)
        return out, lse * w

    torch.autograd.gradcheck(f, leaves)


def test_varlen_sinks():
    """varlen_attn with sinks: fused vs reference, and per sequence vs attention on that sequence."""
    need_fused("attention", "cpu")
    lengths = [7, 0, 12, 3]
    c = torch.tensor([0] + lengths, dtype=torch.int32).cumsum(0).to(torch.int32)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(22, 4, 8, generator=g, dtype=torch.float64) for _ in range(3))
    s = SINKS.double()
    outs = {impl: varlen_attn(q, k, v, c, c, 12, 12, window_size=(-1, 0), sinks=s, impl=impl)
            for impl in ("fused", "reference", "sdpa")}
    start = 0
    for n in lengths:
        sl = slice(start, start + n)
        want = attention(*(t[sl].transpose(0, 1)[None] for t in (q, k, v)), causal=True, sinks=s,
                         impl="reference")[0].transpose(0, 1)
        for impl, out in outs.items():
            torch.testing.assert_close(out[sl], want, msg=impl)
        start += n
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v, s)]
    torch.autograd.gradcheck(lambda q, k, v, s: varlen_attn(q, k, v, c, c, 12, 12, window_size=(-1, 0), sinks=s,
                                                            impl="fused"), leaves)


def test_opcheck():
    need_fused("attention", "cpu")
    q, k, v, _ = make(2, 4, 2, 9, 9, 16, torch.float32, "cpu")
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    sinks = SINKS.clone().requires_grad_(True)
    torch.library.opcheck(torch.ops.gencore.attention.default,
                          (*leaves, None, True, 0.2, -1, -1, 0.0, None, None, 0.0, None, sinks))


def test_compile_fullgraph():
    need_fused("attention", "cpu")
    import torch._dynamo
    from torch._dynamo.utils import counters
    q, k, v, _ = make(2, 4, 2, 24, 24, 16, torch.float32, "cpu")

    def f(q, k, v, s):
        return attention(q, k, v, causal=True, sinks=s, impl="fused").sum()

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a = [t.detach().clone().requires_grad_(True) for t in (q, k, v, SINKS)]
    b = [t.detach().clone().requires_grad_(True) for t in (q, k, v, SINKS)]
    compiled(*a).backward()
    compiled(*a)
    f(*b).backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad)
    assert counters["stats"]["unique_graphs"] == 1


def test_bad_input():
    q, k, v, _ = make(1, 4, 4, 5, 5, 8, torch.float32, "cpu")
    with pytest.raises(ValueError, match=r"sinks must have shape \(heads,\) = \(4,\)"):
        attention(q, k, v, sinks=torch.zeros(3))
    with pytest.raises(ValueError, match="sinks must have shape"):
        attention(q, k, v, sinks=torch.zeros(1, 4))
    with pytest.raises(TypeError, match="sinks must be a floating tensor"):
        attention(q, k, v, sinks=torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="sinks must be a floating tensor"):
        attention(q, k, v, sinks=[0.0] * 4)
    need_fused("attention", "cpu")
    with pytest.raises(RuntimeError, match="sinks must have shape"):
        torch.ops.gencore.attention(q, k, v, None, False, 0.3, sinks=torch.zeros(2))
