"""gencore.ops.attention: fused flash-style scaled dot-product attention.

Layout (B, H, S, D) as `torch.nn.functional.scaled_dot_product_attention`. The fused kernels
(csrc/cpu/attention.cpp, csrc/cuda/attention*.cu) run the online softmax over key tiles and never
form the S_q x S_k score matrix, forward or backward (memory O(S*D)); the backward recomputes the
scores from the saved row logsumexp. The reference (reference/attention.py) defines the semantics.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .. import _backend
from .reference.attention import attention_reference

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


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
        impl: "auto" (fused where built for the device, else the reference), "fused", "reference".

    Returns (B, H, S_q, D) in q's dtype. Rows that see no key (all keys padded, or causal with
    S_q > S_k) are zeros and get zero gradients.
    """
    scale = _check(q, k, v, key_padding_mask, scale)
    if _backend.use_fused("attention", impl, q.device.type):
        out, _ = torch.ops.gencore.attention(q, k, v, key_padding_mask, bool(causal), scale)
        return out
    return attention_reference(q, k, v, bool(causal), key_padding_mask, scale)[0]


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
