"""Language-model metrics from a mean negative log-likelihood (natural log, per token)."""
from __future__ import annotations

import math
from typing import Callable, Iterable, Tuple

import torch

__all__ = ["bits_per_token", "bits_per_char", "perplexity", "mean_nll"]


def bits_per_token(mean_nll_nats: float) -> float:
    """Mean NLL in nats -> bits per token (per character for a char tokenizer)."""
    return float(mean_nll_nats) / math.log(2)


def bits_per_char(mean_nll_nats: float, tokens: int = 1, chars: int = 1) -> float:
    """Bits per character. For a char tokenizer tokens == chars; for a byte tokenizer pass the
    number of bytes (tokens) and characters of the text, so the per-character figure is fair."""
    return bits_per_token(mean_nll_nats) * tokens / chars


def perplexity(mean_nll_nats: float) -> float:
    return math.exp(float(mean_nll_nats))


@torch.no_grad()
def mean_nll(logits_fn: Callable[[torch.Tensor], torch.Tensor],
             batches: Iterable[Tuple[torch.Tensor, torch.Tensor]], device="cpu") -> float:
    """Mean per-token NLL (nats) of a model `logits_fn(x) -> (B, T, V)` over (x, y) batches."""
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = logits_fn(x).float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                y.reshape(-1), reduction="sum")
        total += float(nll)
        count += y.numel()
    if count == 0:
        raise ValueError("no batches to evaluate")
    return total / count
