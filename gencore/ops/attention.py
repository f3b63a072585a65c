"""gencore.ops.attention: fused flash-style scaled dot-product attention.

Layout (B, H, S, D) as `torch.nn.functional.scaled_dot_product_attention`. The fused kernels
(csrc/cpu/attention.cpp, csrc/cuda/attention_mma_kernels.cu) run the online softmax over key tiles and never
form the S_q x S_k score matrix, forward or backward (memory O(S*D)); the backward recomputes the
scores from the saved row logsumexp. The reference (reference/attention.py) defines the semantics;
`attention_sdpa` gives the same semantics on PyTorch's `F.scaled_dot_product_attention`, which
impl="auto" runs where the fused kernel is not the faster one (ops/auto.py).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .. import _backend
from . import auto
from .reference.attention import attention_reference

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# What the CUDA kernel runs (csrc/cuda/attention_mma_kernels.cu: tensor cores, sm_80+); impl="fused"
# on CUDA raises a clear error for any other case, and impl="auto" sends those to SDPA.
CUDA_KERNEL_DTYPES = (torch.bfloat16, torch.float16)
CUDA_KERNEL_HEAD_DIMS = (64, 96, 128)


def cuda_kernel_covers(dtype: torch.dtype, head_dim: int) -> bool:
    """Whether gencore's CUDA attention kernel runs this dtype and head dim (on an sm_80+ GPU)."""
    return dtype in CUDA_KERNEL_DTYPES and head_dim in CUDA_KERNEL_HEAD_DIMS


def _check(q, k, v, key_padding_mask, scale) -> float:
    # Runs on every call (a decoding step included), so each shape is read once.
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"attention: {name} must be 4-d (batch, heads, seq, head_dim), "
                             f"got shape {tuple(t.shape)}")
    dtype = q.dtype
    if dtype not in _FLOATING:
        raise TypeError(f"attention: q must be float32, float64, bfloat16 or float16, got {dtype}")
    if k.dtype != dtype or v.dtype != dtype:
        raise TypeError(f"attention: q, k, v must share one dtype, got {dtype}, {k.dtype}, {v.dtype}")
    device = q.device
    if k.device != device or v.device != device:
        raise ValueError(f"attention: q, k, v must be on one device, got {device}, {k.device}, {v.device}")
    (B, H, _, D), (Bk, Hkv, Sk, Dk), (Bv, Hv, Sv, Dv) = q.shape, k.shape, v.shape
    if Bk != B or Bv != B:
        raise ValueError(f"attention: batch sizes differ: q {B}, k {Bk}, v {Bv}")
    if Dk != D or Dv != D:
        raise ValueError(f"attention: head dims differ: q {D}, k {Dk}, v {Dv}")
    if Hv != Hkv or Sv != Sk:
        raise ValueError(f"attention: k and v must have the same heads and length, got k "
                         f"{tuple(k.shape)} and v {tuple(v.shape)}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"attention: q heads ({H}) must be a multiple of k/v heads ({Hkv})")
    if key_padding_mask is not None:
        if not isinstance(key_padding_mask, torch.Tensor) or key_padding_mask.dtype != torch.bool:
            what = key_padding_mask.dtype if isinstance(key_padding_mask, torch.Tensor) else type(key_padding_mask).__name__
            raise TypeError(f"attention: key_padding_mask must be a bool tensor (True = ignore), got {what}")
        if tuple(key_padding_mask.shape) != (B, Sk):
            raise ValueError(f"attention: key_padding_mask must have shape (batch, S_k) = "
                             f"({B}, {Sk}), got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.device != device:
            raise ValueError(f"attention: key_padding_mask is on {key_padding_mask.device}, q on {device}")
    if scale is None:
        return 1.0 / math.sqrt(D) if D > 0 else 1.0
    if isinstance(scale, torch.Tensor):
        raise TypeError("attention: scale must be a Python number")
    if not math.isfinite(scale):
        raise ValueError(f"attention: scale must be finite, got {scale}")
    return float(scale)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              key_padding_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None,
              impl: str = "auto") -> torch.Tensor:
    """softmax(scale * q k^T + mask) v, flash-style.

    Args:
        q: (B, H, S_q, D); k, v: (B, H_kv, S_k, D) with H % H_kv == 0 (grouped-query attention:
            query head h reads kv head h // (H // H_kv)). Any strides (views of a fused QKV
            projection are fine). float32, bfloat16, float16 (float32 accumulation), float64.
        causal: mask aligned bottom-right: query i sees keys j <= i + S_k - S_q (so with a KV
            cache the last query sees every key; with S_q == S_k it is the usual lower triangle).
        key_padding_mask: bool (B, S_k), True = ignore that key.
        scale: multiplies q k^T; default 1 / sqrt(D).
        impl: "auto" (the fused kernel where it is measured faster than SDPA for this device and
            case, else SDPA: see gencore/ops/auto.py), "fused", "reference", or "sdpa" (PyTorch's
            `F.scaled_dot_product_attention` with gencore's semantics).

    Returns (B, H, S_q, D) in q's dtype. Rows that see no key (all keys padded, or causal with
    S_q > S_k) are zeros and get zero gradients.
    """
    scale = _check(q, k, v, key_padding_mask, scale)
    causal = bool(causal)
    case = _auto_case(q, causal, key_padding_mask) if impl == "auto" else "*"
    choice = auto.resolve("attention", impl, q.device.type, case, builtin_name="sdpa")
    if choice == auto.FUSED:
        return torch.ops.gencore.attention(q, k, v, key_padding_mask, causal, scale)[0]
    if choice == auto.BUILTIN:
        return attention_sdpa(q, k, v, causal, key_padding_mask, scale)
    return attention_reference(q, k, v, causal, key_padding_mask, scale)[0]


def _auto_case(q: torch.Tensor, causal: bool, key_padding_mask: Optional[torch.Tensor]) -> str:
    """The row of the auto table (ops/auto.py) a call falls in: "<dtype> decode" (a few queries
    against many keys: KV-cache decoding), "<dtype> causal", or "*"."""
    name = _CASE_DTYPES.get(q.dtype)
    if name is None or key_padding_mask is not None:
        return "*"
    if q.shape[2] <= 4:
        return f"{name} decode"
    return f"{name} causal" if causal else "*"


_CASE_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                   key_padding_mask: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None) -> torch.Tensor:
    """gencore.ops.attention's semantics on `F.scaled_dot_product_attention`: bottom-right causal
    mask, GQA (k/v with fewer heads), bool key padding mask (True = ignore), zeros (and zero
    gradients) for rows that see no key. Arguments are not checked here (attention() does)."""
    H, Hkv = q.shape[1], k.shape[1]
    if Hkv != H:  # expand, not enable_gqa: every SDPA backend takes equal head counts
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    Sq, Sk = q.shape[2], k.shape[2]
    if key_padding_mask is None and (not causal or Sq == 1):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)  # a lone query sees every key
    if key_padding_mask is None and Sq == Sk:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    if causal:
        visible = visible.tril(Sk - Sq)
    visible = visible.expand(q.shape[0], 1, Sq, Sk)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    # A row with no visible key would give NaN: let it see everything, then zero its output
    # (with `where`, so its gradient is zero too).
    seen = visible.any(dim=-1, keepdim=True)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~seen, scale=scale)
    return torch.where(seen, y, torch.zeros_like(y))


# -- torch.library: fake kernels and autograd for the compiled op ---------------------------------

def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(q, k, v, key_padding_mask, causal, scale):
    B, H, Sq, D = q.shape
    return q.new_empty((B, H, Sq, D)), q.new_empty((B, H, Sq), dtype=_lse_dtype(q.dtype))


def _fake_backward(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask)
    ctx.causal, ctx.scale = causal, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, key_padding_mask = ctx.saved_tensors
    dq, dk, dv = torch.ops.gencore.attention_backward(
        grad_out, q, k, v, out, lse, key_padding_mask, ctx.causal, ctx.scale)
    return dq, dk, dv, None, None, None


_backend.register_autograd_and_fake(
    "attention", fake=_fake_forward, setup_context=_setup_context, backward=_backward)
_backend.register_fake("attention_backward", _fake_backward)
