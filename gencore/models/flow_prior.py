"""A small normalising flow over latent vectors (RealNVP, Dinh et al. 2017): a learned prior p(z).

    flow = FlowPrior(dim=16, layers=6, hidden=128)
    lp = flow.log_prob(z)              # (N, 16) -> (N,), exact log-density, nats
    z = flow.sample(64)                # (64, 16)

The map u = f(z) is a stack of affine coupling layers (each rescales and shifts one half of
the coordinates by amounts computed from the other half), with a fixed random permutation
before each, then an elementwise affine map; u is standard normal, so
log p(z) = log N(f(z); 0, I) + log |det df/dz|, exact, and sampling runs the stack backwards.
Every coupling starts as the identity (zero last layer) and the scales are soft-clamped
(tanh) so that a step of the optimiser cannot blow the density up.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from ._checks import positive_int

__all__ = ["FlowPrior"]

_LOG_2PI = math.log(2 * math.pi)


class _Coupling(nn.Module):
    """y = [a, b * exp(s(a)) + t(a)] with a the first `split` coordinates (after `perm`)."""

    def __init__(self, dim: int, hidden: int, perm: torch.Tensor, max_log_scale: float):
        super().__init__()
        self.split, self.max_log_scale = dim // 2, max_log_scale
        self.register_buffer("perm", perm, persistent=False)
        self.register_buffer("inv_perm", torch.argsort(perm), persistent=False)
        self.net = nn.Sequential(nn.Linear(self.split, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2 * (dim - self.split)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, a: torch.Tensor):
        s, t = self.net(a).chunk(2, dim=-1)
        return self.max_log_scale * torch.tanh(s / self.max_log_scale), t

    def forward(self, z: torch.Tensor):
        z = z[..., self.perm]
        a, b = z[..., :self.split], z[..., self.split:]
        s, t = self._scale_shift(a)
        return torch.cat([a, b * torch.exp(s) + t], -1), s.sum(-1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        a, b = y[..., :self.split], y[..., self.split:]
        s, t = self._scale_shift(a)
        return torch.cat([a, (b - t) * torch.exp(-s)], -1)[..., self.inv_perm]


class FlowPrior(nn.Module):
    def __init__(self, dim: int, layers: int = 6, hidden: int = 128, max_log_scale: float = 3.0,
                 seed: int = 0):
        super().__init__()
        who = "FlowPrior"
        positive_int(dim, "dim", who)
        positive_int(layers, "layers", who)
        positive_int(hidden, "hidden", who)
        if dim < 2:
            raise ValueError(f"{who}: dim must be >= 2 (a coupling splits the vector), got {dim}")
        self.dim = dim
        g = torch.Generator().manual_seed(seed)  # the permutations are part of the model's shape
        self.couplings = nn.ModuleList(
            _Coupling(dim, hidden, torch.randperm(dim, generator=g), max_log_scale)
            for _ in range(layers))
        self.loc = nn.Parameter(torch.zeros(dim))        # u = (y - loc) * exp(-log_scale)
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def _check(self, z: torch.Tensor) -> None:
        if not isinstance(z, torch.Tensor) or z.dim() < 1 or z.shape[-1] != self.dim:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"FlowPrior: expected latents of shape (..., {self.dim}), got {got}")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for z (..., dim) -> (...), float32."""
        self._check(z)
        y, logdet = z.float(), 0.0
        for c in self.couplings:
            y, ld = c(y)
            logdet = logdet + ld
        u = (y - self.loc) * torch.exp(-self.log_scale)
        logdet = logdet - self.log_scale.sum()
        return -0.5 * (u ** 2 + _LOG_2PI).sum(-1) + logdet

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n latents (n, dim) from p(z)."""
        positive_int(n, "n", "FlowPrior.sample")
        u = torch.randn((n, self.dim), generator=generator, device=self.loc.device)
        y = u * torch.exp(self.log_scale) + self.loc
        for c in reversed(self.couplings):
            y = c.inverse(y)
        return y
