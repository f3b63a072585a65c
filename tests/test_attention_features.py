"""gencore.ops.attention's keyword features (window, softcap, document_ids, attn_mask, dropout)
and the SDPA drop-in gencore.ops.scaled_dot_product_attention: fused vs the float64 reference
under the 2x rule, gradcheck, opcheck, torch.compile, dropout's mask and statistics, the drop-in
against torch's F.scaled_dot_product_attention, bad input. CPU; the CUDA kernels take the same
features (test_attention_emulated.py runs them on the CPU model of sm_80, and the GPU session's
attention_check.py on the hardware)."""
import math

import pytest
import torch
import torch.nn.functional as F

from gencore.ops import attention, document_ids_from_cu_seqlens, scaled_dot_product_attention
from gencore.ops._attention import _auto_case, attention_sdpa
from gencore.ops.reference.attention import dropout_keep
from gencore.ops.rng import philox_seed_offset

from _helpers import need_fused
from test_attention import check_flash_rule, fused, make, ref, run

S = 130  # two forward query blocks and a partial third; three backward key blocks


def docs(B, S, lengths_per_batch):
    """document_ids (B, S) from per-batch document lengths (the rest one more document)."""
    ids = torch.zeros(B, S, dtype=torch.int64)
    for b, lengths in enumerate(lengths_per_batch):
        pos = 0
        for d, n in enumerate(lengths):
            ids[b, pos:pos + n] = d
            pos += n
        ids[b, pos:] = len(lengths)
    return ids


def random_mask(shape, p, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < p


FEATURES = {
    "window causal": dict(causal=True, window=(32, 0)),
    "window two-sided": dict(window=(16, 40)),
    "softcap": dict(causal=True, softcap=3.0),
    "documents causal": dict(causal=True, document_ids=docs(2, S, [[40, 70], [5, 100]])),
    "documents recurring": dict(document_ids=torch.randint(0, 3, (2, S), generator=torch.Generator().manual_seed(5))),
    "mask per batch": dict(attn_mask=random_mask((2, 1, S, S), 0.5, 6)),
    "mask per head sparse": dict(causal=True, attn_mask=random_mask((1, 4, S, S), 0.03, 7)),
    "dropout": dict(causal=True, dropout_p=0.2, seed=11),
    "all": dict(causal=True, window=(48, -1), softcap=5.0, document_ids=docs(2, S, [[60], [20, 80]]),
                key_padding_mask=random_mask((2, S), 0.2, 8), attn_mask=random_mask((2, 4, S, S), 0.9, 9),
                dropout_p=0.1, seed=12),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(FEATURES))
def test_flash_rule_features(name, dtype):
    """out, dq, dk, dv within 2x the reference's own error (GQA: 4 query heads on 2 kv heads)."""
    need_fused("attention", "cpu")
    q, k, v, dout = make(2, 4, 2, S, S, 32, dtype, "cpu", seed=1)
    check_flash_rule(q, k, v, dout, **FEATURES[name])


@pytest.mark.parametrize("Sq,Sk", [(40, 150), (150, 40), (3, 150)])
def test_features_sq_ne_sk(Sq, Sk):
    """The causal frame: query i sits at key i + S_k - S_q (a few rows: the tiled path)."""
    need_fused("attention", "cpu")
    q, k, v, dout = make(1, 2, 1, Sq, Sk, 16, torch.float32, "cpu", seed=2)
    check_flash_rule(q, k, v, dout, window=(20, 5))
    check_flash_rule(q, k, v, dout, causal=True, window=(7, -1), softcap=2.0,
                     attn_mask=random_mask((1, 2, Sq, Sk), 0.7, 3), dropout_p=0.3, seed=4)


def test_features_fully_masked_rows():
    """Rows that see no key (window past the keys, masks, foreign documents): zeros, zero grads."""
    need_fused("attention", "cpu")
    q, k, v, dout = make(2, 2, 2, 20, 20, 16, torch.float32, "cpu", seed=3)
    mask = torch.ones(2, 2, 20, 20, dtype=torch.bool)
    mask[0, :, 3] = False  # query 3 of batch 0 sees nothing
    for kw in (dict(attn_mask=mask), dict(window=(0, 0), key_padding_mask=torch.eye(20, dtype=torch.bool)[:2]),
               dict(attn_mask=mask, dropout_p=0.5, seed=1)):
        got = run(fused, q, k, v, dout, **kw)
        want = run(ref, *(t.double() for t in (q, k, v, dout)), **kw)
        for f, r in zip(got, want):
            assert torch.isfinite(f).all()
            torch.testing.assert_close(f.double(), r, atol=1e-5, rtol=1e-5)
    out, dq, _, _ = run(fused, q, k, v, dout, attn_mask=mask)
    assert (out[0, :, 3] == 0).all() and (dq[0, :, 3] == 0).all()
    _, lse = torch.ops.gencore.attention(q, k, v, None, False, 0.25, attn_mask=mask)
    assert torch.isneginf(lse[0, :, 3]).all() and torch.isfinite(lse[1]).all()


GRADCHECK = {
    "window": dict(causal=True, window=(2, 0)),
    "window right": dict(window=(1, 2)),
    "softcap": dict(softcap=0.7),
    "documents": dict(causal=True, document_ids=torch.tensor([[0, 0, 0, 1, 1, 2, 2]])),
    "mask": dict(attn_mask=random_mask((1, 2, 5, 7), 0.6, 1)),
    "dropout": dict(dropout_p=0.3, seed=3),
}


@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_fp64_features(name):
    need_fused("attention", "cpu")
    kw = dict(GRADCHECK[name])
    Sq = 7 if "document_ids" in kw else 5
    q, k, v, _ = make(1, 2, 1, Sq, 7, 8, torch.float64, "cpu")
    for t in (q, k, v):
        t.requires_grad_(True)
    torch.autograd.gradcheck(lambda q, k, v: fused(q, k, v, **kw), (q, k, v))


def test_opcheck_features():
    need_fused("attention", "cpu")
    q, k, v, _ = make(2, 4, 2, 9, 9, 16, torch.float32, "cpu")
    for t in (q, k, v):
        t.requires_grad_(True)
    doc = torch.tensor([[0] * 4 + [1] * 5, [0] * 9])
    mask = random_mask((2, 1, 9, 9), 0.8, 2)
    so = philox_seed_offset(torch.Generator().manual_seed(0))
    args = (q, k, v, None, True, 0.2, 3, -1, 2.5, doc, mask, 0.25, so)
    torch.library.opcheck(torch.ops.gencore.attention.default, args)
    out, lse = torch.ops.gencore.attention(*args)
    bargs = (torch.randn_like(out), q.detach(), k.detach(), v.detach(), out.detach(), lse, None, True,
             0.2, 3, -1, 2.5, doc, mask, 0.25, so)
    torch.library.opcheck(torch.ops.gencore.attention_backward.default, bargs)


def test_compile_fullgraph_features():
    need_fused("attention", "cpu")
    q, k, v, dout = make(2, 4, 2, 24, 24, 16, torch.float32, "cpu")
    doc = docs(2, 24, [[10], [3, 12]])
    mask = random_mask((1, 1, 24, 24), 0.8, 4)

    def f(q, k, v):
        return attention(q, k, v, causal=True, window=(8, 0), softcap=4.0, document_ids=doc,
                         attn_mask=mask, dropout_p=0.1, impl="fused") * 2

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    got = run(lambda q, k, v: compiled(q, k, v), q, k, v, dout)
    torch.manual_seed(3)
    want = run(f, q, k, v, dout)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# -- dropout -----------------------------------------------------------------------------------

def test_dropout_repeatable_under_a_seed():
    need_fused("attention", "cpu")
    q, k, v, _ = make(1, 2, 2, 33, 33, 16, torch.float32, "cpu")
    torch.manual_seed(0)
    a = attention(q, k, v, dropout_p=0.3, impl="fused")
    torch.manual_seed(0)
    b = attention(q, k, v, dropout_p=0.3, impl="fused")
    c = attention(q, k, v, dropout_p=0.3, impl="fused")  # the generator moved on
    assert torch.equal(a, b) and not torch.equal(a, c)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(attention(q, k, v, dropout_p=0.3, generator=g1, impl="fused"),
                       attention(q, k, v, dropout_p=0.3, generator=g2, impl="fused"))
    torch.manual_seed(0)
    r = attention(q, k, v, dropout_p=0.3, impl="reference")
    torch.testing.assert_close(a, r)


@pytest.mark.parametrize("Sq,Sk", [(37, 77), (5, 300)])
def test_dropout_mask_identical_in_reference_and_kernel(Sq, Sk):
    """With v = identity the output is P keep / (1 - p): its zeros are exactly the dropped keys
    of the reference's Philox mask (odd lengths: the vector paths' tails and heads)."""
    need_fused("attention", "cpu")
    B, H, p = 2, 3, 0.4
    q, k, _, _ = make(B, H, H, Sq, Sk, Sk, torch.float64, "cpu", seed=5)  # head dim S_k: v = I
    eye = torch.eye(Sk, dtype=torch.float64).expand(B, H, Sk, Sk)
    got = fused(q, k, eye, dropout_p=p, seed=21)
    so = philox_seed_offset(torch.Generator().manual_seed(21))
    keep = dropout_keep(so[0], so[1], (B, H, Sq, Sk), p, "cpu")
    assert torch.equal(got != 0, keep)
    torch.testing.assert_close(got, ref(q, k, eye, dropout_p=p, seed=21))
    assert abs(keep.double().mean().item() - (1 - p)) < 0.02


def test_dropout_unbiased():
    """E[out] = the dropout-free output: the mean over N seeds within 6 standard errors at every
    element (Var out_id = p / (1 - p) sum_j P_ij^2 v_jd^2, the keep-marks independent)."""
    need_fused("attention", "cpu")
    q, k, v, _ = make(1, 2, 2, 16, 24, 8, torch.float64, "cpu", seed=6)
    p, N = 0.3, 400
    exact = fused(q, k, v, causal=True)
    mean = sum(fused(q, k, v, causal=True, dropout_p=p, seed=s) for s in range(N)) / N
    P = ref(q, k, torch.eye(24, dtype=torch.float64).expand(1, 2, 24, 24), causal=True)
    var = p / (1 - p) * (P ** 2) @ (v ** 2)
    z = (mean - exact).abs() / (var / N).sqrt().clamp_min(1e-12)
    assert z.max() < 6, z.max()
    assert (mean - exact).abs().max() > 0  # dropout did happen


# -- the SDPA drop-in ----------------------------------------------------------------------------

def _sdpa_case(rng):
    """A random F.scaled_dot_product_attention call: kwargs and the tensors."""
    B, Hkv = rng.randint(1, 2), rng.choice([1, 2])
    gqa = rng.random() < 0.4
    H = Hkv * (rng.choice([2, 3]) if gqa else 1)
    Sq, Sk, D = rng.choice([1, 7, 40, 70]), rng.choice([7, 40, 90]), rng.choice([8, 16, 24])
    kind = rng.choice(["none", "causal", "bool", "bool2d", "float"])
    kw = dict(enable_gqa=gqa)
    if rng.random() < 0.3:
        kw["scale"] = rng.choice([0.05, 0.3])
    g = torch.Generator().manual_seed(rng.randint(0, 10**6))
    if kind == "causal":
        kw["is_causal"] = True
    elif kind == "bool":
        kw["attn_mask"] = torch.rand(B, rng.choice([1, H]), Sq, Sk, generator=g) < 0.7
    elif kind == "bool2d":
        kw["attn_mask"] = torch.rand(Sq, Sk, generator=g) < 0.7
    elif kind == "float":
        kw["attn_mask"] = torch.randn(1, H, Sq, Sk, generator=g)
    tensors = [torch.randn(*s, generator=g, dtype=torch.float64)
               for s in ((B, H, Sq, D), (B, Hkv, Sk, D), (B, Hkv, Sk, D), (B, H, Sq, D))]
    return kw, tensors


@pytest.mark.parametrize("impl", ["auto", "fused"])
def test_sdpa_dropin_equals_torch(impl):
    """Random calls (bool and float masks, GQA with enable_gqa, S_q != S_k, scale, top-left
    is_causal): value and gradients equal to torch's, float64 (fully masked rows: torch's zeros)."""
    import random
    need_fused("attention", "cpu")
    rng = random.Random(0)
    for _ in range(40):
        kw, (q, k, v, dout) = _sdpa_case(rng)
        if impl == "fused" and kw.get("attn_mask") is not None and kw["attn_mask"].dtype != torch.bool:
            with pytest.raises(ValueError, match="bool attn_mask"):
                scaled_dot_product_attention(q, k, v, impl=impl, **kw)
            continue
        got = run(lambda q, k, v: scaled_dot_product_attention(q, k, v, impl=impl, **kw), q, k, v, dout)
        want = run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw), q, k, v, dout)
        for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
            torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=lambda m: f"{name} {kw}: {m}")


def test_sdpa_dropin_float32_and_errors():
    need_fused("attention", "cpu")
    q, k, v, dout = make(2, 4, 2, 50, 60, 32, torch.float32, "cpu")
    mask = random_mask((2, 1, 50, 60), 0.6, 1)
    mask[0, 0, 5] = False  # a fully masked row: torch 2.13 gives zeros
    for kw in (dict(attn_mask=mask, enable_gqa=True), dict(is_causal=True, enable_gqa=True, scale=0.2)):
        got = run(lambda q, k, v: scaled_dot_product_attention(q, k, v, impl="fused", **kw), q, k, v, dout)
        want = run(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw), q, k, v, dout)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=3e-5, rtol=3e-5)
    # Heads that differ without enable_gqa: torch's own error, whatever impl.
    with pytest.raises(RuntimeError) as theirs:
        F.scaled_dot_product_attention(q, k, v)
    with pytest.raises(RuntimeError) as ours:
        scaled_dot_product_attention(q, k, v)
    assert str(ours.value) == str(theirs.value)
    # Dropout: the fused kernel's Philox mask repeats under a seed; auto runs (torch's dropout
    # where the table has no fused row).
    torch.manual_seed(1)
    a = scaled_dot_product_attention(q, k, v, dropout_p=0.2, enable_gqa=True, impl="fused")
    torch.manual_seed(1)
    b = scaled_dot_product_attention(q, k, v, dropout_p=0.2, enable_gqa=True, impl="fused")
    assert torch.equal(a, b)
    out = scaled_dot_product_attention(q, k, v, dropout_p=0.2, enable_gqa=True)
    assert out.shape == q.shape and torch.isfinite(out).all()


def test_builtin_path_matches_reference():
    """impl="sdpa" (what auto runs where the table has no fused row): gencore's semantics on
    torch's SDPA, each feature as one bool mask (softcap: the reference's composed ops)."""
    q, k, v, _ = make(2, 4, 2, S, S, 16, torch.float64, "cpu", seed=4)
    for name, kw in FEATURES.items():
        kw = {key: val for key, val in kw.items() if key not in ("dropout_p", "seed")}
        torch.testing.assert_close(attention(q, k, v, impl="sdpa", **kw), ref(q, k, v, **kw), msg=name)
    out = attention_sdpa(q, k, v, True, None, None, dropout_p=0.3)  # SDPA's own dropout runs
    assert out.shape == q.shape


def test_auto_case_names():
    """auto's case for a call names the dtype, the kind and every feature present, so evidence
    about one never decides another (the pass and size class: tests/test_auto.py)."""
    q = torch.zeros(1, 2, 16, 8)
    name = lambda *a, **kw: " ".join(_auto_case(*a, **kw).split()[:2])
    assert name(q, q, True, None) == "float32 causal"
    assert name(q, q, True, None, window=(4, 0)) == "float32 causal+window"
    assert name(q.bfloat16(), q, False, None, document_ids=torch.zeros(1, 16, dtype=torch.long)) == "bfloat16 full+documents"
    assert name(q, q, True, None, dropout_p=0.1) == "float32 causal+dropout"
    assert name(q, q, False, None, attn_mask=torch.ones(1, 1, 16, 16, dtype=torch.bool)) == "float32 full+mask"
    assert name(q, q, True, None, softcap=2.0) == "float32 causal+softcap"
    pad = torch.zeros(1, 16, dtype=torch.bool)
    assert name(q, q, True, pad) == "float32 causal+padding"
    assert name(q, q, False, pad) == "float32 full+padding"
    assert name(q[:, :, :1], q, True, pad) == "float32 decode+padding"
    assert name(q, q, True, pad, window=(4, 0), softcap=2.0) == "float32 causal+window+softcap+padding"
    assert name(q.half(), q, True, None, window=(4, 0)) == "float16 causal+window"
    one = torch.zeros(1, 2, 1, 64)
    assert name(one, torch.zeros(1, 2, 512, 64), True, None, window=(4, 0)) == "float32 decode+window"
    assert name(one[:, :, :1].expand(1, 2, 4, 64), q, True, pad, softcap=2.0) == "float32 decode+softcap+padding"
    assert name(torch.zeros(1, 2, 5, 64), q, True, None, softcap=2.0) == "float32 causal+softcap"


def test_document_ids_from_cu_seqlens():
    ids = document_ids_from_cu_seqlens(torch.tensor([0, 3, 4, 8], dtype=torch.int32))
    assert ids.tolist() == [[0, 0, 0, 1, 2, 2, 2, 2]]
    assert document_ids_from_cu_seqlens(torch.tensor([0, 2]), total=4).tolist() == [[0, 0, 1, 1]]


def test_bad_feature_input():
    q, k, v, _ = make(2, 4, 2, 8, 8, 16, torch.float32, "cpu")
    with pytest.raises(TypeError, match="document_ids must be an integer"):
        attention(q, k, v, document_ids=torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"document_ids must have shape"):
        attention(q, k, v, document_ids=torch.zeros(2, 7, dtype=torch.long))
    with pytest.raises(ValueError, match="S_q == S_k"):
        attention(q[:, :, :4], k, v, document_ids=torch.zeros(2, 8, dtype=torch.long))
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
            attention(q, k, v, dropout_p=p)
    for c in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="softcap must be a finite number > 0"):
            attention(q, k, v, softcap=c)
    for w in ((-2, 0), (0, -5)):
        with pytest.raises(ValueError, match="window sides must be >= 0"):
            attention(q, k, v, window=w)
    with pytest.raises(TypeError, match="pair"):
        attention(q, k, v, window=4)
    with pytest.raises(TypeError, match="attn_mask must be a bool"):
        attention(q, k, v, attn_mask=torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        attention(q, k, v, attn_mask=torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="attn_mask must have shape"):
        attention(q, k, v, attn_mask=torch.ones(2, 3, 8, 8, dtype=torch.bool))


def test_bad_feature_input_reaches_kernel_checks():
    need_fused("attention", "cpu")
    q, k, v, _ = make(2, 4, 2, 8, 8, 16, torch.float32, "cpu")
    op = torch.ops.gencore.attention
    with pytest.raises(RuntimeError, match="window sides"):
        op(q, k, v, None, False, 1.0, -3)
    with pytest.raises(RuntimeError, match="softcap"):
        op(q, k, v, None, False, 1.0, softcap=-1.0)
    with pytest.raises(RuntimeError, match="document_ids must be an integer"):
        op(q, k, v, None, False, 1.0, document_ids=torch.zeros(2, 8))
    with pytest.raises(RuntimeError, match="attn_mask must have shape"):
        op(q, k, v, None, False, 1.0, attn_mask=torch.ones(2, 4, 8, 7, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="needs seed_offset"):
        op(q, k, v, None, False, 1.0, dropout_p=0.5)
    with pytest.raises(RuntimeError, match="dropout_p"):
        op(q, k, v, None, False, 1.0, dropout_p=1.0, seed_offset=torch.zeros(2, dtype=torch.long))
