"""The Trainer: runs any `Task` with checkpoints that never lose work and exact resume.

    task = MyTask(...)                                   # a gencore.train.Task
    cfg = TrainerConfig(out_dir="runs/x", max_steps=2000, precision="bf16", ckpt_every=200)
    Trainer(task, cfg, train_data=LMBatches(...), val_data=LMEvalBatches(...)).fit()

Run it with `python script.py` or `torchrun --nproc_per_node=N script.py`: the same code.
Files in `out_dir`: `metrics.jsonl` (one JSON object per line), `checkpoints/ckpt-<step>.pt`,
`samples/step-<step>.{txt,png}`; only the main process (rank 0) writes them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from . import distributed as dist_utils
from .checkpoint import CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint, \
    restore_rng_state
from .ema import EMA
from .images import save_png_grid
from .schedule import WarmupDecay
from .task import Task

__all__ = ["TrainerConfig", "Trainer", "NonFiniteLossError", "seed_everything", "to_device"]

_PRECISIONS = ("fp32", "bf16", "fp16")
_NONFINITE = ("skip", "stop")
_SCHEDULES = ("cosine", "linear", "constant")
_PROGRESS = ("auto", "bar", "lines", "none")


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss (or the gradients) became NaN or infinite."""


class _NonFinite(Exception):
    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


def _num(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def seed_everything(seed: int) -> None:
    """Seeds python's `random`, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


@dataclass
class TrainerConfig:
    max_steps: int
    out_dir: Optional[str] = None          # None: nothing written (no logs, no checkpoints)
    device: str = "cpu"                     # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: str = "fp32"                 # fp32 | bf16 (autocast) | fp16 (autocast + GradScaler)
    grad_accum: int = 1                     # micro-batches per step (automatic optimization)
    grad_clip: Optional[float] = 1.0        # max global grad norm per optimizer; None: no clipping
    lr_schedule: str = "cosine"             # linear warmup, then cosine | linear decay; or constant
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    decay_frac: float = 1.0                 # decay over this last fraction (< 1: warmup-stable-decay)
    ema_decay: Optional[float] = None       # EMA of the task's ema_modules() when set
    log_every: int = 10
    val_every: Optional[int] = None
    sample_every: Optional[int] = None
    ckpt_every: Optional[int] = None        # a checkpoint is also written at the end
    keep_last: int = 3
    nonfinite: str = "skip"                 # skip the step | stop training
    max_consecutive_skips: int = 10         # 'skip' turns into 'stop' after this many in a row
    resume: Union[bool, str] = False        # True: newest good checkpoint in out_dir; or a path
    seed: Optional[int] = None              # seed_everything(seed) at the start of fit()
    progress: str = "auto"                  # auto (bar on a terminal, lines otherwise) | bar | lines | none

    def validate(self) -> None:
        def choice(name, valid):
            v = getattr(self, name)
            if v not in valid:
                raise ValueError(f"TrainerConfig.{name}={v!r} is not valid; choose one of {list(valid)}")
        choice("precision", _PRECISIONS)
        choice("nonfinite", _NONFINITE)
        choice("lr_schedule", _SCHEDULES)
        choice("progress", _PROGRESS)
        for name in ("max_steps", "grad_accum", "log_every", "keep_last", "max_consecutive_skips"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainerConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}")
        for name in ("val_every", "sample_every", "ckpt_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"TrainerConfig.{name} must be None or a positive integer, got {v!r}")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise ValueError(f"TrainerConfig.decay_frac must be in [0, 1], got {self.decay_frac!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"TrainerConfig.grad_clip must be None or > 0, got {self.grad_clip}")
        if self.resume and self.out_dir is None and not isinstance(self.resume, str):
            raise ValueError("TrainerConfig.resume=True needs out_dir (where the checkpoints are)")


class Trainer:
    def __init__(self, task: Task, config: TrainerConfig, train_data: Iterable,
                 val_data: Optional[Iterable] = None, log: Optional[Callable[[str], None]] = None):
        config.validate()
        self.task, self.config = task, config
        self.train_data, self.val_data = train_data, val_data
        self._log_fn = log
        self.step = 0
        self.nonfinite_skips = 0
        self._consecutive_skips = 0
        self._setup_done = False
        self.history: List[Dict[str, Any]] = []  # every record written to metrics.jsonl
        self.last_checkpoint: Optional[Path] = None
        self._ckpt_step = -1
        self._bar = None  # the tqdm progress bar while fit() shows one
        self._bar_metrics = None  # the train metrics the bar shows
        task.trainer = self

    # ------------------------------------------------------------------ output
    @property
    def out_dir(self) -> Optional[Path]:
        return Path(self.config.out_dir) if self.config.out_dir is not None else None

    @property
    def is_main(self) -> bool:
        return dist_utils.is_main()

    def log(self, msg: str) -> None:
        if not self.is_main:
            return
        emit = self._log_fn if self._log_fn is not None else (lambda m: print(m, flush=True))
        if self._bar is None:
            emit(msg)
            return
        with self._bar.external_write_mode():  # the bar steps aside for the line, then redraws
            emit(msg)

    def _record(self, rec: Dict[str, Any]) -> None:
        if not self.is_main:
            return
        rec = {"step": self.step, **rec, "time": round(time.time() - self._t_start, 3)}
        self.history.append(rec)
        if self.out_dir is not None:
            with open(self.out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")

    # ------------------------------------------------------------------ setup
    def _autocast(self):
        p = self.config.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def setup(self) -> None:
        """Process group, device, modules, optimizers, schedulers, EMA; then resume if asked.
        `fit()` calls it; call it yourself to inspect the state before training."""
        if self._setup_done:
            return
        cfg = self.config
        self.device = dist_utils.init(cfg.device)
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self.modules: Dict[str, nn.Module] = dict(self.task.modules())
        if not self.modules:
            raise ValueError("the task's modules() returned no modules")
        for m in self.modules.values():
            m.to(self.device)
            dist_utils.broadcast_module(m)
        self.optimizers = dict(self.task.configure_optimizers())
        if self.task.automatic_optimization:
            if len(self.optimizers) != 1:
                raise ValueError(f"automatic optimization needs exactly one optimizer, the task "
                                 f"has {sorted(self.optimizers)}; set automatic_optimization = "
                                 "False and call trainer.optimizer_step(name, loss) for several")
        elif cfg.grad_accum != 1:
            raise ValueError("grad_accum > 1 needs automatic optimization (a manual task "
                             "accumulates itself)")
        self._opt_params = {n: [p for g in o.param_groups for p in g["params"]]
                            for n, o in self.optimizers.items()}
        scheds = self.task.configure_schedulers(self.optimizers, cfg.max_steps)
        if scheds is None:
            scheds = {}
            if cfg.lr_schedule != "constant":
                scheds = {n: WarmupDecay(o, cfg.warmup_steps, cfg.max_steps, cfg.min_lr_ratio,
                                         cfg.lr_schedule, cfg.decay_frac)
                          for n, o in self.optimizers.items()}
        self.schedulers = dict(scheds)
        self.ema: Dict[str, EMA] = {}
        if cfg.ema_decay is not None:
            self.ema = {n: EMA(self.modules[n], cfg.ema_decay) for n in self.task.ema_modules()}
        self.scaler = None
        if cfg.precision == "fp16":
            self.scaler = torch.amp.GradScaler(self.device.type)
        if hasattr(self.train_data, "set_shard"):
            self.train_data.set_shard(self.rank, self.world_size)
        elif self.world_size > 1:
            raise ValueError("several processes need sharded data: train_data has no set_shard()")
        if self.val_data is not None and hasattr(self.val_data, "set_shard"):
            self.val_data.set_shard(self.rank, self.world_size)
        self._train_iter: Iterator = iter(self.train_data)
        self._t_start = time.time()
        self.ckpt = None
        if self.out_dir is not None:
            self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_last)
            if not cfg.resume and self.ckpt.list():
                raise FileExistsError(
                    f"{self.out_dir} already holds checkpoints of a run; pass resume=True to "
                    "continue it, or choose another out_dir (nothing is overwritten)")
            if self.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.ckpt.cleanup_temp()
                if not cfg.resume:  # a fresh run: a log without checkpoints is from a run that
                    (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)  # never saved one
        if cfg.resume:
            self._resume()
        self._setup_done = True

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {
            "trainer": {"step": self.step, "nonfinite_skips": self.nonfinite_skips,
                        "consecutive_skips": self._consecutive_skips,
                        "world_size": self.world_size},
            "config": dataclasses.asdict(self.config),
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "ema": {n: e.state_dict() for n, e in self.ema.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng_state(),
            "data": self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None,
            "task": self.task.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        def same_keys(what, have, saved):
            if set(have) != set(saved):
                raise CheckpointError(f"checkpoint {what} {sorted(saved)} do not match the "
                                      f"task's {sorted(have)}")
        same_keys("modules", self.modules, state["modules"])
        same_keys("optimizers", self.optimizers, state["optimizers"])
        for n, m in self.modules.items():
            m.load_state_dict(state["modules"][n])
        for n, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][n])
        for n, s in self.schedulers.items():
            if n in state["schedulers"]:
                s.load_state_dict(state["schedulers"][n])
        for n, e in self.ema.items():
            if n in state["ema"]:
                e.load_state_dict(state["ema"][n])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        if state.get("data") is not None and hasattr(self.train_data, "load_state_dict"):
            self.train_data.load_state_dict(state["data"])
        self.task.load_state_dict(state.get("task", {}))
        t = state["trainer"]
        self.step = t["step"]
        self.nonfinite_skips, self._consecutive_skips = t["nonfinite_skips"], t["consecutive_skips"]
        restore_rng_state(state["rng"])

    def save_checkpoint(self) -> Optional[Path]:
        """Writes a checkpoint of the current step (main process; others wait for it)."""
        path = None
        self._ckpt_step = self.step  # on every rank: all take the same decisions
        if self.ckpt is not None and self.is_main:
            path = self.ckpt.save(self.state_dict(), self.step)
            self.last_checkpoint = path
            self._record({"event": "checkpoint", "path": str(path)})
        dist_utils.barrier()
        return path

    def _resume(self) -> None:
        cfg = self.config
        if isinstance(cfg.resume, str):
            path = Path(cfg.resume)
            state = load_checkpoint(path)  # an explicit file: errors raise, no fallback
        else:
            # Loaded on the CPU: RNG states must be CPU tensors; modules and optimizers copy
            # their tensors to the parameters' device in load_state_dict.
            found = self.ckpt.load_latest(log=self.log)
            if found is None:
                self.log(f"resume: no checkpoint in {self.ckpt.dir}, starting from step 0")
                return
            _, path, state = found
        ws = state["trainer"].get("world_size", 1)
        if ws != self.world_size:
            self.log(f"warning: checkpoint written by {ws} processes, resuming with "
                     f"{self.world_size}: the global batch is unchanged, the RNG streams are")
        self.load_state_dict(state)
        self.last_checkpoint, self._ckpt_step = path, self.step
        self.log(f"resumed from {path} at step {self.step}")
        if self.is_main and self.out_dir is not None:
            self._truncate_log()

    def _truncate_log(self) -> None:
        """Drops log records newer than the resumed step (they will be written again)."""
        p = self.out_dir / "metrics.jsonl"
        if not p.is_file():
            return
        keep = []
        for line in p.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if rec.get("step", 0) <= self.step:
                keep.append(line)
        tmp = p.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(l + "\n" for l in keep))
        os.replace(tmp, p)

    # ------------------------------------------------------------------ one step
    def _check_finite(self, loss: torch.Tensor, what: str) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(loss.detach()).all()) else 1.0],
                           device=self.device)
        if float(dist_utils.all_reduce_sum(bad)) > 0:  # every process takes the same decision
            raise _NonFinite(f"{what} = {loss.detach().float().cpu().tolist()}")

    def _backward(self, loss: torch.Tensor, **kw) -> None:
        with torch.autocast(self.device.type, enabled=False) if self.config.precision != "fp32" \
                else contextlib.nullcontext():
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward(**kw)

    def _apply(self, name: str) -> float:
        """Average grads across processes, clip, check, step. Returns the grad norm."""
        opt, params = self.optimizers[name], self._opt_params[name]
        dist_utils.all_reduce_grads(params)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        with_grad = [p for p in params if p.grad is not None]
        clip = self.config.grad_clip if self.config.grad_clip is not None else float("inf")
        norm = float(torch.nn.utils.clip_grad_norm_(with_grad, clip)) if with_grad else 0.0
        if self.scaler is not None:  # fp16: the scaler skips inf/NaN steps and lowers its scale
            self.scaler.step(opt)
            self.scaler.update()
        else:
            if not math.isfinite(norm):
                raise _NonFinite(f"gradient norm of '{name}' = {norm}")
            opt.step()
        return norm

    def optimizer_step(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> float:
        """For manual tasks: guard, zero_grad, backward, average, clip and step optimizer `name`.
        Returns the gradient norm (before clipping)."""
        if name not in self.optimizers:
            raise KeyError(f"no optimizer {name!r}; the task's optimizers: {sorted(self.optimizers)}")
        self._check_finite(loss, f"loss for '{name}'")
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        self._backward(loss, retain_graph=retain_graph)
        return self._apply(name)

    def _train_step(self) -> Dict[str, float]:
        metrics: Dict[str, float] = {}
        task, cfg = self.task, self.config
        if task.automatic_optimization:
            (name, opt), = self.optimizers.items()
            opt.zero_grad(set_to_none=True)
            for _ in range(cfg.grad_accum):
                batch = to_device(next(self._train_iter), self.device)
                with self._autocast():
                    out = task.training_step(batch, self.step)
                if not isinstance(out, dict) or "loss" not in out:
                    raise TypeError("training_step must return a dict with a 'loss' tensor "
                                    "(or set automatic_optimization = False)")
                self._check_finite(out["loss"], "loss")
                self._backward(out["loss"] / cfg.grad_accum)
                for k, v in out.items():
                    metrics[k] = metrics.get(k, 0.0) + _num(v) / cfg.grad_accum
            metrics["grad_norm"] = self._apply(name)
        else:
            batch = to_device(next(self._train_iter), self.device)
            with self._autocast():
                out = task.training_step(batch, self.step) or {}
            metrics.update({k: _num(v) for k, v in out.items()})
        return metrics

    def _after_step(self, update_ema: bool = True) -> None:
        # Schedulers follow the step count (also over a skipped step); EMA only real updates.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            for s in self.schedulers.values():
                s.step()
        if update_ema:
            for n, e in self.ema.items():
                e.update(self.modules[n])

    # ------------------------------------------------------------------ eval / samples
    @contextlib.contextmanager
    def eval_mode(self):
        """Eval mode, no grad, and the training RNG streams left exactly as they were (so
        validating or sampling more or less often does not change training)."""
        rng = capture_rng_state()
        modes = {n: m.training for n, m in self.modules.items()}
        for m in self.modules.values():
            m.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            for n, m in self.modules.items():
                m.train(modes[n])
            restore_rng_state(rng)

    def validate(self) -> Dict[str, float]:
        self.setup()
        if self.val_data is None:
            return {}
        sums: Dict[str, float] = {}
        n = 0
        with self.eval_mode(), self._autocast():
            for batch in self.val_data:
                out = self.task.validation_step(to_device(batch, self.device))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + _num(v)
                n += 1
        keys = sorted(sums)
        t = dist_utils.all_reduce_sum(torch.tensor([sums[k] for k in keys] + [float(n)],
                                                   dtype=torch.float64, device=self.device))
        if float(t[-1]) == 0:
            return {}
        res = {f"val_{k}": float(t[i] / t[-1]) for i, k in enumerate(keys)}
        self._record({"event": "val", **res})
        self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
        return res

    def write_samples(self) -> List[Path]:
        self.setup()
        if not self.is_main:
            return []
        with self.eval_mode():
            out = self.task.sample(self.step)
        if out is None:
            return []
        items = out if isinstance(out, dict) else {"": out}
        paths = []
        for name, v in items.items():
            stem = f"step-{self.step:08d}" + (f"-{name}" if name else "")
            if self.out_dir is None:
                continue
            d = self.out_dir / "samples"
            d.mkdir(parents=True, exist_ok=True)
            if isinstance(v, torch.Tensor) and v.dim() in (3, 4) and v.is_floating_point():
                paths.append(save_png_grid(v, d / f"{stem}.png"))
            else:
                text = v if isinstance(v, str) else "\n".join(map(str, v)) if isinstance(v, list) else str(v)
                (d / f"{stem}.txt").write_text(text)
                paths.append(d / f"{stem}.txt")
        if paths:
            self._record({"event": "samples", "paths": [str(p) for p in paths]})
        return paths

    # ------------------------------------------------------------------ the loop
    def _progress_mode(self) -> str:
        """What fit() shows on the main process: a tqdm bar only when both output streams are a
        terminal (redirected to a file or a CI log, either one gets plain lines instead)."""
        mode = self.config.progress
        if not self.is_main:
            return "none"
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines"
        return mode

    def _progress(self, mode: str, metrics: Dict[str, float], rate: float) -> None:
        cfg = self.config
        desc = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        if mode == "bar":
            if metrics is not self._bar_metrics:  # new numbers once per logging interval
                self._bar_metrics = metrics
                self._bar.set_postfix_str(desc, refresh=False)
            self._bar.update(1)
        elif mode == "lines" and (self.step % cfg.log_every == 0 or self.step == cfg.max_steps):
            eta = (cfg.max_steps - self.step) / rate if rate > 0 else float("nan")
            self.log(f"step {self.step}/{cfg.max_steps}: {desc} ({rate:.2f} it/s, eta {eta:.0f}s)")

    def fit(self, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Trains up to `config.max_steps` (or until `stop_after` steps in this call). Returns a
        summary: step, last train metrics, last validation metrics, seconds."""
        self.setup()
        mode = self._progress_mode()
        if mode == "bar":
            self._bar = tqdm(total=self.config.max_steps, initial=self.step, unit="step",
                             file=sys.stderr, dynamic_ncols=True)
        try:
            return self._fit(stop_after, mode)
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def _fit(self, stop_after: Optional[int], mode: str) -> Dict[str, Any]:
        cfg = self.config
        # Sums and counts per key: a number logged on only some steps (say an R1 penalty every
        # 4th step) is averaged over the steps that logged it.
        pending: Dict[str, float] = {}
        pending_n: Dict[str, int] = {}
        last_train: Dict[str, float] = {}
        last_val: Dict[str, float] = {}
        t0, steps_done = time.time(), 0
        while self.step < cfg.max_steps and (stop_after is None or steps_done < stop_after):
            try:
                metrics = self._train_step()
                self._consecutive_skips = 0
            except _NonFinite as exc:
                for o in self.optimizers.values():
                    o.zero_grad(set_to_none=True)
                self.nonfinite_skips += 1
                self._consecutive_skips += 1
                where = (f"non-finite value at step {self.step + 1}: {exc.what}; this step's update "
                         "was not applied (weights unchanged)")
                self._record({"event": "nonfinite", "what": exc.what})
                if cfg.nonfinite == "stop" or self._consecutive_skips > cfg.max_consecutive_skips:
                    why = ("nonfinite='stop'" if cfg.nonfinite == "stop" else
                           f"{self._consecutive_skips} non-finite steps in a row "
                           f"(max_consecutive_skips={cfg.max_consecutive_skips})")
                    last = f"; last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else ""
                    raise NonFiniteLossError(
                        f"training stopped: {where} [{why}]{last}. Try a lower learning rate, "
                        "gradient clipping (grad_clip), or precision='fp32'.") from None
                self.log(f"warning: {where}; skipped ({self._consecutive_skips} in a row)")
                metrics = None
            self.step += 1
            steps_done += 1
            self._after_step(update_ema=metrics is not None)
            if metrics is not None:
                for k, v in metrics.items():
                    pending[k] = pending.get(k, 0.0) + v
                    pending_n[k] = pending_n.get(k, 0) + 1
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                if pending:
                    keys = sorted(pending)
                    t = dist_utils.all_reduce_sum(torch.tensor(
                        [pending[k] / pending_n[k] for k in keys], dtype=torch.float64,
                        device=self.device)) / self.world_size
                    last_train = {k: float(t[i]) for i, k in enumerate(keys)}
                    lrs = {f"lr_{n}" if len(self.optimizers) > 1 else "lr": o.param_groups[0]["lr"]
                           for n, o in self.optimizers.items()}
                    self._record({"event": "train", **last_train, **lrs})
                pending, pending_n = {}, {}
            self._progress(mode, last_train, steps_done / max(time.time() - t0, 1e-9))
            if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.max_steps):
                last_val = self.validate()
            if cfg.sample_every and (self.step % cfg.sample_every == 0 or self.step == cfg.max_steps):
                self.write_samples()
            if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                self.save_checkpoint()
        if self.step >= cfg.max_steps and self.ckpt is not None and self._ckpt_step != self.step:
            self.save_checkpoint()
        return {"step": self.step, "train": last_train, "val": last_val,
                "seconds": time.time() - t0, "nonfinite_skips": self.nonfinite_skips}
