"""gencore.nn.MultiHeadAttention: multi-head self-attention built on gencore.ops.attention.

    mha = MultiHeadAttention(embed_dim=256, n_heads=8, n_kv_heads=2, rotary=True)
    y = mha(x)                                   # x (B, S, E) -> (B, S, E), causal by default

Incremental decoding with a KV cache (one cache object per layer, updated in place):

    cache = KVCache()
    y = mha(prompt, cache=cache)                 # fills the cache with the prompt's keys/values
    y = mha(next_token, cache=cache)             # (B, 1, E): attends to every cached key

With a cache the causal mask is aligned bottom-right (gencore.ops.attention's convention), so new
queries see all cached keys plus the new keys up to their own position, and rotary positions
continue from `cache.length`.

`impl="sdpa"` runs the same attention through PyTorch's `F.scaled_dot_product_attention` (same
masks, GQA and fully-masked-row semantics): the "built-in ops" baseline of the benchmarks.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..ops._attention import attention

IMPLS = ("auto", "fused", "reference", "sdpa")


class KVCache:
    """Keys/values of the tokens seen so far, for one attention layer.

    `k`, `v` are views (B, H_kv, length, D) of buffers that grow by doubling, so appending one
    token costs O(1) amortised copies; keys are stored after the rotary embedding.
    `transposed_keys`: lay the key buffer out as (B, H_kv, D, capacity), so that a decoding step,
    which reads the same coordinate of many keys, loads them as one vector in gencore's CPU kernel
    instead of transposing; None (default) = on CPU only. `F.scaled_dot_product_attention` reads
    untransposed keys fastest (`MultiHeadAttention.new_cache()` picks per impl). `mask` is the key
    padding mask (B, length) when any step passed one (True = ignore), else None.
    Call `reset()` (or make a new cache) to start a new sequence.
    """

    def __init__(self, transposed_keys: Optional[bool] = None) -> None:
        self.transposed_keys = transposed_keys
        self._k: Optional[torch.Tensor] = None
        self._v: Optional[torch.Tensor] = None
        self._mask: Optional[torch.Tensor] = None
        self.length = 0

    def reset(self) -> None:
        self.__init__(self.transposed_keys)

    @property
    def k(self) -> Optional[torch.Tensor]:
        return None if self._k is None else self._k[:, :, : self.length]

    @property
    def v(self) -> Optional[torch.Tensor]:
        return None if self._v is None else self._v[:, :, : self.length]

    @property
    def mask(self) -> Optional[torch.Tensor]:
        return None if self._mask is None else self._mask[:, : self.length]

    def append(self, k: torch.Tensor, v: torch.Tensor,
               mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Adds (B, H_kv, S, D) keys/values (and their (B, S) padding mask); returns all of them."""
        B, Hkv, S, D = k.shape
        new_len = self.length + S
        if self._k is None or new_len > self._k.shape[2]:
            cap = max(new_len, 2 * (0 if self._k is None else self._k.shape[2]), 16)
            # (B, H_kv, cap, D) either way; transposed: memory laid out as (B, H_kv, D, cap).
            transposed = (k.device.type == "cpu" if self.transposed_keys is None
                          else self.transposed_keys)
            kb = (k.new_zeros(B, Hkv, D, cap).transpose(2, 3) if transposed
                  else k.new_zeros(B, Hkv, cap, D))
            vb = v.new_zeros(B, Hkv, cap, D)
            if self._k is not None:
                kb[:, :, : self.length] = self.k
                vb[:, :, : self.length] = self.v
            self._k, self._v = kb, vb
            if self._mask is not None:
                mb = self._mask.new_zeros(B, cap)
                mb[:, : self.length] = self.mask
                self._mask = mb
        if mask is not None and self._mask is None:
            self._mask = torch.zeros(B, self._k.shape[2], dtype=torch.bool, device=k.device)
        self._k[:, :, self.length:new_len] = k
        self._v[:, :, self.length:new_len] = v
        if self._mask is not None:
            self._mask[:, self.length:new_len] = mask if mask is not None else False
        self.length = new_len
        return self.k, self.v, self.mask


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoPE, rotate-half form) on the head dim (must be even)."""

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"RotaryEmbedding: head_dim must be even, got {head_dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x (B, H, S, D) at positions offset .. offset + S - 1."""
        S, D = x.shape[2], x.shape[3]
        pos = torch.arange(offset, offset + S, device=x.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq)
        cos = freqs.cos().repeat(1, 2).to(x.dtype)
        sin = freqs.sin()
        # rotate_half(x) * sin = (x2, x1) * (-sin, sin): the signs live in the table, so the
        # whole rotation is three kernels (roll, mul, addcmul).
        signed_sin = torch.cat((-sin, sin), dim=-1).to(x.dtype)
        return torch.addcmul(x * cos, x.roll(D // 2, dims=-1), signed_sin)


def _rms_norm(x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
    """`norm(x)` with the gain cast to x's dtype: under bf16 autocast the projections give bf16
    queries and keys, and a float32 gain would send RMSNorm to its unfused path (with a warning)."""
    return F.rms_norm(x, norm.normalized_shape, norm.weight.to(x.dtype), norm.eps)


class MultiHeadAttention(nn.Module):
    """Self-attention: fused QKV projection, gencore.ops.attention, output projection, dropout.

    Args:
        embed_dim: model width E (a multiple of n_heads).
        n_heads: query heads H; head_dim = E // H.
        n_kv_heads: key/value heads (grouped-query attention), dividing n_heads; default n_heads.
        rotary: apply rotary position embeddings to queries and keys.
        rotary_base: RoPE base frequency.
        qk_norm: RMS-normalise each head's queries and keys (learned gain per coordinate, shared
            across heads) before the rotary embedding, so the attention logits cannot grow
            without bound; lets training run at higher learning rates.
        dropout: dropout probability on the output (after the projection).
        attn_dropout: dropout probability on the attention probabilities, in training mode only
            (gencore.ops.attention's dropout_p: the fused kernels draw the keep-mask from Philox,
            torch's default generator gives the seed, so `torch.manual_seed` repeats it).
        window: (left, right) sliding window of keys each query sees (gencore.ops.attention's
            `window`; e.g. (4095, 0) with causal for Mistral's 4096-token window).
        softcap: soft-cap on the scores, softcap * tanh(scores / softcap) (Gemma-2).
        bias: biases in the projections.
        impl: passed to gencore.ops.attention: "auto", "fused", "reference", or "sdpa" for
            PyTorch's `F.scaled_dot_product_attention` with the same semantics.
    """

    def __init__(self, embed_dim: int, n_heads: int, n_kv_heads: Optional[int] = None,
                 rotary: bool = False, rotary_base: float = 10000.0, dropout: float = 0.0,
                 bias: bool = False, impl: str = "auto", qk_norm: bool = False,
                 attn_dropout: float = 0.0, window: Optional[Tuple[Optional[int], Optional[int]]] = None,
                 softcap: Optional[float] = None) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if embed_dim % n_heads:
            raise ValueError(f"MultiHeadAttention: embed_dim {embed_dim} is not a multiple of n_heads {n_heads}")
        if n_kv_heads <= 0 or n_heads % n_kv_heads:
            raise ValueError(f"MultiHeadAttention: n_heads {n_heads} is not a multiple of n_kv_heads {n_kv_heads}")
        if impl not in IMPLS:
            raise ValueError(f"MultiHeadAttention: impl must be one of {list(IMPLS)}, got {impl!r}")
        self.embed_dim, self.n_heads, self.n_kv_heads = embed_dim, n_heads, n_kv_heads
        self.head_dim = embed_dim // n_heads
        self.impl = impl
        if not 0.0 <= attn_dropout < 1.0:
            raise ValueError(f"MultiHeadAttention: attn_dropout must be in [0, 1), got {attn_dropout!r}")
        # window and softcap are checked by the op on the first call, with its messages
        self.attn_dropout, self.window, self.softcap = float(attn_dropout), window, softcap
        self.qkv = nn.Linear(embed_dim, (n_heads + 2 * n_kv_heads) * self.head_dim, bias=bias)
        self.out = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.rotary = RotaryEmbedding(self.head_dim, rotary_base) if rotary else None
        self.q_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = nn.RMSNorm(self.head_dim) if qk_norm else None
        self.dropout = nn.Dropout(dropout)

    def new_cache(self) -> KVCache:
        """An empty KVCache in the key layout this layer's attention reads fastest."""
        return KVCache(transposed_keys=False if self.impl == "sdpa" else None)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
                causal: bool = True, cache: Optional[KVCache] = None) -> torch.Tensor:
        """x (B, S, E) -> (B, S, E).

        key_padding_mask: bool (B, S) for the tokens of `x`, True = padding (ignored as a key).
            With a cache it is appended to the cache's mask, so padding from earlier steps stays
            masked.
        causal: bottom-right aligned causal mask (with a cache: new tokens see every cached one).
        cache: a KVCache updated in place with this step's keys/values.
        """
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiHeadAttention: x must be (batch, seq, {self.embed_dim}), got {tuple(x.shape)}")
        B, S, _ = x.shape
        H, Hkv, D = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)
        # Views of the fused projection, (B, heads, S, D) with non-contiguous strides.
        q = qkv[..., : H * D].unflatten(-1, (H, D)).transpose(1, 2)
        k = qkv[..., H * D:(H + Hkv) * D].unflatten(-1, (Hkv, D)).transpose(1, 2)
        v = qkv[..., (H + Hkv) * D:].unflatten(-1, (Hkv, D)).transpose(1, 2)
        offset = cache.length if cache is not None else 0
        if self.q_norm is not None:
            q, k = _rms_norm(q, self.q_norm), _rms_norm(k, self.k_norm)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        mask = key_padding_mask
        if cache is not None:
            k, v, mask = cache.append(k, v, key_padding_mask)
        y = attention(q, k, v, causal=causal, key_padding_mask=mask, impl=self.impl,
                      dropout_p=self.attn_dropout if self.training else 0.0,
                      window=self.window, softcap=self.softcap)
        y = y.transpose(1, 2).reshape(B, S, H * D)
        return self.dropout(self.out(y))
