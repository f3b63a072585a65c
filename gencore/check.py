"""`gencore check`: every compiled kernel against its reference, on every available device.

Run it after installing: it says whether the fused kernels built on this machine compute what
their pure-PyTorch references (the specification) compute, forward and gradients, in every dtype
the ops take (float32, float64, bfloat16, float16), on a few shapes per op with odd sizes (1, 3,
non-powers of two) and the masks and modes each op has.

The rule (the one tests/ uses, FlashAttention's): the inputs are rounded to the dtype once; the
reference run in float64 on those inputs (and, for Gumbel-softmax, on the same noise: same seed)
is the gold; the fused kernel passes when its largest error against the gold, for the output and
every gradient, is at most FACTOR times the error the reference itself makes at that dtype, plus
one rounding of the reduction behind it (gencore.tolerance: an implementation cannot be asked to
beat rounding the result once).
Gumbel-softmax hard samples are one-hots: they must equal the reference's exactly.

impl="auto" runs a kernel only once it has passed these checks on the machine (gencore/ops/auto.py
runs `gencore check --op OP` in a child process before it first calibrates an op); `gencore info`
says what auto runs.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import _backend
from .ops import attention, gan_loss, gumbel_softmax
from .ops._attention import cuda_kernel_covers
from .ops.reference.gan_loss import FAKE_ONLY, KINDS, ROLES, loss_terms
from .ops.reference.attention import attention_reference
from .ops.reference.gumbel_softmax import gumbel_noise
from .ops.rng import philox_seed_offset
from .tolerance import FACTOR, attention_l1, loss_l1, max_abs_err, softmax_l1, within_2x

__all__ = ["CASES", "DTYPES", "FACTOR", "OPS", "Result", "check_case", "main", "run_checks"]

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
OPS = ("gumbel_softmax", "attention", "gan_loss")  # every compiled op, by its schema name

Tensors = Dict[str, torch.Tensor]


@dataclass
class Trial:
    """One call of an op: `run(impl, gold)` returns its output and gradients by name, computed
    with impl ("fused" or "reference") on the inputs in the checked dtype, or (gold=True) on
    the same inputs in float64. `exact`: names that must equal the reference's bit for bit."""
    run: Callable[[str, bool], Tensors]
    exact: Tuple[str, ...] = ()
    # L1 sizes of the reductions behind each output (gencore.tolerance), by name; |gold| where absent.
    l1: Callable[[], Tensors] = dict


@dataclass(frozen=True)
class Case:
    op: str
    name: str
    trials: Callable[[torch.device, torch.dtype], List[Trial]]


@dataclass
class Result:
    op: str
    device: str
    dtype: torch.dtype
    case: str
    error: float = 0.0        # the worst tensor's error against the gold (or the reference)
    tolerance: float = 0.0
    tensor: str = ""          # which output or gradient that was
    passed: bool = True
    note: str = ""            # why a check could not run


# ----------------------------------------------------------------------------- the cases

def _randn(shape, g: torch.Generator, device, dtype, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(device, dtype)


def _grads(out: torch.Tensor, inputs: Dict[str, Optional[torch.Tensor]], upstream) -> Tensors:
    """{'out': out, 'd<name>': gradient} for every input given."""
    given = {n: t for n, t in inputs.items() if t is not None}
    grads = torch.autograd.grad(out, list(given.values()), upstream, allow_unused=True)
    res = {"out": out.detach()}
    for (n, t), g in zip(given.items(), grads):
        res[f"d{n}"] = torch.zeros_like(t) if g is None else g
    return res


def _leaf(t: Optional[torch.Tensor], gold: bool) -> Optional[torch.Tensor]:
    if t is None:
        return None
    return (t.double() if gold else t).detach().clone().requires_grad_(True)


def _gumbel(shapes: Sequence[Tuple[Tuple[int, ...], int]], hard: bool, tau: float = 0.7):
    """The reference's gradient here is its backward formula, dlogits = y (g - <g, y>) / tau in
    float32 (float64 for float64), on its own soft sample as the op returns it, in the checked
    dtype: the fused backward starts from the saved sample (DESIGN.md: it saves the soft sample,
    as torch.softmax saves its output), so that rounding is part of the op, not an error of the
    kernel. Measured: the fused error equals this one's in bfloat16 and float16."""
    def trials(device, dtype):
        out = []
        for i, (shape, dim) in enumerate(shapes):
            g = torch.Generator().manual_seed(i)
            x, w = _randn(shape, g, device, dtype), _randn(shape, g, device, dtype)

            def sample(xi, impl, hard_, seed=i, dim=dim):
                return gumbel_softmax(xi, tau=tau, hard=hard_, dim=dim, impl=impl,
                                      generator=torch.Generator().manual_seed(100 + seed))

            def run(impl, gold, x=x, w=w, dim=dim):
                if impl == "reference" and not gold:
                    acc = torch.float64 if dtype == torch.float64 else torch.float32
                    y, soft = sample(x, impl, hard).detach(), sample(x, impl, False).to(acc)
                    gw = w.to(acc)
                    grad = soft * (gw - (gw * soft).sum(dim, keepdim=True)) / tau
                    return {"out": y, "dlogits": grad.to(dtype)}
                xi = _leaf(x, gold)
                return _grads(sample(xi, impl, hard), {"logits": xi}, w.double() if gold else w)
            def l1(x=x, w=w, dim=dim, seed=i):  # the exponent z = (x + g) / tau on the same noise
                so = philox_seed_offset(torch.Generator().manual_seed(100 + seed))
                g = gumbel_noise(x.shape, so[0], so[1], x.device, torch.float64)
                sizes = softmax_l1((x.double() + g) / tau, dim, w, tau)
                return {"out": sizes["out"], "dlogits": sizes["grad"]}
            out.append(Trial(run, exact=("out",) if hard else (), l1=l1))
        return out
    return trials


def _attention(shapes: Sequence[Tuple[int, int, int, int, int, int]], causal: bool,
               masked: bool, features=None):
    """shapes: (B, H, H_kv, S_q, S_k, D). features(B, H, S_q, S_k, g, device): the keyword
    features of the call (window, softcap, document_ids, attn_mask). On CUDA the kernel runs
    bf16/fp16 at head dims 64, 96, 128 only (impl="fused" refuses the rest), every feature
    included: other head dims become 64 there, other dtypes no trials."""
    def trials(device, dtype):
        out = []
        for i, (B, H, Hkv, Sq, Sk, D) in enumerate(shapes):
            if device.type == "cuda":
                if not cuda_kernel_covers(dtype, 64):
                    break
                D = D if cuda_kernel_covers(dtype, D) else 64
            g = torch.Generator().manual_seed(i)
            q, dout = _randn((B, H, Sq, D), g, device, dtype), _randn((B, H, Sq, D), g, device, dtype)
            k, v = _randn((B, Hkv, Sk, D), g, device, dtype), _randn((B, Hkv, Sk, D), g, device, dtype)
            mask = None
            if masked:  # about 40% of the keys ignored; the newest one always seen
                mask = torch.rand(B, Sk, generator=g) < 0.4
                mask[:, -1] = False
                mask = mask.to(device)

            kw = features(B, H, Sq, Sk, g, device) if features else {}

            def run(impl, gold, q=q, k=k, v=v, dout=dout, mask=mask, kw=kw):
                qi, ki, vi = (_leaf(t, gold) for t in (q, k, v))
                y = attention(qi, ki, vi, causal=causal, key_padding_mask=mask, impl=impl, **kw)
                return _grads(y, {"q": qi, "k": ki, "v": vi}, dout.double() if gold else dout)
            def l1(q=q, k=k, v=v, dout=dout, mask=mask, kw=kw):
                q, k, v = q.double(), k.double(), v.double()
                eye = torch.eye(k.shape[2], dtype=q.dtype, device=q.device).expand(*k.shape[:2], -1, -1)
                probs = attention_reference(q, k, eye, causal, mask, **kw)[0]
                return attention_l1(q, k, v, dout, probs, 1.0 / math.sqrt(q.shape[-1]))
            out.append(Trial(run, l1=l1))
        return out
    return trials


def _documents(B, H, Sq, Sk, g, device):
    """Packed documents: random cut points, the ids sorted (as packing makes them)."""
    ids = (torch.rand(B, Sk, generator=g) < 0.05).cumsum(-1)
    return dict(document_ids=ids.to(device))


def _gan(kind: str):
    """Both roles, each reduction the kind has, real and fake of different sizes where allowed."""
    paired = kind == "rsgan"  # rsgan pairs real and fake logits elementwise
    sizes = {"mean": ((5, 7, 3), (5, 7, 3)) if paired else ((67,), (4, 1, 3, 5)),
             "sum": ((3,), (3,)) if paired else ((1,), (3,)),
             "none": ((4, 1, 5, 7), (4, 1, 5, 7))}
    reductions = ("mean", "sum") if kind == "ragan" else ("mean", "sum", "none")

    def trials(device, dtype):
        out = []
        for i, (role, red) in enumerate((r, red) for r in ROLES for red in reductions):
            g = torch.Generator().manual_seed(i)
            rs, fs = sizes[red]
            real = None if (kind, role) in FAKE_ONLY else _randn(rs, g, device, dtype, 3.0)
            fake = _randn(fs, g, device, dtype, 3.0)
            up = _randn(fs, g, device, dtype) if red == "none" else torch.ones((), device=device, dtype=dtype)

            def run(impl, gold, real=real, fake=fake, up=up, role=role, red=red):
                ri, fi = _leaf(real, gold), _leaf(fake, gold)
                loss = gan_loss(ri, fi, kind, role, red, impl=impl)
                return _grads(loss, {"real": ri, "fake": fi}, up.double() if gold else up)

            def l1(run=run, real=real, fake=fake, role=role, red=red):  # sigmoid(x) rounds its exponent: 1 + |x|
                gold = run("reference", True)
                sizes = {"dfake": gold["dfake"].abs() * (1 + fake.double().abs())}
                if real is not None:
                    sizes["dreal"] = gold["dreal"].abs() * (1 + real.double().abs())
                # The loss is a sum: sized by its terms, not its result (they cancel: loss_l1).
                ri, fi = _leaf(real, True), _leaf(fake, True)
                sizes["out"] = loss_l1(loss_terms(ri, fi, kind, role), [x for x in (ri, fi) if x is not None], red)
                return sizes
            out.append(Trial(run, l1=l1))
        return out
    return trials


_GUMBEL_LAST = [((1,), -1), ((3, 5), -1), ((7, 1000), -1)]
_GUMBEL_OTHER = [((5, 3), 0), ((4, 33, 6), 1)]
CASES: Tuple[Case, ...] = (
    Case("gumbel_softmax", "soft, last dim", _gumbel(_GUMBEL_LAST, hard=False)),
    Case("gumbel_softmax", "soft, dim 0/1", _gumbel(_GUMBEL_OTHER, hard=False)),
    Case("gumbel_softmax", "hard, last dim", _gumbel(_GUMBEL_LAST, hard=True)),
    Case("gumbel_softmax", "hard, dim 0/1", _gumbel(_GUMBEL_OTHER, hard=True)),
    Case("attention", "full", _attention([(2, 3, 3, 17, 45, 40), (1, 2, 2, 5, 5, 64)], False, False)),
    Case("attention", "causal", _attention([(1, 2, 2, 37, 37, 16), (2, 1, 1, 7, 7, 24)], True, False)),
    Case("attention", "key padding", _attention([(2, 4, 4, 20, 33, 24), (1, 2, 2, 9, 9, 8)], True, True)),
    Case("attention", "GQA, causal", _attention([(2, 4, 2, 17, 17, 32), (1, 6, 2, 9, 30, 40)], True, False)),
    Case("attention", "decode, GQA+pad", _attention([(2, 4, 2, 1, 1, 8), (2, 4, 2, 3, 100, 64),
                                                      (1, 2, 1, 1, 77, 40)], True, True)),
    Case("attention", "window, softcap", _attention([(2, 4, 2, 70, 70, 32), (1, 2, 2, 9, 30, 16)], True, False,
                                                    lambda B, H, Sq, Sk, g, d: dict(window=(16, -1), softcap=4.0))),
    Case("attention", "documents, pad", _attention([(2, 4, 2, 70, 70, 32)], True, True, _documents)),
    Case("attention", "bool mask", _attention([(2, 4, 2, 40, 70, 32)], False, False, lambda B, H, Sq, Sk, g, d: dict(
        attn_mask=(torch.rand(B, 1, Sq, Sk, generator=g) < 0.6).to(d)))),
    *(Case("gan_loss", f"{kind}, D+G", _gan(kind)) for kind in KINDS),
)


# ----------------------------------------------------------------------------- running them

def check_case(case: Case, device: torch.device, dtype: torch.dtype) -> Result:
    res = Result(case.op, str(device), dtype, case.name)
    if not _backend.has_kernel(case.op, device.type):
        res.passed, res.note = False, "no fused kernel built for this device"
        return res
    worst = -1.0
    try:
        trials = case.trials(device, dtype)
        if not trials:
            res.note = "no fused kernel for this dtype on this device"
            return res
        for t in trials:
            fused, ref, gold = t.run("fused", False), t.run("reference", False), t.run("reference", True)
            l1 = t.l1()
            for name in ref:
                if name in t.exact:
                    err, tol = max_abs_err(fused[name], ref[name]), 0.0
                else:
                    _, err, tol = within_2x(gold[name], ref[name], fused[name], l1.get(name), dtype)
                bad = err > tol
                ratio = float("inf") if bad and tol == 0 else (err / tol if tol else 0.0)
                if ratio > worst:
                    worst = ratio
                    res.error, res.tolerance, res.tensor = err, tol, name
                res.passed = res.passed and not bad and fused[name].dtype == ref[name].dtype
    except Exception as exc:  # a kernel that raises fails its row; the others still run
        res.passed, res.note = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return res


def run_checks(devices: Sequence[torch.device], ops: Sequence[str] = OPS,
               report: Callable[[Result], None] = lambda r: None) -> List[Result]:
    """Every case of `ops` in every dtype on every device; `report` sees each result as it
    comes."""
    results = []
    for dev in devices:
        for case in CASES:
            if case.op not in ops:
                continue
            for dtype in DTYPES:
                r = check_case(case, dev, dtype)
                report(r)
                results.append(r)
    return results


_HEADER = (f"{'op':<15} {'device':<7} {'dtype':<9} {'case':<17} {'max error':>9} {'(of)':<7} "
           f"{'tolerance':>9}  result")


def format_row(r: Result) -> str:
    dtype = str(r.dtype).replace("torch.", "")
    verdict = "pass" if r.passed else "FAIL"
    if r.note:
        return f"{r.op:<15} {r.device:<7} {dtype:<9} {r.case:<17} {r.note}  {verdict}"
    return (f"{r.op:<15} {r.device:<7} {dtype:<9} {r.case:<17} {r.error:9.2e} {r.tensor:<7} "
            f"{r.tolerance:9.2e}  {verdict}")


def main(devices: Sequence[str], ops: Sequence[str] = OPS, out=print) -> int:
    """What `gencore check` does: prints the table and a verdict; 0 when every check passed
    with the compiled core in use, 1 otherwise."""
    if _backend.build_info() is None:
        out(f"gencore check: FAILED: the compiled core is not used ({_backend.reason()}); every "
            "op runs its PyTorch reference. Build it with `pip install --no-build-isolation -e .` "
            "(`python -m gencore info` shows what is built).")
        return 1
    devs = [torch.device(d) for d in devices]
    out(f"gencore check: fused kernels vs their references on {', '.join(map(str, devs))}; a check "
        f"passes when the fused error against a float64 gold is <= {FACTOR:g} x (the reference's own "
        f"error + one rounding of the reduction) (gencore.tolerance); hard one-hots exactly")
    out(_HEADER)
    t0 = time.time()
    results = run_checks(devs, ops, report=lambda r: out(format_row(r)))
    failed = [r for r in results if not r.passed]
    seconds = time.time() - t0
    if failed:
        names = sorted({f"{r.op} on {r.device}" for r in failed})
        out(f"gencore check: FAILED: {len(failed)} of {len(results)} checks ({', '.join(names)}) "
            f"in {seconds:.0f} s")
        return 1
    out(f"gencore check: all {len(results)} checks passed in {seconds:.0f} s")
    return 0
