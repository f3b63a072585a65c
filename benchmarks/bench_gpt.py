"""GPT benchmarks: a training step per attention implementation, and KV-cache generation.

    python -m pytest benchmarks/bench_gpt.py -p no:randomly --benchmark-only \
        --benchmark-json /tmp/gpt.json -q
    python benchmarks/report.py /tmp/gpt.json --markdown

On a machine shared with other jobs, pytest-benchmark's one-case-after-another timing turns load
changes into ratio errors; `python benchmarks/bench_gpt.py [--rounds N]` times the same cases
round-robin (one call of each case per round) and prints medians and ratios, for one device
(`--device cpu`, the default, or `--device cuda`: the GPT-2-small step alone).

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

import argparse

import pytest
import torch

from gencore import _backend
from gencore.models import GPT, GPTConfig
from gencore.timing import round_robin

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
        torch.cuda.synchronize()
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


def _need(impl: str) -> None:
    if impl == "fused" and not _backend.has_kernel("attention", "cpu"):
        pytest.skip(f"no fused cpu attention kernel in this build: {_backend.reason()}")


@pytest.mark.parametrize("impl", list(TRAIN_IMPLS))
def test_gpt_train_step(benchmark, impl):
    _need(TRAIN_IMPLS[impl])
    step = train_step(TRAIN_IMPLS[impl])
    benchmark.group = TRAIN_GROUP
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(step, rounds=30, iterations=1, warmup_rounds=5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("impl", list(GPU_TRAIN_IMPLS))
def test_gpt2_small_train_step_cuda(benchmark, impl):
    if GPU_TRAIN_IMPLS[impl] == "fused" and not _backend.has_kernel("attention", "cuda"):
        pytest.skip(f"no fused cuda attention kernel in this build: {_backend.reason()}")
    step = gpu_train_step(GPU_TRAIN_IMPLS[impl])
    benchmark.group = GPU_TRAIN_GROUP
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(step, rounds=10, iterations=1, warmup_rounds=3)


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("impl", list(GEN_CASES))
def test_gpt_generate(benchmark, impl, batch):
    attn, use_cache = GEN_CASES[impl]
    _need(attn)
    run = generation(attn, use_cache, batch)
    benchmark.group = GEN_GROUP.format(batch=batch)
    benchmark.extra_info["impl"] = impl
    benchmark.pedantic(run, rounds=3 if use_cache else 2, iterations=1, warmup_rounds=1)


def _round_robin(cases: dict, rounds: int, device: str) -> dict:
    stats = round_robin(cases, device, min_reps=rounds, max_reps=rounds, warmup=1)
    return {name: st["median"] for name, st in stats.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="round-robin timing of the GPT benchmark cases")
    ap.add_argument("--rounds", type=int, default=30, help="rounds of training steps")
    ap.add_argument("--gen-rounds", type=int, default=3, help="rounds of generation")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="time only this device's cases: cpu (gpt-text step, generation) or cuda "
                         "(the GPT-2-small step; its --rounds)")
    args = ap.parse_args(argv)
    print(f"torch threads: {torch.get_num_threads()}")
    print("| case | impl | median ms | x fused time |\n|---|---|---:|---:|")
    if args.device == "cuda":
        groups = [(GPU_TRAIN_GROUP, {k: gpu_train_step(v) for k, v in GPU_TRAIN_IMPLS.items()}, args.rounds)]
    else:
        groups = [(TRAIN_GROUP, {k: train_step(v) for k, v in TRAIN_IMPLS.items()}, args.rounds)]
        for batch in (1, 8):
            groups.append((GEN_GROUP.format(batch=batch),
                           {k: generation(a, c, batch) for k, (a, c) in GEN_CASES.items()}, args.gen_rounds))
    for group, cases, rounds in groups:
        med = _round_robin(cases, rounds, args.device)
        for name, t in med.items():
            print(f"| {group} | {name} | {t * 1e3:.1f} | {t / med['fused']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
