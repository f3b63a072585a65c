"""What a recipe is: a named, complete training setup that `gencore train NAME` runs.

A recipe knows its data, model, task and trainer settings; the command line adds only the run
directory, the device, resume and the user's `--set key=value` overrides.

    Recipe(
        name="vae-digits",
        summary="convolutional VAE on scikit-learn's 8x8 digits",
        defaults={"steps": 3000, "seed": 0, "batch_size": 64, "lr": 1e-3, "latent": 16, ...},
        choices={"likelihood": ("bernoulli", "gaussian")},
        demo={"steps": 600},
        build=build_vae_digits,          # (config dict, device) -> RunPlan
    )

Conventions every recipe follows:
- `defaults` names every key `--set` may change, with its default; the type of the default is
  the type of the key (bool, int, float, str). `steps`, `seed` and `batch_size` are always there.
- `demo` holds the overrides `gencore demo` uses: a run of one to three minutes on 2 CPU cores.
- `build(config, device)` returns a `RunPlan`; it must be deterministic given `config["seed"]`
  (it is called again by `gencore sample` to rebuild the modules before loading a checkpoint).
- The task (a `gencore.train.Task`) also implements
    `evaluate() -> Dict[str, float]`: the final metrics on held-out data, run after training.
        A metric `m` with a reference level (the real-data floor, the oracle's entropy) reports it
        as `m_floor` beside it.
    `generate(n, prompt=None, seed=None) -> str | Tensor`: n samples to show: text (one
        string; samples separated by blank lines, or one per line when each is one line) or
        images (n, C, H, W) in [0, 1]; drawn with a local generator seeded by `seed` (None: the
        task's own sample seed), so the same call gives the same samples. Tasks that take no
        prompt raise ValueError for one.
  Both run under `torch.no_grad()` in eval mode, use `self.inference_module(name)` (the EMA copy
  when the trainer keeps one) and leave the training RNG streams alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

import torch

from ..train import Task

__all__ = ["Recipe", "RunPlan"]


@dataclass
class RunPlan:
    task: Task
    train_data: Iterable
    val_data: Optional[Iterable] = None
    # TrainerConfig fields this recipe sets (max_steps, val_every, sample_every, ema_decay,
    # warmup_steps, lr_schedule, grad_clip, precision...). out_dir, device, resume and progress
    # belong to the command line.
    trainer: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    defaults: Mapping[str, Any]
    build: Callable[[Dict[str, Any], torch.device], RunPlan]
    choices: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    demo: Mapping[str, Any] = field(default_factory=dict)
