"""What a recipe is: a named, complete training setup that `gencore train NAME` runs.

A recipe knows its data, model, task and trainer settings; the command line adds only the run
directory, the device, resume and the user's `--set key=value` overrides.

    @dataclass
    class VAESettings(RecipeSettings):              # steps, seed, batch_size, trainer
        lr: float = setting(2e-3, "Adam learning rate")
        likelihood: str = setting("gaussian", "p(x|z)", choices=LIKELIHOODS)
        ...

    Recipe(
        name="vae-digits",
        summary="convolutional VAE on scikit-learn's 8x8 digits",
        settings=VAESettings(steps=3000, batch_size=64, trainer=TrainerConfig(...)),
        demo={"steps": 600},
        build=build_vae_digits,          # (VAESettings, device) -> RunPlan
    )

Conventions every recipe follows:
- Its settings are one dataclass (a `RecipeSettings`), each field typed, with a default and a
  help line (gencore._settings.setting); a model's config dataclass (GPTConfig) and the
  `TrainerConfig` are fields of it, taken as they are: their fields are settings by their own
  names. `settings` is the recipe's default instance; `--set key=value` changes it by name
  (`gencore train NAME --help` lists them all). `None` means off.
- `demo` holds the overrides `gencore demo` uses: a run of one to three minutes on 2 CPU cores.
- `build(settings, device)` returns a `RunPlan`; it must be deterministic given `settings.seed`
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

from dataclasses import dataclass, field, is_dataclass
from typing import Any, Callable, Iterable, Mapping, Optional

import torch

from .._settings import setting
from ..train import Task, TrainerConfig

__all__ = ["Recipe", "RecipeSettings", "RunPlan"]


@dataclass
class RecipeSettings:
    """What every recipe has: the length of training, the seed, the batch, and the Trainer's
    settings (its run fields, max_steps and seed among them, are filled from the run)."""
    steps: int = setting(1000, "training steps (the Trainer's max_steps)")
    seed: int = setting(0, "seeds the initial weights, the data order and the samples")
    batch_size: int = setting(32, "examples per step (over all processes)")
    trainer: TrainerConfig = setting(help="the Trainer's settings", factory=TrainerConfig)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")


@dataclass
class RunPlan:
    task: Task
    train_data: Iterable
    val_data: Optional[Iterable] = None


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    settings: RecipeSettings  # the recipe's defaults
    build: Callable[[Any, torch.device], RunPlan]
    demo: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.settings, RecipeSettings) or not is_dataclass(self.settings):
            raise TypeError(f"recipe {self.name!r}: settings must be a RecipeSettings dataclass "
                            f"instance, got {type(self.settings).__name__}")
