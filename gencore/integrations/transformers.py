"""gencore.integrations.transformers: Hugging Face transformers models on gencore's attention.

    import gencore.integrations.transformers          # registers attn_implementation="gencore"
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="gencore")

Importing this module registers two functions under the name "gencore" (`register()` does it
again, e.g. under another name or after something replaced them):

- `mask` in `transformers.masking_utils.AttentionMaskInterface`, called once per forward (per mask
  type: Gemma-2 builds a full and a sliding one). It builds the boolean mask transformers' own "sdpa"
  implementation would get (`sdpa_mask`, so the semantics are transformers'), describes it as
  gencore.ops.attention arguments and checks the description against that mask element for element
  (`GencoreMask`). A pattern the arguments cannot reproduce travels as a dense `attn_mask`.
- `attention_forward` in `transformers.AttentionInterface`, called per layer. One feature, one
  argument of gencore.ops.attention:

    causal, with or without a KV cache   causal=True, bottom-right aligned (the unused tail of a
                                         static cache is cut off first, as transformers' sdpa does)
    GQA (fewer k/v heads)                k, v as they come (no repeat_kv copy)
    padding, left or right               key_padding_mask=
    sliding_window                       window=(sliding_window - 1, 0)
    softcap (Gemma-2)                    softcap=
    dropout                              dropout_p= (Philox: repeatable under torch.manual_seed)
    packed sequences (position_ids       document_ids=
      restarts, cu_seq_lens_q/k kwargs)
    any other boolean pattern            attn_mask=
    attention sinks s_aux (gpt-oss)      sinks=

  with impl="auto": each call runs what gencore's auto table (gencore/ops/auto.py) measured fastest
  on this device for its case, the fused kernel or PyTorch's SDPA with gencore's semantics.

What gencore.ops.attention cannot take (a `position_bias`, a float mask
holding biases, v's head dim differing from q's, an argument this build of gencore.ops.attention
lacks) runs transformers' own path instead, with one warning per reason: its sdpa function, or the
model's eager function where sdpa refuses (softcap, s_aux, output_attentions).
"""
from __future__ import annotations

import inspect
import sys
import warnings
from typing import Optional

import torch

from .. import ops

try:
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError as e:  # the dependency is optional: say how to get it
    raise ImportError("gencore.integrations.transformers needs Hugging Face transformers >= 5.24: "
                      "pip install 'gencore[transformers]'") from e

NAME = "gencore"

# The arguments gencore.ops.attention takes in this build. A call that needs one it lacks runs
# transformers' path (with a warning) rather than silently dropping the feature.
ATTENTION_ARGS = frozenset(inspect.signature(ops.attention).parameters)


class GencoreMask:
    """A boolean mask (B, 1, S_q, S_k), True = take part, as gencore.ops.attention arguments.

    `mask` attaches one to the mask tensor it returns (attribute `gencore_mask`), once per forward;
    every layer of that forward reads it. A mask tensor without one (built elsewhere, or sliced by
    the model) is described per call. The description is made on first use: a forward whose
    layers all run transformers' path (auto's pick for their case) never pays for it.
    exact: whether the fields below reproduce the mask (checked element for element); if not, the
        layers pass the mask itself as attn_mask.
    causal, window_left, key_padding_mask (bool (B, kv_len), True = ignore, None if nothing is
        padded), document_ids (int (B, S), or None), kv_len: the gencore.ops.attention arguments.
        Keys from kv_len on are seen by no query (a static cache's unused tail): they are cut off.
    """

    _FIELDS = ("exact", "causal", "window_left", "key_padding_mask", "document_ids", "kv_len")
    __slots__ = ("shape", "_source") + _FIELDS

    def __init__(self, dense: torch.Tensor, diag: int, window: bool = True):
        assert dense.dtype == torch.bool and dense.dim() == 4, (dense.dtype, dense.shape)
        self.shape = tuple(dense.shape)
        self._source = (dense, diag, window)

    def __getattr__(self, name):      # only reached for a field not yet set: describe now
        if name not in GencoreMask._FIELDS or self._source is None:
            raise AttributeError(name)
        dense, diag, window = self._source
        plan = _describe(dense, diag, window)
        self.exact = plan is not None
        if plan is None:
            plan = (False, None, None, None, dense.shape[-1])
        self.causal, self.window_left, self.key_padding_mask, self.document_ids, self.kv_len = plan
        self._source = None
        return getattr(self, name)

    def __repr__(self):
        if not self.exact:
            return f"GencoreMask(dense {self.shape})"
        return (f"GencoreMask(causal={self.causal}, window_left={self.window_left}, "
                f"padding={self.key_padding_mask is not None}, "
                f"documents={self.document_ids is not None}, kv_len={self.kv_len})")


def _bytes(x: torch.Tensor) -> torch.Tensor:
    # Bool reductions on CPU are not vectorised (m.any() on 8 x 256 x 256: 456 us; as uint8:
    # 10 us): the checks below reduce bool tensors as bytes.
    return x.view(torch.uint8)


def _any(x: torch.Tensor, dim=None):
    if dim is None:
        return x.numel() > 0 and bool(_bytes(x).max())                        # host read
    return _bytes(x).amax(dim=dim).bool()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return not _any(a ^ b)


def _describe(dense: torch.Tensor, diag: int, window: bool = True):
    """(causal, window_left, key_padding_mask, document_ids, kv_len) giving exactly `dense`, or None.

    diag: query i's position minus key 0's (q_offset - kv_offset), so "causal" is key j <= i + diag.
    window: look for a sliding window (transformers says when it built one: `local_size`).
    Tries the fewest arguments first (no window, no documents). Host reads (a few per forward, not
    per layer) are the checks that make the description exact.
    """
    B, _, Sq, Sk = dense.shape
    m = dense[:, 0]                                                            # (B, Sq, Sk)
    if Sq == 1:
        return _describe_one_query(m[:, 0], diag)
    dev = m.device
    back = torch.arange(Sq, device=dev)[:, None] + diag - torch.arange(Sk, device=dev)  # (Sq, Sk)
    causal = not _any(m & (back < 0))
    kv_len, lefts = Sk, [None]
    if causal:
        kv_len = Sq + diag                  # keys from kv_len on come after every query
        if not 0 < kv_len <= Sk:
            return None                     # no bottom-right frame holds this diagonal
        m, back = m[:, :, :kv_len], back[:, :kv_len]
        if window:
            first = _bytes(m).argmax(-1)                     # (B, Sq): first key each query sees
            far = (torch.arange(Sq, device=dev) + diag - first).masked_fill(~_any(m, -1), -1)
            far = int(far.amax()) if far.numel() else -1                       # host read
            if 0 <= far < kv_len - 1:       # else a window would never bind
                lefts.append(far)
    unseen = ~_any(m, 1)                                    # (B, kv_len): keys no query sees
    padded = _any(unseen)
    kpm = unseen if padded else None
    base = back >= 0 if causal else torch.ones_like(back, dtype=torch.bool)    # (Sq, kv_len)
    if padded:
        base = base & ~unseen[:, None, :]                                      # (B, Sq, kv_len)
    for left in lefts:
        cand = base if left is None else base & (back <= left)
        if _same(cand, m):
            return causal, left, kpm, None, kv_len
    if causal and diag == 0 and Sq == Sk and Sq > 1:
        # Packed documents (position_ids restarting): query i starts one where it cannot see key i-1.
        starts = torch.ones(B, Sq, dtype=torch.bool, device=dev)
        starts[:, 1:] = ~m.diagonal(offset=-1, dim1=1, dim2=2)
        docs = starts.cumsum(1)                                                # (B, S)
        base = base & (docs[:, :, None] == docs[:, None, :])
        for left in lefts:
            cand = base if left is None else base & (back <= left)
            if _same(cand, m):
                return causal, left, kpm, docs, kv_len
    return None


def _describe_one_query(row: torch.Tensor, diag: int):
    """_describe for a single query (a decoding step, once per forward): any pattern over the keys
    is key padding (a window too: for one query it is leading keys unseen), so the description is
    always exact, at two host reads where the general case takes a dozen tensor ops more."""
    Sk = row.shape[-1]
    kv_len = diag + 1                       # causal: the query sees keys up to its own position
    causal = 0 < kv_len <= Sk and (kv_len == Sk or not _any(row[:, kv_len:]))     # host read
    if causal:
        row = row[:, :kv_len]
    else:
        kv_len = Sk
    unseen = ~row
    return causal, None, (unseen if _any(unseen) else None), None, kv_len        # host read


def mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
         **kwargs) -> Optional[torch.Tensor]:
    """The "gencore" entry of AttentionMaskInterface: transformers' sdpa mask, described once.

    Returns the boolean mask transformers' sdpa would get, so everything in transformers that
    handles masks (generation, static caches, slicing) handles this one, with its GencoreMask
    attached as `gencore_mask`. None where sdpa would get None (causal without padding: the layers
    then follow `is_causal`, as sdpa does)."""
    dense = sdpa_mask(batch_size=batch_size, q_length=q_length, kv_length=kv_length,
                      q_offset=q_offset, kv_offset=kv_offset, **kwargs)
    if dense is not None:   # a static cache's q_offset is a tensor
        dense.gencore_mask = GencoreMask(dense, int(q_offset) - int(kv_offset),
                                         window=kwargs.get("local_size") is not None)
    return dense


# -- the attention function -----------------------------------------------------------------------

def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                      value: torch.Tensor, attention_mask, dropout: float = 0.0,
                      scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                      softcap: Optional[float] = None, is_causal: Optional[bool] = None, **kwargs):
    """The "gencore" entry of AttentionInterface.

    query (B, H, S_q, D), key/value (B, H_kv, S_k, D) as transformers passes them; returns
    ((B, S_q, H, D), None). `sliding_window` is already in the mask (transformers builds a sliding
    mask for those layers), so the mask alone decides, as it does for "eager" and "sdpa".
    """
    reason = _unmappable(query, key, value, kwargs)
    cu_docs = _cu_seqlens_documents(kwargs, query.shape[0], query.shape[2], key.shape[2])
    sinks = kwargs.get("s_aux")
    if reason is None and cu_docs is None and not _may_run_fused(query, key, softcap, dropout, sinks):
        # no mask this call could carry makes auto pick the fused kernel (a decoding step in
        # float32, say): transformers' path at once, without describing the mask
        return _transformers_path(module, query, key, value, attention_mask, dropout, scaling,
                                  softcap, is_causal, kwargs)
    if reason is None:
        plan, reason = _plan(module, query, key, attention_mask, is_causal, cu_docs)
    if reason is None:
        causal, left, kpm, docs, attn_mask, kv_len = plan
        args = {"causal": causal, "scale": scaling}
        if kpm is not None:
            args["key_padding_mask"] = kpm
        if left is not None:
            args["window"] = (left, 0)
        if docs is not None:
            args["document_ids"] = docs
        if attn_mask is not None:
            args["attn_mask"] = attn_mask
        if softcap is not None:
            args["softcap"] = float(softcap)
        if dropout:
            args["dropout_p"] = float(dropout)
        if sinks is not None:  # gpt-oss: one learned logit per head, trained through the backward
            args["sinks"] = sinks
        missing = [name for name in args if name not in ATTENTION_ARGS]
        if missing:
            reason = f"this gencore.ops.attention has no {', '.join(missing)} argument"
    if reason is not None:
        return _fallback(reason, module, query, key, value, attention_mask, dropout, scaling,
                         softcap, is_causal, kwargs)
    if cu_docs is None and not _auto_runs_fused(query, key, causal, kpm, args):
        # auto's pick is not the fused kernel: run what transformers runs, with the mask it built
        # once per forward (its sdpa; its eager for softcap, which SDPA cannot take), rather than
        # gencore's built-in path, which rebuilds the mask in every layer.
        return _transformers_path(module, query, key, value, attention_mask, dropout, scaling,
                                  softcap, is_causal, kwargs)
    if kv_len != key.shape[2]:
        key, value = key[:, :, :kv_len], value[:, :, :kv_len]
    out = ops.attention(query, key, value, **args)                            # (B, H, S_q, D)
    return out.transpose(1, 2).contiguous(), None


_FEATURES = ("dropout_p", "window", "softcap", "document_ids", "attn_mask", "sinks")


def _auto_runs_fused(query, key, causal, kpm, args) -> bool:
    """Whether gencore.ops.attention(impl="auto") runs the fused kernel for this call: auto's own
    answer (gencore/ops/auto.py), which this call would get inside the op."""
    features = {name: args[name] for name in _FEATURES if name in args}
    return ops.auto.choose("attention", "auto", query.device.type, q=query, k=key, causal=causal,
                           key_padding_mask=kpm, **features) == ops.auto.FUSED


_SOME = object()   # stands for a tensor argument where only its presence names the case
_MAY_RUN_FUSED: dict = {}


def _may_run_fused(query, key, softcap, dropout, sinks=None) -> bool:
    """Whether auto may run the fused kernel for a call like this one with any of the arguments a
    mask can become (causal or not; key padding, window, documents, a dense mask or none): a
    dictionary read after the first call of a kind. True where auto has yet to decide (it
    calibrates on the real call)."""
    B, H, Sq, D = query.shape
    work = B * H * Sq * key.shape[2] * D
    kind = (query.dtype, query.is_cpu, query.is_cuda, Sq <= 4, (work.bit_length() - 1) // 2, D,
            softcap is not None, bool(dropout), query.requires_grad and torch.is_grad_enabled(),
            sinks is not None)
    cached = _MAY_RUN_FUSED.get(kind)
    if cached is not None and cached[0] == ops.auto.generation():
        return cached[1]
    known = any(
        ops.auto.peek("attention", query.device.type, q=query, k=key, causal=causal,
                      key_padding_mask=kpm, window=window, document_ids=docs, attn_mask=dense,
                      softcap=softcap, dropout_p=float(dropout or 0.0),
                      **({"sinks": _SOME} if sinks is not None else {})) != ops.auto.BUILTIN
        for causal in (True, False) for kpm in (None, _SOME) for window in (None, (1, 0))
        for docs in (None, _SOME) for dense in (None, _SOME))
    _MAY_RUN_FUSED[kind] = (ops.auto.generation(), known)
    return known


def _unmappable(query, key, value, kwargs) -> Optional[str]:
    if kwargs.get("s_aux") is not None and "sinks" not in ATTENTION_ARGS:
        return "attention sinks (s_aux)"
    if kwargs.get("position_bias") is not None:
        return "a position_bias"
    if kwargs.get("output_attentions"):
        return "output_attentions=True (gencore returns no attention weights)"
    qs, ks, vs = query.shape, key.shape, value.shape
    if ks[-1] != qs[-1] or vs[-1] != qs[-1]:
        return "q, k and v with different head dims"
    if ks[0] != qs[0] or vs[:3] != ks[:3]:
        return "k/v batch or shape differing from q's"
    if ks[1] == 0 or qs[1] % ks[1]:
        return "query heads not a multiple of k/v heads"
    return None


def _plan(module, query, key, attention_mask, is_causal, cu_docs):
    """((causal, window_left, key_padding_mask, document_ids, attn_mask, kv_len), None), or
    (None, reason) for a mask gencore cannot take. cu_docs: documents from cu_seq_lens, or None."""
    B, Sq, Sk = query.shape[0], query.shape[2], key.shape[2]
    m = attention_mask
    if isinstance(m, torch.Tensor) and m.dim() == 4 and m.dtype != torch.bool:
        floor = torch.finfo(m.dtype).min if m.dtype.is_floating_point else 0
        if not bool(((m == 0) | (m <= floor)).all()):                         # host read
            return None, "a float attention mask carrying biases"
        m = m == 0                         # an additive 0 / -inf mask, as a boolean one
    dense = None
    if isinstance(m, torch.Tensor):
        if m.dim() != 4 or m.dtype != torch.bool:
            return None, f"an attention_mask of shape {tuple(m.shape)} and dtype {m.dtype}"
        dense = m
        m = getattr(m, "gencore_mask", None)
        if m is None or m.shape != tuple(dense.shape):
            m = GencoreMask(dense, Sk - Sq)   # a mask built elsewhere: described per call
    if m is None:
        # What transformers' sdpa does with no mask: is_causal for S_q > 1, top-left aligned, so
        # keys past S_q (an empty static cache's tail at prefill) are cut off.
        causal = (is_causal if is_causal is not None else getattr(module, "is_causal", True))
        causal = bool(causal) and Sq > 1
        plan = [causal, None, None, None, None, Sq if causal and Sk > Sq else Sk]
    elif m.exact:
        plan = [m.causal, m.window_left, m.key_padding_mask, m.document_ids, None, m.kv_len]
    else:
        plan = [False, None, None, None, dense, Sk]
    if m is not None and m.shape[-1] != Sk:
        return None, "a mask whose length differs from the keys'"
    if m is None and plan[0] and Sk < Sq:
        return None, "causal attention with fewer keys than queries"
    for i in (2, 3):   # a mask built for a batch of 1, broadcast
        if plan[i] is not None and plan[i].shape[0] != B:
            plan[i] = plan[i].expand(B, -1)
    docs = cu_docs
    if docs is not None:
        if plan[5] != Sq or not (plan[0] or plan[4] is not None):
            return None, "cu_seq_lens with a KV cache or a non-causal mask"
        if plan[4] is not None:
            plan[4] = plan[4] & (docs[:, None, :, None] == docs[:, None, None, :])
        else:
            plan[3] = docs if plan[3] is None else _joint_documents(plan[3], docs)
    return tuple(plan), None


def _cu_seqlens_documents(kwargs, B, Sq, Sk) -> Optional[torch.Tensor]:
    """Document ids (1, S) from the cumulative lengths transformers passes for packed batches
    (DataCollatorWithFlattening(return_flash_attn_kwargs=True)), or None."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is None or B != 1 or Sq != Sk or cu_k is None or not torch.equal(cu_q, cu_k):
        return None
    idx = torch.arange(Sq, device=cu_q.device)
    return torch.searchsorted(cu_q[1:].to(idx.dtype), idx, right=True)[None]


def _joint_documents(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Documents that split wherever either a or b splits."""
    split = (a[:, 1:] != a[:, :-1]) | (b[:, 1:] != b[:, :-1])
    return torch.cat([torch.zeros_like(a[:, :1]), split.long()], dim=1).cumsum(1)


# -- transformers' own path for what gencore cannot take ------------------------------------------

_WARNED: set = set()


def _fallback(reason, module, query, key, value, attention_mask, dropout, scaling, softcap,
              is_causal, kwargs):
    if reason not in _WARNED:
        _WARNED.add(reason)
        path = "eager" if _needs_eager(softcap, kwargs) else "sdpa"
        warnings.warn(f"gencore.integrations.transformers: {reason}: such calls run transformers' "
                      f"{path} attention instead (one warning per reason)", RuntimeWarning,
                      stacklevel=3)
    return _transformers_path(module, query, key, value, attention_mask, dropout, scaling,
                              softcap, is_causal, kwargs)


def _needs_eager(softcap, kwargs) -> bool:
    return softcap is not None or kwargs.get("s_aux") is not None or bool(
        kwargs.get("output_attentions"))


def _transformers_path(module, query, key, value, attention_mask, dropout, scaling, softcap,
                       is_causal, kwargs):
    """transformers' own attention for the call: its sdpa, or the model's eager function where
    sdpa refuses (softcap, sinks, attention weights)."""
    mask = attention_mask
    if not _needs_eager(softcap, kwargs):
        return sdpa_attention_forward(module, query, key, value, mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    Sq, Sk = query.shape[2], key.shape[2]
    if mask is None and (is_causal if is_causal is not None else getattr(module, "is_causal", True)) \
            and Sq > 1:
        mask = torch.ones(Sq, Sk, dtype=torch.bool, device=query.device).tril()[None, None]
    if mask is not None and mask.dtype == torch.bool:   # eager adds a float mask: built once
        additive = getattr(mask, "gencore_additive", None)   # per forward, as "eager" builds it
        if additive is None or additive.dtype != query.dtype:
            additive = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~mask, torch.finfo(query.dtype).min)
            mask.gencore_additive = additive
        mask = additive
    fn = _model_eager(type(module), softcap is not None)
    return fn(module, query, key, value, mask, dropout=dropout, scaling=scaling, softcap=softcap,
              **kwargs)


_MODEL_EAGER: dict = {}


def _model_eager(module_type, softcap: bool):
    """The eager attention function of the module's model (`eager_attention_forward` in its
    modeling file) if it takes what the call needs, else `_eager`; looked up once per module type."""
    fn = _MODEL_EAGER.get((module_type, softcap))
    if fn is None:
        fn = getattr(sys.modules.get(module_type.__module__), "eager_attention_forward", None)
        if fn is None or (softcap and "softcap" not in inspect.signature(fn).parameters):
            fn = _eager
        _MODEL_EAGER[(module_type, softcap)] = fn
    return fn


def _eager(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None,
           s_aux=None, **kwargs):
    """Eager attention with softcap and sinks, for a model whose module defines none."""
    n_rep = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, n_rep), repeat_kv(value, n_rep)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    w = torch.matmul(query, key.transpose(2, 3)) * scaling
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if attention_mask is not None:
        w = w + attention_mask[:, :, :, : key.shape[-2]]
    if s_aux is not None:
        sinks = s_aux.reshape(1, -1, 1, 1).expand(w.shape[0], -1, w.shape[2], 1).to(w.dtype)
        w = torch.cat([w, sinks], dim=-1)
    p = torch.softmax(w, dim=-1, dtype=torch.float32).to(query.dtype)
    if s_aux is not None:
        p = p[..., :-1]
    p = torch.nn.functional.dropout(p, p=dropout, training=module.training)
    return torch.matmul(p, value).transpose(1, 2).contiguous(), p


def register(name: str = NAME) -> None:
    """Registers `attention_forward` and `mask` under `name` (importing this module does it)."""
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, mask)


register()
