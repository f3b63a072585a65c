"""Atomic file writes: a temp file in the same folder, flushed and fsynced, renamed over the
target, then the folder fsynced. A crash leaves the old file or the new one, never a torn one.
The one way gencore writes a file that must not be torn: checkpoints, run.json, results.json,
report.html, the metrics log when a resume rewrites it, benchmark records."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import torch


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Calls write(f) on a temp file beside `path`, then renames it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)  # make the rename itself durable
    return path


def fsync_file(path: Path) -> None:
    """Flushes a file written by someone else (DCP's shards) to the disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Makes the entries of folder `path` (a rename into it) durable; a no-op where the file
    system cannot fsync a folder."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_torch_save(obj: Any, path: Path) -> Path:
    return atomic_write(path, lambda f: torch.save(obj, f))


def write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path: Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2) + "\n")
