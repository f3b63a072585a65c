"""gencore.nn.MultiHeadAttention: against a plain SDPA composition, GQA, rotary, KV cache."""
import pytest
import torch
import torch.nn.functional as F

from gencore.nn import KVCache, MultiHeadAttention

from _helpers import ALL_DEVICES, need_fused


def sdpa_mha(m, x, key_padding_mask=None, causal=True):
    """The same computation through F.scaled_dot_product_attention (no rotary)."""
    B, S, _ = x.shape
    H, Hkv, D = m.n_heads, m.n_kv_heads, m.head_dim
    q, k, v = m.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
    q = q.view(B, S, H, D).transpose(1, 2)
    k = k.view(B, S, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    v = v.view(B, S, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
    allowed = torch.ones(S, S, dtype=torch.bool, device=x.device)
    if causal:
        allowed = allowed.tril()
    allowed = allowed.expand(B, 1, S, S)
    if key_padding_mask is not None:
        allowed = allowed & ~key_padding_mask[:, None, None, :]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    return m.out(y.transpose(1, 2).reshape(B, S, H * D))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_sdpa(device, n_kv_heads, causal):
    need_fused("attention", device)
    torch.manual_seed(0)
    m = MultiHeadAttention(64, 4, n_kv_heads=n_kv_heads, bias=True).to(device)
    x = torch.randn(2, 19, 64, device=device)
    mask = torch.zeros(2, 19, dtype=torch.bool, device=device)
    mask[1, 15:] = True
    got = m(x, key_padding_mask=mask, causal=causal)
    want = sdpa_mha(m, x, mask, causal)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1, :15], want[1, :15], atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("rotary,qk_norm", [(False, False), (True, False), (True, True)])
def test_kv_cache_decoding_matches_full(device, rotary, qk_norm):
    need_fused("attention", device)
    torch.manual_seed(1)
    m = MultiHeadAttention(48, 6, n_kv_heads=3, rotary=rotary, qk_norm=qk_norm).to(device).eval()
    x = torch.randn(2, 37, 48, device=device)
    full = m(x)
    for transposed in (None, True, False):
        cache = KVCache(transposed_keys=transposed)
        parts = [m(x[:, :5], cache=cache)]
        for t in range(5, 37):  # the buffers grow twice (capacity 16, 32, 64)
            parts.append(m(x[:, t:t + 1], cache=cache))
        assert cache.length == 37 and cache.k.shape == (2, 3, 37, 8)
        keys_along_s = cache.k.stride(2) == 1
        assert keys_along_s == (device == "cpu" if transposed is None else transposed)
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_kv_cache_keeps_padding(device):
    need_fused("attention", device)
    torch.manual_seed(2)
    m = MultiHeadAttention(32, 4, rotary=True).to(device).eval()
    x = torch.randn(2, 9, 32, device=device)
    mask = torch.zeros(2, 9, dtype=torch.bool, device=device)
    mask[0, :3] = True  # left padding on the first sequence
    full = m(x, key_padding_mask=mask)
    cache = KVCache()
    parts = [m(x[:, :4], key_padding_mask=mask[:, :4], cache=cache)]
    for t in range(4, 9):
        parts.append(m(x[:, t:t + 1], cache=cache))
    got = torch.cat(parts, dim=1)
    torch.testing.assert_close(got[:, 3:], full[:, 3:], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()


def test_rotary_is_relative():
    """RoPE scores depend on relative positions only."""
    from gencore.nn import RotaryEmbedding
    rope = RotaryEmbedding(16)
    q = torch.randn(1, 1, 1, 16).double()
    k = torch.randn(1, 1, 1, 16).double()
    rope = rope.double()
    s1 = (rope(q, 5) * rope(k, 2)).sum()
    s2 = (rope(q, 13) * rope(k, 10)).sum()
    torch.testing.assert_close(s1, s2)


def test_qk_norm_normalises_each_head():
    """qk_norm: queries and keys RMS-normalised per head (with a learned gain) before the
    attention; the same as the plain layer fed normalised projections."""
    torch.manual_seed(5)
    m = MultiHeadAttention(32, 4, n_kv_heads=2, qk_norm=True)
    with torch.no_grad():
        m.q_norm.weight.uniform_(0.5, 2.0)
        m.k_norm.weight.uniform_(0.5, 2.0)
    assert m.q_norm.weight.shape == (8,) and m.k_norm.weight.shape == (8,)
    x = torch.randn(2, 7, 32)

    def rms(t, w):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + torch.finfo(t.dtype).eps) * w

    q, k, v = m.qkv(x).split([32, 16, 16], dim=-1)
    q = rms(q.view(2, 7, 4, 8), m.q_norm.weight).transpose(1, 2)
    k = rms(k.view(2, 7, 2, 8), m.k_norm.weight).transpose(1, 2).repeat_interleave(2, 1)
    v = v.view(2, 7, 2, 8).transpose(1, 2).repeat_interleave(2, 1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    want = m.out(y.transpose(1, 2).reshape(2, 7, 32))
    torch.testing.assert_close(m(x), want, atol=1e-5, rtol=1e-5)
    assert MultiHeadAttention(32, 4).q_norm is None


def test_bad_config():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        MultiHeadAttention(32, 4, n_kv_heads=3)
    m = MultiHeadAttention(32, 4)
    with pytest.raises(ValueError, match="batch, seq"):
        m(torch.randn(2, 5, 16))


def test_dropout_only_in_training():
    m = MultiHeadAttention(32, 4, dropout=0.5)
    x = torch.randn(2, 5, 32)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_compile_fullgraph(device):
    need_fused("attention", device)
    torch.manual_seed(3)
    m = MultiHeadAttention(64, 4, n_kv_heads=2, rotary=True).to(device)
    x = torch.randn(2, 7, 64, device=device)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    torch.testing.assert_close(y, m(x))
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("n_kv_heads", [4, 2])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_sdpa_impl_matches_fused(device, n_kv_heads, causal, padded):
    """impl="sdpa" (PyTorch's built-in) computes what the fused op does: outputs and gradients,
    with GQA, rotary, QK-norm, key padding (a fully padded row gives zeros) and the KV cache."""
    need_fused("attention", device)
    torch.manual_seed(4)
    kw = dict(n_kv_heads=n_kv_heads, rotary=True, bias=True, qk_norm=n_kv_heads == 2)
    fused = MultiHeadAttention(64, 4, impl="fused", **kw).to(device)
    sdpa = MultiHeadAttention(64, 4, impl="sdpa", **kw).to(device)
    sdpa.load_state_dict(fused.state_dict())
    x = torch.randn(3, 11, 64, device=device)
    mask = None
    if padded:
        mask = torch.zeros(3, 11, dtype=torch.bool, device=device)
        mask[1, 7:] = True
        mask[2] = True  # every key of this sequence is padding: its rows must be zeros
    ys = [m(x, key_padding_mask=mask, causal=causal) for m in (fused, sdpa)]
    torch.testing.assert_close(ys[1], ys[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(ys[1]).all()
    for y in ys:
        (y * torch.linspace(-1, 1, 64, device=device)).sum().backward()
    for (name, pf), ps in zip(fused.named_parameters(), sdpa.parameters()):
        torch.testing.assert_close(ps.grad, pf.grad, atol=1e-4, rtol=1e-4, msg=name)
    with torch.no_grad():  # incremental decoding: a prefix, a chunk (bottom-right mask), singles
        caches = [KVCache(), KVCache()]
        outs = [[m(x[:, :4], cache=c)] for m, c in zip((fused, sdpa), caches)]
        for lo, hi in [(4, 7)] + [(t, t + 1) for t in range(7, 11)]:
            for o, m, c in zip(outs, (fused, sdpa), caches):
                o.append(m(x[:, lo:hi], cache=c))
        torch.testing.assert_close(torch.cat(outs[1], 1), torch.cat(outs[0], 1), atol=1e-5, rtol=1e-5)


def test_bad_impl():
    with pytest.raises(ValueError, match="impl must be one of"):
        MultiHeadAttention(32, 4, impl="flash")


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_attention_features_reach_the_op(device):
    """attn_dropout (training mode only), window and softcap are gencore.ops.attention's own: the
    layer equals the op called with them on the same projections."""
    from gencore.ops import attention
    need_fused("attention", device)
    torch.manual_seed(2)
    m = MultiHeadAttention(32, 4, n_kv_heads=2, attn_dropout=0.3, window=(5, 0), softcap=20.0).to(device)
    x = torch.randn(2, 23, 32, device=device)
    H, Hkv, D = 4, 2, 8
    q, k, v = m.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
    q, k, v = (t.unflatten(-1, (-1, D)).transpose(1, 2) for t in (q, k, v))

    def op(p):
        y = attention(q, k, v, causal=True, dropout_p=p, window=(5, 0), softcap=20.0)
        return m.out(y.transpose(1, 2).reshape(2, 23, 32))

    torch.manual_seed(7)
    got = m(x)
    torch.manual_seed(7)
    want = op(0.3)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, op(0.0))  # dropout really ran in training mode
    m.eval()
    torch.testing.assert_close(m(x), op(0.0))
    with pytest.raises(ValueError, match="attn_dropout"):
        MultiHeadAttention(32, 4, attn_dropout=1.0)
