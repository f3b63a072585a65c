"""Hugging Face transformers models with attn_implementation "sdpa" vs "gencore" (issue 21).

    python -m pytest benchmarks/bench_transformers.py --benchmark-only --benchmark-json /tmp/hf.json -q
    python benchmarks/report.py /tmp/hf.json --markdown

The tests' models (tests/test_transformers.py: 2 layers, 128 wide, from configs), vocabulary 1024:
- "<model> train step": forward, loss, backward, AdamW step at batch 8 x 256 tokens; Qwen2 and GPT-2
  with a right-padded batch, Llama also packed (4 documents per row, position_ids restarting),
  GPT-2 also with attention dropout 0.1.
- "<model> generate": greedy, 32 new tokens after a left-padded prompt batch of 4 x 32.
Gemma-2 (softcap) and gpt-oss (sinks; where this transformers has it) have no "sdpa" path: their
baseline is "eager". Skipped without transformers. Each group is timed round-robin (baseline and
gencore alternating, benchmarks/conftest.py's `compare`), the harness of every other comparison.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is not installed")

import gencore.integrations.transformers  # noqa: E402,F401  registers "gencore"
from transformers import (AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig,  # noqa: E402
                          MistralConfig, Qwen2Config)

V, B, S, GEN_B, PROMPT, NEW = 1024, 8, 256, 4, 32, 32
_SMALL = dict(vocab_size=V, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=512, pad_token_id=0,
              bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "llama": lambda: LlamaConfig(**_SMALL, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**_SMALL, num_key_value_heads=2, sliding_window=64),
    "gemma2": lambda: Gemma2Config(**_SMALL, num_key_value_heads=2, head_dim=32, sliding_window=64,
                                   attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
    "qwen2": lambda: Qwen2Config(**_SMALL, num_key_value_heads=2),
    "gpt2": lambda: GPT2Config(vocab_size=V, n_positions=512, n_embd=128, n_layer=2, n_head=4,
                               attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0, pad_token_id=0,
                               bos_token_id=1, eos_token_id=2),
}
if hasattr(transformers, "GptOssConfig"):  # sinks on every layer, sliding and full layers alternating
    CONFIGS["gpt-oss"] = lambda: transformers.GptOssConfig(
        **{**_SMALL, "intermediate_size": 128}, num_key_value_heads=2, head_dim=32,
        num_local_experts=2, num_experts_per_tok=2, sliding_window=64)
# (case, model, batch kind, attention dropout)
TRAIN_CASES = [("llama", "llama", "plain", 0.0), ("llama packed", "llama", "packed", 0.0),
               ("mistral", "mistral", "plain", 0.0), ("gemma2", "gemma2", "plain", 0.0),
               ("qwen2 padded", "qwen2", "padded", 0.0), ("gpt2 padded", "gpt2", "padded", 0.0),
               ("gpt2 padded dropout", "gpt2", "padded", 0.1)]
TRAIN_CASES += [("gpt-oss", "gpt-oss", "plain", 0.0), ("gpt-oss padded", "gpt-oss", "padded", 0.0)] \
    if "gpt-oss" in CONFIGS else []
GEN_MODELS = list(CONFIGS)


def baseline(model: str) -> str:
    """What the model runs without gencore: "sdpa", or "eager" where transformers has no SDPA
    path for it (Gemma-2's softcap, gpt-oss's sinks)."""
    return "eager" if model in ("gemma2", "gpt-oss") else "sdpa"


def _model(name: str, impl: str, dropout: float = 0.0):
    torch.manual_seed(0)
    cfg = CONFIGS[name]()
    if dropout:
        cfg.attn_pdrop = cfg.attention_dropout = dropout
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)


def _train_batch(kind: str):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (B, S), generator=g)
    kw = {}
    if kind == "padded":
        mask = torch.ones(B, S, dtype=torch.long)
        for r in range(1, B, 2):
            mask[r, S - 16 * r:] = 0          # right padding of 16..112 tokens
        kw["attention_mask"] = mask
        labels = ids.masked_fill(mask == 0, -100)
    else:
        labels = ids.clone()
    if kind == "packed":                      # 4 documents per row
        lengths = (40, 72, 56, 88)
        kw["position_ids"] = torch.cat([torch.arange(n) for n in lengths])[None].expand(B, -1)
        starts = torch.tensor([0, 40, 112, 168])
        labels[:, starts] = -100
    return ids, labels, kw


def train_step(name: str, impl: str, kind: str = "plain", dropout: float = 0.0):
    model = _model(name, impl, dropout).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids, labels, kw = _train_batch(kind)

    def step():
        loss = model(ids, labels=labels, use_cache=False, **kw).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def generation(name: str, impl: str):
    model = _model(name, impl).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, V, (GEN_B, PROMPT), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :8] = 0
    mask[3, :20] = 0
    ids = ids.masked_fill(mask == 0, 0)

    def run():
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=NEW, min_new_tokens=NEW,
                           do_sample=False, pad_token_id=0)
    return run


@pytest.mark.parametrize("impl", ["baseline", "gencore"])
@pytest.mark.parametrize("case", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_step(compare, benchmark, case, impl):
    label, name, kind, dropout = case
    benchmark.extra_info["attn_implementation"] = baseline(name) if impl == "baseline" else impl
    compare(f"hf {label} train step B={B} S={S}", impl,
            lambda: {"baseline": train_step(name, baseline(name), kind, dropout),
                     "gencore": train_step(name, "gencore", kind, dropout)},
            min_time=1.0, min_reps=10, warmup=2)


@pytest.mark.parametrize("impl", ["baseline", "gencore"])
@pytest.mark.parametrize("name", GEN_MODELS)
def test_generate(compare, benchmark, name, impl):
    benchmark.extra_info["attn_implementation"] = baseline(name) if impl == "baseline" else impl
    compare(f"hf {name} generate {NEW} tokens B={GEN_B} prompt {PROMPT} left-padded", impl,
            lambda: {"baseline": generation(name, baseline(name)), "gencore": generation(name, "gencore")},
            min_time=1.0, min_reps=5, warmup=1)
