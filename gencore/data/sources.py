"""Embedded datasets: nothing is downloaded, everything ships with Python or scikit-learn.

Every loader returns a `TextData` (train/val strings) or an `ImageData` (train/val tensors) with a
fixed split: the same arguments give the same split on every run and machine with the same
Python / scikit-learn (the source texts are those of the running interpreter).

- `stdlib_code()`: the standard library's own `.py` files, split by module (a package and all its
  files land on one side), so validation measures generalisation to unseen modules.
- `english_text()`: CPython's `pydoc_data.topics` (the language reference), split by topic.
- `digits()`: scikit-learn's `load_digits`, 1,797 8x8 images, values 0..16 scaled to [0, 1].
- `text_file(path)`: a user's own UTF-8 text file (the last `val_fraction` is validation).
- `image_folder(path)`: a user's images: `.npy` files always, PNG/JPEG when Pillow is installed.
"""
from __future__ import annotations

import os
import random
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "TextData", "ImageData", "stdlib_code", "english_text", "text_file", "digits", "image_folder",
    "SampledDataset",
]

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test",
              "test_asyncio", "lib2to3"}


@dataclass
class TextData:
    name: str
    train: str
    val: str
    # What ended up on each side (module names, topic names): lets a test check disjointness.
    train_units: List[str] = field(default_factory=list)
    val_units: List[str] = field(default_factory=list)

    def tokenizer(self, kind: str = "char"):
        """A tokenizer for this data: `char` (alphabet of train+val) or `byte` (UTF-8)."""
        from .tokenizers import ByteTokenizer, CharTokenizer
        if kind == "char":
            return CharTokenizer.from_text(self.train, self.val)
        if kind == "byte":
            return ByteTokenizer()
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: ['byte', 'char']")


@dataclass
class ImageData:
    name: str
    train: torch.Tensor  # (N, C, H, W) float32 in [0, 1]
    val: torch.Tensor
    train_labels: Optional[torch.Tensor] = None
    val_labels: Optional[torch.Tensor] = None

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.train.shape[1:])


def _split_units(units: List[Tuple[str, str]], val_fraction: float, seed: int
                 ) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """Seeded shuffle of (name, text) units; the first ones up to `val_fraction` of the characters
    go to validation (at least one unit each side)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(units) < 2:
        raise ValueError("need at least two units (files, topics) to split train/validation")
    order = sorted(units)
    random.Random(seed).shuffle(order)
    total = sum(len(t) for _, t in order)
    val, acc = [], 0
    for u in order:
        if acc >= val_fraction * total or len(val) == len(order) - 1:
            break
        val.append(u)
        acc += len(u[1])
    return order[len(val):], val


def _stdlib_modules(root: Path, max_file_bytes: int) -> Dict[str, List[Tuple[str, str]]]:
    mods: Dict[str, List[Tuple[str, str]]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for fn in sorted(filenames):
            if not fn.endswith(".py"):
                continue
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            try:
                if p.stat().st_size > max_file_bytes:
                    continue
                text = p.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            top = rel.split("/")[0]
            top = top[:-3] if top.endswith(".py") else top
            mods.setdefault(top, []).append((rel, text))
    return mods


def stdlib_code(max_bytes: int = 3_000_000, val_fraction: float = 0.1, seed: int = 0,
                max_file_bytes: int = 200_000, root: Optional[Union[str, Path]] = None) -> TextData:
    """Python standard-library source (code generation).

    Modules (a top-level `.py` file, or a package with all its files) are ordered by a seeded
    shuffle and taken whole until `max_bytes` characters; then whole modules go to validation
    until `val_fraction` of the characters. Tests, site-packages and files over `max_file_bytes`
    are left out. Files are joined with a `# file: <path>` header line.
    """
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["stdlib"])
    mods = _stdlib_modules(root, max_file_bytes)
    if not mods:
        raise FileNotFoundError(f"no standard-library .py files found under {root}")
    names = sorted(mods)
    random.Random(seed).shuffle(names)
    chosen, total = [], 0
    for name in names:
        size = sum(len(t) for _, t in mods[name])
        if chosen and total + size > max_bytes:
            continue  # too big to fit whole; smaller modules later may still fit
        chosen.append(name)
        total += size
    units = [(name, "".join(f"# file: {rel}\n{text}\n" for rel, text in mods[name]))
             for name in chosen]
    train, val = _split_units(units, val_fraction, seed)
    return TextData("stdlib-code", "".join(t for _, t in train), "".join(t for _, t in val),
                    sorted(n for n, _ in train), sorted(n for n, _ in val))


def english_text(val_fraction: float = 0.1, seed: int = 0) -> TextData:
    """English prose: the topics of CPython's language reference (`pydoc_data.topics`), each topic
    whole on one side of the split."""
    from pydoc_data.topics import topics
    units = [(k, v.strip() + "\n\n") for k, v in topics.items()]
    train, val = _split_units(units, val_fraction, seed)
    return TextData("pydoc-topics", "".join(t for _, t in train), "".join(t for _, t in val),
                    sorted(n for n, _ in train), sorted(n for n, _ in val))


def text_file(path: Union[str, Path], val_fraction: float = 0.1) -> TextData:
    """A user's UTF-8 text file: the first `1 - val_fraction` is training data, the rest
    validation (a contiguous tail, so no window straddles the two)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not UTF-8 text ({exc})") from None
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if len(text) < 2:
        raise ValueError(f"{path} is too short to split ({len(text)} characters)")
    cut = min(max(1, int(len(text) * (1 - val_fraction))), len(text) - 1)
    return TextData(path.name, text[:cut], text[cut:])


def _split_images(x: torch.Tensor, y: Optional[torch.Tensor], name: str, val_fraction: float,
                  seed: int) -> ImageData:
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least two images to split, got {n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    vi, ti = perm[:n_val].sort().values, perm[n_val:].sort().values
    return ImageData(name, x[ti].contiguous(), x[vi].contiguous(),
                     None if y is None else y[ti], None if y is None else y[vi])


def digits(val_fraction: float = 0.2, seed: int = 0) -> ImageData:
    """scikit-learn's 8x8 handwritten digits (1,797 images, shipped inside the package), as
    (N, 1, 8, 8) float32 in [0, 1] with labels; fixed seeded split (1,437 / 360 by default)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    return _split_images(x, y, "digits", val_fraction, seed)


_PIL_EXT = {".png", ".jpg", ".jpeg"}


def _to_chw(a: np.ndarray, src: str) -> np.ndarray:
    if a.ndim == 2:
        a = a[None]
    elif a.ndim == 3 and a.shape[-1] in (1, 3, 4) and a.shape[0] not in (1, 3, 4):
        a = a.transpose(2, 0, 1)
    elif a.ndim != 3:
        raise ValueError(f"{src}: expected an image of shape HxW, HxWxC or CxHxW, got {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    a = a.astype(np.float32)
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(f"{src}: float images must hold values in [0, 1], "
                         f"got [{a.min():.3g}, {a.max():.3g}]")
    return a


def image_folder(path: Union[str, Path], val_fraction: float = 0.1, seed: int = 0,
                 grayscale: bool = False) -> ImageData:
    """A user's folder of images, all the same size. `.npy` files hold one image (HxW, HxWxC or
    CxHxW) or a stack (NxHxW, NxHxWxC, NxCxHxW); uint8 is scaled by 1/255, floats must be in
    [0, 1]. PNG/JPEG files are read with Pillow when it is installed, with a clear error when not
    (gencore does not depend on it). `grayscale=True` averages the channels."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder not found: {path}")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in _PIL_EXT | {".npy"})
    if not files:
        raise ValueError(f"{path} holds no .npy, .png, .jpg or .jpeg files")
    imgs: List[np.ndarray] = []
    for p in files:
        if p.suffix.lower() == ".npy":
            a = np.load(p, allow_pickle=False)
            stack = a.ndim == 4 or (a.ndim == 3 and a.shape[0] not in (1, 3, 4)
                                    and a.shape[-1] not in (1, 3, 4))
            if stack:  # N images in one file
                imgs.extend(_to_chw(s, f"{p}[{i}]") for i, s in enumerate(a))
            else:
                imgs.append(_to_chw(a, str(p)))
        else:
            try:
                from PIL import Image
            except ImportError:
                raise ImportError(
                    f"{p.name}: reading PNG/JPEG images needs Pillow (pip install pillow), which "
                    "gencore does not install; or save the images as .npy arrays") from None
            with Image.open(p) as im:
                imgs.append(_to_chw(np.asarray(im.convert("L" if grayscale else "RGB")), str(p)))
    shapes = {a.shape for a in imgs}
    if grayscale:
        imgs = [a.mean(axis=0, keepdims=True) for a in imgs]
        shapes = {a.shape for a in imgs}
    if len(shapes) != 1:
        raise ValueError(f"images in {path} differ in shape: {sorted(shapes)[:5]}")
    x = torch.from_numpy(np.stack(imgs))
    return _split_images(x, None, path.name, val_fraction, seed)


class SampledDataset:
    """Data drawn from any sampler: `sampler(n, generator) -> Tensor` (e.g. the oracle LSTM of
    the synthetic benchmark). `batches(batch_size, seed)` gives an `SampledBatches` stream with
    resumable state; `fixed(n, seed)` draws a fixed set (a test set)."""

    def __init__(self, sampler: Callable[[int, torch.Generator], torch.Tensor], name: str = "sampled"):
        self.sampler = sampler
        self.name = name

    def fixed(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.sampler(n, torch.Generator().manual_seed(seed))

    def batches(self, batch_size: int, seed: int = 0):
        from .batches import SampledBatches
        return SampledBatches(self.sampler, batch_size, seed)
