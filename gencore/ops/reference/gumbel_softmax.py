"""Gumbel-softmax in plain PyTorch: the specification of gencore.ops.gumbel_softmax.

Noise: element i of `logits` (row-major position) gets g_i = -log(-log(u_i)), u_i from the Philox
stream keyed by (seed, offset) (reference/philox.py). Then, in float32 (float64 for float64):
    z = (logits + g) * (1 / tau),   soft = softmax(z, dim),
    hard: out = one_hot(argmax(z, dim)) (first maximum), gradient through soft (straight-through).
Rows containing NaN or +inf, or only -inf, give NaN rows (as torch.softmax does).
"""
from __future__ import annotations

import torch

from .philox import random_bits, uniform_open01


def gumbel_noise(shape, seed, offset, device, dtype=torch.float32) -> torch.Tensor:
    """Gumbel(0, 1) noise of `shape`; u is float32 (exact), the logs run in `dtype`."""
    numel = 1
    for s in shape:
        numel *= s
    u = uniform_open01(random_bits(numel, seed, offset, device)).to(dtype)
    return (-torch.log(-torch.log(u))).reshape(shape)


def gumbel_softmax_reference(logits: torch.Tensor, seed, offset, tau: float = 1.0,
                             hard: bool = False, dim: int = -1) -> torch.Tensor:
    """Differentiable reference (autograd through torch ops); returns logits.dtype."""
    acc = torch.float64 if logits.dtype == torch.float64 else torch.float32
    g = gumbel_noise(logits.shape, seed, offset, logits.device, acc)
    z = (logits.to(acc) + g) * (1.0 / tau)  # the kernels multiply by 1/tau too
    soft = torch.softmax(z, dim)
    if not hard:
        return soft.to(logits.dtype)
    index = z.argmax(dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    one_hot = torch.where(soft.isnan(), soft, one_hot)  # NaN rows stay NaN
    # Straight-through: the value is exactly the one-hot, the gradient is soft's.
    return (one_hot + (soft - soft.detach())).to(logits.dtype)
