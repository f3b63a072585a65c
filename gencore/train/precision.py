"""Whether a device computes in bfloat16 natively (so bf16 is the fast choice, not a slow one)."""
from __future__ import annotations

from typing import Union

import torch

__all__ = ["native_bf16", "resolve_precision"]


def native_bf16(device: Union[str, torch.device]) -> bool:
    """True on CUDA GPUs with bf16 support and on CPUs with AVX512-BF16 or AMX instructions,
    where bf16 matmuls run about twice as fast as float32 ones. Elsewhere PyTorch emulates bf16
    through float32, which makes it slower than float32."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":  # private helpers of torch.cpu (torch >= 2.3); absent: assume not
        return any(getattr(torch.cpu, name, lambda: False)()
                   for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_precision(precision: str, device: Union[str, torch.device]) -> str:
    """"auto" -> "bf16" (autocast) where the device has native bf16, else "fp32"; any other
    value is returned as it is."""
    if precision != "auto":
        return precision
    return "bf16" if native_bf16(device) else "fp32"
