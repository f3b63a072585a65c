"""GPT benchmarks: a training step per attention implementation, and KV-cache generation.

    python -m pytest benchmarks/bench_gpt.py --benchmark-only --benchmark-json /tmp/gpt.json -q
    python benchmarks/report.py /tmp/gpt.json --markdown

Each group is timed round-robin (benchmarks/conftest.py's `compare`: one call of each
implementation per repetition, shuffled), so load from other jobs hits every implementation alike.
`-k cuda` runs the GPT-2-small step alone, `-k "not cuda"` the CPU cases.

Groups (extra_info "impl"; report.py gives each time as a multiple of the "fused" one):
- "gpt-text train step ...": one full training step of gpt-text as its recipe trains it (its
  model: 4 layers, 4 heads, 128 wide, context 64, batch 12, rotary, QK-norm; Muon + AdamW; bf16
  autocast where the CPU computes bf16 natively, else float32; clipping at 1.0) with attention
  impl "fused" (gencore's kernel), "reference" (gencore's PyTorch reference) and "torch" (the same
  model on `F.scaled_dot_product_attention`, impl="sdpa").
  Target: fused at least as fast as torch.
- "gpt-2-small train step ..." (CUDA only): the GPT-2-small shape (12 layers, 12 heads, 768 wide,
  vocabulary 50304, batch 8 x 1024 tokens), bf16 autocast, fused AdamW, with attention impl "auto",
  "fused" (gencore's tensor-core kernels) and "sdpa" side by side.
- "gpt generate ...": 256 new tokens after a 16-token prompt (context 512, so no crop), top-k
  sampling with a seeded generator: "fused" = KV cache + fused attention, "torch" = KV cache +
  SDPA, "uncached" = fused attention over the whole sequence at every step. Target: uncached
  at least 5x the fused (cached) time.
"""
from __future__ import annotations

import pytest
import torch

from gencore import _backend
from gencore.models import GPT, GPTConfig

MODEL = dict(vocab_size=100, n_layer=4, n_head=4, n_embd=128)
TRAIN_IMPLS = {"fused": "fused", "reference": "reference", "torch": "sdpa"}
GEN_CASES = {"fused": ("fused", True), "torch": ("sdpa", True), "uncached": ("fused", False)}
TRAIN_GROUP = "gpt-text train step (recipe defaults) <L4,H4,E128> T=64 B=12 fwd+bwd+muon"
GEN_GROUP = "gpt generate 256 tokens <L4,H4,E128> prompt 16, B={batch}"


def train_step(impl: str):
    """One training step of gpt-text as its recipe trains it (its model: rotary, QK-norm; its
    optimizers: Muon + AdamW; bf16 autocast where the CPU computes bf16 natively, else float32;
    clipping at 1.0) with attention `impl` ("fused", "sdpa", ...) and its own batches."""
    from gencore.recipes.registry import get_recipe, resolve_settings
    from gencore.train.precision import resolve_precision
    recipe = get_recipe("gpt-text")
    device = torch.device("cpu")
    settings = resolve_settings(recipe, {"impl": impl})
    plan = recipe.build(settings, device)
    task, trainer = plan.task, settings.trainer
    opts = task.configure_optimizers()
    batches = iter(plan.train_data)
    batch = next(batches)
    bf16 = resolve_precision(trainer.precision, device) == "bf16"

    def step():
        for opt in opts.values():
            opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = task.training_step(batch, 0)
        loss = out["loss"] if isinstance(out, dict) else out
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), trainer.grad_clip or 1e9)
        for opt in opts.values():
            opt.step()
    return step


GPU_MODEL = dict(vocab_size=50304, n_layer=12, n_head=12, n_embd=768)
GPU_TRAIN_IMPLS = {"auto": "auto", "fused": "fused", "torch": "sdpa"}
GPU_TRAIN_GROUP = "gpt-2-small train step <L12,H12,E768> T=1024 B=8 V=50304 bf16 autocast fwd+bwd+adamw"


def gpu_train_step(impl: str):
    """One bf16-autocast training step of the GPT-2-small shape on CUDA with attention `impl`."""
    torch.manual_seed(0)
    block, batch = 1024, 8
    model = GPT(GPTConfig(block_size=block, impl=impl, **GPU_MODEL)).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(0, GPU_MODEL["vocab_size"], (batch, block), generator=g, device="cuda")
    y = torch.randint(0, GPU_MODEL["vocab_size"], (batch, block), generator=g, device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return step


def generation(impl: str, use_cache: bool, batch: int):
    """256 sampled tokens after a 16-token prompt, context 512."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, impl=impl, **MODEL)).eval()
    prompt = torch.randint(0, 100, (batch, 16), generator=torch.Generator().manual_seed(1))

    def run():
        model.generate(prompt, 256, top_k=50, use_cache=use_cache,
                       generator=torch.Generator().manual_seed(2))
    return run


def _calls(cases: dict, device: str = "cpu") -> dict:
    """{name: call} from {name: (attention impl, builder)}, or why a name does not run here."""
    return {name: (f"no fused {device} attention kernel in this build: {_backend.reason()}"
                   if attn == "fused" and not _backend.has_kernel("attention", device) else build())
            for name, (attn, build) in cases.items()}


@pytest.mark.parametrize("impl", list(TRAIN_IMPLS))
def test_gpt_train_step(compare, impl):
    compare(TRAIN_GROUP, impl, lambda: _calls({k: (v, lambda v=v: train_step(v))
                                               for k, v in TRAIN_IMPLS.items()}),
            min_time=2.0, min_reps=10, warmup=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("impl", list(GPU_TRAIN_IMPLS))
def test_gpt2_small_train_step_cuda(compare, impl):
    compare(GPU_TRAIN_GROUP, impl, lambda: _calls({k: (v, lambda v=v: gpu_train_step(v))
                                                   for k, v in GPU_TRAIN_IMPLS.items()}, "cuda"),
            "cuda", min_reps=5, max_reps=10, warmup=3)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("impl", list(GEN_CASES))
def test_gpt_generate(compare, impl, batch):
    compare(GEN_GROUP.format(batch=batch), impl,
            lambda: _calls({k: (a, lambda a=a, c=c: generation(a, c, batch))
                            for k, (a, c) in GEN_CASES.items()}),
            min_reps=3, min_time=0.0, warmup=1)
