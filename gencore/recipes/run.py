"""Running a recipe end to end, and loading a finished run back.

A run directory holds everything about one run:

    run.json        recipe name, resolved settings (every one, by name), provenance (commit,
                    dirty flag, torch, device, command line); written once, --resume reads it
                    back into the recipe's settings types
    metrics.jsonl   the Trainer's log (train / val / checkpoint records)
    checkpoints/    atomic checkpoints (the last few)
    samples/        periodic samples, and final.txt / final.png after training
    results.json    final metrics, steps, seconds, the final samples' file, the settings and
                    the provenance of this (last) part of the run
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from .. import _atomic, _settings
from .._device import describe_device, resolve_device
from ..provenance import provenance
from ..train import CheckpointManager, Trainer, save_png_grid, seed_everything
from .base import Recipe, RecipeSettings, RunPlan
from .registry import get_recipe, resolve_settings

__all__ = ["train_recipe", "build_run", "load_run", "save_samples", "RUN_FILE", "RESULTS_FILE"]

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"
# What --resume may change: the length of training and how it is spread over processes.
# Anything else would not be the same run any more.
RESUMABLE = ("steps", "parallel")


def _metric_value(v: Any) -> Any:
    """A metric as JSON: a number as a float; a list of points (dicts of numbers, e.g. a
    text GAN's temperature frontier) as a list of dicts of floats."""
    if isinstance(v, (list, tuple)):
        return [{k: float(x) for k, x in p.items()} for p in v]
    return float(v)


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _read_run(out: Path) -> Dict[str, Any]:
    try:
        run = json.loads((out / RUN_FILE).read_text())
        run["recipe"], run["settings"]  # noqa: B018 (both must be there)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{out} is not a gencore run directory ({out / RUN_FILE} is missing or "
                         f"unreadable, or from a gencore before typed settings: {exc!r})") from None
    return run


def _run_settings(recipe: Recipe, out: Path, overrides: Mapping[str, Any], resume: bool,
                  demo: bool) -> RecipeSettings:
    """A fresh run: the recipe's settings with the overrides. A resumed one: the settings of its
    run.json (read back into the same types), with only RESUMABLE ones changed."""
    if resume and (out / RUN_FILE).is_file():
        run = _read_run(out)
        if run["recipe"] != recipe.name:
            raise ValueError(f"--resume: {out} holds a {run['recipe']!r} run, not {recipe.name!r}")
        settings = resolve_settings(recipe, run["settings"])
        before = _settings.flat(settings)
        after = _settings.flat(resolve_settings(recipe, {**before, **overrides}))
        changed = {k: v for k, v in after.items() if k not in RESUMABLE and v != before[k]}
        if changed:
            raise ValueError(f"--resume continues the run as it was configured; these settings "
                             f"differ from {out / RUN_FILE}: {changed} (only "
                             f"{', '.join(RESUMABLE)} may change)")
        return resolve_settings(recipe, {**before, **{k: after[k] for k in RESUMABLE}})
    ckpts = CheckpointManager(out / "checkpoints").list()
    if ckpts:
        raise ValueError(f"{out} already holds checkpoints of a run (up to step {ckpts[-1][0]}); "
                         f"pass --resume to continue it, or choose another --out")
    return resolve_settings(recipe, overrides, demo=demo)


def build_run(recipe: Recipe, settings: RecipeSettings, device: str = "cpu",
              log: Optional[Callable[[str], None]] = None, **run_fields) -> Tuple[RunPlan, Trainer]:
    """Seeds, builds the recipe with `settings` and wraps it in a Trainer whose config is the
    settings' TrainerConfig with the run's fields: max_steps and seed from the settings, the
    device, then `run_fields` (out_dir, resume, progress; tests also change intervals). The one
    place a run is put together (train, sample, tests). `device`: "auto", "cpu", "cuda",
    "cuda:N" (see gencore._device.resolve_device)."""
    dev = resolve_device(device)
    seed_everything(settings.seed)  # recipes build deterministic models and data from it
    plan = recipe.build(settings, dev)
    config = dataclasses.replace(settings.trainer, max_steps=settings.steps, seed=settings.seed,
                                 device=str(dev), **run_fields)
    return plan, Trainer(plan.task, config, plan.train_data, plan.val_data, log=log)


def save_samples(samples: Union[str, torch.Tensor], stem: Path) -> Path:
    """Text -> stem.txt; an image batch (N, C, H, W) in [0, 1] -> stem.png (a grid)."""
    if isinstance(samples, torch.Tensor):
        return save_png_grid(samples, stem.with_suffix(".png"))
    path = stem.with_suffix(".txt")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(samples if samples.endswith("\n") else samples + "\n")
    return path


def train_recipe(name: str, overrides: Optional[Mapping[str, Any]] = None,
                 out_dir: Union[str, Path] = "runs/run", device: str = "auto",
                 resume: bool = False, demo: bool = False, progress: str = "auto",
                 n_samples: int = 16, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Trains recipe `name` into `out_dir` on `device` ("auto": CUDA when available), then
    evaluates it and writes final samples. Returns (and writes to results.json) the final
    metrics and timings. A resumed run may continue on another device or number of processes.
    A torchrun restart of a failed worker (TORCHELASTIC_RESTART_COUNT > 0) always resumes.
    Stopped by SIGTERM/SIGUSR1: returns {"stopped_by": signal, "steps": step} after the
    checkpoint (no evaluation, no results.json)."""
    recipe = get_recipe(name)
    out = Path(out_dir)
    resume = resume or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    dev = resolve_device(device)
    settings = _run_settings(recipe, out, overrides or {}, resume, demo)
    if _is_main_process():
        log(f"{name}: training on {describe_device(dev)}")
        out.mkdir(parents=True, exist_ok=True)
        if not (out / RUN_FILE).is_file():
            _atomic.write_json(out / RUN_FILE, {
                "recipe": name, "settings": _settings.flat(settings),
                "provenance": provenance(dev), "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    plan, trainer = build_run(recipe, settings, dev, log=log, out_dir=str(out), resume=resume,
                              progress=progress)
    t0 = time.time()
    summary = trainer.fit()
    train_seconds = time.time() - t0
    if summary["stopped_by"]:
        log(f"{name}: stopped by {summary['stopped_by']} at step {trainer.step} (checkpoint "
            f"written; --resume continues)")
        return {"stopped_by": summary["stopped_by"], "steps": trainer.step}
    if not trainer.is_main and not trainer.sharded:  # sharded: every process evaluates
        return {}
    t1 = time.time()
    with trainer.eval_mode():
        metrics = {k: _metric_value(v) for k, v in plan.task.evaluate().items()}
        samples = plan.task.generate(n_samples)
    if not trainer.is_main:
        return {}
    sample_path = save_samples(samples, out / "samples" / "final")
    results = {"recipe": name, "steps": trainer.step, "train_seconds": round(train_seconds, 2),
               "eval_seconds": round(time.time() - t1, 2), "final_train": summary["train"],
               "final_val": summary["val"], "metrics": metrics,
               "samples": str(sample_path.relative_to(out)), "device": str(trainer.device),
               "threads": torch.get_num_threads(), "world_size": trainer.world_size,
               "settings": _settings.flat(settings), "provenance": provenance(trainer.device)}
    _atomic.write_json(out / RESULTS_FILE, results)
    return results


def load_run(run_dir: Union[str, Path], device: str = "auto") -> Tuple[Recipe, RecipeSettings, Trainer]:
    """Rebuilds a run's task from run.json's settings on `device` (whichever device trained it) and loads
    its newest good checkpoint (EMA included): `trainer.task.generate(n)` then samples from it."""
    out = Path(run_dir)
    run = _read_run(out)
    recipe = get_recipe(run["recipe"])
    settings = resolve_settings(recipe, run["settings"])
    found = CheckpointManager(out / "checkpoints").load_latest(log=lambda m: None)
    if found is None:
        raise ValueError(f"{out} has no checkpoint yet (nothing to sample from)")
    _, path, _ = found
    _, trainer = build_run(recipe, settings, device, log=lambda m: None, out_dir=None,
                           resume=str(path), progress="none")
    trainer.setup()
    return recipe, settings, trainer
