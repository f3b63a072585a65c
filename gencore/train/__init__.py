"""gencore.train: the Trainer, the Task protocol, checkpoints, EMA, LR schedules, the Muon
optimizer, distributed."""
from .._device import available_devices, resolve_device
from . import distributed
from .checkpoint import (CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint,
                         restore_rng_state, save_checkpoint)
from .ema import EMA
from .images import image_grid, png_bytes, save_png_grid
from .optim import Muon, fused, orthogonalize
from .precision import native_bf16, resolve_precision
from .schedule import WarmupDecay, warmup_decay_factor
from .task import Task
from .trainer import (STOPPED_EXIT_STATUS, NonFiniteLossError, Trainer, TrainerConfig,
                      seed_everything, to_device)

__all__ = [
    "Trainer", "TrainerConfig", "Task", "NonFiniteLossError", "seed_everything", "to_device",
    "CheckpointError", "CheckpointManager", "save_checkpoint", "load_checkpoint",
    "capture_rng_state", "restore_rng_state", "EMA", "WarmupDecay", "warmup_decay_factor",
    "image_grid", "png_bytes", "save_png_grid", "distributed", "Muon", "orthogonalize", "fused",
    "STOPPED_EXIT_STATUS",
    "native_bf16", "resolve_precision", "resolve_device", "available_devices",
]
