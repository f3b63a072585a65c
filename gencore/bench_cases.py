"""The benchmark cases: the project's evidence for impl="auto" (gencore/ops/auto.py). Each one a
stable id, the auto case it falls in (named by auto itself from the case's shapes), and a
zero-argument call per implementation.

`gencore bench --record` times them with gencore.timing (round-robin medians) and writes records
(gencore.records); the project's records (gencore/project_records/) come from the same command.
Implementations: "fused" (the kernel), the op's built-in under auto (`auto.builtin_impl`: "sdpa"
for attention, "builtin" for gan_loss (the composed built-ins), "torch" for gumbel_softmax),
"reference" where it differs, "auto" itself, and PyTorch's own function called directly
("torch": F.scaled_dot_product_attention, F.gumbel_softmax, F.binary_cross_entropy_with_logits;
"softmax", the floor a Gumbel-softmax cannot beat): auto / torch is the promise that importing
gencore never costs speed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn.functional as F

from .ops import attention, auto, gan_loss, gumbel_softmax


def _meta(*shape, dtype=torch.float32, grad=False, integer=False, boolean=False):
    """A meta tensor standing for a call's argument where auto names the case (shapes only)."""
    if boolean or integer:
        return torch.empty(shape, device="meta", dtype=torch.bool if boolean else torch.int64)
    return torch.empty(shape, device="meta", dtype=dtype).requires_grad_(grad)


@dataclass
class BenchCase:
    id: str                      # "<op>/<device>/<auto case>/<shape>/<pass>", stable across runs
    op: str
    device: str                  # torch device type
    auto_case: str               # the case ops/auto.py names for this benchmark's call
    make: Callable[[], Dict[str, Callable[[], object]]] = field(repr=False)
    bytes: float = 0.0
    flops: float = 0.0


def _backward_call(fn, inputs, grad):
    def call():
        for t in inputs:
            t.grad = None
        fn().backward(grad)
    return call


def _attention_calls(fns, q, k, v, dout, train):
    """{impl: zero-argument call} of attention functions fn(q, k, v): forward under no_grad, or
    forward+backward on fresh leaves."""
    calls = {}
    for impl, fn in fns.items():
        if train:
            qi, ki, vi = (t.clone().requires_grad_(True) for t in (q, k, v))
            calls[impl] = _backward_call(lambda fn=fn, qi=qi, ki=ki, vi=vi: fn(qi, ki, vi), (qi, ki, vi), dout)
        else:
            def call(fn=fn):
                with torch.no_grad():
                    fn(q, k, v)
            calls[impl] = call
    return calls


def _attention_case(device, dtype, B, H, Sq, Sk, D, causal, train, Hkv=None) -> BenchCase:
    """Hkv: key/value heads for grouped-query attention (default H); the shape then reads
    "B-H-Hkv-..." and the case stays the equal-head one's (GQA is not a separate auto case)."""
    dname = str(dtype).replace("torch.", "")
    decode = Sq <= 4
    Hkv = H if Hkv is None else Hkv
    auto_case = auto.case_name("attention", q=_meta(B, H, Sq, D, dtype=dtype, grad=train),
                               k=_meta(B, Hkv, Sk, D, dtype=dtype, grad=train), causal=causal)
    mode = "fwd+bwd" if train else "fwd"
    heads = f"H{H}" if Hkv == H else f"H{H}-Hkv{Hkv}"
    kind = "decode" if decode else ("causal" if causal else "full")
    cid = f"attention/{device}/{dname} {kind}/B{B}-{heads}-Sq{Sq}-Sk{Sk}-D{D}/{mode}"
    flops = 4 * B * H * Sq * Sk * D * (0.5 if causal and Sq == Sk else 1.0) * (3.5 if train else 1.0)

    def make():
        g = torch.Generator().manual_seed(0)
        q, k, v, dout = (torch.randn(B, h, s, D, generator=g).to(device, dtype)
                         for h, s in ((H, Sq), (Hkv, Sk), (Hkv, Sk), (H, Sq)))
        # "torch": PyTorch's SDPA called directly, as a user would without gencore (one query
        # sees every key; S_q == S_k causal is torch's is_causal; GQA through enable_gqa).
        builtin = lambda q, k, v: F.scaled_dot_product_attention(
            q, k, v, is_causal=causal and not decode, enable_gqa=Hkv != H)
        fns = {impl: (lambda q, k, v, impl=impl: attention(q, k, v, causal=causal, impl=impl))
               for impl in ("fused", "sdpa", "auto")}
        fns["torch"] = builtin
        return _attention_calls(fns, q, k, v, dout, train)
    return BenchCase(cid, "attention", device, auto_case, make, flops=flops)


def _gan_case(device, n, kind="bce", role="discriminator") -> BenchCase:
    def make():
        g = torch.Generator().manual_seed(0)
        real, fake = ((torch.randn(n, generator=g) * 2).to(device).requires_grad_(True) for _ in range(2))
        ones, zeros = torch.ones(n, device=device), torch.zeros(n, device=device)
        bce = F.binary_cross_entropy_with_logits
        fns = {impl: (lambda impl=impl: gan_loss(real, fake, kind, role, impl=impl))
               for impl in ("fused", "builtin", "auto")}
        fns["torch"] = lambda: bce(real, ones) + bce(fake, zeros)
        return {impl: _backward_call(fn, (real, fake), None) for impl, fn in fns.items()}
    auto_case = auto.case_name("gan_loss", fake_logits=_meta(n, grad=True))
    return BenchCase(f"gan_loss/{device}/*/{kind}-{role}-n{n}/fwd+bwd", "gan_loss", device, auto_case,
                     make, bytes=2 * n * 4 * 2)


def _gumbel_case(device, rows, cols, train) -> BenchCase:
    mode = "fwd+bwd" if train else "fwd"

    def make():
        x = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(device)
        grad = torch.randn_like(x)
        fns = {"fused": lambda x: gumbel_softmax(x, impl="fused"),
               "reference": lambda x: gumbel_softmax(x, impl="reference"),
               "auto": lambda x: gumbel_softmax(x),
               "torch": lambda x: F.gumbel_softmax(x),
               "softmax": lambda x: torch.softmax(x, -1)}
        if train:
            xi = x.clone().requires_grad_(True)
            return {impl: _backward_call(lambda fn=fn: fn(xi), (xi,), grad) for impl, fn in fns.items()}

        def forward(fn):
            def call():
                with torch.no_grad():
                    fn(x)
            return call
        return {impl: forward(fn) for impl, fn in fns.items()}
    # Bytes: one read of the logits and one write of the sample (forward), plus the backward's
    # read of the saved sample and the upstream gradient and write of the gradient.
    auto_case = auto.case_name("gumbel_softmax", logits=_meta(rows, cols, grad=train))
    return BenchCase(f"gumbel_softmax/{device}/*/{rows}x{cols}/{mode}", "gumbel_softmax", device,
                     auto_case, make, bytes=rows * cols * 4 * (5 if train else 2))


def _feature_case(device, dtype, kind, B, H, S, D, train=True) -> BenchCase:
    """issue 20's features against the best built-in way to the same result:
    "window": causal sliding window (256, 0); torch = SDPA with the equivalent bool mask.
    "documents": 4 causal documents of random lengths packed in S tokens (B = 1); torch = SDPA on
        the documents padded to the longest (is_causal: padded keys come after every real query),
        the padding and unpadding included.
    "dropout": causal, dropout 0.1; torch = SDPA's own dropout (another mask, the same law).
    "mask": a prefix-LM bool mask (B, 1, S, S) (the first S/4 tokens see each other); torch = SDPA
        with that mask. Here "fused"/"auto" go through gencore.ops.scaled_dot_product_attention.
    "causal+padding": a right-padded causal batch (each row's length drawn in [S/2, S]), as a
        padded fine-tuning batch; torch = SDPA with the dense bool mask (causal and key padding).
    "dropout+padding": the same batch with dropout 0.1 (GPT-2's padded training); torch = SDPA
        with that mask and its own dropout.
    "softcap": causal with scores soft-capped at 50 (Gemma-2's attention), "window+softcap": with
        a (256, 0) window too (Gemma-2's local layers); no built-in caps scores, so torch = the
        eager composition transformers runs for them (matmul, tanh, mask, softmax, matmul)."""
    dname = str(dtype).replace("torch.", "")
    facts = {"window": dict(window=(256, 0)), "documents": dict(document_ids=_meta(B, S, integer=True)),
             "dropout": dict(dropout_p=0.1), "mask": dict(attn_mask=_meta(B, 1, S, S, boolean=True)),
             "softcap": dict(softcap=50.0), "window+softcap": dict(window=(256, 0), softcap=50.0),
             "causal+padding": dict(key_padding_mask=_meta(B, S, boolean=True)),
             "dropout+padding": dict(key_padding_mask=_meta(B, S, boolean=True), dropout_p=0.1)}[kind]
    q = _meta(B, H, S, D, dtype=dtype, grad=train)
    auto_case = auto.case_name("attention", q=q, k=q, causal=kind != "mask", **facts)
    mode = "fwd+bwd" if train else "fwd"
    extra = {"window": "-w256", "documents": "-docs4", "dropout": "-p0.1", "mask": "-prefix",
             "softcap": "-cap50", "window+softcap": "-w256-cap50", "causal+padding": "-pad",
             "dropout+padding": "-pad-p0.1"}[kind]
    cid = f"attention/{device}/{dname} {kind}/B{B}-H{H}-Sq{S}-Sk{S}-D{D}{extra}/{mode}"
    band_pairs = 257 * S - 256 * 257 // 2
    visible = {"window": band_pairs, "window+softcap": band_pairs,
               "mask": S * (S + 1) // 2 + (S // 4) ** 2 // 2}
    pairs = visible.get(kind, S * (S + 1) // 2)
    flops = 4 * B * H * pairs * D * (3.5 if train else 1.0)

    def make():
        from .ops import scaled_dot_product_attention
        g = torch.Generator().manual_seed(0)
        q, k, v, dout = (torch.randn(B, H, S, D, generator=g).to(device, dtype) for _ in range(4))
        pos = torch.arange(S, device=device)
        if kind == "window":
            band = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= pos[:, None] - 256)
            kw = dict(causal=True, window=(256, 0))
            builtin = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=band)
        elif kind == "documents":
            cuts = torch.sort(torch.randperm(S - 1, generator=g)[:3] + 1).values.tolist()
            bounds = [0] + cuts + [S]
            ids = torch.zeros(1, S, dtype=torch.int64)
            for d in range(4):
                ids[0, bounds[d]:bounds[d + 1]] = d
            ids = ids.to(device)
            lmax = max(bounds[d + 1] - bounds[d] for d in range(4))
            # (doc, slot) -> token index; padded slots read token 0 and are dropped after.
            index = torch.zeros(4, lmax, dtype=torch.int64)
            valid = torch.zeros(4, lmax, dtype=torch.bool)
            for d in range(4):
                n = bounds[d + 1] - bounds[d]
                index[d, :n] = torch.arange(bounds[d], bounds[d + 1])
                valid[d, :n] = True
            index, valid = index.to(device), valid.to(device)
            flat = index[valid]

            def builtin(q, k, v):
                pq, pk, pv = (t[0][:, index].transpose(0, 1) for t in (q, k, v))  # (4, H, lmax, D)
                y = F.scaled_dot_product_attention(pq, pk, pv, is_causal=True)
                out = torch.empty_like(q[0])
                out = out.index_copy(1, flat, y.transpose(0, 1)[:, valid])
                return out[None]
            kw = dict(causal=True, document_ids=ids)
        elif kind in ("causal+padding", "dropout+padding"):
            lengths = torch.randint(S // 2, S + 1, (B,), generator=g).to(device)
            pad = pos[None, :] >= lengths[:, None]                       # (B, S), True = padding
            dense = ((pos[None, :] <= pos[:, None]) & ~pad[:, None, None, :])  # (B, 1, S, S)
            p = 0.1 if kind == "dropout+padding" else 0.0
            kw = dict(causal=True, key_padding_mask=pad, dropout_p=p)
            builtin = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=dense, dropout_p=p)
        elif kind in ("softcap", "window+softcap"):
            allowed = pos[None, :] <= pos[:, None]
            kw = dict(causal=True, softcap=50.0)
            if kind == "window+softcap":
                allowed = allowed & (pos[None, :] >= pos[:, None] - 256)
                kw["window"] = (256, 0)

            def builtin(q, k, v):
                s = (q @ k.transpose(-2, -1)) * D ** -0.5
                s = (50.0 * torch.tanh(s / 50.0)).masked_fill(~allowed, float("-inf"))
                return torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype) @ v
        elif kind == "dropout":
            kw = dict(causal=True, dropout_p=0.1)
            builtin = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=0.1)
        else:
            prefix = (pos[None, :] <= pos[:, None]) | (pos[None, :] < S // 4)
            mask = prefix.expand(B, 1, S, S)
            builtin = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        if kind == "mask":
            fns = {impl: (lambda q, k, v, impl=impl: scaled_dot_product_attention(q, k, v, attn_mask=mask, impl=impl))
                   for impl in ("fused", "auto")}
            fns["sdpa"] = lambda q, k, v: attention(q, k, v, attn_mask=mask, impl="sdpa")
        else:
            fns = {impl: (lambda q, k, v, impl=impl: attention(q, k, v, impl=impl, **kw))
                   for impl in ("fused", "sdpa", "auto")}
        fns["torch"] = builtin
        return _attention_calls(fns, q, k, v, dout, train)
    return BenchCase(cid, "attention", device, auto_case, make, flops=flops)


def _varlen_case(device, dtype, H, D, lengths, train=True, causal=True) -> BenchCase:
    """issue 32's varlen: packed documents of the given lengths, (T, H, D), causal (window (-1,
    0)) or full, through gencore.ops.varlen_attn; torch = SDPA on the same tokens padded per
    document to the longest (is_causal when causal: padded keys come after every real query; a
    key padding mask when full), the padding and unpadding included. On CUDA torch's own
    varlen_attn would be the built-in; this case is the CPU's, where torch's raises."""
    from .ops.varlen import VarlenInfo, varlen_attn
    dname = str(dtype).replace("torch.", "")
    T = sum(lengths)
    window = (-1, 0) if causal else (-1, -1)
    info = VarlenInfo(None, None, list(lengths), list(lengths), max(lengths), max(lengths))
    q4 = _meta(1, H, T, D, dtype=dtype, grad=train)
    auto_case = auto.case_name("attention", q=q4, k=q4, causal=False, window=window if causal else None,
                               varlen=info)
    mode = "fwd+bwd" if train else "fwd"
    kind = "varlen-causal" if causal else "varlen"
    cid = f"attention/{device}/{dname} {kind}/T{T}-H{H}-D{D}-docs{len(lengths)}/{mode}"
    pairs = sum(n * (n + 1) // 2 if causal else n * n for n in lengths)
    flops = 4 * H * pairs * D * (3.5 if train else 1.0)

    def make():
        g = torch.Generator().manual_seed(0)
        q, k, v, dout = (torch.randn(T, H, D, generator=g).to(device, dtype) for _ in range(4))
        c = torch.tensor([0] + list(lengths), dtype=torch.int32).cumsum(0).to(torch.int32).to(device)
        n, lmax = len(lengths), max(lengths)
        index = torch.zeros(n, lmax, dtype=torch.int64)
        valid = torch.zeros(n, lmax, dtype=torch.bool)
        start = 0
        for d, length in enumerate(lengths):
            index[d, :length] = torch.arange(start, start + length)
            valid[d, :length] = True
            start += length
        index, valid = index.to(device), valid.to(device)
        keymask = valid[:, None, None, :]                              # (N, 1, 1, lmax)

        def builtin(q, k, v):
            pq, pk, pv = (t[index].transpose(1, 2) for t in (q, k, v))    # (N, H, lmax, D)
            if causal:
                y = F.scaled_dot_product_attention(pq, pk, pv, is_causal=True)
            else:
                y = F.scaled_dot_product_attention(pq, pk, pv, attn_mask=keymask)
            return y.transpose(1, 2)[valid]                              # (T, H, D)
        fns = {impl: (lambda q, k, v, impl=impl: varlen_attn(q, k, v, c, c, lmax, lmax, window_size=window,
                                                             impl=impl))
               for impl in ("fused", "sdpa", "auto")}
        fns["torch"] = builtin
        return _attention_calls(fns, q, k, v, dout, train)
    return BenchCase(cid, "attention", device, auto_case, make, flops=flops)


# issue 32's varlen cases: packed documents (lengths drawn once, fixed here), (H, D).
VARLEN_LENGTHS = (300, 41, 777, 129, 512, 96, 193)  # T = 2048
VARLEN_CASES = ((8, 64),)


# KV-cache decoding, one query: (B, H, S_k, D); the first three are "decode small" (under
# ops/_attention.py's _SMALL_DECODE elements of K), (1, 8, 128, 64) sits on the boundary.
DECODE_SHAPES = ((1, 4, 64, 32), (1, 4, 128, 32), (4, 4, 64, 32), (1, 8, 128, 64), (1, 12, 1024, 64),
                 (8, 12, 1024, 64), (8, 12, 64, 64), (1, 12, 4096, 64))

# Grouped-query training (Llama/Mistral-style 4:1 and 2:1 head groups): (B, H, H_kv, S, D).
GQA_TRAIN_SHAPES = ((4, 8, 2, 256, 64), (8, 4, 2, 256, 32))

# issue 20's feature cases: (kind, B, H, S, D).
FEATURE_CASES = (("window", 1, 8, 2048, 64), ("documents", 1, 8, 2048, 64),
                 ("dropout", 8, 8, 512, 64), ("mask", 2, 8, 1024, 64), ("softcap", 4, 8, 512, 64),
                 ("window+softcap", 1, 8, 2048, 64), ("causal+padding", 8, 8, 512, 64),
                 ("dropout+padding", 8, 8, 512, 64))


def cases(device: str = "cpu") -> List[BenchCase]:
    """Every case for a device type, in the order `gencore bench --record` runs them."""
    out: List[BenchCase] = []
    # Training shapes: a GPT block at bench_attention's size and gpt-text's (12, 4, 64, 32).
    train_shapes: Tuple[tuple, ...] = ((8, 8, 512, 64), (4, 8, 256, 64), (12, 4, 64, 32))
    dtypes = (torch.float32, torch.bfloat16)
    for dtype in dtypes:
        for B, H, S, D in train_shapes:
            out.append(_attention_case(device, dtype, B, H, S, S, D, True, True))
        for B, H, Hkv, S, D in GQA_TRAIN_SHAPES:
            out.append(_attention_case(device, dtype, B, H, S, S, D, True, True, Hkv=Hkv))
    for B, H, S, D in train_shapes[1:]:
        out.append(_attention_case(device, torch.float32, B, H, S, S, D, False, True))
    # KV-cache decoding: one query against S_k keys.
    for dtype in dtypes:
        for B, H, Sk, D in DECODE_SHAPES:
            out.append(_attention_case(device, dtype, B, H, 1, Sk, D, True, False))
    for dtype in dtypes:
        for kind, B, H, S, D in FEATURE_CASES:
            out.append(_feature_case(device, dtype, kind, B, H, S, D))
    for dtype in dtypes:
        for H, D in VARLEN_CASES:
            for causal in (True, False):
                out.append(_varlen_case(device, dtype, H, D, VARLEN_LENGTHS, causal=causal))
    for n in (64, 4096, 1 << 20):
        out.append(_gan_case(device, n))
    for rows, cols in ((64, 100), (256, 32000), (1280, 5000)):
        for train in (False, True):
            out.append(_gumbel_case(device, rows, cols, train))
    return out


def record(device: str = "cpu", select: str | None = None, out=None, log=print):
    """Times every case of the device type (those whose id contains `select`, if given) and
    writes their records to `out` (default: gencore.records.local_dir()). Returns the file."""
    from . import records, timing
    chosen = [c for c in cases(device) if select is None or select in c.id]
    if not chosen:
        raise ValueError(f"no bench case matches {select!r} on {device}")
    rows = []
    for case in chosen:
        fns = case.make()
        stats = timing.round_robin(fns, device)
        rows += [records.make_record(case.op, case.id, impl, st, device, bytes_moved=case.bytes,
                                     flops=case.flops, auto_case=case.auto_case)
                 for impl, st in stats.items()]
        alt = auto.builtin_impl(case.op)
        log(f"{case.id:<62} " + "  ".join(f"{impl} {st['median'] * 1e6:9.1f} us" for impl, st in stats.items())
            + f"   {alt}/fused {stats[alt]['median'] / stats['fused']['median']:.2f}x")
    return records.save(rows, records.machine_class(device), out or records.local_dir())
