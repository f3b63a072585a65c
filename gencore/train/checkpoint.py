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
- Sharded state (FSDP2) goes to a directory `ckpt-<step>/` through `torch.distributed.checkpoint`
  (DCP): every process writes its shards; the rest of the state (step, RNG, schedules, data
  position...) is an ordinary checkpoint file `extra.pt` in it. The same guarantees: it is written
  as `.ckpt-<step>.dcp.tmp/`, then `manifest.json` (the SHA-256 and size of every file) is written
  last and the directory renamed into place, so a failed or interrupted save never replaces a good
  checkpoint; loading verifies every file against the manifest. DCP reshards on load: a
  checkpoint written by N processes resumes on M (or on one, without a process group).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from .._atomic import atomic_torch_save, fsync_dir, fsync_file, write_text

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "CheckpointManager",
           "capture_rng_state", "restore_rng_state", "FORMAT", "DCP_KEY", "seal_sharded",
           "verify_sharded"]

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
    Raises `CheckpointError` saying what is wrong with a truncated, corrupt or foreign file.
    A sharded checkpoint directory: verifies every file, returns the state of its `extra.pt` with
    `state[DCP_KEY]` = the directory (the caller loads the sharded tensors with DCP from it)."""
    path = Path(path)
    if path.is_dir():
        verify_sharded(path)
        state = load_checkpoint(path / _EXTRA, map_location)
        state[DCP_KEY] = str(path)
        return state
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


# ----------------------------------------------------------------------------- sharded (DCP)

DCP_KEY = "sharded_checkpoint"  # in a loaded state: the directory holding the DCP files
_MANIFEST = "manifest.json"
_EXTRA = "extra.pt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def seal_sharded(tmp: Path, final: Path, meta: Dict[str, Any]) -> Path:
    """Main process, after every process wrote its part of `tmp`: fsync every file, write the
    manifest last, rename `tmp` to `final` (a previous `final` is replaced only then)."""
    files = {}
    for p in sorted(tmp.iterdir()):
        if p.is_file() and p.name != _MANIFEST:
            fsync_file(p)
            files[p.name] = {"sha256": _sha256(p), "bytes": p.stat().st_size}
    manifest = {"format": FORMAT + "-dcp", "version": VERSION, **meta, "files": files}
    write_text(tmp / _MANIFEST, json.dumps(manifest, indent=1) + "\n")  # fsyncs tmp too
    old = None
    if final.exists():  # the same step written again (a run resumed from an older checkpoint)
        old = final.with_name(f".{final.name}.old.tmp")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_sharded(path: Path) -> Dict[str, Any]:
    """The manifest of a sharded checkpoint directory, after checking every file it lists."""
    try:
        manifest = json.loads((path / _MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a complete sharded checkpoint (no readable "
                              f"{_MANIFEST}: {type(exc).__name__})") from None
    if manifest.get("format") != FORMAT + "-dcp" or _EXTRA not in files:
        raise CheckpointError(f"{path} is not a gencore sharded checkpoint")
    for name, want in files.items():
        p = path / name
        if not p.is_file() or p.stat().st_size != want["bytes"] or _sha256(p) != want["sha256"]:
            raise CheckpointError(f"{path} is corrupt: {name} is missing or does not match the "
                                  "SHA-256 digest in its manifest")
    return manifest


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

_NAME = re.compile(r"^ckpt-(\d{8,})(\.pt)?$")


def _remove(p: Path) -> None:
    try:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    except OSError:
        pass


class CheckpointManager:
    """`ckpt-<step>.pt` files (or `ckpt-<step>/` sharded directories) in one directory: save
    (atomic), keep the last `keep_last`, and load the newest good one."""

    def __init__(self, directory: Union[str, Path], keep_last: int = 3):
        if keep_last < 1:
            raise ValueError("keep_last must be >= 1")
        self.dir = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int, sharded: bool = False) -> Path:
        return self.dir / (f"ckpt-{step:08d}" if sharded else f"ckpt-{step:08d}.pt")

    def temp_for(self, step: int) -> Path:
        """Where a sharded checkpoint is written before it is sealed (the same on every rank)."""
        return self.dir / f".ckpt-{step:08d}.dcp.tmp"

    def list(self) -> List[Tuple[int, Path]]:
        """(step, path) of the checkpoints (files or sharded directories), oldest first."""
        if not self.dir.is_dir():
            return []
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m and (p.is_file() if m.group(2) else p.is_dir()):
                found.append((int(m.group(1)), p))
        return sorted(found)

    def cleanup_temp(self) -> None:
        """Removes temporary files left by a writer that was killed mid-write."""
        if self.dir.is_dir():
            for p in self.dir.glob(".ckpt-*.tmp"):
                _remove(p)

    def prune(self) -> None:
        for _, old in self.list()[:-self.keep_last]:
            _remove(old)

    def save(self, state: Dict[str, Any], step: int) -> Path:
        path = save_checkpoint(state, self.path_for(step))
        self.prune()
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
