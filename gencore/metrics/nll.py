"""NLL metrics of the synthetic (oracle) benchmark of SeqGAN / LeakGAN / RelGAN.

Each takes callables, so any model fits: `nll_fn(tokens) -> Tensor` gives the negative
log-likelihood in nats of each token sequence (B, T) -> (B,) per-token means (or (B, T) per token,
averaged here); `sample_fn(n) -> LongTensor (n, T)` draws sequences. A module with `.nll` and
`.sample` methods can be passed directly.

- NLL_oracle = E_{x ~ generator}[-log p_oracle(x)]: quality as judged by the true distribution.
- NLL_gen    = E_{x ~ real data}[-log p_generator(x)]: coverage of the real data.
- NLL_div    = E_{x ~ generator}[-log p_generator(x)]: the generator's own entropy estimate; a low
  value beside a low NLL_oracle flags mode collapse.

A generator swept over sampling temperatures traces a quality-diversity frontier (NLL_oracle
against NLL_div, Caccia et al., "Language GANs Falling Short"); `frontier_gap` compares two.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch

__all__ = ["sequence_nll", "nll_oracle", "nll_gen", "nll_div", "frontier_gap"]

NllFn = Union[Callable[[torch.Tensor], torch.Tensor], torch.nn.Module]


def _nll_callable(m):
    return m.nll if hasattr(m, "nll") else m


def _sample_callable(m):
    return m.sample if hasattr(m, "sample") else m


@torch.no_grad()
def sequence_nll(nll_fn: NllFn, tokens: torch.Tensor, batch_size: int = 256) -> float:
    """Mean per-token NLL (nats) of `tokens` (N, T) under `nll_fn`, evaluated in batches."""
    fn = _nll_callable(nll_fn)
    if tokens.dim() != 2:
        raise ValueError(f"tokens must be (N, T), got shape {tuple(tokens.shape)}")
    total, n = 0.0, 0
    for chunk in tokens.split(batch_size):
        out = torch.as_tensor(fn(chunk)).double()
        if out.dim() == 2:
            out = out.mean(1)
        if out.shape != (chunk.shape[0],):
            raise ValueError(f"nll_fn must return (B,) or (B, T) values, got {tuple(out.shape)}")
        total += float(out.sum())
        n += chunk.shape[0]
    return total / n


@torch.no_grad()
def _draw(sample_fn, n: int) -> torch.Tensor:
    return _sample_callable(sample_fn)(n)


def nll_oracle(oracle: NllFn, generator_samples: Union[torch.Tensor, Callable], n: int = 10_000,
               batch_size: int = 256) -> float:
    """The oracle's NLL of the generator's samples (a tensor, or a sampler called with `n`)."""
    x = generator_samples if isinstance(generator_samples, torch.Tensor) else _draw(generator_samples, n)
    return sequence_nll(oracle, x, batch_size)


def nll_gen(generator: NllFn, real_data: torch.Tensor, batch_size: int = 256) -> float:
    """The generator's NLL of real (oracle / test) data."""
    return sequence_nll(generator, real_data, batch_size)


def nll_div(generator, generator_samples: Union[torch.Tensor, Callable, None] = None,
            n: int = 10_000, batch_size: int = 256) -> float:
    """The generator's NLL of its own samples (drawn with `generator.sample(n)` if not given)."""
    x = generator_samples
    if x is None:
        x = _draw(generator, n)
    elif not isinstance(x, torch.Tensor):
        x = _draw(x, n)
    return sequence_nll(generator, x, batch_size)


Frontier = Sequence[Mapping[str, float]]


def _curve(points: Frontier) -> List[tuple]:
    """(nll_div, nll_oracle) pairs sorted by nll_div (ties: the mean of their nll_oracle)."""
    by_x: Dict[float, List[float]] = {}
    for p in points:
        by_x.setdefault(float(p["nll_div"]), []).append(float(p["nll_oracle"]))
    return sorted((x, sum(ys) / len(ys)) for x, ys in by_x.items())


def _interp(curve: List[tuple], x: float) -> float:
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    raise ValueError(f"{x} is outside the curve's nll_div range")


def frontier_gap(adv: Frontier, mle: Frontier) -> Optional[Dict[str, float]]:
    """How far `adv`'s frontier lies below `mle`'s: NLL_oracle(mle) - NLL_oracle(adv) at equal
    NLL_div, each curve piecewise linear in NLL_div through its points (`{"nll_div",
    "nll_oracle", ...}` dicts, any order). Over the NLL_div range both curves cover: the smallest
    gap ("min_gap", at "min_at"), the largest ("max_gap", at "max_at") and the overlap ("lo",
    "hi"); positive = adv better. The gap is piecewise linear, so its extremes lie at the
    breakpoints of either curve. None when the curves share no NLL_div range."""
    a, m = _curve(adv), _curve(mle)
    if len(a) < 2 or len(m) < 2:
        raise ValueError("each frontier needs at least 2 points with distinct nll_div")
    lo, hi = max(a[0][0], m[0][0]), min(a[-1][0], m[-1][0])
    if lo > hi:
        return None
    xs = sorted({lo, hi} | {x for x, _ in a + m if lo <= x <= hi})
    gaps = [(_interp(m, x) - _interp(a, x), x) for x in xs]
    (g_min, x_min), (g_max, x_max) = min(gaps), max(gaps)
    return {"min_gap": g_min, "min_at": x_min, "max_gap": g_max, "max_at": x_max,
            "lo": lo, "hi": hi}
