"""Gumbel-softmax in plain PyTorch: the specification of gencore.ops.gumbel_softmax.

Noise: element i of `logits` (row-major position) gets g_i = -log(-log(u_i)), u_i from the Philox
stream keyed by (seed, offset) (reference/philox.py); in float32 the logs are `log32` below, the
kernels' log (csrc/common/gumbel_noise.h), so that every implementation draws bit-identical noise.
Then, in float32 (float64 for float64):
    z = (logits + g) * (1 / tau),   soft = softmax(z, dim),
    hard: out = one_hot(argmax(z, dim)) (first maximum), gradient through soft (straight-through).
Rows containing NaN or +inf, or only -inf, give NaN rows (as torch.softmax does).
"""
from __future__ import annotations

import torch

from .philox import random_bits, uniform_open01


# log32's constants (float32 values, written exactly): P(f) = C[0] + C[1] f + ... + C[8] f^8.
_C = [float.fromhex(h) for h in (
    "-0x1.fffff8p-2", "0x1.55555p-2", "-0x1.000428p-2", "0x1.99a402p-3", "-0x1.54274ap-3",
    "0x1.22709ap-3", "-0x1.0f376p-3", "0x1.084e14p-3", "-0x1.383dacp-4")]
_LN2 = float.fromhex("0x1.62e43p-1")  # ln 2 rounded to float32
_SQRT_HALF_BITS = 0x3F3504F3


def _log32_chunk(x: torch.Tensor) -> torch.Tensor:
    ix = x.view(torch.int32).long()
    k = (ix - _SQRT_HALF_BITS) >> 23
    f = (ix - (k << 23)).int().view(torch.float32) - 1.0  # m - 1, exact
    # Each fma(a, b, c) in float32 is (a * b + c) in float64 rounded to float32: the product of two
    # float32 values is exact in float64, so only the sum rounds first (the tests check, over every
    # input log32 meets, that this equals the kernels' true fma).
    f64 = f.double()
    acc = torch.full_like(f64, _C[8])
    for c in reversed(_C[:8]):
        acc.mul_(f64).add_(c).copy_(acc.float())  # q = fma(q, f, c)
    acc.mul_((f * f).double()).add_(f64).copy_(acc.float())  # y = fma(f * f, q, f)
    return acc.add_(k.double() * _LN2).float()  # fma(k, ln2, y)


def log32(x: torch.Tensor) -> torch.Tensor:
    """Natural log of positive normal float32 values, <= 0.93 ulp: x = 2^k m with m in
    [sqrt(1/2), sqrt(2)) from the bits, log x = k ln2 + f + f^2 P(f), f = m - 1. Runs in chunks
    that stay in cache (its float64 steps would otherwise stream through memory)."""
    flat = x.reshape(-1)
    if flat.numel() == 0:
        return x.clone()
    return torch.cat([_log32_chunk(c) for c in flat.split(1 << 15)]).view(x.shape)


def gumbel_noise(shape, seed, offset, device, dtype=torch.float32) -> torch.Tensor:
    """Gumbel(0, 1) noise of `shape`; u is float32 (exact), the logs run in `dtype` (log32 for
    float32)."""
    numel = 1
    for s in shape:
        numel *= s
    u = uniform_open01(random_bits(numel, seed, offset, device))
    if dtype == torch.float32:
        return (-log32(-log32(u))).reshape(shape)
    u = u.to(dtype)
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
