"""The `Task` protocol: what a model brings to the Trainer.

A task owns its modules and says how one training step goes. Two styles:

- automatic (`automatic_optimization = True`, the default): `training_step(batch, step)` calls
  its modules as `self.training_module(name)(...)` (under several processes: the DDP wrapper)
  and returns a dict with a scalar `'loss'` tensor (and any other numbers to log); the Trainer
  does backward (with gradient accumulation), the cross-process gradient average, clipping (the
  global norm), the step of every optimizer (`configure_optimizers`: one, or several over
  disjoint parameters, e.g. torch's Muon and AdamW), LR schedules and EMA updates.
- manual (`automatic_optimization = False`, e.g. a GAN with two optimizers): `training_step`
  calls `self.trainer.optimizer_step(name, loss)` for each update it wants; the Trainer still does
  the NaN/inf guard, backward (with the GradScaler for fp16), gradient average, clipping and step.
  It returns a dict of numbers to log: tensors (read once per logging interval) or floats.
  With several processes the gradients of the modules optimizer `name` steps are averaged after
  its backward (see gencore.train.distributed.Parallel), so every trainable parameter of them
  must get a gradient in it; freeze a module used but not stepped (a discriminator in the
  generator's step) with `requires_grad_(False)`.

Everything else has a default: no validation, no samples, no extra state.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch
import torch.nn as nn

__all__ = ["Task"]


class Task:
    automatic_optimization: bool = True
    trainer = None  # set by the Trainer before any other call

    def modules(self) -> Dict[str, nn.Module]:
        """The named modules to move to the device, checkpoint, average across processes and
        (see `ema_modules`) keep an EMA of."""
        raise NotImplementedError

    def configure_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        """Called once the modules are on the trainer's device; returns the named optimizers."""
        raise NotImplementedError

    def configure_schedulers(self, optimizers: Dict[str, torch.optim.Optimizer],
                             total_steps: int) -> Optional[Dict[str, Any]]:
        """Named LR schedulers (stepped once per training step). None: the Trainer's default
        (`TrainerConfig.lr_schedule`: warmup + cosine, or constant) for every optimizer."""
        return None

    def ema_modules(self) -> List[str]:
        """Names of the modules to keep an EMA of when `TrainerConfig.ema_decay` is set."""
        return list(self.modules())

    def training_step(self, batch: Any, step: int) -> Dict[str, Union[torch.Tensor, float]]:
        raise NotImplementedError

    def validation_step(self, batch: Any) -> Dict[str, Union[torch.Tensor, float]]:
        """Numbers for one validation batch; the Trainer averages them over the batches (and
        processes). Runs under `torch.no_grad()` with the modules in eval mode."""
        return {}

    def sample(self, step: int) -> Union[None, str, torch.Tensor, Dict[str, Any]]:
        """Something to look at: text (written to a .txt file), an image batch (N, C, H, W) in
        [0, 1] (written as a PNG grid), or a dict of those. Runs on the main process only, under
        `torch.no_grad()` in eval mode, with the training RNG streams left untouched."""
        return None

    def training_module(self, name: str) -> nn.Module:
        """The module to call in `training_step` (automatic optimization): under several
        replicated processes the Trainer's DistributedDataParallel wrapper of `name`, whose
        forward arms the all-reduce of its gradients; else the module itself."""
        wrapped = getattr(getattr(self.trainer, "parallel", None), "wrapped", {})
        return wrapped[name] if name in wrapped else self.modules()[name]

    def inference_module(self, name: str) -> nn.Module:
        """The module to evaluate and sample with: the trainer's EMA copy of `name` when it keeps
        one, else the trained module itself."""
        ema = getattr(self.trainer, "ema", None) or {}
        return ema[name].module if name in ema else self.modules()[name]

    def evaluate(self) -> Dict[str, float]:
        """Final metrics on held-out data (recipes; see gencore.recipes.base)."""
        raise NotImplementedError

    def generate(self, n: int, prompt: Optional[str] = None,
                 seed: Optional[int] = None) -> Union[str, torch.Tensor]:
        """n samples to show (text, or images (n, C, H, W) in [0, 1]) drawn with a local
        generator seeded by `seed` (recipes)."""
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        """Extra state to resume exactly (e.g. a temperature schedule's position): tensors and
        plain types only. Modules, optimizers, schedulers and EMA are saved by the Trainer."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        pass
