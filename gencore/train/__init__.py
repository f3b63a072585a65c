"""gencore.train: the Trainer, the Task protocol, checkpoints, EMA, LR schedules, distributed."""
from .._device import available_devices, resolve_device
from . import distributed
from .checkpoint import (CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint,
                         restore_rng_state, save_checkpoint)
from .ema import EMA
from .images import image_grid, png_bytes, save_png_grid
from .schedule import WarmupCosine, warmup_cosine_factor
from .task import Task
from .trainer import NonFiniteLossError, Trainer, TrainerConfig, seed_everything, to_device

__all__ = [
    "Trainer", "TrainerConfig", "Task", "NonFiniteLossError", "seed_everything", "to_device",
    "CheckpointError", "CheckpointManager", "save_checkpoint", "load_checkpoint",
    "capture_rng_state", "restore_rng_state", "EMA", "WarmupCosine", "warmup_cosine_factor",
    "image_grid", "png_bytes", "save_png_grid", "distributed", "resolve_device",
    "available_devices",
]
