"""gencore.ops.varlen_attn: attention over packed sequences (padding-free training).

`torch.nn.attention.varlen.varlen_attn`'s signature and semantics (torch 2.13): query (T_q, H, D),
key/value (T_k, H_kv, D), the sequences delimited by cumulative lengths cu_seq_q, cu_seq_k
(int32, (N + 1,), starting at 0 and ending at T), each query seeing only the keys of its own
sequence; window_size (left, right) in FlashAttention's frame (per sequence, bottom-right aligned:
query i of a sequence of l_q queries and l_k keys sits at key i + l_k - l_q), -1 unbounded, so
(-1, 0) is causal; return_aux asks for the lse, which comes as (H, T_q) float32 (what torch's
kernels return; torch's docstring says (T_q, H)). torch's function runs on CUDA only (on the CPU
2.13 raises NotImplementedError); this one runs everywhere, and adds gencore's keyword features
(softcap, dropout with a generator, sinks).

The fused path is attention's own kernel on the packed view (1, H, T, D): with cu_seq_q equal to
cu_seq_k the sequences are its document_ids (contiguous runs: the kernel gives each row the key
interval of its document and skips every tile outside the documents, so nothing is padded to
max_q and the work is sum_n l_n^2, not T^2); with different query and key lengths the visibility
is a (T_q, T_k) bool attn_mask, whose empty 64 x 64 tiles the kernel skips too (O(T_q T_k) bits
of mask, the work still per sequence). The built-in under impl="auto" is PyTorch's SDPA on the
sequences padded to the longest, with the masks (bench case "varlen"); the reference
(reference/varlen.py) defines the semantics. Under torch.compile the lengths are not read on the
host (no graph break): the checks that need their values are skipped, and the call runs the
fused kernel (the reference without a compiled core).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _backend
from . import auto
from ._attention import _check_features, _check_sinks, attention
from .reference.attention import attention_reference
from .reference.varlen import varlen_mask, varlen_reference
from .rng import philox_seed_offset

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class VarlenInfo:
    """What a varlen call's validation learned from cu_seqlens, read once on the host: the
    lengths, whether queries and keys are split alike, the work (sum of l_q l_k)."""
    __slots__ = ("cu_q", "cu_k", "len_q", "len_k", "same", "pairs", "max_q", "max_k")

    def __init__(self, cu_q, cu_k, len_q, len_k, max_q, max_k):
        self.cu_q, self.cu_k, self.len_q, self.len_k = cu_q, cu_k, len_q, len_k
        self.same = len_q == len_k
        self.pairs = sum(a * b for a, b in zip(len_q or (), len_k or ()))
        self.max_q, self.max_k = max_q, max_k


def _wants_lse(return_aux) -> bool:
    if return_aux is None or return_aux is False:
        return False
    if return_aux is True:
        return True
    lse = getattr(return_aux, "lse", None)
    if lse is None:
        raise TypeError(f"varlen_attn: return_aux must be None, a bool, or an AuxRequest "
                        f"(torch.nn.attention.varlen.AuxRequest), got {return_aux!r}")
    return bool(lse)


def _check_cu(name: str, cu, total: int, max_len, max_name: str, device):
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"varlen_attn: {name} must be a torch.Tensor, got {type(cu).__name__}")
    if cu.dtype != torch.int32:
        raise TypeError(f"varlen_attn: {name} must be int32 (cumulative sequence lengths), got {cu.dtype}")
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"varlen_attn: {name} must be 1-d of N + 1 entries, got shape {tuple(cu.shape)}")
    if cu.device != device:
        raise ValueError(f"varlen_attn: {name} is on {cu.device}, query on {device}")
    values = cu.tolist()  # the host reads the lengths once (validation, the kernel's intervals)
    if values[0] != 0:
        raise ValueError(f"varlen_attn: {name} must start at 0, got {values[0]}")
    lengths = [b - a for a, b in zip(values[:-1], values[1:])]
    if any(n < 0 for n in lengths):
        bad = next(i for i, n in enumerate(lengths) if n < 0)
        raise ValueError(f"varlen_attn: {name} must be non-decreasing, got {values[bad]} then "
                         f"{values[bad + 1]} at entries {bad}, {bad + 1}")
    if values[-1] != total:
        raise ValueError(f"varlen_attn: {name} ends at {values[-1]} but the packed tensor has "
                         f"{total} tokens (T must equal {name}[-1])")
    if isinstance(max_len, torch.Tensor) or isinstance(max_len, bool) or not isinstance(max_len, numbers.Integral):
        raise TypeError(f"varlen_attn: {max_name} must be an int, got {type(max_len).__name__}")
    longest = max(lengths, default=0)
    if max_len < longest:
        raise ValueError(f"varlen_attn: {max_name}={max_len} is smaller than the longest sequence "
                         f"in {name} ({longest})")
    return lengths


def _check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, enable_gqa, window_size):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"varlen_attn: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 3:
            raise ValueError(f"varlen_attn: {name} must be 3-d (total tokens, heads, head_dim), got "
                             f"shape {tuple(t.shape)}")
    if query.dtype not in _FLOATING:
        raise TypeError(f"varlen_attn: query must be float32, float64, bfloat16 or float16, got {query.dtype}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(f"varlen_attn: query, key, value must share one dtype, got {query.dtype}, "
                        f"{key.dtype}, {value.dtype}")
    if not (query.device == key.device == value.device):
        raise ValueError(f"varlen_attn: query, key, value must be on one device, got {query.device}, "
                         f"{key.device}, {value.device}")
    (Tq, H, D), (Tk, Hkv, Dk) = query.shape, key.shape
    if tuple(value.shape) != (Tk, Hkv, value.shape[2]) or Dk != D or value.shape[2] != D:
        raise ValueError(f"varlen_attn: key {tuple(key.shape)} and value {tuple(value.shape)} must "
                         f"have one shape, with query's head dim {D}")
    # torch's own messages for the head counts
    if not enable_gqa and H != Hkv:
        raise ValueError(f"Expect query and key/value to have the same number of heads but got "
                         f"Hq={H} and Hkv={Hkv}. Try setting enable_gqa=True for GQA.")
    if enable_gqa and (Hkv == 0 or H % Hkv != 0):
        raise ValueError(f"Expect number of query heads to be a multiple of kv heads for GQA but got "
                         f"Hq={H} and Hkv={Hkv}.")
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"window_size must have length 2, got {window_size!r}")
    for side in window_size:
        if isinstance(side, bool) or not isinstance(side, numbers.Integral) or side < -1:
            raise ValueError(f"varlen_attn: window_size sides must be ints >= -1 (-1 unbounded), got "
                             f"{tuple(window_size)!r}")
    if cu_seq_k is None:
        raise ValueError("varlen_attn: cu_seq_k is required (seqused_k / block_table, torch's "
                         "inference-only paged KV cache, is not supported)")
    if torch.compiler.is_compiling():  # no host read of the lengths inside a graph
        for name, cu in (("cu_seq_q", cu_seq_q), ("cu_seq_k", cu_seq_k)):
            if not isinstance(cu, torch.Tensor) or cu.dtype != torch.int32 or cu.dim() != 1:
                raise TypeError(f"varlen_attn: {name} must be a 1-d int32 tensor")
        info = VarlenInfo(cu_seq_q, cu_seq_k, None, None, int(max_q), int(max_k))
        info.same, info.pairs = cu_seq_q is cu_seq_k, Tq * Tk
        return info
    len_q = _check_cu("cu_seq_q", cu_seq_q, Tq, max_q, "max_q", query.device)
    len_k = _check_cu("cu_seq_k", cu_seq_k, Tk, max_k, "max_k", query.device)
    if len(len_q) != len(len_k):
        raise ValueError(f"varlen_attn: cu_seq_q and cu_seq_k must have the same number of entries "
                         f"(N + 1), got {len(len_q) + 1} and {len(len_k) + 1}")
    return VarlenInfo(cu_seq_q, cu_seq_k, len_q, len_k, int(max_q), int(max_k))


def varlen_attn(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                cu_seq_q: torch.Tensor, cu_seq_k: torch.Tensor, max_q: int, max_k: int, *,
                return_aux=None, scale: Optional[float] = None,
                window_size: Tuple[int, int] = (-1, -1), enable_gqa: bool = False,
                softcap: Optional[float] = None, dropout_p: float = 0.0,
                generator: Optional[torch.Generator] = None,
                sinks: Optional[torch.Tensor] = None, impl: str = "auto"):
    """Attention over packed variable-length sequences, `torch.nn.attention.varlen.varlen_attn`'s
    signature and semantics.

    Args:
        query: (T_q, H, D); key, value: (T_k, H_kv, D), H_kv == H unless enable_gqa (then H %
            H_kv == 0). Any strides. float32, bfloat16, float16 (float32 accumulation), float64.
        cu_seq_q, cu_seq_k: int32 (N + 1,) cumulative lengths, 0 first, T_q / T_k last,
            non-decreasing (an empty sequence is allowed); on query's device.
        max_q, max_k: at least the longest query / key sequence (torch's kernels size their grids
            by them; here they are checked and otherwise unused).
        return_aux: torch's AuxRequest(lse=True) (or True) also returns the lse, (H, T_q) float32
            (float64 for float64 inputs), -inf for queries that see no key (their output is 0).
            Differentiable (torch's own ignores the lse's gradient).
        scale: multiplies q k^T; default 1 / sqrt(D).
        window_size: (left, right) per sequence, bottom-right aligned; -1 unbounded; (-1, 0) causal.
        enable_gqa: allow fewer key/value heads.
        softcap, dropout_p, generator, sinks: gencore's features, as `gencore.ops.attention`
            defines them (dropout's Philox keep-mask indexed on the packed (1, H, T_q, T_k) view).
        impl: "auto" (fused where auto's evidence shows it faster than the built-in: SDPA on the
            sequences padded per sequence with masks), "fused", "reference", or "sdpa" (that
            built-in).

    Returns (T_q, H, D) in query's dtype, or (out, lse) with return_aux.
    """
    want_lse = _wants_lse(return_aux)
    info = _check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, enable_gqa, window_size)
    Tq, H, D = query.shape
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (query, key, value))  # (1, H, T, D) views
    left, right = int(window_size[0]), int(window_size[1])
    window = None if left < 0 and right < 0 else (left, right)
    dropout_p, _, softcap = _check_features(q4, q4, dropout_p, window, softcap, None, None)
    if sinks is not None:
        _check_sinks(sinks, H, query.device)
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    elif isinstance(scale, torch.Tensor) or not math.isfinite(scale):
        raise ValueError(f"varlen_attn: scale must be a finite Python number, got {scale!r}")
    scale = float(scale)

    choice = auto.choose("attention", impl, query.device.type, q=q4, k=k4, causal=False,
                         dropout_p=dropout_p, window=window, softcap=softcap, varlen=info,
                         **({"sinks": sinks} if sinks is not None else {}))
    if (want_lse or info.len_q is None) and choice == auto.BUILTIN and impl == "auto":
        choice = auto.FUSED if _backend.has_kernel("attention", query.device.type) else auto.REFERENCE
    if choice == auto.BUILTIN:
        if want_lse:
            raise ValueError("varlen_attn: return_aux with lse needs impl='auto', 'fused' or 'reference'")
        return varlen_builtin(query, key, value, info, scale=scale, window=window, softcap=softcap,
                              dropout_p=dropout_p, generator=generator, sinks=sinks)
    if choice == auto.REFERENCE:
        out, lse = varlen_reference(query, key, value, cu_seq_q, cu_seq_k, scale=scale, window=window,
                                    softcap=softcap, dropout_p=dropout_p, sinks=sinks,
                                    seed_offset=philox_seed_offset(generator) if dropout_p > 0 else None)
        return (out, lse) if want_lse else out
    kw = dict(scale=scale, window=window, softcap=softcap, dropout_p=dropout_p, generator=generator,
              return_lse=True, impl="fused")
    if sinks is not None:
        kw["sinks"] = sinks
    if info.same:  # equal lengths: the per-sequence window frame is the packed one
        out4, lse4 = attention(q4, k4, v4, document_ids=document_ids_of(cu_seq_q, Tq), **kw)
    else:
        kw["window"] = None  # the window lives in the mask, in each sequence's own frame
        mask = varlen_mask(cu_seq_q, cu_seq_k, window, Tq, k4.shape[2])
        out4, lse4 = attention(q4, k4, v4, attn_mask=mask[None, None], **kw)
    out = out4[0].transpose(0, 1)  # (T_q, H, D), a view of the kernel's (1, H, T_q, D)
    return (out, lse4[0]) if want_lse else out


def document_ids_of(cu: torch.Tensor, total: int) -> torch.Tensor:
    """(1, T) int64 sequence index of each token, from cumulative lengths."""
    pos = torch.arange(total, device=cu.device)
    return torch.searchsorted(cu[1:].to(torch.int64), pos, right=True)[None, :]


# -- the built-in: SDPA on the sequences padded to the longest -------------------------------------

def _pad_index(lengths, longest, device):
    """(N, longest) token index of each slot (0 for padding) and the slots' validity."""
    n = len(lengths)
    starts = torch.tensor([0] + lengths, dtype=torch.int64).cumsum(0)[:-1]
    slot = torch.arange(longest, dtype=torch.int64)
    valid = slot[None, :] < torch.tensor(lengths, dtype=torch.int64)[:, None]
    index = torch.where(valid, starts[:, None] + slot[None, :], torch.zeros(()).long())
    return index.to(device), valid.to(device)


def varlen_builtin(query, key, value, info: VarlenInfo, *, scale, window=None, softcap=None,
                   dropout_p=0.0, generator=None, sinks=None):
    """varlen_attn's semantics on PyTorch's SDPA, each sequence padded to the longest: (N, H,
    max l_q, D) with a bool mask of the per-sequence window and the key padding; rows that see no
    key give zeros. With softcap or sinks (no built-in has them) the padded batch runs gencore's
    attention_reference instead. Dropout is SDPA's own (torch's RNG)."""
    H, Hkv = query.shape[1], key.shape[1]
    N = len(info.len_q)
    if N == 0:
        return query.new_zeros(query.shape)
    lq, lk = max(info.len_q, default=0), max(info.len_k, default=0)
    iq, vq = _pad_index(info.len_q, lq, query.device)
    ik, vk = _pad_index(info.len_k, lk, query.device)
    pq = query[iq].transpose(1, 2)                              # (N, H, lq, D)
    pk, pv = (t[ik].transpose(1, 2) for t in (key, value))      # (N, Hkv, lk, D)
    Lq = torch.tensor(info.len_q, device=query.device)[:, None, None]
    Lk = torch.tensor(info.len_k, device=query.device)[:, None, None]
    i = torch.arange(lq, device=query.device)[None, :, None]
    j = torch.arange(lk, device=query.device)[None, None, :]
    pos = i + Lk - Lq                                           # query i in its sequence's frame
    visible = vk[:, None, :] & vq[:, :, None]                   # (N, lq, lk)
    if window is not None:
        left, right = window
        if left >= 0:
            visible = visible & (j >= pos - left)
        if right >= 0:
            visible = visible & (j <= pos + right)
    visible = visible[:, None]                                  # (N, 1, lq, lk)
    seen = visible.any(-1, keepdim=True)
    if softcap is not None or sinks is not None:
        seed_offset = philox_seed_offset(generator) if dropout_p > 0 else None
        y = attention_reference(pq, pk, pv, False, None, scale, attn_mask=visible, softcap=softcap,
                                dropout_p=dropout_p, seed_offset=seed_offset,
                                **({"sinks": sinks} if sinks is not None else {}))[0]
    else:
        if Hkv != H:
            pk, pv = (t.repeat_interleave(H // Hkv, dim=1) for t in (pk, pv))
        if info.same and window == (-1, 0):
            # causal with equal lengths: a real query never reaches a padded key (they come after
            # it), so SDPA's own is_causal (its fast path) needs no mask; padded rows are dropped
            y = F.scaled_dot_product_attention(pq, pk, pv, is_causal=True, dropout_p=dropout_p, scale=scale)
        else:
            y = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=visible | ~seen, dropout_p=dropout_p,
                                               scale=scale)
            y = torch.where(seen, y, torch.zeros_like(y))
    # back to the packed tokens: the valid slots in order are the tokens in order
    return y.transpose(1, 2)[vq]                                # (T_q, H, D)


def varlen_calls(q4, k4, info: VarlenInfo, *, window=None, softcap=None, dropout_p=0.0, train=False,
                 sinks=None):
    """auto's timing calls for a varlen case (ops/_attention.py's _auto_calls): fresh random packed
    tensors of the call's shapes, fused against the padded-SDPA built-in, forward under no_grad
    or forward+backward."""
    dev, dtype = q4.device, q4.dtype
    (_, H, Tq, D), (_, Hkv, Tk, _) = q4.shape, k4.shape
    q, dout = (torch.randn(Tq, H, D, device=dev).to(dtype) for _ in range(2))
    k, v = (torch.randn(Tk, Hkv, D, device=dev).to(dtype) for _ in range(2))
    kw = dict(window_size=window or (-1, -1), enable_gqa=Hkv != H, softcap=softcap, dropout_p=dropout_p,
              sinks=sinks)
    args = (info.cu_q, info.cu_k, info.max_q, info.max_k)

    def make(impl):
        if not train:
            def call():
                with torch.no_grad():
                    varlen_attn(q, k, v, *args, impl=impl, **kw)
            return call
        leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]

        def call():
            for t in leaves:
                t.grad = None
            varlen_attn(*leaves, *args, impl=impl, **kw).backward(dout)
        return call
    return {"fused": make("fused"), "builtin": make("sdpa")}
