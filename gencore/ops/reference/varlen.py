"""Reference varlen attention: the specification of gencore.ops.varlen_attn, in plain PyTorch.

Packed sequences: query (T_q, H, D), key/value (T_k, H_kv, D), sequence n holding queries
[cu_q[n], cu_q[n+1]) and keys [cu_k[n], cu_k[n+1]). Query i of sequence n (l_q queries, l_k keys)
sees key j of the same sequence when, with pos = i + l_k - l_q (bottom-right aligned, as
FlashAttention's varlen kernels), pos - left <= j <= pos + right for the bounded sides of
window (left, right) (-1 unbounded; (-1, 0) is causal). Everything else is gencore.ops.attention's
reference on the packed (1, H, T_q, D) x (1, H_kv, T_k, D) view with that visibility as its
attn_mask: softcap, dropout (the Philox keep-mask at element (h T_q + t) T_k + u), rows that see no
key give zeros, sinks. Returns (out (T_q, H, D), lse (H, T_q)).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .attention import attention_reference


def varlen_mask(cu_q: torch.Tensor, cu_k: torch.Tensor, window=None, Tq: Optional[int] = None,
                Tk: Optional[int] = None) -> torch.Tensor:
    """Bool (T_q, T_k): which key each packed query sees (True = sees). T_q, T_k default to the
    cumulative lengths' last entries (a host read; pass them to avoid it)."""
    cu_q, cu_k = cu_q.to(torch.int64), cu_k.to(torch.int64)
    Tq = int(cu_q[-1]) if Tq is None else Tq
    Tk = int(cu_k[-1]) if Tk is None else Tk
    t = torch.arange(Tq, device=cu_q.device)
    u = torch.arange(Tk, device=cu_q.device)
    seq_q = torch.searchsorted(cu_q[1:], t, right=True)   # (T_q,) sequence of each query
    seq_k = torch.searchsorted(cu_k[1:], u, right=True)   # (T_k,)
    i = t - cu_q[seq_q]                                    # position in its sequence
    j = u - cu_k[seq_k]
    len_q = (cu_q[1:] - cu_q[:-1])[seq_q]
    len_k = (cu_k[1:] - cu_k[:-1])[seq_q]
    pos = (i + len_k - len_q)[:, None]
    visible = seq_q[:, None] == seq_k[None, :]
    if window is not None:
        left, right = window
        if left is not None and left >= 0:
            visible = visible & (j[None, :] >= pos - left)
        if right is not None and right >= 0:
            visible = visible & (j[None, :] <= pos + right)
    return visible


def varlen_reference(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     cu_seq_q: torch.Tensor, cu_seq_k: torch.Tensor, *,
                     scale: Optional[float] = None, window=None, softcap: Optional[float] = None,
                     dropout_p: float = 0.0, seed_offset: Optional[torch.Tensor] = None,
                     sinks: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))
    mask = varlen_mask(cu_seq_q, cu_seq_k, window, query.shape[0], key.shape[0])[None, None]
    out, lse = attention_reference(q4, k4, v4, False, None, scale, attn_mask=mask, softcap=softcap,
                                   dropout_p=dropout_p, seed_offset=seed_offset, sinks=sinks)
    return out[0].transpose(0, 1), lse[0]
