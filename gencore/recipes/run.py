"""Running a recipe end to end, and loading a finished run back.

A run directory holds everything about one run:

    run.json        recipe name, resolved config, versions (written once; --resume checks it)
    metrics.jsonl   the Trainer's log (train / val / checkpoint records)
    checkpoints/    atomic checkpoints (the last few)
    samples/        periodic samples, and final.txt / final.png after training
    results.json    final metrics, steps, seconds, the final samples' file (written atomically)
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch

from .. import __version__
from .._device import describe_device, resolve_device
from ..train import CheckpointManager, Trainer, TrainerConfig, save_png_grid, seed_everything
from .base import Recipe, RunPlan
from .registry import get_recipe, resolve_config

__all__ = ["train_recipe", "build_run", "load_run", "save_samples", "RUN_FILE", "RESULTS_FILE"]

RUN_FILE = "run.json"
RESULTS_FILE = "results.json"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


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
        run["recipe"], run["config"]  # noqa: B018 (both must be there)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{out} is not a gencore run directory ({out / RUN_FILE} is missing or "
                         f"unreadable: {exc})") from None
    return run


def _run_config(recipe: Recipe, out: Path, overrides: Mapping[str, Any], resume: bool,
                demo: bool) -> Dict[str, Any]:
    if resume and (out / RUN_FILE).is_file():
        run = _read_run(out)
        if run["recipe"] != recipe.name:
            raise ValueError(f"--resume: {out} holds a {run['recipe']!r} run, not {recipe.name!r}")
        config = resolve_config(recipe, run["config"])
        # Only the length of training and how it is spread over processes may change on
        # resume: anything else would not be the same run any more.
        free = ("steps", "parallel")
        new = resolve_config(recipe, {**config, **overrides})
        changed = {k: v for k, v in new.items() if k not in free and v != config[k]}
        if changed:
            raise ValueError(f"--resume continues the run as it was configured; these settings "
                             f"differ from {out / RUN_FILE}: {changed} (only {', '.join(free)} "
                             "may change)")
        config.update({k: new[k] for k in free if k in new})
        return config
    ckpts = CheckpointManager(out / "checkpoints").list()
    if ckpts:
        raise ValueError(f"{out} already holds checkpoints of a run (up to step {ckpts[-1][0]}); "
                         f"pass --resume to continue it, or choose another --out")
    return resolve_config(recipe, overrides, demo=demo)


def build_run(recipe: Recipe, config: Dict[str, Any], device: str = "cpu",
              log: Optional[Callable[[str], None]] = None, **trainer_fields) -> Tuple[RunPlan, Trainer]:
    """Seeds, builds the recipe with `config` and wraps it in a Trainer: the recipe's trainer
    settings, then steps/seed/device from the config, then `trainer_fields` (out_dir, resume,
    progress...). The one place a run is put together (train, sample, tests). `device`: "auto",
    "cpu", "cuda", "cuda:N" (see gencore._device.resolve_device)."""
    dev = resolve_device(device)
    seed_everything(config["seed"])  # recipes build deterministic models and data from it
    plan = recipe.build(dict(config), dev)
    fields = {**plan.trainer, "max_steps": config["steps"], "seed": config["seed"],
              "device": str(dev), **trainer_fields}
    try:
        tcfg = TrainerConfig(**fields)
    except TypeError as exc:
        raise ValueError(f"recipe trainer settings are not TrainerConfig fields: {exc}") from None
    return plan, Trainer(plan.task, tcfg, plan.train_data, plan.val_data, log=log)


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
    config = _run_config(recipe, out, overrides or {}, resume, demo)
    if _is_main_process():
        log(f"{name}: training on {describe_device(dev)}")
        out.mkdir(parents=True, exist_ok=True)
        if not (out / RUN_FILE).is_file():
            _write_json(out / RUN_FILE, {
                "recipe": name, "config": config, "device": str(dev), "gencore": __version__,
                "torch": torch.__version__, "python": platform.python_version(),
                "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    plan, trainer = build_run(recipe, config, dev, log=log, out_dir=str(out), resume=resume,
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
               "threads": torch.get_num_threads(), "world_size": trainer.world_size}
    _write_json(out / RESULTS_FILE, results)
    return results


def load_run(run_dir: Union[str, Path], device: str = "auto") -> Tuple[Recipe, Dict[str, Any], Trainer]:
    """Rebuilds a run's task from run.json on `device` (whichever device trained it) and loads
    its newest good checkpoint (EMA included): `trainer.task.generate(n)` then samples from it."""
    out = Path(run_dir)
    run = _read_run(out)
    recipe = get_recipe(run["recipe"])
    config = resolve_config(recipe, run["config"])
    found = CheckpointManager(out / "checkpoints").load_latest(log=lambda m: None)
    if found is None:
        raise ValueError(f"{out} has no checkpoint yet (nothing to sample from)")
    _, path, _ = found
    _, trainer = build_run(recipe, config, device, log=lambda m: None, out_dir=None,
                           resume=str(path), progress="none")
    trainer.setup()
    return recipe, config, trainer
