"""RelGAN-style text GAN: an LSTM generator sampled through Gumbel-softmax, a CNN discriminator
over (soft) one-hot sequences, and RelGAN's inverse-temperature schedules.

Adversarial mode (RelGAN): at each step the generator's logits o_t go through
`gumbel_softmax(o_t, tau)`; the soft one-hot y_t is what the discriminator sees (gradients flow
back through it), and argmax(y_t) = argmax(o_t + g_t) is the sampled token, fed as the next input.
`tau = 1 / beta` where beta rises from 1 to beta_max over the adversarial steps.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import gan_loss, gumbel_softmax
from ..ops.reference.gan_loss import KINDS as LOSS_KINDS
from ._checks import positive_int

__all__ = ["TextGenerator", "sample_categorical", "token_cross_entropy", "CNNDiscriminator",
           "TemperatureSchedule", "SCHEDULES", "LOSS_KINDS", "discriminator_loss", "generator_loss"]

IMPLS = ("auto", "fused", "reference")
SCHEDULES = ("no", "lin", "exp", "log", "sigmoid")


def _check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def sample_categorical(logits: torch.Tensor, generator: Optional[torch.Generator] = None
                       ) -> torch.Tensor:
    """One draw per row of softmax(logits) (N, V) -> (N,) int64, by inverting the CDF: one
    uniform per row (torch.multinomial and the Gumbel-max trick cost ~30x more at V = 5000 on
    CPU, where they draw a random number per category)."""
    cdf = F.softmax(logits.double(), -1).cumsum(-1)
    u = torch.rand(logits.shape[0], 1, dtype=torch.float64, device=logits.device,
                   generator=generator) * cdf[:, -1:]
    # right=True: the first category whose cdf exceeds u, so zero-probability ones are never hit
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_(max=logits.shape[-1] - 1)


def token_cross_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[token] per position: logits (B, T, V), tokens (B, T) -> (B, T), float32.
    Over the flattened (B*T, V) rows: log-softmax along the contiguous last dimension is several
    times faster on CPU than cross_entropy on the (B, V, T) transpose."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    return F.cross_entropy(flat, tokens.reshape(-1).long(), reduction="none").view(tokens.shape)


class TemperatureSchedule:
    """RelGAN's inverse temperature beta over `horizon` adversarial steps; tau = 1 / beta.

    kinds: "no" (beta_max from the first step, no annealing, RelGAN's meaning), "lin", "exp",
    "log", "sigmoid" (each rises monotonically from exactly 1 at position 0 to exactly beta_max at
    the horizon, and stays there). State: the position, a plain int (`state_dict`).
    """

    def __init__(self, beta_max: float, kind: str = "exp", horizon: int = 1):
        if kind not in SCHEDULES:
            raise ValueError(f"temperature schedule must be one of {SCHEDULES}, got {kind!r}")
        if isinstance(beta_max, bool) or not isinstance(beta_max, (int, float)) \
                or not 1.0 <= beta_max < math.inf:
            raise ValueError(f"beta_max must be a finite number >= 1, got {beta_max!r}")
        self.beta_max, self.kind = float(beta_max), kind
        self.horizon = positive_int(horizon, "horizon")
        self.position = 0

    def beta_at(self, position: int) -> float:
        t = min(max(position, 0), self.horizon) / self.horizon  # progress in [0, 1]
        b = self.beta_max
        if self.kind == "no":
            return b
        if self.kind == "lin":
            return 1.0 + (b - 1.0) * t
        if self.kind == "exp":
            return b ** t
        if self.kind == "log":
            return 1.0 + (b - 1.0) * math.log1p(t * self.horizon) / math.log1p(self.horizon)
        # sigmoid: RelGAN's logistic (slope 20 / horizon around the middle), rescaled so that it
        # starts at exactly 1 and ends at exactly beta_max.
        s = lambda x: 1.0 / (1.0 + math.exp(-20.0 * (x - 0.5)))  # noqa: E731
        return 1.0 + (b - 1.0) * (s(t) - s(0.0)) / (s(1.0) - s(0.0))

    @property
    def beta(self) -> float:
        return self.beta_at(self.position)

    @property
    def tau(self) -> float:
        return 1.0 / self.beta

    def step(self) -> None:
        self.position += 1

    def state_dict(self) -> dict:
        return {"position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.position = int(state["position"])


class TextGenerator(nn.Module):
    """Autoregressive LSTM language model over `vocab_size` tokens, `seq_len` long sequences that
    follow a fixed `start_token` (the oracle's convention). `nll` is per token (nats), (B,)."""

    def __init__(self, vocab_size: int = 5000, embed_dim: int = 32, hidden_dim: int = 32,
                 seq_len: int = 20, start_token: int = 0, impl: str = "auto"):
        super().__init__()
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.seq_len = positive_int(seq_len, "seq_len")
        positive_int(embed_dim, "embed_dim")
        positive_int(hidden_dim, "hidden_dim")
        if not isinstance(start_token, int) or not 0 <= start_token < vocab_size:
            raise ValueError(f"start_token must be an int in [0, {vocab_size}), got {start_token!r}")
        self.start_token, self.impl = start_token, _check_impl(impl)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced next-token logits (B, T, V) for `tokens` (B, T)."""
        if tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError(f"tokens must be integer ids of shape (batch, length), got "
                             f"{tuple(tokens.shape)} {tokens.dtype}")
        start = tokens.new_full((tokens.shape[0], 1), self.start_token)
        h, _ = self.lstm(self.embedding(torch.cat([start, tokens[:, :-1]], 1)))
        return self.out(h)

    def token_nll(self, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """-log p_T(x_t | x_<t) (B, T) under softmax(logits / temperature)."""
        logits = self(tokens)
        return token_cross_entropy(logits if temperature == 1.0 else logits / temperature, tokens)

    def nll(self, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Per-token mean NLL (nats) of each sequence, (B,), at `temperature`."""
        return self.token_nll(tokens, temperature).mean(1)

    def mle_loss(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean per-token cross-entropy (the MLE pre-training loss)."""
        return self.token_nll(tokens).mean()

    def _step(self, prev: torch.Tensor, state):
        h, state = self.lstm(self.embedding(prev)[:, None], state)
        return self.out(h[:, 0]), state

    def _start(self, n: int) -> torch.Tensor:
        return torch.full((n,), self.start_token, dtype=torch.long, device=self.out.weight.device)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None,
               temperature: float = 1.0) -> torch.Tensor:
        """n sequences (n, seq_len) int64 drawn ancestrally (multinomial, with `generator`) from
        softmax(logits / temperature)."""
        positive_int(n, "n")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        prev, state, out = self._start(n), None, []
        for _ in range(self.seq_len):
            logits, state = self._step(prev, state)
            prev = sample_categorical(logits if temperature == 1.0 else logits / temperature,
                                      generator)
            out.append(prev)
        return torch.stack(out, 1)

    def gumbel_softmax(self, logits: torch.Tensor, tau: float,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
        """The relaxation used by `gumbel_sample` (a method, so a benchmark can swap it)."""
        return gumbel_softmax(logits, tau, generator=generator, impl=self.impl)

    def gumbel_sample(self, n: int, tau: float, generator: Optional[torch.Generator] = None
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Adversarial rollout: (soft one-hots (n, seq_len, V) differentiable w.r.t. the
        generator's parameters, hard tokens (n, seq_len) = their argmax, fed back as inputs)."""
        positive_int(n, "n")
        prev, state, soft, hard = self._start(n), None, [], []
        for _ in range(self.seq_len):
            logits, state = self._step(prev, state)
            y = self.gumbel_softmax(logits, tau, generator)
            prev = y.detach().argmax(-1)  # = argmax(logits + gumbel noise), whatever tau
            soft.append(y)
            hard.append(prev)
        return torch.stack(soft, 1), torch.stack(hard, 1)


class _Highway(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)

    def forward(self, x):
        t = torch.sigmoid(self.gate(x))
        return t * F.relu(self.transform(x)) + (1 - t) * x


class CNNDiscriminator(nn.Module):
    """Text CNN over sequences given as one-hots (B, L, V) (soft or hard, float) or token ids
    (B, L) (the same thing, looked up instead of multiplied): embedding, convolutions of several
    widths, max over time, a highway layer, dropout, one logit per sequence (B,).

    `num_rep` > 1: RelGAN's multiple embedded representations, as slices of one embedding (RelGAN
    gives each representation a full-size embedding of its own; slices keep the discriminator's
    size and cost): the embedding is cut into `num_rep` slices of embed_dim / num_rep, and the
    same convolutions, highway and head run on each slice as a separate sequence, giving num_rep
    logits per sequence, (B, num_rep). Each slice judges the sequence through its own view of the
    tokens, and the loss averages them all.
    """

    def __init__(self, vocab_size: int = 5000, seq_len: int = 20, embed_dim: int = 64,
                 filter_widths: Sequence[int] = (2, 3, 4, 5), num_filters: int = 64,
                 dropout: float = 0.25, num_rep: int = 1):
        super().__init__()
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.seq_len = positive_int(seq_len, "seq_len")
        positive_int(embed_dim, "embed_dim")
        positive_int(num_filters, "num_filters")
        self.num_rep = positive_int(num_rep, "num_rep")
        if embed_dim % num_rep:
            raise ValueError(f"embed_dim ({embed_dim}) must be a multiple of num_rep ({num_rep})")
        widths = tuple(filter_widths)
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= seq_len
                             for w in widths):
            raise ValueError(f"filter_widths must be non-empty ints in [1, seq_len={seq_len}], "
                             f"got {filter_widths!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        # A plain weight, not nn.Embedding: soft one-hots multiply it, ids index it.
        self.embedding = nn.Parameter(torch.randn(vocab_size, embed_dim) * embed_dim ** -0.5)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim // num_rep, num_filters, w) for w in widths)
        features = num_filters * len(widths)
        self.highway = _Highway(features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            if x.dim() != 3 or x.shape[-1] != self.vocab_size:
                raise ValueError(f"one-hot input must be (batch, length, {self.vocab_size}), got "
                                 f"{tuple(x.shape)}")
            e = x @ self.embedding
        else:
            if x.dim() != 2:
                raise ValueError(f"token input must be (batch, length), got {tuple(x.shape)}")
            e = F.embedding(x, self.embedding)
        b, length, dim = e.shape
        # (B, L, R, E/R) -> (B * R, E/R, L): each representation a sequence of its own for Conv1d
        e = e.view(b, length, self.num_rep, dim // self.num_rep).permute(0, 2, 3, 1)
        e = e.reshape(b * self.num_rep, dim // self.num_rep, length)
        feats = torch.cat([F.relu(c(e)).amax(-1) for c in self.convs], 1)
        logits = self.head(self.dropout(self.highway(feats)))
        return logits.view(b) if self.num_rep == 1 else logits.view(b, self.num_rep)


def discriminator_loss(real_logits, fake_logits, kind: str = "rsgan", impl: str = "auto"):
    return gan_loss(real_logits, fake_logits, kind, "discriminator", impl=impl)


def generator_loss(real_logits, fake_logits, kind: str = "rsgan", impl: str = "auto"):
    return gan_loss(real_logits, fake_logits, kind, "generator", impl=impl)
