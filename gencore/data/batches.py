"""Batch streams with exactly resumable state, and sharding across processes.

Every stream draws the *global* batch (the same on every rank, from the same seeded generator) and
hands each rank its contiguous slice, so N processes with a global batch B see exactly the examples
one process with batch B sees. `state_dict()` holds only tensors and plain types (a checkpoint
loads it with `weights_only=True`); `load_state_dict()` continues the stream exactly.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Tuple

import torch

__all__ = ["LMBatches", "LMEvalBatches", "ImageBatches", "SampledBatches"]


def _compact(tokens: torch.Tensor) -> torch.Tensor:
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    if tokens.dim() != 1:
        raise ValueError(f"tokens must be a 1-D tensor, got shape {tuple(tokens.shape)}")
    if tokens.is_floating_point():
        raise ValueError("tokens must be integer ids")
    n = int(tokens.max()) + 1 if tokens.numel() else 0
    dt = torch.uint8 if n <= 256 else (torch.int16 if n < 2 ** 15 else torch.int32)
    return tokens.to(dt).contiguous()


class _Sharded:
    rank, world_size = 0, 1
    batch_size: int

    def set_shard(self, rank: int, world_size: int) -> None:
        if self.batch_size % world_size:
            raise ValueError(f"global batch size {self.batch_size} is not divisible by "
                             f"{world_size} processes")
        self.rank, self.world_size = rank, world_size

    def _local(self, t: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return t
        b = self.batch_size // self.world_size
        return t[self.rank * b:(self.rank + 1) * b]


class LMBatches(_Sharded):
    """Language-model batches: `batch_size` random windows of `block_size + 1` tokens per call,
    returned as (x, y) = (w[:, :-1], w[:, 1:]) int64 tensors of shape (batch, block_size)."""

    def __init__(self, tokens: torch.Tensor, block_size: int, batch_size: int, seed: int = 0):
        self.tokens = _compact(tokens)
        if block_size < 1 or batch_size < 1:
            raise ValueError("block_size and batch_size must be >= 1")
        if self.tokens.numel() < block_size + 1:
            raise ValueError(f"{self.tokens.numel()} tokens are too few for block_size {block_size}")
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0
        self._offsets = torch.arange(block_size + 1)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        hi = self.tokens.numel() - self.block_size  # windows start in [0, hi)
        starts = torch.randint(hi, (self.batch_size,), generator=self.generator)
        self.batches_drawn += 1
        w = self.tokens[self._local(starts)[:, None] + self._offsets].long()
        return w[:, :-1], w[:, 1:]

    def state_dict(self) -> dict:
        return {"kind": "lm", "seed": self.seed, "batches_drawn": self.batches_drawn,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "lm":
            raise ValueError(f"not an LMBatches state: {state.get('kind')!r}")
        self.seed, self.batches_drawn = state["seed"], state["batches_drawn"]
        self.generator.set_state(state["generator"])


class LMEvalBatches(_Sharded):
    """A fixed evaluation set: every iteration yields the same batches. With `max_batches=None`,
    consecutive non-overlapping windows cover the tokens (the remainder that does not fill a whole
    global batch is dropped); otherwise `max_batches` batches of seeded random windows."""

    def __init__(self, tokens: torch.Tensor, block_size: int, batch_size: int,
                 max_batches: Optional[int] = None, seed: int = 1234):
        self.tokens = _compact(tokens)
        self.block_size, self.batch_size = block_size, batch_size
        self.max_batches, self.seed = max_batches, seed
        if self.tokens.numel() < block_size + 1:
            raise ValueError(f"{self.tokens.numel()} tokens are too few for block_size {block_size}")

    def _starts(self) -> torch.Tensor:
        hi = self.tokens.numel() - self.block_size
        if self.max_batches is None:
            starts = torch.arange(0, hi, self.block_size)
            n = (starts.numel() // self.batch_size) * self.batch_size
            if n == 0:
                raise ValueError(f"evaluation text too short for one batch of {self.batch_size} "
                                 f"windows of {self.block_size + 1} tokens")
            return starts[:n]
        g = torch.Generator().manual_seed(self.seed)
        return torch.randint(hi, (self.max_batches * self.batch_size,), generator=g)

    def __len__(self) -> int:
        return self._starts().numel() // self.batch_size

    def __iter__(self):
        offsets = torch.arange(self.block_size + 1)
        for s in self._starts().split(self.batch_size):
            w = self.tokens[self._local(s)[:, None] + offsets].long()
            yield w[:, :-1], w[:, 1:]


class ImageBatches(_Sharded):
    """Image batches by epochs: each epoch is a seeded permutation (a function of seed and epoch
    number only), consumed `batch_size` at a time (the last partial batch is dropped). State: the
    epoch and the cursor in it. Yields images, or (images, labels) when labels are given."""

    def __init__(self, images: torch.Tensor, batch_size: int, seed: int = 0,
                 labels: Optional[torch.Tensor] = None):
        if images.shape[0] < batch_size:
            raise ValueError(f"{images.shape[0]} images are fewer than one batch of {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.cursor = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.images.shape[0], generator=g)

    def __iter__(self):
        return self

    def __next__(self):
        if self.cursor + self.batch_size > self._perm.numel():
            self.epoch += 1
            self.cursor = 0
            self._perm = self._permutation(self.epoch)
        idx = self._local(self._perm[self.cursor:self.cursor + self.batch_size])
        self.cursor += self.batch_size
        if self.labels is None:
            return self.images[idx]
        return self.images[idx], self.labels[idx]

    def state_dict(self) -> dict:
        return {"kind": "image", "seed": self.seed, "epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "image":
            raise ValueError(f"not an ImageBatches state: {state.get('kind')!r}")
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self._perm = self._permutation(self.epoch)


class SampledBatches(_Sharded):
    """Batches from `sampler(n, generator)` (e.g. the oracle LSTM): a seeded generator whose
    state is saved and restored."""

    def __init__(self, sampler: Callable[[int, torch.Generator], torch.Tensor], batch_size: int,
                 seed: int = 0):
        self.sampler, self.batch_size, self.seed = sampler, batch_size, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.batches_drawn = 0

    def __iter__(self):
        return self

    def __next__(self):
        out = self.sampler(self.batch_size, self.generator)
        self.batches_drawn += 1
        return self._local(out)

    def state_dict(self) -> dict:
        return {"kind": "sampled", "seed": self.seed, "batches_drawn": self.batches_drawn,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "sampled":
            raise ValueError(f"not a SampledBatches state: {state.get('kind')!r}")
        self.seed, self.batches_drawn = state["seed"], state["batches_drawn"]
        self.generator.set_state(state["generator"])
