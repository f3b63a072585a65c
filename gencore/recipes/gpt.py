"""GPT recipes: character-level language models on the embedded text and code.

- gpt-text: CPython's language reference (gencore.data.english_text), char tokenizer, at the
  budget of nanoGPT's CPU shakespeare_char configuration (4 layers, 4 heads, 128 wide, context
  64, batch 12, 2000 steps, dropout 0, weight decay 0.1, clipping at 1.0), trained the way the
  field trains since GPT-2: rotary positions, RMS-normalised queries and keys, Muon for the
  hidden matrices (AdamW for embeddings and gains), lr 4e-3 after 100 warmup steps decayed
  linearly to zero, bf16 autocast where the device computes bf16 natively. About 0.34 nats/char
  below nanoGPT's own recipe at the same parameters and steps (benchmarks/RESULTS.md, "gpt-text
  vs nanoGPT"); `--set rotary=false qk_norm=false optimizer=adamw lr=1e-3 min_lr_ratio=0.1
  lr_schedule=cosine precision=fp32` is nanoGPT's setting.
- gpt-code: the standard library's Python source (gencore.data.stdlib_code, validation on
  modules never seen in training), char or byte tokenizer, the same model and training with a 128
  context (1500 steps: 1.256 nats/char on unseen modules, 1.719 with nanoGPT's setting).

Settings (`gencore train gpt-text --help`): the model's GPTConfig and the TrainerConfig field by
field, and LanguageModelTask's optimizer, evaluation and sampling (GPTSettings); `none` means off
(`top_k=none`: the whole vocabulary; `n_kv_head=none`: n_head, no grouping).

Metrics (held-out text, every non-overlapping block_size window): loss (nats per token), bpc
(bits per character), perplexity (per token). Under torchrun, `parallel=ddp` (the default)
replicates the model (DistributedDataParallel), `parallel=fsdp` shards it per transformer block
(FSDP2) and writes sharded checkpoints (torch.distributed.checkpoint); see README "Scaling".
Samples longer than block_size cost a full-window forward pass per token past block_size (see
gencore.models.gpt), hence 200 tokens by default.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch

from .._settings import setting
from ..data import LMBatches, LMEvalBatches, english_text, stdlib_code
from ..models.gpt import GPT, GPTConfig
from ..train import TrainerConfig
from ..train.tasks.lm import OPTIMIZERS, LanguageModelTask
from .base import Recipe, RecipeSettings, RunPlan

__all__ = ["RECIPES", "GPTSettings", "GPTCodeSettings"]


@dataclass
class GPTSettings(RecipeSettings):
    """The gpt recipes' settings: the model's GPTConfig and the TrainerConfig as they are, and
    the optimizer, evaluation and sampling of LanguageModelTask."""
    model: GPTConfig = setting(help="the model", factory=GPTConfig)
    optimizer: str = setting("adamw", "muon: gencore's Muon for the hidden matrices, AdamW for "
                                      "the rest; muon_torch: torch.optim.Muon + fused AdamW",
                             choices=OPTIMIZERS)
    lr: float = setting(1e-3, "peak learning rate (every parameter group)")
    weight_decay: float = setting(0.1, "decoupled weight decay of the matrices and embeddings")
    beta1: float = setting(0.9, "AdamW beta1 (Muon's AdamW groups too)")
    beta2: float = setting(0.99, "AdamW beta2")
    momentum: float = setting(0.95, "Muon's momentum")
    ns_steps: int = setting(5, "Muon's Newton-Schulz iterations")
    val_batches: int = setting(20, "batches of each periodic validation (nanoGPT's eval_iters)")
    eval_batches: Optional[int] = setting(None, "final evaluation: this many batches of seeded "
                                                "windows; none: every held-out window")
    sample_tokens: int = setting(200, "tokens per sample")
    temperature: float = setting(1.0, "sampling temperature")
    top_k: Optional[int] = setting(None, "sample from the k likeliest tokens; none: all")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("top_k", "eval_batches"):  # none is off; 0 is not a way to say it
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"{name} must be none (off) or >= 1, got {v}")
        for name in ("val_batches", "sample_tokens", "ns_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or not self.temperature > 0:
            raise ValueError(f"lr and temperature must be > 0, got {self.lr} and {self.temperature}")


@dataclass
class GPTCodeSettings(GPTSettings):
    tokenizer: str = setting("char", "char or byte level", choices=("char", "byte"))


def _build_gpt(s: GPTSettings, data, tokenizer) -> RunPlan:
    torch.manual_seed(s.seed)  # the model's initial weights
    model = GPT(replace(s.model, vocab_size=tokenizer.vocab_size))
    task = LanguageModelTask(
        model, tokenizer, lr=s.lr, weight_decay=s.weight_decay, betas=(s.beta1, s.beta2),
        val_text=data.val, eval_batches=s.eval_batches, sample_tokens=s.sample_tokens,
        temperature=s.temperature, top_k=s.top_k, sample_seed=s.seed, optimizer=s.optimizer,
        momentum=s.momentum, ns_steps=s.ns_steps)
    block = s.model.block_size
    return RunPlan(
        task=task,
        train_data=LMBatches(tokenizer.encode_tensor(data.train), block, s.batch_size, seed=s.seed),
        # Periodic validation: a fixed set of val_batches seeded batches (nanoGPT's eval_iters).
        val_data=LMEvalBatches(tokenizer.encode_tensor(data.val), block, s.batch_size,
                               max_batches=s.val_batches))


def build_gpt_text(s: GPTSettings, device: torch.device) -> RunPlan:
    data = english_text()
    return _build_gpt(s, data, data.tokenizer("char"))


def build_gpt_code(s: GPTCodeSettings, device: torch.device) -> RunPlan:
    data = stdlib_code()
    return _build_gpt(s, data, data.tokenizer(s.tokenizer))


# nanoGPT's shakespeare_char CPU setting (the comment in config/train_shakespeare_char.py):
# 4 layers, 4 heads, 128 wide, context 64, batch 12, dropout 0, weight decay 0.1, clipping at 1.0,
# lr 1e-3 with a cosine decay to 1e-4 after 100 warmup steps, AdamW betas (0.9, 0.99).
_NANOGPT_TRAINER = TrainerConfig(grad_clip=1.0, lr_schedule="cosine", warmup_steps=100,
                                 min_lr_ratio=0.1, log_every=50, val_every=250,
                                 sample_every=1000, ckpt_every=500)
_NANOGPT_MODEL = GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128)

# What the field learned after GPT-2, each measured alone at this budget (benchmarks/RESULTS.md,
# "gpt-text ablation"): rotary positions, Muon for the hidden matrices, a higher learning rate
# decayed linearly to zero, RMS-normalised queries and keys, bf16 autocast where it is native.
_MODERN = GPTSettings(
    steps=2000, batch_size=12, model=replace(_NANOGPT_MODEL, rotary=True, qk_norm=True),
    optimizer="muon", lr=4e-3,
    trainer=replace(_NANOGPT_TRAINER, lr_schedule="linear", min_lr_ratio=0.0, precision="auto"))

RECIPES = [
    Recipe(
        name="gpt-text",
        summary="character-level GPT (4x4x128, nanoGPT's CPU shakespeare_char setting) on "
                "CPython's language reference",
        settings=_MODERN,
        demo={},  # the full 2000-step run: about 1.5 min on 2 cores
        build=build_gpt_text,
    ),
    Recipe(
        name="gpt-code",
        summary="character/byte-level GPT (4x4x128, context 128) on the Python standard library, "
                "validated on unseen modules",
        settings=GPTCodeSettings(**{**vars(_MODERN), "steps": 3000, "eval_batches": 40,
                                    "model": replace(_MODERN.model, block_size=128),
                                    "trainer": replace(_MODERN.trainer, sample_every=1500,
                                                       ckpt_every=750)}),
        demo={"steps": 1500},
        build=build_gpt_code,
    ),
]
