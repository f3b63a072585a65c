"""GPT recipes: character-level language models on the embedded text and code.

- gpt-text: CPython's language reference (gencore.data.english_text), char tokenizer, at the
  budget of nanoGPT's CPU shakespeare_char configuration (4 layers, 4 heads, 128 wide, context
  64, batch 12, 2000 steps, dropout 0, weight decay 0.1, clipping at 1.0), trained the way the
  field trains since GPT-2: rotary positions, RMS-normalised queries and keys, Muon for the
  hidden matrices (AdamW for embeddings and gains), lr 4e-3 after 100 warmup steps decayed
  linearly to zero, bf16 autocast where the device computes bf16 natively. About 0.34 nats/char
  below nanoGPT's own recipe at the same parameters and steps (benchmarks/RESULTS.md, "gpt-text
  vs nanoGPT"); `--set rotary=false qk_norm=false optimizer=adamw lr=1e-3 min_lr=1e-4
  lr_schedule=cosine precision=fp32` is nanoGPT's setting.
- gpt-code: the standard library's Python source (gencore.data.stdlib_code, validation on
  modules never seen in training), char or byte tokenizer, the same model and training with a 128
  context (1500 steps: 1.256 nats/char on unseen modules, 1.719 with nanoGPT's setting).

Metrics (held-out text, every non-overlapping block_size window): loss (nats per token), bpc
(bits per character), perplexity (per token). Under torchrun, `parallel=ddp` (the default)
replicates the model (DistributedDataParallel), `parallel=fsdp` shards it per transformer block
(FSDP2) and writes sharded checkpoints (torch.distributed.checkpoint); see README "Scaling". `n_kv_head=0` means n_head (no grouping);
`top_k=0` samples from the whole vocabulary. Samples longer than block_size cost a full-window
forward pass per token past block_size (see gencore.models.gpt), hence 200 tokens by default.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..data import LMBatches, LMEvalBatches, english_text, stdlib_code
from ..models.gpt import GPT, MLPS, NORMS, GPTConfig
from ..nn.attention import IMPLS
from ..train.distributed import PARALLEL
from ..train.precision import resolve_precision
from ..train.tasks.lm import OPTIMIZERS, LanguageModelTask
from .base import Recipe, RunPlan

__all__ = ["RECIPES"]


def _build_gpt(config: Dict[str, Any], data, tokenizer, device: torch.device) -> RunPlan:
    torch.manual_seed(config["seed"])  # the model's initial weights
    model = GPT(GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=config["block_size"],
        n_layer=config["n_layer"], n_head=config["n_head"],
        n_kv_head=config["n_kv_head"] or config["n_head"], n_embd=config["n_embd"],
        dropout=config["dropout"], bias=config["bias"], rotary=config["rotary"],
        tie_weights=config["tie_weights"], impl=config["impl"], norm=config["norm"],
        qk_norm=config["qk_norm"], mlp=config["mlp"], mlp_hidden=config["mlp_hidden"] or None,
        logit_softcap=config["logit_softcap"] or None, zero_init_proj=config["zero_init_proj"]))
    if config["min_lr"] > config["lr"]:
        raise ValueError(f"min_lr ({config['min_lr']}) must not exceed lr ({config['lr']})")
    task = LanguageModelTask(
        model, tokenizer, lr=config["lr"], weight_decay=config["weight_decay"],
        betas=(config["beta1"], config["beta2"]), val_text=data.val,
        eval_batches=config["eval_batches"] or None, sample_tokens=config["sample_tokens"],
        temperature=config["temperature"], top_k=config["top_k"] or None, sample_seed=config["seed"],
        optimizer=config["optimizer"], momentum=config["momentum"], ns_steps=config["ns_steps"])
    train = tokenizer.encode_tensor(data.train)
    val = tokenizer.encode_tensor(data.val)
    steps = config["steps"]
    return RunPlan(
        task=task,
        train_data=LMBatches(train, config["block_size"], config["batch_size"], seed=config["seed"]),
        # Periodic validation: a fixed set of val_batches seeded batches (nanoGPT's eval_iters).
        val_data=LMEvalBatches(val, config["block_size"], config["batch_size"],
                               max_batches=config["val_batches"]),
        trainer={"precision": resolve_precision(config["precision"], device),
                 "grad_clip": config["grad_clip"] or None, "lr_schedule": config["lr_schedule"],
                 "decay_frac": config["decay_frac"], "warmup_steps": min(config["warmup_steps"], steps),
                 "min_lr_ratio": config["min_lr"] / config["lr"], "log_every": 50,
                 "val_every": min(config["val_every"], steps),
                 "sample_every": max(1, steps // 2), "ckpt_every": max(1, steps // 4),
                 "parallel": config["parallel"]})


def build_gpt_text(config: Dict[str, Any], device: torch.device) -> RunPlan:
    data = english_text()
    return _build_gpt(config, data, data.tokenizer("char"), device)


def build_gpt_code(config: Dict[str, Any], device: torch.device) -> RunPlan:
    data = stdlib_code()
    return _build_gpt(config, data, data.tokenizer(config["tokenizer"]), device)


# nanoGPT's shakespeare_char CPU setting (the comment in config/train_shakespeare_char.py).
_COMMON = {
    "steps": 2000, "seed": 0, "batch_size": 12, "block_size": 64,
    "n_layer": 4, "n_head": 4, "n_kv_head": 0, "n_embd": 128, "dropout": 0.0, "bias": False,
    "rotary": False, "tie_weights": True, "norm": "layernorm", "qk_norm": False, "mlp": "gelu",
    "mlp_hidden": 0, "logit_softcap": 0.0, "zero_init_proj": False, "impl": "auto",
    "precision": "fp32",
    "lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100, "lr_schedule": "cosine", "decay_frac": 1.0,
    "optimizer": "adamw", "momentum": 0.95, "ns_steps": 5, "beta1": 0.9, "beta2": 0.99, "weight_decay": 0.1,
    "grad_clip": 1.0,
    "val_every": 250, "val_batches": 20, "eval_batches": 0,
    "sample_tokens": 200, "temperature": 1.0, "top_k": 0,
    "parallel": "ddp",
}

_CHOICES = {"impl": IMPLS, "norm": NORMS, "mlp": MLPS, "lr_schedule": ("cosine", "linear"),
            "optimizer": OPTIMIZERS, "precision": ("auto", "fp32", "bf16"), "parallel": PARALLEL}

# What the field learned after GPT-2, each measured alone at this budget (benchmarks/RESULTS.md,
# "gpt-text ablation"): rotary positions, Muon for the hidden matrices, a higher learning rate
# decayed linearly to zero, RMS-normalised queries and keys, bf16 autocast where it is native.
_MODERN = {"rotary": True, "qk_norm": True, "optimizer": "muon", "lr": 4e-3, "min_lr": 0.0,
           "lr_schedule": "linear", "precision": "auto"}

RECIPES = [
    Recipe(
        name="gpt-text",
        summary="character-level GPT (4x4x128, nanoGPT's CPU shakespeare_char setting) on "
                "CPython's language reference",
        defaults={**_COMMON, **_MODERN},
        choices=_CHOICES,
        demo={},  # the full 2000-step run: about 1.5 min on 2 cores
        build=build_gpt_text,
    ),
    Recipe(
        name="gpt-code",
        summary="character/byte-level GPT (4x4x128, context 128) on the Python standard library, "
                "validated on unseen modules",
        defaults={**_COMMON, **_MODERN, "steps": 3000, "block_size": 128, "tokenizer": "char",
                  "eval_batches": 40},
        choices={**_CHOICES, "tokenizer": ("char", "byte")},
        demo={"steps": 1500},
        build=build_gpt_code,
    ),
]
