"""The 2x rule (FlashAttention's), in one place: tests/, `gencore check` and the GPU scripts use it.

A fused result passes when its error against a float64 gold is at most FACTOR times (the error
of a baseline (the reference run in the checked dtype, or PyTorch's built-in) plus one rounding
of the reduction that produced it): eps of the accumulation type times the reduction's L1 size
(sum of |terms|), element by element. That slack matters only where the baseline happens to be exact (a softmax over
one key makes the reference's dk exactly 0 while the fused kernel keeps a rounding residue whose
size grows with the head dim); a fixed absolute slack is too tight for long sums and too loose
for short ones.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

FACTOR = 2.0


def accumulation_eps(dtype: torch.dtype) -> float:
    """The unit roundoff the kernels accumulate in: float64 for float64, float32 otherwise."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


class Verdict(NamedTuple):
    passed: bool
    error: float      # |got - gold| at the element nearest to failing (or failing worst)
    tolerance: float  # that element's FACTOR * (baseline error + rounding slack)


def max_abs_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| in float64; inf for a shape mismatch or a NaN."""
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    err = (a.double() - b.double()).abs().max().item()
    return math.inf if err != err else err


def within_2x(gold: torch.Tensor, base: torch.Tensor, got: torch.Tensor,
              l1: Optional[Union[torch.Tensor, float]] = None,
              dtype: Optional[torch.dtype] = None) -> Verdict:
    """Does `got` pass the 2x rule against `gold`, with `base` as the baseline?

    l1: the L1 size of the reduction behind each element (a tensor like gold, or a number);
    None takes |gold| itself, the rounding of the result once. dtype: the checked dtype
    (got's by default).
    """
    dtype = dtype or got.dtype
    if got.shape != gold.shape:
        return Verdict(False, math.inf, 0.0)
    if gold.numel() == 0:
        return Verdict(True, 0.0, 0.0)
    l1 = gold.abs() if l1 is None else torch.as_tensor(l1, dtype=torch.float64, device=gold.device).abs()
    # Element by element: a long sum's slack does not excuse an error in a short one.
    tol = (FACTOR * (max_abs_err(base, gold) + accumulation_eps(dtype) * l1.double())).expand(gold.shape)
    err = (got.double() - gold.double()).abs().nan_to_num(math.inf, math.inf, math.inf)
    worst = int((err - tol).argmax())  # the element nearest to failing, or the worst failure
    err, tol = err.reshape(-1)[worst].item(), tol.reshape(-1)[worst].item()
    return Verdict(err <= tol, err, tol)


def softmax_l1(z: torch.Tensor, dim: int, upstream: torch.Tensor, tau: float = 1.0) -> dict:
    """L1 sizes of y = softmax(z) (z the exponent, already divided by tau) and of the gradient
    y (w - <w, y>) / tau with respect to tau z, for upstream w, {"out", "grad"}, in float64.

    y_i carries one rounding of its exponent z_i - lse (weight 1 + |z_i| + |lse|); the gradient
    counts <w, y> by its L1 size and y's rounding with the difference's value.
    """
    z, w = z.double(), upstream.double()
    lse = z.logsumexp(dim, keepdim=True)
    y = (z - lse).exp()
    weight = 1 + z.abs() + lse.abs()
    diff = w - (w * y).sum(dim, keepdim=True)
    grad = y * (w.abs() + (w * y).abs().sum(dim, keepdim=True) + weight * diff.abs()) / tau
    return {"out": y * weight, "grad": grad}


def attention_l1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dout: torch.Tensor,
                 probs: torch.Tensor, scale: float) -> dict:
    """L1 sizes of attention's reductions, {"out", "dq", "dk", "dv"}, from the inputs and the
    probabilities P (B, H, S_q, S_k) in float64 (k, v may have fewer heads: grouped-query).

    out = P v, dv = P^T dO, dS = P (dO v^T - rowsum(dO * out)), dq = scale dS k, dk = scale dS^T q.
    P_ij carries one rounding of its exponent s_ij - lse_i (s = scale q k^T, lse the row's
    logsumexp), so it counts with weight 1 + |s_ij| + |lse_i|; in dS the two dot products count
    with their L1 sizes (the subtraction as an addition) and P's rounding with the difference's
    value.
    """
    q, k, v, dout, P = (t.double() for t in (q, k, v, dout, probs))
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    scores = scale * q @ k.transpose(-2, -1)
    lse = scores.masked_fill(P == 0, float("-inf")).logsumexp(-1, keepdim=True).nan_to_num(0.0, 0.0, 0.0)
    weight = 1 + scores.abs() + lse.abs()
    out = P @ v
    diff = dout @ v.transpose(-2, -1) - (dout * out).sum(-1, keepdim=True)
    dots = dout.abs() @ v.abs().transpose(-2, -1) + (dout.abs() * out.abs()).sum(-1, keepdim=True)
    dS = P * (dots + weight * diff.abs())
    Pw = P * weight
    fold = lambda t: t.unflatten(1, (-1, rep)).sum(2)  # query heads back onto their kv head
    return {"out": Pw @ v.abs(), "dq": scale * dS @ k.abs(),
            "dk": fold(scale * dS.transpose(-2, -1) @ q.abs()), "dv": fold(Pw.transpose(-2, -1) @ dout.abs())}
