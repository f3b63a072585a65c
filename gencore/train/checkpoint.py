"""Checkpoints that never lose work.

- Written atomically: a temporary file in the same directory, flushed and fsync'ed, renamed over
  the final name with `os.replace`, then the directory is fsync'ed. A crash (even `kill -9` or a
  power cut) leaves either the old set of checkpoints or the old set plus the complete new one.
- Self-checking: the payload carries a SHA-256 digest of its content (every tensor's bytes and
  every plain value); loading recomputes it, so a flipped bit is an error, not a silent change.
- Safe to load: only `torch.load(weights_only=True)`: a checkpoint can never run code. Everything
  in it is tensors and plain Python types (RNG states are stored as tensors / tuples of ints).
- `CheckpointManager` keeps the last K and loads the newest good one, falling back past corrupt,
  truncated or foreign files with a clear message for each.
"""
from __future__ import annotations

import hashlib
import os
import random
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .._atomic import atomic_torch_save

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "CheckpointManager",
           "capture_rng_state", "restore_rng_state", "FORMAT"]

FORMAT = "gencore-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, corrupt, foreign or unsafe."""


def _digest(obj: Any) -> str:
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(o, dict):
            h.update(b"D%d" % len(o))
            for k, v in o.items():
                walk(k)
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(b"L" if isinstance(o, list) else b"U")
            h.update(b"%d" % len(o))
            for v in o:
                walk(v)
        elif isinstance(o, bool) or o is None:
            h.update(repr(o).encode())
        elif isinstance(o, int):
            h.update(b"i" + str(o).encode())
        elif isinstance(o, float):
            h.update(b"f" + struct.pack("<d", o))
        elif isinstance(o, str):
            h.update(b"s%d:" % len(o) + o.encode("utf-8", "surrogatepass"))
        elif isinstance(o, bytes):
            h.update(b"b%d:" % len(o) + o)
        elif isinstance(o, (torch.dtype, torch.device, torch.Size)):
            h.update(repr(o).encode())
        else:
            raise TypeError(f"checkpoint content must be tensors and plain types, got "
                            f"{type(o).__name__}")
    walk(obj)
    return h.hexdigest()


def save_checkpoint(state: Dict[str, Any], path: Union[str, Path]) -> Path:
    """Writes `state` (tensors and plain types only) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "digest": _digest(state), "state": state}
    return atomic_torch_save(payload, path)


def load_checkpoint(path: Union[str, Path], map_location="cpu") -> Dict[str, Any]:
    """Loads and verifies a checkpoint written by `save_checkpoint`; returns its state.
    Raises `CheckpointError` saying what is wrong with a truncated, corrupt or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    size = path.stat().st_size
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError from the zip reader, EOFError...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            why = ("it holds Python objects that a weights-only load refuses (it could run code); "
                   "it is not a gencore checkpoint")
        else:
            why = "the file is truncated or corrupt, or not a torch checkpoint"
        raise CheckpointError(f"cannot load checkpoint {path} ({size} bytes): {why} "
                              f"[{type(exc).__name__}: {msg[:200]}]") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gencore checkpoint (no '{FORMAT}' marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}, "
                              f"this gencore reads version {VERSION}")
    state = payload.get("state")
    try:
        digest = _digest(state)
    except TypeError as exc:
        raise CheckpointError(f"{path}: unexpected content ({exc})") from exc
    if digest != payload.get("digest"):
        raise CheckpointError(f"{path} is corrupt: its content does not match its SHA-256 digest")
    return state


# ----------------------------------------------------------------------------- RNG states

def capture_rng_state() -> Dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and every CUDA device) as tensors / plain types."""
    py = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"kind": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            warnings.warn(f"checkpoint has CUDA RNG states for {len(cuda)} devices, this machine "
                          f"has {torch.cuda.device_count()}: CUDA RNG not restored")


# ----------------------------------------------------------------------------- manager

_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


class CheckpointManager:
    """`ckpt-<step>.pt` files in one directory: save (atomic), keep the last `keep_last`, and load
    the newest good one."""

    def __init__(self, directory: Union[str, Path], keep_last: int = 3):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.dir = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.dir / f"ckpt-{step:08d}.pt"

    def list(self) -> List[Tuple[int, Path]]:
        """(step, path) of the checkpoint files, oldest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def cleanup_temp(self) -> None:
        """Removes temporary files left by a writer that was killed mid-write."""
        if self.dir.is_dir():
            for p in self.dir.glob(".ckpt-*.tmp"):
                try:
                    p.unlink()
                except OSError:
                    pass

    def save(self, state: Dict[str, Any], step: int) -> Path:
        path = save_checkpoint(state, self.path_for(step))
        for _, old in self.list()[:-self.keep_last]:
            try:
                old.unlink()
            except OSError:
                pass
        return path

    def load_latest(self, map_location="cpu", log=print) -> Optional[Tuple[int, Path, Dict]]:
        """The newest checkpoint that loads and verifies, as (step, path, state); None when there
        is none at all. Bad files are reported through `log` and skipped (never deleted: a person
        may want to look at them). Raises `CheckpointError` if files exist but none is good."""
        errors = []
        for step, path in reversed(self.list()):
            try:
                return step, path, load_checkpoint(path, map_location)
            except CheckpointError as exc:
                errors.append(str(exc))
                log(f"warning: {exc}; falling back to the previous checkpoint")
        if errors:
            raise CheckpointError("no usable checkpoint in " + str(self.dir) + ":\n  "
                                  + "\n  ".join(errors))
        return None
