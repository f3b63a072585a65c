"""The synthetic oracle of SeqGAN / RelGAN: a randomly initialised LSTM that *is* the real data.

All weights are drawn N(0, 1) from a generator seeded with `seed`, so the oracle (and the data it
stands for) is rebuilt exactly from its seed and never needs saving. Sequences start from a fixed
start token (`start_token`, 0 by default, as in SeqGAN): it is the input of the first step and is
not part of the sequence; the sequence is the `seq_len` tokens drawn after it.

NLL convention (the one SeqGAN's and RelGAN's code report as NLL_oracle): nats per token, i.e. the
per-sequence negative log-likelihood divided by `seq_len`. `nll(tokens)` returns that per-token
mean for each sequence, shape (B,); `token_nll(tokens)` gives the (B, T) terms. Multiply by
`seq_len` for per-sequence nats.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from ._checks import positive_int
from .text_gan import sample_categorical, token_cross_entropy

__all__ = ["OracleLSTM"]


class OracleLSTM(nn.Module):
    def __init__(self, vocab_size: int = 5000, embed_dim: int = 32, hidden_dim: int = 32,
                 seq_len: int = 20, seed: int = 0, start_token: int = 0):
        super().__init__()
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.embed_dim = positive_int(embed_dim, "embed_dim")
        self.hidden_dim = positive_int(hidden_dim, "hidden_dim")
        self.seq_len = positive_int(seq_len, "seq_len")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        if not isinstance(start_token, int) or not 0 <= start_token < vocab_size:
            raise ValueError(f"start_token must be an int in [0, {vocab_size}), got {start_token!r}")
        self.seed, self.start_token = seed, start_token
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.lstm = nn.LSTM(embed_dim, hidden_dim, batch_first=True)
        self.out = nn.Linear(hidden_dim, vocab_size)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():  # fixed order: embedding, LSTM, output layer
                p.copy_(torch.randn(p.shape, generator=g))
        self.requires_grad_(False)  # the oracle is data, never trained

    def _inputs(self, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: the start token, then every token but the last."""
        start = tokens.new_full((tokens.shape[0], 1), self.start_token)
        return torch.cat([start, tokens[:, :-1]], 1)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
            raise ValueError("tokens must be an integer tensor of shape (batch, length)")

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for every position of `tokens` (B, T)."""
        self._check_tokens(tokens)
        h, _ = self.lstm(self.embedding(self._inputs(tokens)))
        return self.out(h)

    def token_nll(self, tokens: torch.Tensor) -> torch.Tensor:
        """-log p(x_t | x_<t) in nats, shape (B, T)."""
        return token_cross_entropy(self.logits(tokens), tokens)

    def nll(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per-token mean NLL (nats) of each sequence, shape (B,) (see the module docstring)."""
        return self.token_nll(tokens).mean(1)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n sequences (n, seq_len) int64, drawn ancestrally with `generator` (default: torch's)."""
        positive_int(n, "n")
        dev = self.out.weight.device
        prev = torch.full((n,), self.start_token, dtype=torch.long, device=dev)
        state, out = None, []
        for _ in range(self.seq_len):
            h, state = self.lstm(self.embedding(prev)[:, None], state)
            prev = sample_categorical(self.out(h[:, 0]), generator)
            out.append(prev)
        return torch.stack(out, 1)

    @torch.no_grad()
    def entropy(self, n: int = 10_000, seed: int = 12345, batch_size: int = 500) -> float:
        """Monte-Carlo H(oracle) per token = E_{x ~ oracle}[nll(x)]: the floor of NLL_oracle."""
        positive_int(n, "n")
        g = torch.Generator().manual_seed(seed)
        total, done = 0.0, 0
        while done < n:
            b = min(batch_size, n - done)
            total += float(self.nll(self.sample(b, g)).double().sum())
            done += b
        return total / n
