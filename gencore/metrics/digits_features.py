"""A small digit classifier whose penultimate layer is the feature space for image metrics.

FID's Inception net does not apply to 8x8 digits (and is a download); instead a tiny CNN is
trained on the `digits()` training split, deterministically (fixed seed, full-batch Adam, a fixed
number of steps, one thread, float32 on CPU: a few seconds), and cached on disk. The cache file is
named by a hash of the recipe, written atomically and loaded with `torch.load(weights_only=True)`.

`image_metrics(fake)` reports the Frechet distance and KID of generated digits against the real
*test* split, always with the floor: the same metrics between the real training and test splits
(the best a generator that reproduces the data distribution can hope for at these sample sizes).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._atomic import atomic_torch_save
from .frechet import frechet_distance, kid

__all__ = ["DigitClassifier", "feature_net", "digit_features", "image_metrics", "default_cache_dir"]

RECIPE = {"version": 2, "seed": 0, "steps": 200, "lr": 3e-3, "width": 16, "feat": 32,
          "split_seed": 0, "val_fraction": 0.2}


class DigitClassifier(nn.Module):
    def __init__(self, width: int = 16, feat: int = 32):
        super().__init__()
        # Features are divided by their RMS over the training images (set after training), so
        # FD and KID are in units where a typical feature is ~1 (KID's kernel assumes that scale).
        self.register_buffer("feat_scale", torch.ones(()))
        self.c1 = nn.Conv2d(1, width, 3, padding=1)
        self.c2 = nn.Conv2d(width, width, 3, padding=1)
        self.c3 = nn.Conv2d(width, feat, 3, padding=1)
        self.head = nn.Linear(feat, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.shape[-3:] != (1, 8, 8):
            raise ValueError(f"digit features need (N, 1, 8, 8) images, got {tuple(x.shape)}")
        h = F.relu(self.c1(x))
        h = F.max_pool2d(F.relu(self.c2(h)), 2)       # 4x4
        h = F.relu(self.c3(h))
        return h.mean((2, 3)) / self.feat_scale        # (N, feat)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def default_cache_dir() -> Path:
    base = os.environ.get("GENCORE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "gencore")
    return Path(base)


def _recipe_key() -> str:
    return hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]


def _train(data) -> DigitClassifier:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # summation order fixed: same weights on any machine's thread count
    try:
        # enable_grad: the first call may come from inside no_grad (an evaluation loop)
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(RECIPE["seed"])
            net = DigitClassifier(RECIPE["width"], RECIPE["feat"])
            opt = torch.optim.Adam(net.parameters(), lr=RECIPE["lr"])
            x, y = data.train, data.train_labels
            for _ in range(RECIPE["steps"]):
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            with torch.no_grad():
                net.feat_scale.fill_(net.features(x).pow(2).mean().sqrt())
    finally:
        torch.set_num_threads(threads)
    return net.eval()


_NETS: Dict[str, DigitClassifier] = {}


def feature_net(cache_dir: Optional[Union[str, Path]] = None) -> DigitClassifier:
    """The trained feature net: from memory, else the disk cache, else trained now and cached."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"digit-features-{_recipe_key()}.pt"
    key = str(path)
    if key in _NETS:
        return _NETS[key]
    net = DigitClassifier(RECIPE["width"], RECIPE["feat"])
    state = None
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state["model"])
        except Exception:  # corrupt cache: retrain and overwrite
            state = None
    if state is None:
        from ..data import digits
        data = digits(RECIPE["val_fraction"], RECIPE["split_seed"])
        net = _train(data)
        with torch.no_grad():
            acc = float((net(data.val).argmax(1) == data.val_labels).float().mean())
        atomic_torch_save({"model": net.state_dict(), "recipe": dict(RECIPE), "val_accuracy": acc}, path)
    net.eval().requires_grad_(False)
    _NETS[key] = net
    return net


@torch.no_grad()
def digit_features(images: torch.Tensor, cache_dir=None, batch_size: int = 1024) -> torch.Tensor:
    """(N, 1, 8, 8) images in [0, 1] -> (N, 32) features."""
    net = feature_net(cache_dir)
    images = torch.as_tensor(images).detach().float().cpu()
    return torch.cat([net.features(b) for b in images.split(batch_size)])


def image_metrics(fake: torch.Tensor, cache_dir=None, kid_subsets: int = 50,
                  seed: int = 0) -> Dict[str, float]:
    """Frechet distance and KID of generated digits vs the real test split, next to the floor
    (real train vs real test). Keys: fd, kid, kid_std, fd_floor, kid_floor, kid_floor_std."""
    from ..data import digits
    data = digits(RECIPE["val_fraction"], RECIPE["split_seed"])
    f_fake = digit_features(fake, cache_dir)
    f_train = digit_features(data.train, cache_dir)
    f_test = digit_features(data.val, cache_dir)
    k = kid(f_fake, f_test, subsets=kid_subsets, seed=seed)
    k0 = kid(f_train, f_test, subsets=kid_subsets, seed=seed)
    return {"fd": frechet_distance(f_fake, f_test), "kid": k["kid"], "kid_std": k["kid_std"],
            "fd_floor": frechet_distance(f_train, f_test), "kid_floor": k0["kid"],
            "kid_floor_std": k0["kid_std"]}
