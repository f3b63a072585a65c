"""gencore.ops.varlen_attn: torch's varlen_attn semantics on packed sequences. Fused vs the float64
reference (reference/varlen.py) under the 2x rule, vs SDPA on each sequence padded with masks (and
vs torch's own varlen_attn where it runs: CUDA), lse, fp64 gradcheck, opcheck, bad input, and a
nanoGPT-style model trained on packed documents against the same model on padded batches."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gencore.ops import varlen_attn
from gencore.ops.reference.varlen import varlen_reference
from gencore.ops.rng import philox_seed_offset
from gencore.tolerance import attention_l1, within_2x

from _helpers import need_fused


def cu(lengths, device="cpu"):
    return torch.tensor([0] + list(lengths), dtype=torch.int32, device=device).cumsum(0).to(torch.int32)


def packed(len_q, len_k, H, Hkv, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    Tq, Tk = sum(len_q), sum(len_k)
    q, dout = (torch.randn(Tq, H, D, generator=g, dtype=torch.float64) for _ in range(2))
    k, v = (torch.randn(Tk, Hkv, D, generator=g, dtype=torch.float64) for _ in range(2))
    return [t.to(dtype) for t in (q, k, v, dout)]


def run(impl, q, k, v, dout, len_q, len_k, seed=None, **kw):
    """(out, dq, dk, dv)."""
    if seed is not None:
        kw["generator"] = torch.Generator().manual_seed(seed)
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
    out = varlen_attn(*leaves, cu(len_q), cu(len_k), max(len_q), max(len_k), impl=impl,
                      enable_gqa=q.shape[1] != k.shape[1], **kw)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout))


LENGTHS = [70, 1, 130, 0, 45]  # an empty sequence and a one-token one among them
CASES = {
    "full": dict(len_q=LENGTHS, len_k=LENGTHS),
    "causal": dict(len_q=LENGTHS, len_k=LENGTHS, window_size=(-1, 0)),
    "window": dict(len_q=LENGTHS, len_k=LENGTHS, window_size=(16, 0)),
    "window two-sided": dict(len_q=LENGTHS, len_k=LENGTHS, window_size=(8, 24)),
    "cross lengths causal": dict(len_q=[30, 5, 64, 0, 3], len_k=[50, 5, 20, 7, 130], window_size=(-1, 0)),
    "softcap dropout": dict(len_q=LENGTHS, len_k=LENGTHS, window_size=(-1, 0), softcap=3.0, dropout_p=0.2, seed=4),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_flash_rule(name, dtype):
    """out, dq, dk, dv within 2x the reference's own error in that dtype (GQA 4 on 2 heads)."""
    need_fused("attention", "cpu")
    kw = dict(CASES[name])
    len_q, len_k = kw.pop("len_q"), kw.pop("len_k")
    q, k, v, dout = packed(len_q, len_k, 4, 2, 32, dtype, seed=1)
    exact = run("reference", *(t.double() for t in (q, k, v, dout)), len_q, len_k, **kw)
    base = run("reference", q, k, v, dout, len_q, len_k, **kw)
    got = run("fused", q, k, v, dout, len_q, len_k, **kw)
    # rounding slack from attention's reductions on the packed view (tolerance.attention_l1), P
    # the reference's probabilities (its output for v = identity)
    qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
    Tk = kd.shape[0]
    eye = torch.eye(Tk, dtype=torch.float64)[:, None, :].expand(Tk, 2, Tk)
    rk = {n: x for n, x in kw.items() if n in ("softcap", "dropout_p")}
    if "seed" in kw:
        rk["seed_offset"] = philox_seed_offset(torch.Generator().manual_seed(kw["seed"]))
    win = kw.get("window_size", (-1, -1))
    P = varlen_reference(qd, kd, eye, cu(len_q), cu(len_k), scale=1 / math.sqrt(32),
                         window=None if win == (-1, -1) else win, **rk)[0]
    to4 = lambda t: t.transpose(0, 1)[None]
    l1 = attention_l1(to4(qd), to4(kd), to4(vd), to4(dd), to4(P), 1 / math.sqrt(32))
    l1 = {n: x[0].transpose(0, 1) for n, x in l1.items()}  # back to (T, H, D)
    for name_, e, b, f in zip(("out", "dq", "dk", "dv"), exact, base, got):
        assert f.dtype == dtype and f.shape == e.shape, name_
        verdict = within_2x(e, b, f, l1[name_])
        assert verdict.passed, f"{name_}: err {verdict.error:.3g} > tol {verdict.tolerance:.3g}"


def padded_sdpa_loop(q, k, v, len_q, len_k, window_size=(-1, -1)):
    """Per sequence, torch's SDPA on that sequence alone (bottom-right causal as FlashAttention's
    varlen: a mask built per sequence), concatenated."""
    outs, iq, ik = [], 0, 0
    H, Hkv = q.shape[1], k.shape[1]
    for lq, lk in zip(len_q, len_k):
        qs, ks, vs = q[iq:iq + lq].transpose(0, 1), k[ik:ik + lk].transpose(0, 1), v[ik:ik + lk].transpose(0, 1)
        if Hkv != H:
            ks, vs = ks.repeat_interleave(H // Hkv, 0), vs.repeat_interleave(H // Hkv, 0)
        pos = torch.arange(lq)[:, None] + lk - lq
        j = torch.arange(lk)[None, :]
        mask = torch.ones(lq, lk, dtype=torch.bool)
        left, right = window_size
        if left >= 0:
            mask &= j >= pos - left
        if right >= 0:
            mask &= j <= pos + right
        seen = mask.any(-1, keepdim=True)
        y = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask | ~seen) * seen
        outs.append(y.transpose(0, 1))
        iq, ik = iq + lq, ik + lk
    return torch.cat(outs)


@pytest.mark.parametrize("impl", ["fused", "sdpa", "reference", "auto"])
@pytest.mark.parametrize("name", ["full", "causal", "window", "cross lengths causal"])
def test_matches_per_sequence_sdpa(impl, name):
    """On the CPU torch's varlen_attn raises (2.13); SDPA on each sequence alone is its semantics."""
    if impl == "fused":
        need_fused("attention", "cpu")
    kw = dict(CASES[name])
    len_q, len_k = kw.pop("len_q"), kw.pop("len_k")
    q, k, v, _ = packed(len_q, len_k, 4, 2, 16, torch.float64, seed=2)
    want = padded_sdpa_loop(q, k, v, len_q, len_k, **kw)
    got = varlen_attn(q, k, v, cu(len_q), cu(len_k), max(len_q), max(len_k), enable_gqa=True, impl=impl, **kw)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_torch_varlen_attn_on_cpu():
    """Where torch's own runs, gencore's equals it; on the CPU (torch 2.13) it raises."""
    from torch.nn.attention.varlen import varlen_attn as torch_varlen
    q, k, v, _ = packed(LENGTHS, LENGTHS, 2, 2, 16, torch.float32, seed=3)
    try:
        want = torch_varlen(q, k, v, cu(LENGTHS), cu(LENGTHS), max(LENGTHS), max(LENGTHS), window_size=(-1, 0))
    except (NotImplementedError, RuntimeError):
        pytest.skip("torch's varlen_attn does not run on the CPU")
    got = varlen_attn(q, k, v, cu(LENGTHS), cu(LENGTHS), max(LENGTHS), max(LENGTHS), window_size=(-1, 0))
    torch.testing.assert_close(got, want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("window_size", [(-1, -1), (-1, 0), (32, 0)])
def test_torch_varlen_attn_cuda(window_size):
    """Random calls against torch's varlen_attn on CUDA (its flash kernel): out, lse, gradients."""
    from torch.nn.attention.varlen import AuxRequest, varlen_attn as torch_varlen
    g = torch.Generator().manual_seed(7)
    for trial in range(3):
        lengths = torch.randint(1, 300, (5,), generator=g).tolist()
        q, k, v, dout = (t.cuda() for t in packed(lengths, lengths, 8, 2, 64, torch.bfloat16, seed=trial))
        c = cu(lengths, "cuda")
        outs = []
        for fn in (torch_varlen, varlen_attn):
            leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
            out, lse = fn(*leaves, c, c, max(lengths), max(lengths), window_size=window_size, enable_gqa=True,
                          return_aux=AuxRequest(lse=True))
            outs.append((out, lse, *torch.autograd.grad(out, leaves, dout)))
        for a, b in zip(*outs):
            torch.testing.assert_close(b.float(), a.float(), atol=2e-2, rtol=2e-2)


def test_lse():
    """return_aux=AuxRequest(lse=True) (or True): lse (H, T_q) float32 as torch's kernels return
    it, the reference's, -inf for queries that see no key; differentiable."""
    from torch.nn.attention.varlen import AuxRequest
    need_fused("attention", "cpu")
    len_q, len_k = [30, 5, 64, 3], [50, 0, 20, 130]
    q, k, v, _ = packed(len_q, len_k, 4, 4, 16, torch.float32, seed=5)
    out, lse = varlen_attn(q, k, v, cu(len_q), cu(len_k), 64, 130, return_aux=AuxRequest(lse=True), impl="fused")
    r_out, r_lse = varlen_reference(q.double(), k.double(), v.double(), cu(len_q), cu(len_k))
    assert lse.shape == (4, sum(len_q)) and lse.dtype == torch.float32
    assert torch.isneginf(lse[:, 30:35]).all()  # the second sequence has no keys
    torch.testing.assert_close(lse.double(), r_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), r_out, atol=1e-5, rtol=1e-5)
    assert (out[30:35] == 0).all()
    out2, lse2 = varlen_attn(q, k, v, cu(len_q), cu(len_k), 64, 130, return_aux=True)
    torch.testing.assert_close(lse2, lse)
    assert isinstance(varlen_attn(q, k, v, cu(len_q), cu(len_k), 64, 130, return_aux=AuxRequest()), torch.Tensor)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("kw", [dict(window_size=(-1, 0)), dict(window_size=(1, 1), softcap=0.8),
                                dict(dropout_p=0.3, seed=2)], ids=["causal", "window softcap", "dropout"])
@pytest.mark.parametrize("cross", [False, True])
def test_gradcheck_fp64(impl, kw, cross):
    if impl == "fused":
        need_fused("attention", "cpu")
    kw = dict(kw)
    seed = kw.pop("seed", None)
    len_q, len_k = ([3, 2, 4], [3, 2, 4]) if not cross else ([3, 1, 4], [2, 4, 3])
    q, k, v, _ = packed(len_q, len_k, 2, 1, 4, torch.float64, seed=6)
    leaves = [t.requires_grad_(True) for t in (q, k, v)]
    w = torch.randn(2, sum(len_q), dtype=torch.float64)

    def f(q, k, v):
        if seed is not None:
            kw["generator"] = torch.Generator().manual_seed(seed)
        out, lse = varlen_attn(q, k, v, cu(len_q), cu(len_k), 4, 4, enable_gqa=True, return_aux=True,
                               impl=impl, **kw)
        return out, torch.where(torch.isfinite(lse), lse, 0) * w

    torch.autograd.gradcheck(f, leaves)


def test_opcheck_packed_view():
    """The op varlen runs on: gencore::attention on the packed view with document ids."""
    need_fused("attention", "cpu")
    from gencore.ops.varlen import document_ids_of
    q, k, v, _ = packed([5, 9, 2], [5, 9, 2], 4, 2, 16, torch.float32)
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0).requires_grad_(True) for t in (q, k, v))
    torch.library.opcheck(torch.ops.gencore.attention.default,
                          (q4, k4, v4, None, False, 0.25, -1, 0, 0.0, document_ids_of(cu([5, 9, 2]), 16)))


def test_bad_input():
    q, k, v, _ = packed([4, 6], [4, 6], 2, 2, 8, torch.float32)
    c = cu([4, 6])
    with pytest.raises(TypeError, match="int32"):
        varlen_attn(q, k, v, c.long(), c, 6, 6)
    with pytest.raises(ValueError, match="non-decreasing"):
        varlen_attn(q, k, v, torch.tensor([0, 7, 6, 10], dtype=torch.int32), c, 7, 6)
    with pytest.raises(ValueError, match="packed tensor has 10 tokens"):
        varlen_attn(q, k, v, cu([4, 5]), c, 6, 6)
    with pytest.raises(ValueError, match="max_q=5 is smaller than the longest sequence"):
        varlen_attn(q, k, v, c, c, 5, 6)
    with pytest.raises(ValueError, match="max_k=3"):
        varlen_attn(q, k, v, c, c, 6, 3)
    with pytest.raises(ValueError, match="3-d"):
        varlen_attn(q[None], k, v, c, c, 6, 6)
    with pytest.raises(ValueError, match="start at 0"):
        varlen_attn(q, k, v, torch.tensor([1, 4, 10], dtype=torch.int32), c, 6, 6)
    with pytest.raises(ValueError, match="same number of entries"):
        varlen_attn(q, k, v, c, torch.tensor([0, 10], dtype=torch.int32), 6, 10)
    with pytest.raises(ValueError, match="enable_gqa"):
        varlen_attn(q, k[:, :1], v[:, :1], c, c, 6, 6)
    with pytest.raises(ValueError, match="window_size must have length 2"):
        varlen_attn(q, k, v, c, c, 6, 6, window_size=(1,))
    with pytest.raises(TypeError, match="share one dtype"):
        varlen_attn(q, k.double(), v, c, c, 6, 6)


# -- a nanoGPT-style model on packed documents vs padded batches --------------------------------

class Attn(nn.Module):
    def __init__(self, n_embd, n_head):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head = nn.Linear(n_embd, 3 * n_embd), nn.Linear(n_embd, n_embd), n_head

    def forward(self, x, cu_seqlens=None, max_len=None, pad=None):
        C = x.shape[-1]
        q, k, v = self.c_attn(x).split(C, dim=-1)
        if cu_seqlens is not None:                                  # packed: x (T, C)
            q, k, v = (t.view(-1, self.n_head, C // self.n_head) for t in (q, k, v))  # (T, nh, hs)
            y = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, window_size=(-1, 0))
            return self.c_proj(y.reshape(-1, C))
        B, T, _ = x.shape                                           # padded: x (B, T, C)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        mask = causal & ~pad[:, None, None, :]                      # (B, 1, T, T)
        mask = mask | ~mask.any(-1, keepdim=True)                   # padded rows: any key (dropped by the loss)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class TinyGPT(nn.Module):
    def __init__(self, vocab=48, block=64, n_layer=2, n_head=4, n_embd=32):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block, n_embd)
        self.attn = nn.ModuleList(Attn(n_embd, n_head) for _ in range(n_layer))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))
                                 for _ in range(n_layer))
        self.ln = nn.ModuleList(nn.LayerNorm(n_embd) for _ in range(2 * n_layer + 1))
        self.head = nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx, pos, **attn_kw):
        x = self.wte(idx) + self.wpe(pos)
        for i, (a, m) in enumerate(zip(self.attn, self.mlp)):
            x = x + a(self.ln[2 * i](x), **attn_kw)
            x = x + m(self.ln[2 * i + 1](x))
        return self.head(self.ln[-1](x))


def test_train_packed_documents_equals_padded():
    """The same model and data, packed with varlen_attn vs padded per document with masks: the
    per-step losses agree within 2e-4 over 8 AdamW steps."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model_a = TinyGPT()
    model_b = TinyGPT()
    model_b.load_state_dict(model_a.state_dict())
    opt_a, opt_b = (torch.optim.AdamW(m.parameters(), lr=3e-3) for m in (model_a, model_b))
    losses_a, losses_b = [], []
    for step in range(8):
        lengths = torch.randint(2, 64, (6,), generator=g).tolist()
        docs = [torch.randint(0, 48, (n,), generator=g) for n in lengths]
        # packed: one stream, positions restart per document, targets within each document
        idx = torch.cat([d[:-1] for d in docs])
        tgt = torch.cat([d[1:] for d in docs])
        pos = torch.cat([torch.arange(n - 1) for n in lengths])
        c = cu([n - 1 for n in lengths])
        logits = model_a(idx, pos, cu_seqlens=c, max_len=max(lengths) - 1)
        loss_a = F.cross_entropy(logits, tgt)
        # padded: (N, L) with a key padding mask, the padded targets ignored
        L = max(lengths) - 1
        pidx = torch.zeros(len(docs), L, dtype=torch.long)
        ptgt = torch.full((len(docs), L), -100, dtype=torch.long)
        pad = torch.ones(len(docs), L, dtype=torch.bool)
        for i, d in enumerate(docs):
            pidx[i, :len(d) - 1], ptgt[i, :len(d) - 1], pad[i, :len(d) - 1] = d[:-1], d[1:], False
        logits = model_b(pidx, torch.arange(L).expand(len(docs), L), pad=pad)
        loss_b = F.cross_entropy(logits.reshape(-1, 48), ptgt.reshape(-1), ignore_index=-100)
        for m, opt, loss in ((model_a, opt_a, loss_a), (model_b, opt_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses_a.append(loss_a.item())
        losses_b.append(loss_b.item())
    assert max(abs(a - b) for a, b in zip(losses_a, losses_b)) <= 2e-4, (losses_a, losses_b)
    assert losses_a[-1] < losses_a[0]


def test_bench_cases_name_varlen():
    """The varlen bench cases (auto's evidence) name the case varlen_attn's own calls fall in."""
    from gencore import bench_cases
    from gencore.ops._attention import _auto_case
    from gencore.ops.varlen import _check
    found = [c for c in bench_cases.cases("cpu") if "varlen" in c.id]
    assert {c.auto_case.split(" ")[1] for c in found} == {"varlen", "varlen-causal"}
    lengths = list(bench_cases.VARLEN_LENGTHS)
    q = torch.empty(sum(lengths), 8, 64, requires_grad=True)
    info = _check(q, q, q, cu(lengths), cu(lengths), max(lengths), max(lengths), False, (-1, 0))
    q4 = q.transpose(0, 1)[None]
    name = _auto_case(q4, q4, False, window=(-1, 0), varlen=info)
    assert name in {c.auto_case for c in found}, name


@pytest.mark.parametrize("cross", [False, True])
def test_compile_fullgraph(cross):
    """Under torch.compile(fullgraph=True): no graph break (the lengths are not read on the host),
    the eager result and gradients, one graph across calls with other lengths of the same T."""
    need_fused("attention", "cpu")
    import torch._dynamo
    from torch._dynamo.utils import counters
    len_q, len_k = ([5, 9, 2], [5, 9, 2]) if not cross else ([5, 9, 2], [7, 3, 6])
    q, k, v, dout = packed(len_q, len_k, 4, 2, 16, torch.float32)
    cq = cu(len_q)
    ck = cq if not cross else cu(len_k)

    def f(q, k, v, cq, ck):
        return varlen_attn(q, k, v, cq, ck, 9, 9, window_size=(-1, 0), enable_gqa=True)

    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager", dynamic=False)
    for lengths in ([5, 9, 2], [8, 4, 4]):
        cq = cu(lengths)
        ck = cq if not cross else cu(len_k)
        a = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        b = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        got, want = compiled(*a, cq, ck), f(*b, cq, ck)
        torch.testing.assert_close(got, want)
        got.backward(dout)
        want.backward(dout)
        for x, y in zip(a, b):
            torch.testing.assert_close(x.grad, y.grad)
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
