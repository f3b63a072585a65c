"""Reference attention: the specification of gencore.ops.attention, in plain PyTorch.

Materialises the S_q x S_k score matrix (the fused kernels never do), in the input's dtype, or
in float32 for bfloat16/float16 inputs when `upcast=True`.

Semantics:
- layout (B, H, S, D); k and v may have H_kv heads with H % H_kv == 0 (grouped-query attention:
  query head h uses kv head h // (H // H_kv));
- scores s = scale * q k^T; with `softcap` c, s -> c * tanh(s / c) (before any mask);
- which keys a query sees, all conditions together ("the causal frame": query i sits at key
  position i + S_k - S_q, so the last query lines up with the last key):
  - `causal=True`: keys j <= i + S_k - S_q (bottom-right aligned);
  - `window=(left, right)`: keys i + S_k - S_q - left <= j <= i + S_k - S_q + right, a bound of
    -1 or None unbounded (FlashAttention's window_size);
  - `key_padding_mask` bool (B, S_k), True = ignore that key;
  - `document_ids` int (B, S) (S_q == S_k): only keys of the query's own document;
  - `attn_mask` bool (B or 1, H or 1, S_q, S_k), True = take part;
- rows that see no key give zeros (and zero gradients), never NaN;
- `dropout_p` p: the probabilities P (of the softmax over the visible keys) are multiplied by
  keep / (1 - p), keep[b, h, i, j] = uniform(b, h, i, j) >= p with the uniform drawn from Philox
  keyed by (seed, offset) at element index ((b H + h) S_q + i) S_k + j (`dropout_keep`; the same
  bits the fused kernels draw);
- `sinks` float32 (H,): attention sinks (gpt-oss's s_aux), one learned logit per query head
  that joins every row's softmax as one more column and is dropped from P afterwards (so a
  row's probabilities sum to 1 - P_sink; a row that sees no key gives zeros, its lse the sink);
- returns (out, lse) with lse the row logsumexp of the scaled, capped, masked scores (-inf when
  none, with a zero gradient; with sinks the sink counts in it); dropout does not enter lse. Both are differentiable: d lse / d
  scores = P (without dropout).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from .philox import random_bits, uniform_open01


def window_bounds(window) -> Tuple[int, int]:
    """(left, right) with -1 for an unbounded side, from None, (left, right), or None/-1 sides."""
    if window is None:
        return -1, -1
    left, right = window
    return (-1 if left is None else int(left)), (-1 if right is None else int(right))


def visible_keys(B: int, Sq: int, Sk: int, device, causal: bool = False,
                 key_padding_mask: Optional[torch.Tensor] = None, window=None,
                 document_ids: Optional[torch.Tensor] = None,
                 attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool (B, 1 or H, S_q, S_k): which keys each query sees (True = sees)."""
    pos = torch.arange(Sq, device=device)[:, None] + (Sk - Sq)  # query i in the causal frame
    j = torch.arange(Sk, device=device)[None, :]
    visible = torch.ones(Sq, Sk, dtype=torch.bool, device=device)
    left, right = window_bounds(window)
    if causal:
        visible &= j <= pos
    if left >= 0:
        visible &= j >= pos - left
    if right >= 0:
        visible &= j <= pos + right
    visible = visible.expand(B, 1, Sq, Sk)
    if key_padding_mask is not None:
        visible = visible & ~key_padding_mask[:, None, None, :]
    if document_ids is not None:
        visible = visible & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    if attn_mask is not None:
        visible = visible & attn_mask
    return visible


def dropout_keep(seed, offset, shape: Sequence[int], p: float, device) -> torch.Tensor:
    """Bool keep-mask of `shape` (B, H, S_q, S_k): Philox uniform of element index
    ((b H + h) S_q + i) S_k + j, keyed by (seed, offset), >= p (compared in float32)."""
    numel = math.prod(shape)
    u = uniform_open01(random_bits(numel, seed, offset, device)).reshape(shape)
    return u >= torch.tensor(p, dtype=torch.float32, device=device)


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                        key_padding_mask: Optional[torch.Tensor] = None,
                        scale: Optional[float] = None, *, dropout_p: float = 0.0,
                        seed_offset: Optional[torch.Tensor] = None, window=None,
                        softcap: Optional[float] = None,
                        document_ids: Optional[torch.Tensor] = None,
                        attn_mask: Optional[torch.Tensor] = None,
                        sinks: Optional[torch.Tensor] = None
                        ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse); seed_offset: int64 [seed, offset] (gencore.ops.rng), needed when dropout_p > 0."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if Hkv != H:
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    visible = visible_keys(B, Sq, Sk, q.device, causal, key_padding_mask, window, document_ids,
                           attn_mask)
    scores = scores.masked_fill(~visible, float("-inf"))
    any_visible = visible.any(dim=-1, keepdim=True)
    if sinks is not None:  # one more column per row: the head's sink logit, dropped after the softmax
        sink = sinks.to(scores.dtype).view(1, H, 1, 1).expand(B, H, Sq, 1)
        scores = torch.cat([scores, sink], dim=-1)
        any_visible = any_visible | (sink > float("-inf"))
    # lse of a row that sees no key is -inf; taken over zeros there (and put back with `where`) so
    # that its gradient is zero, not NaN.
    wide = scores.float() if scores.dtype in (torch.float16, torch.bfloat16) else scores
    lse = torch.logsumexp(wide.masked_fill(~any_visible, 0.0), dim=-1)
    lse = torch.where(any_visible[..., 0], lse, torch.full_like(lse, float("-inf")))
    # Rows with no visible key: softmax of all -inf is NaN; replace by zeros (where, not multiply,
    # so the gradient is zero as well).
    probs = torch.softmax(scores.masked_fill(~any_visible, 0.0), dim=-1)
    probs = torch.where(any_visible, probs, torch.zeros_like(probs))
    if sinks is not None:
        probs = probs[..., :Sk]
    if dropout_p > 0:
        if seed_offset is None:
            raise ValueError("attention_reference: dropout_p > 0 needs seed_offset")
        keep = dropout_keep(seed_offset[0], seed_offset[1], (B, H, Sq, Sk), dropout_p, q.device)
        probs = torch.where(keep, probs / (1.0 - dropout_p), torch.zeros_like(probs))
    out = torch.matmul(probs, v)
    return out, lse
