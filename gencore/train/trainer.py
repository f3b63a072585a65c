"""The Trainer: runs any `Task` with checkpoints that never lose work and exact resume.

    task = MyTask(...)                                   # a gencore.train.Task
    cfg = TrainerConfig(out_dir="runs/x", max_steps=2000, precision="bf16", ckpt_every=200)
    Trainer(task, cfg, train_data=LMBatches(...), val_data=LMEvalBatches(...)).fit()

Run it with `python script.py` or `torchrun --nproc_per_node=N script.py`: the same code.
Files in `out_dir`: `metrics.jsonl` (one JSON object per line), `checkpoints/ckpt-<step>.pt`
(`ckpt-<step>/` with parallel="fsdp": sharded, through torch.distributed.checkpoint),
`samples/step-<step>.{txt,png}`; only the main process (rank 0) writes them.

No host-device sync inside a training step outside logging intervals (and validation, samples,
checkpoints). The logged numbers, the gradient norms and the NaN/inf guard stay on the device and
are read once per logging interval:
- A step whose loss or gradient norm is not finite (on any process) is skipped on the device: the
  optimizer gets `found_inf` (torch's fused Adam/AdamW/SGD and gencore's Muon leave parameters and
  state unchanged); the EMA does not move. An optimizer without that protocol reads the flag on the
  host instead (one sync per step); so does fp16, whose GradScaler skips inf/NaN steps itself.
- The skips are counted and reported at the next logging interval. With nonfinite="stop" (or
  after more than max_consecutive_skips skips in a row) every later update is skipped too, and
  NonFiniteLossError is raised at that interval (or at the next checkpoint, whichever comes
  first): the weights are those from before the first non-finite step.

SIGTERM and SIGUSR1 (what SLURM and Kubernetes send before they kill) finish the current step,
write a checkpoint and end `fit()` with `summary["stopped_by"]` set; under torchrun all processes
stop after the same step. `gencore train` then exits with status STOPPED_EXIT_STATUS (75,
EX_TEMPFAIL: the run is incomplete, `--resume` continues it exactly).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Union

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from .. import _atomic
from .._settings import setting
from . import distributed as dist_utils
from .checkpoint import DCP_KEY, CheckpointError, CheckpointManager, capture_rng_state, \
    load_checkpoint, restore_rng_state, save_checkpoint, seal_sharded
from .ema import EMA
from .images import save_png_grid
from .precision import resolve_precision
from .schedule import WarmupDecay
from .task import Task

__all__ = ["TrainerConfig", "Trainer", "NonFiniteLossError", "seed_everything", "to_device",
           "STOPPED_EXIT_STATUS"]

STOPPED_EXIT_STATUS = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; resume it
_STOP_SIGNALS = ("SIGTERM", "SIGUSR1")

_PRECISIONS = ("fp32", "bf16", "fp16", "auto")
_NONFINITE = ("skip", "stop")
_SCHEDULES = ("cosine", "linear", "constant")
_PROGRESS = ("auto", "bar", "lines", "none")


class NonFiniteLossError(RuntimeError):
    """Training stopped because a loss (or the gradients) became NaN or infinite."""


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
    """How the Trainer trains: typed settings with their help (recipes take them as they are:
    `gencore train RECIPE --help` lists them). The fields marked run=True belong to the run (the
    command line and the recipe's steps and seed), not to the recipe's settings."""
    max_steps: int = setting(1000, "training steps", run=True)
    out_dir: Optional[str] = setting(None, "run directory; None: nothing written", run=True)
    device: str = setting("cpu", "auto (CUDA when available) | cpu | cuda | cuda:N", run=True)
    precision: str = setting("fp32", "bf16: autocast; fp16: autocast + GradScaler; auto: bf16 "
                                     "where the device computes it natively, else fp32",
                             choices=_PRECISIONS)
    grad_accum: int = setting(1, "micro-batches per step (automatic optimization)")
    grad_clip: Optional[float] = setting(1.0, "max global gradient norm per optimizer; none: "
                                              "no clipping")
    lr_schedule: str = setting("cosine", "linear warmup, then cosine or linear decay; or constant",
                               choices=_SCHEDULES)
    warmup_steps: int = setting(0, "linear warmup steps (at most the run's steps)")
    min_lr_ratio: float = setting(0.1, "the decay ends at this fraction of the learning rate")
    decay_frac: float = setting(1.0, "decay over this last fraction of the steps (< 1: "
                                     "warmup-stable-decay)")
    ema_decay: Optional[float] = setting(None, "EMA of the task's ema_modules(); none: off")
    log_every: int = setting(10, "steps per logged mean (the one host read of an interval)")
    val_every: Optional[int] = setting(None, "validation every this many steps and at the end; "
                                             "none: off")
    sample_every: Optional[int] = setting(None, "samples every this many steps and at the end; "
                                                "none: off")
    ckpt_every: Optional[int] = setting(None, "a checkpoint every this many steps (and always at "
                                              "the end); none: at the end only")
    keep_last: int = setting(3, "checkpoints kept")
    nonfinite: str = setting("skip", "a NaN/inf loss or gradient: skip the step, or stop",
                             choices=_NONFINITE)
    max_consecutive_skips: int = setting(10, "'skip' turns into 'stop' after this many in a row")
    resume: Union[bool, str] = setting(False, "True: newest good checkpoint in out_dir; or a path",
                                       run=True)
    seed: Optional[int] = setting(None, "seed_everything(seed) at the start of fit()", run=True)
    progress: str = setting("auto", "auto (bar on a terminal, lines otherwise) | bar | lines | "
                                    "none", run=True)
    parallel: str = setting("ddp", "several processes: ddp (replicated, DistributedDataParallel) "
                                   "| fsdp (sharded, FSDP2 per block, DCP checkpoints)",
                            choices=dist_utils.PARALLEL)
    handle_signals: bool = setting(True, "SIGTERM/SIGUSR1: finish the step, checkpoint, stop",
                                   run=True)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def choice(name, valid):
            v = getattr(self, name)
            if v not in valid:
                raise ValueError(f"TrainerConfig.{name}={v!r} is not valid; choose one of {list(valid)}")
        choice("precision", _PRECISIONS)
        choice("nonfinite", _NONFINITE)
        choice("lr_schedule", _SCHEDULES)
        choice("progress", _PROGRESS)
        choice("parallel", dist_utils.PARALLEL)
        for name in ("max_steps", "grad_accum", "log_every", "keep_last", "max_consecutive_skips"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"TrainerConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)!r}")
        for name in ("val_every", "sample_every", "ckpt_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"TrainerConfig.{name} must be None or a positive integer, got {v!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"TrainerConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0.0 <= self.decay_frac <= 1.0:
            raise ValueError(f"TrainerConfig.decay_frac must be in [0, 1], got {self.decay_frac!r}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"TrainerConfig.ema_decay must be None (no EMA) or in (0, 1), got "
                             f"{self.ema_decay!r}")
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
        self._signal: Optional[int] = None  # a stop signal received during fit()
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
        p = self.precision
        if p == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if p == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def setup(self) -> None:
        """The steps before training, in order; then resume if asked. `fit()` calls it; call it
        yourself to inspect the state before training."""
        if self._setup_done:
            return
        cfg = self.config
        self.parallel = dist_utils.Parallel(cfg.parallel, cfg.device)  # joins the process group
        self.device, self.sharded = self.parallel.device, self.parallel.sharded
        self.rank, self.world_size = self.parallel.rank, self.parallel.world_size
        self.precision = resolve_precision(cfg.precision, self.device)
        if cfg.seed is not None:
            seed_everything(cfg.seed)
        self._setup_modules_and_optimizers()
        self._guard = self._new_guard()
        self.schedulers = self._default_schedulers()
        self.ema: Dict[str, EMA] = {}
        if cfg.ema_decay is not None:
            self.ema = {n: EMA(self.modules[n], cfg.ema_decay) for n in self.task.ema_modules()}
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        self._shard_data()
        self._t_start = time.time()
        self.ckpt = self._open_run_dir()
        if cfg.resume:
            self._resume()
        self._setup_done = True

    def _setup_modules_and_optimizers(self) -> None:
        """The task's modules placed (and sharded) by `parallel`, its optimizers built on them,
        then the modules each optimizer steps wrapped for gradient sync."""
        task, cfg = self.task, self.config
        self.modules: Dict[str, nn.Module] = dict(task.modules())
        if not self.modules:
            raise ValueError("the task's modules() returned no modules")
        if self.sharded and cfg.ema_decay is not None:
            raise ValueError("parallel='fsdp' keeps no EMA of sharded weights; set ema_decay=None "
                             "or use parallel='ddp'")
        self.parallel.place(self.modules, task.automatic_optimization, self.precision)
        self._container = nn.ModuleDict(self.modules)  # one tree of names for DCP
        self.optimizers = dict(task.configure_optimizers())
        if task.automatic_optimization and self._shared_params():
            raise ValueError(f"automatic optimization steps every optimizer after the one "
                             f"backward, so they must not share parameters; the task's "
                             f"{sorted(self.optimizers)} do. Set automatic_optimization = False "
                             "and call trainer.optimizer_step(name, loss) for each")
        if not task.automatic_optimization and cfg.grad_accum != 1:
            raise ValueError("grad_accum > 1 needs automatic optimization (a manual task "
                             "accumulates itself)")
        self._opt_params = {n: [p for g in o.param_groups for p in g["params"]]
                            for n, o in self.optimizers.items()}
        ids = {n: {id(p) for p in ps} for n, ps in self._opt_params.items()}
        # The modules each optimizer steps: their gradients are synchronised in its backward.
        self._opt_modules = {n: [mn for mn, m in self.modules.items()
                                 if any(id(p) in ids[n] for p in m.parameters())]
                             for n in self.optimizers}
        stepped = dict.fromkeys(mn for names in self._opt_modules.values() for mn in names)
        self.parallel.wrap(self.modules, stepped, task.automatic_optimization)

    def _shared_params(self) -> bool:
        ids = [id(p) for o in self.optimizers.values() for g in o.param_groups for p in g["params"]]
        return len(ids) != len(set(ids))

    def _new_guard(self) -> Dict[str, torch.Tensor]:
        """The NaN/inf guard's counters, on the device (read at logging intervals)."""
        z = lambda dtype: torch.zeros((), dtype=dtype, device=self.device)  # noqa: E731
        return {"skips": z(torch.int64), "consec": z(torch.int64), "max_consec": z(torch.int64),
                "first_bad": z(torch.int64) - 1, "halt": z(torch.bool)}

    def _default_schedulers(self) -> Dict[str, Any]:
        """The task's schedulers, else TrainerConfig.lr_schedule's for every optimizer (the
        warmup at most the run's length)."""
        cfg = self.config
        scheds = self.task.configure_schedulers(self.optimizers, cfg.max_steps)
        if scheds is None:
            scheds = {} if cfg.lr_schedule == "constant" else {
                n: WarmupDecay(o, min(cfg.warmup_steps, cfg.max_steps), cfg.max_steps,
                               cfg.min_lr_ratio, cfg.lr_schedule, cfg.decay_frac)
                for n, o in self.optimizers.items()}
        return dict(scheds)

    def _shard_data(self) -> None:
        if hasattr(self.train_data, "set_shard"):
            self.train_data.set_shard(self.rank, self.world_size)
        elif self.world_size > 1:
            raise ValueError("several processes need sharded data: train_data has no set_shard()")
        if self.val_data is not None and hasattr(self.val_data, "set_shard"):
            self.val_data.set_shard(self.rank, self.world_size)
        self._train_iter: Iterator = iter(self.train_data)

    def _open_run_dir(self) -> Optional[CheckpointManager]:
        """The checkpoints of out_dir (None without one); a fresh run refuses a directory that
        holds checkpoints, and starts a new log."""
        cfg = self.config
        if self.out_dir is None:
            return None
        ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_last)
        if not cfg.resume and ckpt.list():
            raise FileExistsError(
                f"{self.out_dir} already holds checkpoints of a run; pass resume=True to "
                "continue it, or choose another out_dir (nothing is overwritten)")
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.cleanup_temp()
            if not cfg.resume:  # a fresh run: a log without checkpoints is from a run that
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)  # never saved one
        return ckpt

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """The whole state (one file). With parallel='fsdp' the modules and optimizers are saved
        through DCP instead (`_sharded_state`) and this holds the rest."""
        tensors = {} if self.parallel.checkpoint_format == "dcp" else {
            "modules": {n: m.state_dict() for n, m in self.modules.items()},
            "optimizers": {n: o.state_dict() for n, o in self.optimizers.items()}}
        return {
            "trainer": {"step": self.step, "nonfinite_skips": self.nonfinite_skips,
                        "consecutive_skips": self._consecutive_skips,
                        "world_size": self.world_size, "parallel": self.config.parallel},
            "config": dataclasses.asdict(self.config),
            **tensors,
            "schedulers": {n: s.state_dict() for n, s in self.schedulers.items()},
            "ema": {n: e.state_dict() for n, e in self.ema.items()},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": capture_rng_state(),
            "data": self.train_data.state_dict() if hasattr(self.train_data, "state_dict") else None,
            "task": self.task.state_dict(),
        }

    def _sharded_state(self) -> Dict[str, Any]:
        """Modules and optimizers as DCP state dicts (DTensor shards under FSDP2, whole tensors
        otherwise), keyed by parameter names: loadable at any world size, sharded or not."""
        from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                             get_optimizer_state_dict)
        return {"modules": get_model_state_dict(self._container),
                "optimizers": {n: get_optimizer_state_dict(self._container, o)
                               for n, o in self.optimizers.items()}}

    def _load_sharded(self, path: str) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (set_model_state_dict,
                                                             set_optimizer_state_dict)
        target = self._sharded_state()
        try:
            with warnings.catch_warnings():  # one process, no group: DCP says it assumes so
                warnings.filterwarnings("ignore", message=".*assuming the intent")
                dcp.load(target, checkpoint_id=path)
        except Exception as exc:  # DCP wraps the per-rank errors (missing keys, shapes)
            msg = str(exc).strip().splitlines()
            raise CheckpointError(f"cannot load the sharded checkpoint {path} into this task "
                                  f"({msg[-1][:300] if msg else type(exc).__name__})") from exc
        set_model_state_dict(self._container, target["modules"])
        for n, o in self.optimizers.items():
            set_optimizer_state_dict(self._container, o, target["optimizers"][n])

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        def same_keys(what, have, saved):
            if set(have) != set(saved):
                raise CheckpointError(f"checkpoint {what} {sorted(saved)} do not match the "
                                      f"task's {sorted(have)}")
        if DCP_KEY in state:
            self._load_sharded(state[DCP_KEY])
        else:
            if self.sharded:
                raise CheckpointError("a single-file checkpoint (written with parallel='ddp' or "
                                      "by one process) resumes with parallel='ddp'; FSDP resumes "
                                      "sharded checkpoints (written with parallel='fsdp')")
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
        self._guard["consec"].fill_(self._consecutive_skips)
        self._guard["max_consec"].fill_(self._consecutive_skips)
        restore_rng_state(state["rng"])

    def save_checkpoint(self) -> Optional[Path]:
        """Writes a checkpoint of the current step: the main process writes one file, or (fsdp)
        every process writes its shards through DCP; all return together."""
        self._read_guard()  # a halted run raises here rather than save its skipped steps
        path = None
        self._ckpt_step = self.step  # on every rank: all take the same decisions
        if self.ckpt is not None:
            if self.parallel.checkpoint_format == "dcp":
                path = self._save_sharded()
            elif self.is_main:
                path = self.ckpt.save(self.state_dict(), self.step)
            if self.is_main:
                self.last_checkpoint = path
                self._record({"event": "checkpoint", "path": str(path)})
        dist_utils.barrier()
        return path

    def _save_sharded(self) -> Path:
        import torch.distributed.checkpoint as dcp
        tmp, final = self.ckpt.temp_for(self.step), self.ckpt.path_for(self.step, sharded=True)
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist_utils.barrier()
        with warnings.catch_warnings():  # one process, no group: DCP says it assumes so
            warnings.filterwarnings("ignore", message=".*assuming the intent")
            dcp.save(self._sharded_state(), checkpoint_id=str(tmp))  # every process its shards
        if self.is_main:
            save_checkpoint(self.state_dict(), tmp / "extra.pt")
            seal_sharded(tmp, final, {"step": self.step, "world_size": self.world_size,
                                      "parallel": self.config.parallel})
            self.ckpt.prune()
        return final

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
                if self.is_main and self.out_dir is not None:  # a restart before the first
                    self._truncate_log()                         # checkpoint: log from step 0
                return
            _, path, state = found
        ws = state["trainer"].get("world_size", 1)
        if ws != self.world_size:
            self.log(f"note: checkpoint written by {ws} processes, resuming with "
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
        _atomic.write_text(p, "".join(l + "\n" for l in keep))

    # ------------------------------------------------------------------ one step
    def _nonfinite(self, loss: torch.Tensor) -> torch.Tensor:
        return ~torch.isfinite(loss.detach()).all()  # a device bool: no host read

    def _backward(self, loss: torch.Tensor, **kw) -> None:
        """Backward (outside autocast; scaled for fp16). Whether it averages gradients across
        processes was set before the forward (`parallel.gradient_sync`)."""
        with torch.autocast(self.device.type, enabled=False) if self.precision != "fp32" \
                else contextlib.nullcontext():
            (self.scaler.scale(loss) if self.scaler is not None else loss).backward(**kw)

    def _apply(self, names: List[str], bad: torch.Tensor) -> torch.Tensor:
        """Clip, guard and step the optimizers `names` (one backward's gradients, already
        averaged), together: clipping by the global norm of all their parameters, and a skip
        of one is a skip of all. `bad`: this process's loss was not finite. Returns the gradient
        norm before clipping (a tensor)."""
        opts = [self.optimizers[n] for n in names]
        params = [p for n in names for p in self._opt_params[n] if p.grad is not None]
        if self.scaler is not None:
            for opt in opts:
                self.scaler.unscale_(opt)
        if not params:
            norm = torch.zeros((), device=self.device)
        elif self.config.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if hasattr(norm, "full_tensor"):  # FSDP2: the norm of the sharded gradients, replicated
            norm = norm.full_tensor()
        if self.world_size > 1:  # a bad loss on any process skips the step on all of them
            bad = dist_utils.all_reduce_sum(bad.to(torch.float32)) > 0
        if self.scaler is None:
            bad = bad | ~torch.isfinite(norm)
        skip = bad | self._guard["halt"]
        skip_read = None  # the host's copy of `skip`, read at most once per step
        for opt in opts:
            if self.scaler is None and getattr(opt, "_step_supports_amp_scaling", False):
                opt.found_inf = skip.to(torch.float32)  # the step is a no-op where it is 1
                try:
                    opt.step()
                finally:
                    del opt.found_inf
                continue
            # fp16: the scaler skips inf/NaN gradients itself (and lowers its scale: not counted
            # as a skip); a bad loss or a halted run is read on the host, as GradScaler reads its
            # own flag for optimizers without found_inf. Such an optimizer (torch's Muon) cannot
            # skip a step on the device either: a host read.
            skip_read = bool(skip) if skip_read is None else skip_read
            if not skip_read:
                self.scaler.step(opt) if self.scaler is not None else opt.step()
        if self.scaler is not None:
            self.scaler.update()
        self._step_bad = bad if self._step_bad is None else self._step_bad | bad
        self._step_skip = skip if self._step_skip is None else self._step_skip | skip
        return norm.detach()

    def optimizer_step(self, name: str, loss: torch.Tensor, retain_graph: bool = False) -> torch.Tensor:
        """For manual tasks: zero_grad, backward (gradients averaged across processes), clip,
        guard and step optimizer `name`. Returns the gradient norm before clipping (a 0-dim
        tensor on the device: reading it is a host sync)."""
        if name not in self.optimizers:
            raise KeyError(f"no optimizer {name!r}; the task's optimizers: {sorted(self.optimizers)}")
        self.optimizers[name].zero_grad(set_to_none=True)
        bad = self._nonfinite(loss)
        self._backward(loss, retain_graph=retain_graph)
        self.parallel.after_backward(self._opt_modules[name])  # averaged across processes
        return self._apply([name], bad)

    def _metric(self, v) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v.detach().to(torch.float32)
        return torch.tensor(float(v), dtype=torch.float32, device=self.device)

    def _train_step(self) -> Dict[str, torch.Tensor]:
        """One step; the logged numbers come back as device tensors (nothing read)."""
        metrics: Dict[str, torch.Tensor] = {}
        task, cfg = self.task, self.config
        self._step_bad = self._step_skip = None
        if task.automatic_optimization:
            names = list(self.optimizers)
            modules = list(dict.fromkeys(m for n in names for m in self._opt_modules[n]))
            for opt in self.optimizers.values():
                opt.zero_grad(set_to_none=True)
            bad = None
            for i in range(cfg.grad_accum):
                # Only the last micro-batch's backward averages the gradients across processes.
                last = i == cfg.grad_accum - 1
                self.parallel.gradient_sync(modules, last)
                batch = to_device(next(self._train_iter), self.device)
                with self._autocast():
                    out = task.training_step(batch, self.step)
                if not isinstance(out, dict) or "loss" not in out:
                    raise TypeError("training_step must return a dict with a 'loss' tensor "
                                    "(or set automatic_optimization = False)")
                f = self._nonfinite(out["loss"])
                bad = f if bad is None else bad | f
                self._backward(out["loss"] / cfg.grad_accum)
                if last:
                    self.parallel.after_backward(modules)
                for k, v in out.items():
                    metrics[k] = metrics.get(k, 0.0) + self._metric(v) / cfg.grad_accum
            metrics["grad_norm"] = self._apply(names, bad)
        else:
            batch = to_device(next(self._train_iter), self.device)
            with self._autocast():
                out = task.training_step(batch, self.step) or {}
            metrics.update({k: self._metric(v) for k, v in out.items()})
        return metrics

    def _count_skip(self) -> None:
        """The guard's bookkeeping for the step just taken, on the device."""
        g, bad = self._guard, self._step_bad
        if bad is None:
            g["consec"].zero_()
            return
        b = bad.to(torch.int64)
        g["skips"].add_(b)
        g["consec"].mul_(b).add_(b)
        torch.maximum(g["max_consec"], g["consec"], out=g["max_consec"])
        g["first_bad"].masked_fill_(bad & (g["first_bad"] < 0), self.step + 1)
        halt = g["consec"] > self.config.max_consecutive_skips
        if self.config.nonfinite == "stop":
            halt = halt | bad
        g["halt"].logical_or_(halt)

    def _guard_values(self) -> List[torch.Tensor]:
        g = self._guard
        return [g["skips"], g["max_consec"], g["consec"], g["first_bad"], g["halt"]]

    def _read_guard(self) -> None:
        """Reads the guard's counters (a host sync: checkpoints and the end of fit())."""
        self._take_guard(torch.stack([v.to(torch.float64) for v in self._guard_values()]).tolist())

    def _take_guard(self, values: List[float]) -> None:
        skips, _, consec, first_bad, halt = (int(round(v)) for v in values)
        g = self._guard
        g["skips"].zero_()
        g["max_consec"].copy_(g["consec"])
        g["first_bad"].fill_(-1)
        self.nonfinite_skips += skips
        self._consecutive_skips = consec
        if not skips:
            return
        self._record({"event": "nonfinite", "skipped": skips, "first_step": first_bad})
        where = (f"non-finite value at step {first_bad} (loss or gradient norm); this step's "
                 "update was not applied (weights unchanged)")
        if halt:
            cfg = self.config
            why = ("nonfinite='stop'" if cfg.nonfinite == "stop" else
                   f"{cfg.max_consecutive_skips + 1} non-finite steps in a row "
                   f"(max_consecutive_skips={cfg.max_consecutive_skips})")
            after = (f"; read at step {self.step} (the guard is read once per logging interval): "
                     f"no update after it was applied either" if self.step > first_bad else "")
            last = f"; last checkpoint: {self.last_checkpoint}" if self.last_checkpoint else ""
            raise NonFiniteLossError(
                f"training stopped: {where} [{why}]{after}{last}. Try a lower learning rate, "
                "gradient clipping (grad_clip), or precision='fp32'.")
        self.log(f"warning: {where}; {skips} step(s) skipped since the last log")

    def _after_step(self) -> None:
        # Schedulers follow the step count (also over a skipped step); EMA only real updates.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            for s in self.schedulers.values():
                s.step()
        for n, e in self.ema.items():
            e.update(self.modules[n], skip=self._step_skip)

    # ------------------------------------------------------------------ eval / samples
    @contextlib.contextmanager
    def eval_mode(self):
        """Eval mode, no grad, and the training RNG streams left exactly as they were (so
        validating or sampling more or less often does not change training). Sharded modules
        are gathered whole on every process meanwhile (sampling calls more than forward)."""
        rng = capture_rng_state()
        modes = {n: m.training for n, m in self.modules.items()}
        for m in self.modules.values():
            m.eval()
        gathered = dist_utils.gather_full(self.modules.values()) if self.sharded \
            else contextlib.nullcontext()
        try:
            with torch.no_grad(), gathered:
                yield
        finally:
            for n, m in self.modules.items():
                m.train(modes[n])
            restore_rng_state(rng)

    def validate(self) -> Dict[str, float]:
        self.setup()
        if self.val_data is None:
            return {}
        sums: Dict[str, torch.Tensor] = {}
        n = 0
        with self.eval_mode(), self._autocast():
            for batch in self.val_data:
                out = self.task.validation_step(to_device(batch, self.device))
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + self._metric(v).to(torch.float64)
                n += 1
        keys = sorted(sums)
        t = dist_utils.all_reduce_sum(torch.stack(
            [sums[k].reshape(()) for k in keys]
            + [torch.tensor(float(n), dtype=torch.float64, device=self.device)]))
        values = t.tolist()  # host read (validation)
        if values[-1] == 0:
            return {}
        res = {f"val_{k}": values[i] / values[-1] for i, k in enumerate(keys)}
        self._record({"event": "val", **res})
        self.log(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
        return res

    def write_samples(self) -> List[Path]:
        self.setup()
        if not self.is_main and not self.sharded:
            return []
        with self.eval_mode():  # sharded modules: every process runs the forward passes
            out = self.task.sample(self.step)
        if out is None or not self.is_main:
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
        """Trains up to `config.max_steps` (or until `stop_after` steps in this call, or a
        SIGTERM/SIGUSR1). Returns a summary: step, last train metrics, last validation metrics,
        seconds, nonfinite_skips, stopped_by (the signal's name, or None)."""
        self.setup()
        mode = self._progress_mode()
        if mode == "bar":
            self._bar = tqdm(total=self.config.max_steps, initial=self.step, unit="step",
                             file=sys.stderr, dynamic_ncols=True)
        previous = self._catch_signals()
        try:
            return self._fit(stop_after, mode)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def _catch_signals(self) -> Dict[int, Any]:
        """SIGTERM/SIGUSR1 -> stop after the current step (the handler only sets a flag)."""
        if not self.config.handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        self._signal = None

        def handler(signum, frame):
            if self._signal is None:
                self._signal = signum
        return {sig: signal.signal(sig, handler) for sig in
                (getattr(signal, n) for n in _STOP_SIGNALS if hasattr(signal, n))}

    def _log_interval(self, pending: Dict[str, torch.Tensor], pending_n: Dict[str, Any]) -> Dict[str, float]:
        """The one host read of a logging interval: the means of the logged numbers (over the
        steps that were not skipped, and over the processes) and the guard's counters."""
        keys = sorted(pending)
        means = [torch.where(torch.as_tensor(pending_n[k], device=self.device) > 0,
                             pending[k].to(torch.float64) / pending_n[k], float("nan"))
                 for k in keys]
        t = torch.stack([m.reshape(()) for m in means]
                        + [v.to(torch.float64) for v in self._guard_values()])
        if self.world_size > 1:  # the guard's counters are the same on every process
            t = dist_utils.all_reduce_sum(t) / self.world_size
        values = t.tolist()  # host read, once per logging interval
        train = dict(zip(keys, values[:len(keys)]))
        if train:
            lrs = {f"lr_{n}" if len(self.optimizers) > 1 else "lr": o.param_groups[0]["lr"]
                   for n, o in self.optimizers.items()}
            self._record({"event": "train", **train, **lrs})
        self._take_guard(values[len(keys):])
        return train

    def _fit(self, stop_after: Optional[int], mode: str) -> Dict[str, Any]:
        cfg = self.config
        # Sums and counts per key, on the device: a number logged on only some steps (say an R1
        # penalty every 4th step) is averaged over the steps that logged it; skipped steps are
        # left out.
        pending: Dict[str, torch.Tensor] = {}
        pending_n: Dict[str, Any] = {}
        last_train: Dict[str, float] = {}
        last_val: Dict[str, float] = {}
        stop = dist_utils.StopFlag()
        stopped_by = None
        t0, steps_done = time.time(), 0
        try:
            while self.step < cfg.max_steps and (stop_after is None or steps_done < stop_after):
                metrics = self._train_step()
                self._count_skip()
                self.step += 1
                steps_done += 1
                self._after_step()
                keep = None if self._step_skip is None else ~self._step_skip
                for k, v in metrics.items():
                    pending[k] = pending.get(k, 0.0) + (v if keep is None else torch.where(keep, v, 0.0))
                    pending_n[k] = pending_n.get(k, 0) + (1 if keep is None else keep.to(torch.float32))
                if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                    last_train = self._log_interval(pending, pending_n) or last_train
                    pending, pending_n = {}, {}
                self._progress(mode, last_train, steps_done / max(time.time() - t0, 1e-9))
                if cfg.val_every and (self.step % cfg.val_every == 0 or self.step == cfg.max_steps):
                    last_val = self.validate()
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or self.step == cfg.max_steps):
                    self.write_samples()
                if cfg.ckpt_every and self.step % cfg.ckpt_every == 0:
                    self.save_checkpoint()
                if stop.poll(self._signal is not None):  # every process stops after this step
                    stopped_by = signal.Signals(self._signal).name if self._signal else "SIGTERM"
                    break
        finally:
            stop.close()
        self._read_guard()
        if stopped_by is not None:
            self.log(f"{stopped_by}: stopping after step {self.step}")
            if self.ckpt is not None and self._ckpt_step != self.step:
                self.save_checkpoint()
            self._record({"event": "stopped", "signal": stopped_by})
        elif self.step >= cfg.max_steps and self.ckpt is not None and self._ckpt_step != self.step:
            self.save_checkpoint()
        return {"step": self.step, "train": last_train, "val": last_val,
                "seconds": time.time() - t0, "nonfinite_skips": self.nonfinite_skips,
                "stopped_by": stopped_by}
