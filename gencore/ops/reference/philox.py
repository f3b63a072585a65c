"""Philox4x32-10 in plain torch integer ops: the twin of csrc/common/philox.h.

uint32 values live in int64 tensors. A 32x32-bit product needs 64 bits, which int64 cannot hold
unsigned, so each multiply is split over the 16-bit halves of the multiplier.
"""
from __future__ import annotations

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = 0xFFFFFFFF


def _mulhilo(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product of constant a and tensor b (both < 2**32)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    p_lo = b * a_lo  # < 2**48
    p_hi = b * a_hi  # < 2**48; the product is p_hi * 2**16 + p_lo
    mid = p_hi + (p_lo >> 16)  # < 2**49
    hi = mid >> 16
    lo = ((mid & 0xFFFF) << 16) | (p_lo & 0xFFFF)
    return hi, lo


def philox4x32_10(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(M0, c0)
        hi1, lo1 = _mulhilo(M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
    return [c0, c1, c2, c3]


def random_bits(numel: int, seed, offset, device) -> torch.Tensor:
    """32 random bits for each element index 0..numel-1 (int64 tensor), keyed as philox.h does:
    element i takes word i % 4 of the block at counter (i // 4, offset), key = seed.

    seed and offset are non-negative ints or int64 scalar tensors (traceable by torch.compile)."""
    blocks = (numel + 3) // 4
    b = torch.arange(blocks, device=device, dtype=torch.int64)
    zero = torch.zeros_like(b)
    counter = [b & MASK32, b >> 32, zero + (offset & MASK32), zero + (offset >> 32)]
    words = philox4x32_10(counter, (seed & MASK32, seed >> 32))
    return torch.stack(words, dim=1).reshape(-1)[:numel]


def uniform_open01(bits: torch.Tensor) -> torch.Tensor:
    """float32 in (0, 1), never 0 or 1: (top 23 bits + 0.5) * 2**-23, exact in float32."""
    return ((bits >> 9).to(torch.float32) + 0.5) * (1.0 / 8388608.0)
