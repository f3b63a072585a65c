"""Reference attention: the specification of gencore.ops.attention, in plain PyTorch.

Materialises the S_q x S_k score matrix (the fused kernels never do), in the input's dtype, or
in float32 for bfloat16/float16 inputs when `upcast=True`.

Semantics:
- layout (B, H, S, D); k and v may have H_kv heads with H % H_kv == 0 (grouped-query attention:
  query head h uses kv head h // (H // H_kv));
- `causal=True` aligns the mask bottom-right: query i sees keys j <= i + S_k - S_q;
- `key_padding_mask` bool (B, S_k), True = ignore that key;
- rows that see no key give zeros (and zero gradients), never NaN;
- returns (out, lse) with lse the row logsumexp of the scaled, masked scores (-inf when none).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        key_padding_mask: Optional[torch.Tensor] = None,
                        scale: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device)
    if causal:
        visible = torch.ones(Sq, Sk, dtype=torch.bool, device=q.device).tril(Sk - Sq)
    visible = visible.expand(B, 1, Sq, Sk)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    scores = scores.masked_fill(~visible, float("-inf"))
    lse = torch.logsumexp(scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores, dim=-1)
    any_visible = visible.any(dim=-1, keepdim=True)
    # Rows with no visible key: softmax of all -inf is NaN; replace by zeros (where, not multiply,
    # so the gradient is zero as well).
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1)
    probs = torch.where(any_visible, probs, torch.zeros_like(probs))
    out = torch.matmul(probs, v)
    return out, lse
