"""attn_implementation="gencore" (gencore/integrations/transformers.py) against transformers' own.

Tiny models from configs (2 layers, 128 wide, no download): 20 training steps with the same init
and data give per-step losses equal to "sdpa" ("eager" for Gemma-2, which has no sdpa path);
greedy generation from a left-padded batch gives the same tokens; a packed batch of documents gives
what the documents give one by one. Features this build of gencore.ops.attention lacks run
transformers' path (with a warning), so every test holds either way.
"""
import warnings

import pytest
import torch

transformers = pytest.importorskip(
    "transformers", reason="Hugging Face transformers is not installed (pip install "
    "'gencore[transformers]'; the Makefile's setup installs it)")

import gencore.integrations.transformers as gt  # noqa: E402  registers "gencore"
import gencore.ops  # noqa: E402
from transformers import (AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig,  # noqa: E402
                          MistralConfig, Qwen2Config)
from transformers.masking_utils import (causal_mask_function, chunked_causal_mask_function,  # noqa: E402
                                        sdpa_mask, sliding_window_causal_mask_function)

pytestmark = pytest.mark.filterwarnings("ignore:gencore.integrations.transformers")


@pytest.fixture(autouse=True)
def _auto_runs_the_kernel_for_training_shapes(monkeypatch):
    """The evidence these tests bring: auto runs the fused kernel for every case but decoding
    (what the records of the machines measured so far say), so each path of the adapter runs."""
    from _helpers import auto_picks
    auto_picks(monkeypatch, lambda op, case: "decode" not in case)

V, B, S, STEPS = 256, 4, 32, 20
_SMALL = dict(vocab_size=V, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=128, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)


def _config(name, **extra):
    if name == "llama":
        return LlamaConfig(**_SMALL, num_key_value_heads=2, **extra)             # GQA 4:2
    if name == "mistral":
        return MistralConfig(**_SMALL, num_key_value_heads=2, sliding_window=8, **extra)
    if name == "gemma2":   # layer_types alternate sliding_attention / full_attention
        return Gemma2Config(**_SMALL, num_key_value_heads=2, head_dim=32, sliding_window=8,
                            attn_logit_softcapping=50.0, final_logit_softcapping=30.0, **extra)
    if name == "qwen2":
        return Qwen2Config(**_SMALL, num_key_value_heads=2, **extra)
    if name == "gpt2":
        return GPT2Config(**{**dict(vocab_size=V, n_positions=128, n_embd=128, n_layer=2, n_head=4,
                                    attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0,
                                    bos_token_id=1, eos_token_id=2), **extra})
    raise KeyError(name)


def _baseline(name):
    return "eager" if name == "gemma2" else "sdpa"   # Gemma-2's softcap has no sdpa path


def _pair(name, **extra):
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(_config(name, **extra), attn_implementation=_baseline(name))
    ours = AutoModelForCausalLM.from_config(_config(name, **extra), attn_implementation="gencore")
    ours.load_state_dict(ref.state_dict())
    assert ours.config._attn_implementation == "gencore"
    return ref, ours


def _batch(padded, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    if padded:                         # right padding, as a training collator pads
        mask[1, -9:] = 0
        mask[2, -3:] = 0
        ids = ids.masked_fill(mask == 0, 0)
    labels = ids.masked_fill(mask == 0, -100)
    return ids, mask, labels


def _train(model, padded, steps=STEPS, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for step in range(steps):
        ids, mask, labels = _batch(padded, seed=step)
        kw = {"attention_mask": mask} if padded else {}
        loss = model(ids, labels=labels, **kw).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("name,padded", [
    ("llama", False),      # GQA
    ("mistral", False),    # sliding window (8) shorter than the sequence (32)
    ("gemma2", False),     # alternating sliding / global layers, softcap
    ("qwen2", True),       # padded batch
    ("gpt2", True),        # padded batch
])
def test_training_losses_match(name, padded):
    ref, ours = _pair(name)
    a, b = _train(ref, padded), _train(ours, padded)
    assert (a - b).abs().max().item() < 2e-4, (a, b)
    assert a[-1] < a[0]    # it did train


def test_gpt2_dropout_runs_and_repeats_under_a_seed():
    torch.manual_seed(0)
    cfg = _config("gpt2")
    cfg.attn_pdrop = 0.1
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="gencore")
    init = {k: v.clone() for k, v in model.state_dict().items()}
    first = _train(model, padded=True, steps=4, seed=7)
    model.load_state_dict(init)
    again = _train(model, padded=True, steps=4, seed=7)
    assert torch.equal(first, again)
    model.load_state_dict(init)
    other = _train(model, padded=True, steps=4, seed=8)
    assert not torch.equal(first, other)      # the seed drives the dropout masks
    torch.manual_seed(0)
    cfg.attn_pdrop = 0.0
    plain = AutoModelForCausalLM.from_config(cfg, attn_implementation="gencore")
    plain.load_state_dict(init)
    assert not torch.equal(first, _train(plain, padded=True, steps=4, seed=7))  # dropout acted


@pytest.mark.parametrize("every_call_fused", [False, True], ids=["auto", "fused"])
@pytest.mark.parametrize("name", ["llama", "mistral", "gemma2", "qwen2", "gpt2"])
def test_greedy_generation_from_left_padded_batch(name, every_call_fused, monkeypatch):
    """Under auto (this machine's table) and with every call sent to gencore.ops.attention
    (decoding steps with a window, softcap and padding included: auto may send those to SDPA)."""
    if every_call_fused:
        monkeypatch.setattr(gt, "_auto_runs_fused", lambda *a: True)
        monkeypatch.setattr(gt, "_MAY_RUN_FUSED", {})
    _check_greedy_generation(name)


def _check_greedy_generation(name, pair=None):
    ref, ours = pair or _pair(name)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(3, V, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0                    # left padding, as generation pads
    mask[2, :2] = 0
    ids = ids.masked_fill(mask == 0, 0)
    kw = dict(attention_mask=mask, max_new_tokens=14, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        want = ref.eval().generate(ids, **kw)
        got = ours.eval().generate(ids, **kw)
    assert want.shape[1] > ids.shape[1] + 8      # past Mistral's window of 8 with the cache
    assert torch.equal(got, want)


DOCS = (5, 9, 7, 11)


def _docs(seed=5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, V, (1, n), generator=g) for n in DOCS]


def _one_by_one(model, docs):
    logits = [model(d).logits for d in docs]
    labels = [d for d in docs]
    loss = sum(torch.nn.functional.cross_entropy(lg[0, :-1], lb[0, 1:], reduction="sum")
               for lg, lb in zip(logits, labels))
    return torch.cat(logits, dim=1), loss / sum(n - 1 for n in DOCS)


def _packed(model, docs, cu_seqlens=False):
    ids = torch.cat(docs, dim=1)                                            # (1, 32)
    pos = torch.cat([torch.arange(n) for n in DOCS])[None]                  # restarts per document
    kw = {}
    if cu_seqlens:   # what DataCollatorWithFlattening(return_flash_attn_kwargs=True) adds
        cu = torch.tensor([0, *torch.tensor(DOCS).cumsum(0).tolist()], dtype=torch.int32)
        kw = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(DOCS), max_length_k=max(DOCS))
    logits = model(ids, position_ids=pos, use_cache=False, **kw).logits
    labels = ids.clone()
    starts = torch.tensor([0, *torch.tensor(DOCS).cumsum(0)[:-1].tolist()])
    labels[0, starts] = -100                # no document predicts the next one's first token
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    return logits, loss


@pytest.mark.parametrize("name", ["llama", "mistral"])
@pytest.mark.parametrize("cu_seqlens", [False, True])
def test_packed_documents_match_one_by_one(name, cu_seqlens):
    _, model = _pair(name)
    docs = _docs()
    with torch.no_grad():
        want_logits, want = _one_by_one(model, docs)
        got_logits, got = _packed(model, docs, cu_seqlens)
    assert (got_logits - want_logits).abs().max().item() < 1e-4
    assert abs(got.item() - want.item()) < 2e-5


# -- the mask description: what gencore.ops.attention is told reproduces transformers' mask -------

def _dense(q_length, kv_length, fn=causal_mask_function, padding=None, q_offset=0, kv_offset=0):
    return sdpa_mask(batch_size=2, q_length=q_length, kv_length=kv_length, q_offset=q_offset,
                     kv_offset=kv_offset, mask_function=fn, attention_mask=padding,
                     allow_is_causal_skip=False)


def _rebuild(m, Sq, Sk):
    """The boolean mask gencore.ops.attention's documented semantics give for m's arguments."""
    i = torch.arange(Sq)[:, None] + m.kv_len - Sq
    j = torch.arange(m.kv_len)
    keep = (j <= i) if m.causal else torch.ones(Sq, m.kv_len, dtype=torch.bool)
    if m.window_left is not None:
        keep = keep & (j >= i - m.window_left)
    keep = keep.expand(2, Sq, m.kv_len)
    if m.key_padding_mask is not None:
        keep = keep & ~m.key_padding_mask[:, None, :]
    if m.document_ids is not None:
        keep = keep & (m.document_ids[:, :, None] == m.document_ids[:, None, :])
    out = torch.zeros(2, 1, Sq, Sk, dtype=torch.bool)
    out[:, 0, :, :m.kv_len] = keep
    return out


def test_mask_descriptions_are_exact():
    left = torch.ones(2, 10, dtype=torch.bool)
    left[0, :3] = False
    right = torch.ones(2, 10, dtype=torch.bool)
    right[1, -4:] = False
    cases = {
        "causal": (_dense(10, 10), 0, dict(causal=True, window_left=None)),
        "left padded": (_dense(10, 10, padding=left), 0, dict(causal=True)),
        "right padded": (_dense(10, 10, padding=right), 0, dict(causal=True)),
        "sliding 4": (_dense(10, 10, sliding_window_causal_mask_function(4)), 0,
                      dict(causal=True, window_left=3)),
        "decode, padded": (_dense(1, 10, padding=left, q_offset=9), 9, dict(causal=True)),
        "prefill into a static cache": (_dense(6, 16, padding=left), 0,
                                        dict(causal=True, kv_len=6)),
        "sliding cache": (_dense(2, 5, sliding_window_causal_mask_function(4), q_offset=7,
                                 kv_offset=4), 3, dict(causal=True, kv_len=5)),
    }
    for what, (dense, diag, want) in cases.items():
        m = gt.GencoreMask(dense, diag)
        assert m.exact, what
        for k, v in want.items():
            assert getattr(m, k) == v, (what, k, getattr(m, k))
        assert torch.equal(_rebuild(m, dense.shape[2], dense.shape[3]), dense), what
    assert gt.GencoreMask(_dense(10, 10, padding=left), 0).key_padding_mask[0, :3].all()
    # chunked attention (Llama-4) is documents of chunk_size tokens
    chunked = _dense(10, 10, chunked_causal_mask_function(4, torch.zeros(2, dtype=torch.long)))
    m = gt.GencoreMask(chunked, 0)
    assert m.exact and m.document_ids[0].tolist() == [1] * 4 + [2] * 4 + [3] * 2
    assert torch.equal(_rebuild(m, 10, 10), chunked)
    # a pattern no argument gives travels whole, as attn_mask
    holed = _dense(10, 10, lambda b, h, q, kv: (kv <= q) & ~((q == 5) & (kv == 2)))
    assert not gt.GencoreMask(holed, 0).exact


def test_single_query_masks_are_described_exactly():
    """A decoding step's mask (one query) takes the short description: every pattern over the
    keys is key padding within the causal frame, or padding over every key where the query sees
    keys past its position; always exact."""
    left = torch.ones(2, 10, dtype=torch.bool)
    left[0, :3] = False
    g = torch.Generator().manual_seed(0)
    noisy = torch.rand(2, 1, 1, 10, generator=g) < 0.6
    beyond = torch.zeros(2, 1, 1, 10, dtype=torch.bool)
    beyond[:, 0, 0, [1, 8]] = True             # keys past the query's position 4
    blind = _dense(1, 10, padding=left, q_offset=9)
    blind[1] = False                           # a row that sees no key
    cases = {
        "plain": (_dense(1, 10, q_offset=9), 9, dict(causal=True, kv_len=10, key_padding_mask=None)),
        "left padded": (_dense(1, 10, padding=left, q_offset=9), 9, dict(causal=True, kv_len=10)),
        "sliding 4": (_dense(1, 10, sliding_window_causal_mask_function(4), q_offset=9), 9,
                      dict(causal=True, kv_len=10, window_left=None)),
        "static cache tail": (_dense(1, 16, padding=torch.ones(2, 16, dtype=torch.bool), q_offset=9),
                              9, dict(causal=True, kv_len=10)),
        "any pattern": (noisy, 9, dict(causal=True, kv_len=10)),
        "keys past the query": (beyond, 4, dict(causal=False, kv_len=10)),
        "a row that sees nothing": (blind, 9, dict(causal=True, kv_len=10)),
    }
    for what, (dense, diag, want) in cases.items():
        m = gt.GencoreMask(dense, diag)
        assert m.exact and m.document_ids is None, what
        for k, v in want.items():
            assert getattr(m, k) == v, (what, k, getattr(m, k))
        assert torch.equal(_rebuild(m, 1, dense.shape[3]), dense), what
    assert gt.GencoreMask(blind, 9).key_padding_mask[1].all()


def test_packed_mask_is_described_as_documents():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2]] * 2)
    fn = (lambda b, h, q, kv: (kv <= q) & (docs[b, q] == docs[b, kv]))
    m = gt.GencoreMask(_dense(10, 10, fn), 0)
    assert m.exact and m.causal and m.document_ids is not None
    assert torch.equal(_rebuild(m, 10, 10), _dense(10, 10, fn))


def test_unmappable_calls_warn_once_and_match_sdpa(monkeypatch):
    """Without an argument in gencore.ops.attention (here: key_padding_mask, as if an old build),
    padded calls run transformers' sdpa, with one warning, and give its result."""
    monkeypatch.setattr(gt, "ATTENTION_ARGS", gt.ATTENTION_ARGS - {"key_padding_mask"})
    monkeypatch.setattr(gt, "_WARNED", set())
    ref, ours = _pair("qwen2")
    ids, mask, _ = _batch(padded=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = ours(ids, attention_mask=mask).logits
        ours(ids, attention_mask=mask)
    mine = [w for w in caught if "gencore.integrations.transformers" in str(w.message)]
    assert len(mine) == 1 and "key_padding_mask" in str(mine[0].message)
    want = ref(ids, attention_mask=mask).logits
    assert (got - want)[mask.bool()].abs().max().item() < 1e-5


def test_sinks_go_to_gencore(monkeypatch):
    """s_aux (gpt-oss's attention sinks) becomes gencore.ops.attention's sinks=: no warning, the
    eager formulation's output, and the sinks' gradient."""
    monkeypatch.setattr(gt, "_WARNED", set())
    seen = []
    real = gencore.ops.attention
    monkeypatch.setattr(gencore.ops, "attention", lambda *a, **kw: seen.append(sorted(kw)) or real(*a, **kw))
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    sinks = torch.randn(4, requires_grad=True)
    module = torch.nn.Module()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out, _ = gt.attention_forward(module, q, k, v, None, s_aux=sinks)
    assert seen and "sinks" in seen[0]
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    w = (q @ kr.transpose(-1, -2)) / 4 + torch.full((6, 6), float("-inf")).triu(1)
    s2 = sinks.detach().clone().requires_grad_(True)
    w = torch.cat([w, s2.view(1, 4, 1, 1).expand(2, 4, 6, 1)], dim=-1).softmax(-1)[..., :-1]
    want = (w @ vr).transpose(1, 2)
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, sinks, g)
    (grad_want,) = torch.autograd.grad(want, s2, g)
    torch.testing.assert_close(grad, grad_want)


def _gpt_oss_pair():
    GptOssConfig = getattr(transformers, "GptOssConfig", None)
    if GptOssConfig is None:
        pytest.skip("this transformers has no gpt-oss")
    cfg = dict(vocab_size=V, hidden_size=128, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32,
               # every expert on every token: top-k routing flips on a 1e-7 difference and
               # turns rounding into chaos that says nothing about attention
               num_local_experts=2, num_experts_per_tok=2, sliding_window=8, max_position_embeddings=128, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_config(GptOssConfig(**cfg), attn_implementation="eager")
    ours = AutoModelForCausalLM.from_config(GptOssConfig(**cfg), attn_implementation="gencore")
    with torch.no_grad():  # trained sinks, not the init's zeros
        for layer in ref.model.layers:
            layer.self_attn.sinks.normal_(0.0, 1.0)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("padded", [False, True])
def test_gpt_oss_training_losses_match_eager(padded, monkeypatch):
    """gpt-oss (sinks on every layer, alternating sliding/full attention): 20 steps on "gencore"
    give "eager"'s per-step losses within 2e-4, with every attention call in gencore.ops.attention
    (its sinks gradient included)."""
    calls = []
    real = gencore.ops.attention
    monkeypatch.setattr(gencore.ops, "attention", lambda *a, **kw: calls.append("sinks" in kw) or real(*a, **kw))
    ref, ours = _gpt_oss_pair()
    init = [layer.self_attn.sinks.detach().clone() for layer in ours.model.layers]
    a, b = _train(ref, padded), _train(ours, padded)
    assert calls and all(calls)
    assert (a - b).abs().max().item() < 2e-4, (a, b)
    # random tokens teach it little in 20 steps; the sinks did train (and as eager's did)
    assert all((layer.self_attn.sinks - s0).abs().max() > 1e-3 for layer, s0 in zip(ours.model.layers, init))
    for x, y in zip(ref.model.layers, ours.model.layers):
        torch.testing.assert_close(y.self_attn.sinks, x.self_attn.sinks, atol=1e-4, rtol=1e-4)


def test_gpt_oss_greedy_generation_from_left_padded_batch(monkeypatch):
    monkeypatch.setattr(gt, "_auto_runs_fused", lambda *a: True)
    monkeypatch.setattr(gt, "_MAY_RUN_FUSED", {})
    _check_greedy_generation("gpt-oss", _gpt_oss_pair())


def test_gencore_runs_the_calls_it_can_take(monkeypatch):
    """A causal GQA model with no padding reaches gencore.ops.attention (impl auto) every layer,
    with k/v at their own head count (no repeat_kv)."""
    seen = []
    real = gt.ops.attention

    def spy(q, k, v, **kw):
        seen.append((q.shape[1], k.shape[1], kw.get("causal"), kw.get("impl", "auto")))
        return real(q, k, v, **kw)

    monkeypatch.setattr(gt.ops, "attention", spy)
    _, ours = _pair("llama")
    ours(_batch(padded=False)[0])
    assert seen == [(4, 2, True, "auto")] * 2


def test_calls_auto_gives_to_sdpa_get_transformers_mask(monkeypatch):
    """Where the auto table picks PyTorch's SDPA (this CPU's table: padded calls), the layer hands
    SDPA the mask transformers built for the forward, as "sdpa" does; where it picks the fused
    kernel, gencore.ops.attention runs."""
    calls = []
    real_sdpa, real_attention = gt.sdpa_attention_forward, gt.ops.attention
    monkeypatch.setattr(gt, "sdpa_attention_forward",
                        lambda *a, **k: calls.append("sdpa") or real_sdpa(*a, **k))
    monkeypatch.setattr(gt.ops, "attention",
                        lambda *a, **k: calls.append("gencore") or real_attention(*a, **k))
    monkeypatch.setattr(gt, "_auto_runs_fused", lambda q, k, causal, kpm, args: kpm is None)
    monkeypatch.setattr(gt, "_MAY_RUN_FUSED", {})
    _, ours = _pair("qwen2")
    ids, mask, _ = _batch(padded=True)
    ours(ids, attention_mask=mask)
    ours(ids)
    assert calls == ["sdpa"] * 2 + ["gencore"] * 2
    monkeypatch.undo()
    q = torch.randn(2, 4, 16, 8)
    assert gt._auto_runs_fused(q, q, True, None, {}) == (
        gencore.ops.auto.choose("attention", "auto", "cpu", q=q, k=q, causal=True) == "fused")


def test_decoding_steps_auto_sends_to_sdpa_skip_the_mask_description(monkeypatch):
    """A forward whose every call auto gives to transformers' path (here: decoding steps) never
    describes its mask; the prefill, which may run fused, does, once for both layers."""
    monkeypatch.setattr(gt, "_auto_runs_fused", lambda q, k, causal, kpm, args: q.shape[2] > 4)
    monkeypatch.setattr(gt, "_MAY_RUN_FUSED", {})
    described, real = [], gt._describe
    monkeypatch.setattr(gt, "_describe", lambda dense, *a: described.append(dense.shape) or real(dense, *a))
    ref, ours = _pair("qwen2")
    ids = torch.randint(3, V, (2, 12), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ours.eval().generate(ids, **kw), ref.eval().generate(ids, **kw))
    assert described == [(2, 1, 12, 12)]


def test_mask_checks_on_bytes_match_bool_reductions():
    m = torch.rand(3, 5, 7) < 0.5
    assert gt._any(m) == bool(m.any()) and not gt._any(torch.zeros(2, 3, dtype=torch.bool))
    assert not gt._any(m[:0])
    assert torch.equal(gt._any(m, 1), m.any(1))
    assert torch.equal(gt._any(m.transpose(0, 2), -1), m.transpose(0, 2).any(-1))
    assert gt._same(m, m.clone()) and not gt._same(m, m ^ (torch.arange(7) == 6))
    assert gt._same(m[:1].expand(3, -1, -1), m[:1].repeat(3, 1, 1))


def test_register_again_under_another_name():
    gt.register("gencore-test")
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface
    assert AttentionInterface._global_mapping["gencore-test"] is gt.attention_forward
    assert AttentionMaskInterface._global_mapping["gencore-test"] is gt.mask


# -- the mapping for issue 20's arguments, against a plain-PyTorch stand-in of that API -----------
# Where this build's gencore.ops.attention lacks window/softcap/document_ids/attn_mask/dropout_p,
# the tests above run transformers' path for those calls. These run them through the mapping into
# those arguments, on a dense implementation of their documented semantics, so the mapping itself
# (window=(sliding_window - 1, 0), document_ids, a static cache's cut tail) is checked today.

def _spec_attention(q, k, v, causal=False, key_padding_mask=None, scale=None, *, dropout_p=0.0,
                    window=None, softcap=None, document_ids=None, attn_mask=None, generator=None,
                    impl="auto"):
    B, H, Sq, D = q.shape
    Sk = k.shape[2]
    k, v = k.repeat_interleave(H // k.shape[1], 1), v.repeat_interleave(H // k.shape[1], 1)
    s = (q @ k.transpose(-1, -2)) * (D ** -0.5 if scale is None else scale)
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    pos = torch.arange(Sq)[:, None] + Sk - Sq            # bottom-right frame
    j = torch.arange(Sk)
    keep = torch.ones(B, 1, Sq, Sk, dtype=torch.bool)
    if causal:
        keep = keep & (j <= pos)
    if window is not None:
        left, right = window
        if left is not None and left >= 0:
            keep = keep & (j >= pos - left)
        if right is not None and right >= 0:
            keep = keep & (j <= pos + right)
    if key_padding_mask is not None:
        keep = keep & ~key_padding_mask[:, None, None, :]
    if document_ids is not None:
        keep = keep & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    if attn_mask is not None:
        keep = keep & attn_mask
    p = s.masked_fill(~keep, float("-inf")).softmax(-1).nan_to_num(0.0)
    if dropout_p:
        p = torch.nn.functional.dropout(p, dropout_p)
    return p @ v


@pytest.fixture
def issue20_api(monkeypatch):
    import inspect
    monkeypatch.setattr(gt.ops, "attention", _spec_attention)
    monkeypatch.setattr(gt, "ATTENTION_ARGS", frozenset(inspect.signature(_spec_attention).parameters))
    monkeypatch.setattr(gt, "_auto_runs_fused", lambda *a: True)   # every call to the stand-in
    monkeypatch.setattr(gt, "_MAY_RUN_FUSED", {})
    monkeypatch.setattr(gt, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="gencore.integrations.transformers")
        yield


@pytest.mark.parametrize("name,padded", [("mistral", True), ("gemma2", True)])
def test_issue20_arguments_training(issue20_api, name, padded):
    ref, ours = _pair(name)
    a, b = _train(ref, padded, steps=5), _train(ours, padded, steps=5)
    assert (a - b).abs().max().item() < 2e-4, (a, b)


@pytest.mark.parametrize("name", ["mistral", "gemma2"])
def test_issue20_arguments_generation(issue20_api, name):
    _check_greedy_generation(name)


@pytest.mark.parametrize("cu_seqlens", [False, True])
def test_issue20_arguments_packed(issue20_api, cu_seqlens):
    test_packed_documents_match_one_by_one("mistral", cu_seqlens)


def test_issue20_arguments_static_cache(issue20_api):
    ref, ours = _pair("llama")
    ids = torch.randint(3, V, (2, 10), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
              cache_implementation="static")
    with torch.no_grad():
        assert torch.equal(ours.eval().generate(ids, **kw), ref.eval().generate(ids, **kw))


def test_layering_and_optional_dependency():
    """gencore/integrations imports only gencore.ops / gencore.nn; `import gencore` never imports
    transformers."""
    import ast
    import pathlib
    import subprocess
    import sys
    src = pathlib.Path(gt.__file__).read_text()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.ImportFrom) and node.level:
            assert node.level == 2 and node.module in ("ops", "nn", None), ast.dump(node)
            if node.module is None:
                assert {a.name for a in node.names} <= {"ops", "nn"}, ast.dump(node)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            assert all(not n.startswith("gencore") for n in names), names
    code = "import sys, gencore, gencore.ops, gencore.nn; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not {"window", "softcap", "document_ids", "dropout_p"} <= gt.ATTENTION_ARGS,
                    reason="this gencore.ops.attention lacks issue 20's arguments")
@pytest.mark.parametrize("name,padded,extra", [("mistral", True, {}), ("gemma2", True, {}),
                                               ("gpt2", True, {"attn_pdrop": 0.1})])
def test_features_reach_gencore_without_fallback(monkeypatch, name, padded, extra):
    """With issue 20's arguments, sliding windows, softcap, padding and dropout map onto
    gencore.ops.attention: no call falls back (a fallback warning would be an error here)."""
    monkeypatch.setattr(gt, "_WARNED", set())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(name, **extra), attn_implementation="gencore")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="gencore.integrations.transformers")
        _train(model, padded, steps=2)
        with torch.no_grad():
            _packed(model.eval(), _docs())
