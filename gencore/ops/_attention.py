"""gencore.ops.attention: fused flash-style scaled dot-product attention.

Layout (B, H, S, D) as `torch.nn.functional.scaled_dot_product_attention`. The fused kernels
(csrc/cpu/attention.cpp, csrc/cuda/attention_mma_kernels.cu) run the online softmax over key tiles and never
form the S_q x S_k score matrix, forward or backward (memory O(S*D)); the backward recomputes the
scores from the saved row logsumexp (and the dropout keep-mask from its Philox counters). Tiles
that a window, the documents or a mask leave empty are skipped. The reference
(reference/attention.py) defines the semantics; `attention_sdpa` gives the same semantics on
PyTorch's `F.scaled_dot_product_attention`, which impl="auto" runs where the fused kernel is not
the faster one (ops/auto.py).

`scaled_dot_product_attention` is the drop-in for `F.scaled_dot_product_attention`: its signature
and semantics, the fused kernel where it covers the call and the auto table picks it, torch's own
function otherwise.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import _backend
from . import auto
from .reference.attention import attention_reference, visible_keys, window_bounds
from .rng import philox_seed_offset

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# What the CUDA kernel runs (csrc/cuda/attention_mma_kernels.cu: tensor cores, sm_80+); impl="fused"
# on CUDA raises a clear error for any other case, and impl="auto" sends those to SDPA.
CUDA_KERNEL_DTYPES = (torch.bfloat16, torch.float16)
CUDA_KERNEL_HEAD_DIMS = (64, 96, 128)


def cuda_kernel_covers(dtype: torch.dtype, head_dim: int) -> bool:
    """Whether gencore's CUDA attention kernel runs this dtype and head dim (on an sm_80+ GPU)."""
    return dtype in CUDA_KERNEL_DTYPES and head_dim in CUDA_KERNEL_HEAD_DIMS

_INTEGER = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


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


def _check_features(q, k, dropout_p, window, softcap, document_ids, attn_mask):
    """Checks the keyword features; returns (dropout_p, (left, right), softcap or None)."""
    (B, H, Sq, _), Sk = q.shape, k.shape[2]
    if isinstance(dropout_p, torch.Tensor) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"attention: dropout_p must be a Python number, got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be in [0, 1), got {dropout_p}")
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError(f"attention: window must be None or a pair (left, right), got {window!r}")
        for side in window:
            if side is not None and (isinstance(side, bool) or not isinstance(side, numbers.Integral)):
                raise TypeError(f"attention: window sides must be ints or None, got {window!r}")
            if side is not None and side < -1:
                raise ValueError(f"attention: window sides must be >= 0, or -1/None for unbounded, got {window!r}")
    left, right = window_bounds(window)
    if softcap is not None:
        if isinstance(softcap, torch.Tensor) or not isinstance(softcap, numbers.Real):
            raise TypeError(f"attention: softcap must be a Python number or None, got {type(softcap).__name__}")
        if not (softcap > 0 and math.isfinite(softcap)):
            raise ValueError(f"attention: softcap must be a finite number > 0, got {softcap}")
        softcap = float(softcap)
    if document_ids is not None:
        if not isinstance(document_ids, torch.Tensor) or document_ids.dtype not in _INTEGER:
            what = document_ids.dtype if isinstance(document_ids, torch.Tensor) else type(document_ids).__name__
            raise TypeError(f"attention: document_ids must be an integer tensor, got {what}")
        if Sq != Sk:
            raise ValueError(f"attention: document_ids needs S_q == S_k (packed self-attention), got "
                             f"S_q {Sq}, S_k {Sk}")
        if tuple(document_ids.shape) != (B, Sk):
            raise ValueError(f"attention: document_ids must have shape (batch, S) = ({B}, {Sk}), got "
                             f"{tuple(document_ids.shape)}")
        if document_ids.device != q.device:
            raise ValueError(f"attention: document_ids is on {document_ids.device}, q on {q.device}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
            what = attn_mask.dtype if isinstance(attn_mask, torch.Tensor) else type(attn_mask).__name__
            raise TypeError(f"attention: attn_mask must be a bool tensor (True = take part), got {what}")
        shape = tuple(attn_mask.shape)
        if (len(shape) != 4 or shape[0] not in (1, B) or shape[1] not in (1, H)
                or shape[2:] != (Sq, Sk)):
            raise ValueError(f"attention: attn_mask must have shape (batch or 1, heads or 1, S_q, S_k) "
                             f"= ({B} or 1, {H} or 1, {Sq}, {Sk}), got {shape}")
        if attn_mask.device != q.device:
            raise ValueError(f"attention: attn_mask is on {attn_mask.device}, q on {q.device}")
    return float(dropout_p), (left, right), softcap


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
              key_padding_mask: Optional[torch.Tensor] = None, scale: Optional[float] = None, *,
              dropout_p: float = 0.0, window: Optional[Tuple[Optional[int], Optional[int]]] = None,
              softcap: Optional[float] = None, document_ids: Optional[torch.Tensor] = None,
              attn_mask: Optional[torch.Tensor] = None,
              generator: Optional[torch.Generator] = None, return_lse: bool = False,
              sinks: Optional[torch.Tensor] = None, impl: str = "auto"):
    """softmax(scale * q k^T + mask) v, flash-style.

    Args:
        q: (B, H, S_q, D); k, v: (B, H_kv, S_k, D) with H % H_kv == 0 (grouped-query attention:
            query head h reads kv head h // (H // H_kv)). Any strides (views of a fused QKV
            projection are fine). float32, bfloat16, float16 (float32 accumulation), float64.
        causal: mask aligned bottom-right: query i sees keys j <= i + S_k - S_q (so with a KV
            cache the last query sees every key; with S_q == S_k it is the usual lower triangle).
        key_padding_mask: bool (B, S_k), True = ignore that key.
        scale: multiplies q k^T; default 1 / sqrt(D).
        dropout_p: dropout on the attention probabilities (kept ones scaled by 1 / (1 - p)), in
            [0, 1). The keep-mask comes from Philox keyed by (seed, offset, b, h, i, j), the seed
            drawn from `generator` (default: torch's default generator, so `torch.manual_seed`
            repeats it): the same mask in the reference and the fused kernels. Under impl="auto"
            a case the table sends to the built-in runs SDPA's own dropout (torch's RNG: another
            mask, the same distribution).
        window: (left, right): query i sees keys i + S_k - S_q - left <= j <= i + S_k - S_q + right
            (the causal frame); -1 or None leaves a side unbounded (FlashAttention's window_size).
        softcap: scores become softcap * tanh(scores / softcap) (after `scale`) before the softmax.
        document_ids: integer (B, S) for packed sequences (S_q == S_k): a query sees only keys of
            its own document (with causal: the causal mask within each document). See
            `document_ids_from_cu_seqlens` for FlashAttention's cumulative-lengths form.
        attn_mask: bool (B or 1, H or 1, S_q, S_k), True = take part (SDPA's convention; note that
            key_padding_mask's True means ignore).
        generator: the torch generator for dropout's seed.
        sinks: attention sinks (gpt-oss's s_aux): a float32 (H,) tensor, one logit per query
            head that joins every row's softmax as one more column with no value, so a row's
            probabilities over the keys sum to 1 - P_sink. Trainable: its gradient comes out of
            the backward (-sum over rows of P_sink (rowsum(dO * out) - grad_lse)). With sinks the
            lse counts the sink, and a row that sees no key has lse = its sink (out still 0).
        return_lse: also return the row log-sum-exp of the scores (what chunked attention and
            context parallelism combine partial results by): (out, lse), lse (B, H, S_q) float32
            (float64 for float64 inputs), -inf for rows that see no key. Differentiable: its
            gradient (d lse / d scores = P, dropout not entering it) joins the backward. No
            built-in returns it, so impl="auto" runs the fused kernel (the reference where none
            is built) for such calls.
        impl: "auto" (the fused kernel where it is measured faster than SDPA for this device and
            case, else SDPA: see gencore/ops/auto.py), "fused", "reference", or "sdpa" (PyTorch's
            `F.scaled_dot_product_attention` with gencore's semantics; no built-in caps scores, so
            softcap there runs the reference's composed ops).

    Returns (B, H, S_q, D) in q's dtype (with return_lse, (out, lse)). Rows that see no key (all
    keys masked, or causal with S_q > S_k) are zeros and get zero gradients.
    """
    if (impl == "auto" and not return_lse and sinks is None and key_padding_mask is scale is window is softcap is document_ids is attn_mask is None
            and not dropout_p and not _is_compiling()):
        out = _fast_path(q, k, v, causal)
        if out is None:  # the first call of this shape: ask auto once
            _FAST.remember(q, k, v, causal, _fast_verdict(q, k, causal))
            out = _fast_path(q, k, v, causal)
        if out is not False:  # SDPA's own checks stood in for ours: the same call would pass them
            return out
    scale = _check(q, k, v, key_padding_mask, scale)
    causal = bool(causal)
    dropout_p, (left, right), softcap = _check_features(q, k, dropout_p, window, softcap,
                                                        document_ids, attn_mask)
    window = None if left < 0 and right < 0 else (left, right)
    features = dict(dropout_p=dropout_p, window=window, softcap=softcap,
                    document_ids=document_ids, attn_mask=attn_mask)
    if sinks is not None:
        _check_sinks(sinks, q.shape[1], q.device)
        features["sinks"] = sinks
    if return_lse and impl == "auto":  # no built-in gives the lse: the kernel where there is one
        impl = "fused" if _backend.has_kernel("attention", q.device.type) else "reference"
    choice = auto.choose("attention", impl, q.device.type, q=q, k=k, causal=causal,
                         key_padding_mask=key_padding_mask, **features)
    if choice == auto.BUILTIN:
        if return_lse:
            raise ValueError("attention: return_lse=True needs impl='auto', 'fused' or 'reference' "
                             "(PyTorch's SDPA does not return the lse)")
        return attention_sdpa(q, k, v, causal, key_padding_mask, scale, generator=generator, **features)
    seed_offset = philox_seed_offset(generator, q.device) if dropout_p > 0 else None
    if choice == auto.FUSED:
        out_lse = torch.ops.gencore.attention(
            q, k, v, key_padding_mask, causal, scale, left, right,
            0.0 if softcap is None else softcap, document_ids, attn_mask, dropout_p, seed_offset, sinks)
    else:
        out_lse = attention_reference(q, k, v, causal, key_padding_mask, scale,
                                      seed_offset=seed_offset, **features)
    return tuple(out_lse) if return_lse else out_lse[0]


class _PythonFastPath:
    """The fast path's memo where no _C is built: auto's verdict per call shape, in a dict (the
    compiled twin, csrc/attention_fast_path.cpp, keeps the same verdicts by the same key)."""

    def __init__(self):
        self._memo: dict = {}

    @staticmethod
    def _key(q, k, v, causal):
        if (not type(q) is type(k) is type(v) is torch.Tensor or torch._C._is_torch_function_mode_enabled()
                or q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or (causal is not True and causal is not False)
                or q.shape[3] != k.shape[3] or v.shape[:3] != k.shape[:3]
                or not q.dtype == k.dtype == v.dtype or not q.device == k.device == v.device):
            return None  # the checked path: SDPA on the CPU lets a v with fewer keys than k run
        trains = (q.requires_grad or k.requires_grad or v.requires_grad) and torch.is_grad_enabled()
        return q.shape, k.shape, q.dtype, q.device, causal, trains

    def call(self, q, k, v, causal):
        key = self._key(q, k, v, causal)
        verdict = None if key is None else self._memo.get(key)
        if verdict is None:
            return False if key is None else None
        return F.scaled_dot_product_attention(q, k, v, is_causal=verdict == _SDPA_CAUSAL) if verdict else False

    def remember(self, q, k, v, causal, verdict):
        key = self._key(q, k, v, causal)
        if key is not None:
            if len(self._memo) >= 4096:  # a long generation makes a shape per step
                self._memo.clear()
            self._memo[key] = verdict

    def clear(self):
        self._memo.clear()


class _CompiledFastPath:
    def __init__(self, core):
        self.call, self.remember, self.clear = (
            core.attention_fast_path, core.attention_fast_path_remember, core.attention_fast_path_clear)


# impl="auto"'s fast path for calls with no mask, feature or scale: a memo of auto's verdict per
# call shape (q and k shapes, dtype, device, causal, whether autograd records it), forgotten with
# auto's decisions. At a decoding step of a few microseconds, a key built in Python would cost
# more than the 5% the promise allows, so where _C is built the memo lives in C++.
_CHECKED, _SDPA, _SDPA_CAUSAL = 0, 1, 2  # the verdicts (csrc/attention_fast_path.h)
_core = _backend.load()
_FAST = _CompiledFastPath(_core) if _core is not None else _PythonFastPath()
_fast_path, _is_compiling = _FAST.call, torch.compiler.is_compiling


def _fast_verdict(q: torch.Tensor, k: torch.Tensor, causal) -> int:
    """SDPA (with or without is_causal) for a CPU call that auto sends to the built-in and whose
    semantics are SDPA's own (equal head counts; causal only where gencore's bottom-right mask is
    torch's is_causal or no mask at all); _CHECKED, gencore's checked path, for any other."""
    if q.dim() != 4 or k.dim() != 4:
        return _CHECKED
    B, H, Sq, D = q.shape
    _, Hk, Sk, _ = k.shape
    if H != Hk or B == 0 or D == 0 or (causal is True and Sq != 1 and Sq != Sk):
        return _CHECKED
    # CPU calls only: there Python's cost is the call's; a GPU call's runs ahead of the device.
    if not q.is_cpu or (causal is not True and causal is not False):
        return _CHECKED
    if auto.choose("attention", "auto", "cpu", q=q, k=k, causal=causal) != auto.BUILTIN:
        return _CHECKED
    return _SDPA_CAUSAL if causal is True and Sq > 1 else _SDPA


def _check_sinks(sinks, H: int, device) -> None:
    if not isinstance(sinks, torch.Tensor) or not sinks.is_floating_point():
        what = sinks.dtype if isinstance(sinks, torch.Tensor) else type(sinks).__name__
        raise TypeError(f"attention: sinks must be a floating tensor (float32, one logit per query head), got {what}")
    if tuple(sinks.shape) != (H,):
        raise ValueError(f"attention: sinks must have shape (heads,) = ({H},), got {tuple(sinks.shape)}")
    if sinks.device != device:
        raise ValueError(f"attention: sinks is on {sinks.device}, q on {device}")


def document_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: Optional[int] = None) -> torch.Tensor:
    """FlashAttention's cumulative sequence lengths [0, l_0, l_0 + l_1, ..., S] -> document_ids
    (1, S) int64 for `attention(..., document_ids=...)` on the packed (1, H, S, D) batch.
    Tokens past cu_seqlens[-1] (up to `total`) form one more document of their own."""
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in _INTEGER:
        raise TypeError("document_ids_from_cu_seqlens: cu_seqlens must be a 1-d integer tensor")
    cu = cu_seqlens.to(torch.int64)
    S = int(cu[-1]) if total is None else int(total)
    pos = torch.arange(S, device=cu.device)
    return (torch.searchsorted(cu[1:], pos, right=True))[None, :]


# -- what auto sees (ops/auto.py) -------------------------------------------------------------------

def _trains(q: torch.Tensor, k: torch.Tensor) -> bool:
    return (q.requires_grad or k.requires_grad) and torch.is_grad_enabled()


def _work(q, k, varlen) -> int:
    """B * H * S_q * S_k * D; for varlen (q, k the packed (1, H, T, D) views) H * D * sum l_q l_k."""
    B, H, Sq, D = q.shape
    return H * D * varlen.pairs if varlen is not None else B * H * Sq * k.shape[2] * D


def _auto_key(q, k, causal, key_padding_mask=None, dropout_p=0.0, window=None, softcap=None,
              document_ids=None, attn_mask=None, varlen=None, sinks=None):
    B, H, Sq, D = q.shape
    work = _work(q, k, varlen)
    return (q.dtype, q.is_cuda, Sq <= 4, causal is True, key_padding_mask is None, dropout_p > 0,
            window is None, softcap is None, document_ids is None, attn_mask is None,
            _trains(q, k), (work.bit_length() - 1) // 2, D, varlen is None, sinks is None)


def _auto_case(q: torch.Tensor, k: torch.Tensor, causal: bool, key_padding_mask: Optional[torch.Tensor] = None,
               dropout_p: float = 0.0, window=None, softcap=None, document_ids=None,
               attn_mask=None, varlen=None, sinks=None) -> Optional[str]:
    """The case auto names for a call: "<dtype> <kind>[+<features>] <pass> <size class>", the kind
    being decode (at most 4 queries), causal or full, the features those present in this order:
    mask, documents, window, softcap, dropout, padding (a key padding mask); the pass fwd or
    fwd+bwd; the size class that of B * H * S_q * S_k * D. E.g. "float32 causal fwd+bwd 1G-4G",
    "bfloat16 decode+window fwd 1M-4M". None for a CUDA call the kernel does not run (dtype or
    head dim, `cuda_kernel_covers`). varlen_attn's calls (varlen: ops/varlen.py's VarlenInfo) are
    the kind "varlen" ("varlen-causal" for window (-1, 0)) against its own built-in (SDPA on the
    sequences padded per sequence), sized by H * D * sum l_q l_k."""
    B, H, Sq, D = q.shape
    if q.is_cuda and not cuda_kernel_covers(q.dtype, D):
        return None
    if varlen is not None:
        causal = window == (-1, 0)
        parts = ["varlen-causal" if causal else "varlen"]
        if causal:
            window = None
    else:
        parts = ["decode" if Sq <= 4 else ("causal" if causal else "full")]
    parts += [f for f, on in (("mask", attn_mask is not None), ("documents", document_ids is not None),
                              ("window", window is not None), ("softcap", softcap is not None),
                              ("dropout", dropout_p > 0), ("padding", key_padding_mask is not None),
                              ("sinks", sinks is not None)) if on]
    dtype = str(q.dtype).replace("torch.", "")
    size = auto.size_class(_work(q, k, varlen))
    return f"{dtype} {'+'.join(parts)} {'fwd+bwd' if _trains(q, k) else 'fwd'} {size}"


def _auto_calls(device_type, q, k, causal, key_padding_mask=None, dropout_p=0.0, window=None,
                softcap=None, document_ids=None, attn_mask=None, varlen=None, sinks=None):
    """The call's own shapes and masks, fresh random q, k, v: fused against SDPA (varlen: against
    SDPA on the sequences padded per sequence)."""
    dev, dtype = q.device, q.dtype
    if varlen is not None:
        from .varlen import varlen_calls
        return varlen_calls(q, k, varlen, window=window, softcap=softcap, dropout_p=dropout_p,
                            train=_trains(q, k), sinks=sinks)
    qi, ki, vi = (torch.randn(t.shape, device=dev).to(dtype) for t in (q, k, k))
    kw = dict(causal=causal, key_padding_mask=key_padding_mask, dropout_p=dropout_p, window=window,
              softcap=softcap, document_ids=document_ids, attn_mask=attn_mask, sinks=sinks)
    if not _trains(q, k):
        def forward(impl):
            def call():
                with torch.no_grad():
                    attention(qi, ki, vi, impl=impl, **kw)
            return call
        return {"fused": forward("fused"), "builtin": forward("sdpa")}
    leaves = [t.requires_grad_(True) for t in (qi, ki, vi)]
    dout = torch.randn(q.shape, device=dev).to(dtype)

    def train(impl):
        def call():
            for t in leaves:
                t.grad = None
            attention(*leaves, impl=impl, **kw).backward(dout)
        return call
    return {"fused": train("fused"), "builtin": train("sdpa")}


def attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False,
                   key_padding_mask: Optional[torch.Tensor] = None,
                   scale: Optional[float] = None, *, dropout_p: float = 0.0, window=None,
                   softcap: Optional[float] = None, document_ids: Optional[torch.Tensor] = None,
                   attn_mask: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None,
                   sinks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """gencore.ops.attention's semantics on `F.scaled_dot_product_attention`: bottom-right causal
    mask, GQA (k/v with fewer heads), bool key padding mask (True = ignore), window, documents
    and attn_mask as one bool mask, zeros (and zero gradients) for rows that see no key.
    Dropout is SDPA's own (torch's RNG, not gencore's Philox mask). Sinks ride on SDPA as one more
    key (`_sdpa_with_sinks`). No built-in caps scores: with softcap (or sinks with dropout) this
    runs the reference's composed ops (and its Philox dropout). Arguments are not checked here
    (attention() does)."""
    if sinks is not None and softcap is None and not dropout_p:
        return _sdpa_with_sinks(q, k, v, causal, key_padding_mask, scale, window, document_ids,
                                attn_mask, sinks)
    if softcap is not None or sinks is not None:
        seed_offset = philox_seed_offset(generator) if dropout_p > 0 else None
        return attention_reference(q, k, v, causal, key_padding_mask, scale, dropout_p=dropout_p,
                                   seed_offset=seed_offset, window=window, softcap=softcap,
                                   document_ids=document_ids, attn_mask=attn_mask, sinks=sinks)[0]
    H, Hkv = q.shape[1], k.shape[1]
    gqa = {}
    if Hkv != H and q.is_cpu:  # the CPU's SDPA reads the shared heads itself (7-13% faster)
        gqa = {"enable_gqa": True}
    elif Hkv != H:  # not every CUDA backend takes enable_gqa: equal head counts
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
    Sq, Sk = q.shape[2], k.shape[2]
    plain = key_padding_mask is None and window is None and document_ids is None and attn_mask is None
    if plain and (not causal or Sq == 1):  # a lone query sees every key
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, scale=scale, **gqa)
    if plain and Sq == Sk:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True,
                                              scale=scale, **gqa)
    if key_padding_mask is not None and window is None and document_ids is None and \
            attn_mask is None and (not causal or Sq == 1):
        visible = ~key_padding_mask[:, None, None, :]   # every query sees the same keys
    else:
        visible = visible_keys(q.shape[0], Sq, Sk, q.device, causal, key_padding_mask, window,
                               document_ids, attn_mask)
    sees = visible.view(torch.uint8).amax(dim=-1, keepdim=True)  # bool reductions are not
    # vectorised on the CPU; as bytes they are. Every row seeing a key is the usual case: checked
    # on the CPU only, where the host read costs no device sync.
    if q.is_cpu and bool(sees.amin()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=visible, dropout_p=dropout_p,
                                              scale=scale, **gqa)
    # A row with no visible key would give NaN: let it see everything, then zero its output
    # (with `where`, so its gradient is zero too).
    seen = sees.bool()
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=visible | ~seen, dropout_p=dropout_p,
                                       scale=scale, **gqa)
    return torch.where(seen, y, 0.0)


def _sdpa_with_sinks(q, k, v, causal, key_padding_mask, scale, window, document_ids, attn_mask,
                     sinks):
    """Attention with sinks on SDPA: q and k get one more head-dim column (1 in q, 0 in the keys)
    and every head one more key, always visible, whose score is its sink (0 but the last entry,
    sink / scale) and whose value is 0. The softmax then counts the sink as the semantics say, a
    row that sees no key gives 0, and the sink's gradient comes out of SDPA's backward."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    if Hkv != H:
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
    q1 = torch.cat([q, q.new_ones(B, H, Sq, 1)], dim=-1)
    sink_keys = torch.cat([q.new_zeros(H, D), (sinks.to(q.dtype) / scale)[:, None]], dim=-1)
    k1 = torch.cat([torch.cat([k, k.new_zeros(B, H, Sk, 1)], dim=-1),
                    sink_keys[None, :, None].expand(B, H, 1, D + 1)], dim=2)
    v1 = torch.cat([v, v.new_zeros(B, H, 1, D)], dim=2)
    plain = key_padding_mask is None and window is None and document_ids is None and attn_mask is None
    mask = None
    if not plain or (causal and Sq > 1):
        visible = visible_keys(B, Sq, Sk, q.device, causal, key_padding_mask, window, document_ids,
                               attn_mask)
        mask = torch.cat([visible, visible.new_ones(visible.shape[:-1] + (1,))], dim=-1)
    return F.scaled_dot_product_attention(q1, k1, v1, attn_mask=mask, scale=scale)


# -- the drop-in -----------------------------------------------------------------------------------

def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: Optional[torch.Tensor] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 enable_gqa: bool = False, *,
                                 generator: Optional[torch.Generator] = None,
                                 impl: str = "auto") -> torch.Tensor:
    """`torch.nn.functional.scaled_dot_product_attention`'s signature and semantics: swap
    `from torch.nn.functional import scaled_dot_product_attention` for
    `from gencore.ops import scaled_dot_product_attention`.

    Causal is aligned top-left (query i sees keys j <= i), attn_mask is bool (True = take part) or
    an additive float mask broadcastable to (B, H, S_q, S_k), grouped-query k/v only with
    enable_gqa, rows that see no key give zeros (as torch 2.13 does). impl="auto" runs gencore's
    fused kernel where it covers the call (4-d inputs of one dtype, equal batch and head dims,
    no float mask, not attn_mask together with is_causal) and the auto table (ops/auto.py) picks
    it for the case, torch's function itself otherwise, so results are torch's. Dropout in the
    fused kernel draws gencore's Philox keep-mask (seeded from `generator` or torch's default
    generator); torch's own function draws torch's. impl="fused" or "reference" demand gencore's
    kernel or reference (bool masks only); impl="sdpa" always calls torch.
    """
    if impl == "sdpa" or not _fused_covers(query, key, value, attn_mask, is_causal, enable_gqa):
        if impl in ("fused", "reference"):
            raise ValueError(
                f"scaled_dot_product_attention: impl={impl!r} covers 4-d q, k, v of one floating dtype "
                "with equal batch and head dims (k/v heads dividing q's with enable_gqa), a bool "
                "attn_mask (not an additive float one) and not attn_mask together with is_causal; "
                "use impl='auto' or 'sdpa' for this call")
        return _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    Sq, Sk = query.shape[2], key.shape[2]
    mask = None
    if attn_mask is not None:
        mask = attn_mask
        while mask.dim() < 4:
            mask = mask[None]
        mask = mask.expand(mask.shape[0], mask.shape[1], Sq, Sk)
    causal = bool(is_causal)
    if causal and Sq != Sk:  # top-left: query i sees keys j <= i, not gencore's bottom-right
        mask = torch.ones(Sq, Sk, dtype=torch.bool, device=query.device).tril()[None, None]
        causal = False
    if impl == "auto":
        if auto.choose("attention", impl, query.device.type, q=query, k=key, causal=causal,
                       dropout_p=float(dropout_p), attn_mask=mask) == auto.BUILTIN:
            return _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        impl = "fused"
    return attention(query, key, value, causal=causal, scale=scale, dropout_p=dropout_p,
                     attn_mask=mask, generator=generator, impl=impl)


def _torch_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
    if enable_gqa:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=True)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale)


def _fused_covers(q, k, v, attn_mask, is_causal, enable_gqa) -> bool:
    """Whether gencore.ops.attention computes exactly this SDPA call (else torch runs it, and
    raises torch's own errors)."""
    if not all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in (q, k, v)):
        return False
    if q.dtype not in _FLOATING or k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    if not (q.device == k.device == v.device):
        return False
    (B, H, Sq, D), (Bk, Hk, Sk, Dk), (Bv, Hv, Sv, Dv) = q.shape, k.shape, v.shape
    if not (B == Bk == Bv and D == Dk == Dv and Hk == Hv and Sk == Sv) or Hk == 0:
        return False
    if Hk != H and not (enable_gqa and H % Hk == 0):
        return False
    if attn_mask is not None:
        if is_causal or not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype != torch.bool:
            return False
        if attn_mask.device != q.device or attn_mask.dim() > 4:
            return False
        shape = (1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape)
        if shape[0] not in (1, B) or shape[1] not in (1, H) or shape[2] not in (1, Sq) or shape[3] not in (1, Sk):
            return False
    return True


# -- torch.library: fake kernels and autograd for the compiled op ---------------------------------

def _lse_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _fake_forward(q, k, v, key_padding_mask, causal, scale, window_left=-1, window_right=-1,
                  softcap=0.0, document_ids=None, attn_mask=None, dropout_p=0.0, seed_offset=None,
                  sinks=None):
    B, H, Sq, D = q.shape
    return q.new_empty((B, H, Sq, D)), q.new_empty((B, H, Sq), dtype=_lse_dtype(q.dtype))


def _fake_backward(grad_out, q, k, v, out, lse, key_padding_mask, causal, scale, window_left=-1,
                   window_right=-1, softcap=0.0, document_ids=None, attn_mask=None, dropout_p=0.0,
                   seed_offset=None, grad_lse=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


_FEATURE_DEFAULTS = (-1, -1, 0.0, None, None, 0.0, None, None)  # window_left .. sinks


def _setup_context(ctx, inputs, output):
    q, k, v, key_padding_mask, causal, scale, *rest = inputs
    rest = tuple(rest) + _FEATURE_DEFAULTS[len(rest):]
    window_left, window_right, softcap, document_ids, attn_mask, dropout_p, seed_offset, sinks = rest
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, key_padding_mask, document_ids, attn_mask, seed_offset,
                          sinks)
    ctx.causal, ctx.scale = causal, scale
    ctx.window, ctx.softcap, ctx.dropout_p = (window_left, window_right), softcap, dropout_p
    ctx.n_inputs = len(inputs)
    ctx.set_materialize_grads(False)  # a gradient that never came is None, not a zero tensor


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, key_padding_mask, document_ids, attn_mask, seed_offset, sinks = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.gencore.attention_backward(
        grad_out, q, k, v, out, lse, key_padding_mask, ctx.causal, ctx.scale, ctx.window[0],
        ctx.window[1], ctx.softcap, document_ids, attn_mask, ctx.dropout_p, seed_offset, grad_lse)
    grads = [dq, dk, dv] + [None] * (ctx.n_inputs - 3)
    if sinks is not None and ctx.needs_input_grad[13]:
        grads[13] = _sinks_grad(sinks, grad_out, out, lse, grad_lse)
    return tuple(grads)


def _sinks_grad(sinks, grad_out, out, lse, grad_lse):
    """d loss / d sink_h = -sum over (b, i) of P_sink (rowsum(dO * out) - grad_lse), P_sink =
    exp(sink_h - lse): the sink's column of dS = P (dP - delta), whose dP is 0 (it has no value)."""
    acc = lse.dtype
    delta = (grad_out.to(acc) * out.to(acc)).sum(-1)                      # (B, H, S_q)
    if grad_lse is not None:
        delta = delta - grad_lse.to(acc)
    s = sinks.to(acc)[None, :, None]
    p_sink = torch.where(torch.isneginf(lse), torch.zeros_like(lse), torch.exp(s - lse))
    return (-(p_sink * delta).sum((0, 2))).to(sinks.dtype)


auto.register("attention", key=_auto_key, case=_auto_case, calls=_auto_calls, builtin="sdpa",
              memo=_FAST)
_backend.register_autograd_and_fake(
    "attention", fake=_fake_forward, setup_context=_setup_context, backward=_backward)
_backend.register_fake("attention_backward", _fake_backward)
