"""Reference GAN losses in plain PyTorch: the specification of gencore.ops.gan_loss.

With r = real logits, f = fake logits, softplus(x) = log(1 + exp(x)), relu(x) = max(x, 0):

    kind          discriminator                              generator
    bce           softplus(-r) + softplus(f)                 softplus(-f)       (non-saturating)
    hinge         relu(1 - r) + relu(1 + f)                  -f
    wasserstein   f - r                                      -f
    rsgan         softplus(-(r - f))                         softplus(-(f - r))
    ragan         softplus(-(r - mean f)) + softplus(f - mean r)
                                                             softplus(-(f - mean r)) + softplus(r - mean f)

A loss made of a real term and a fake term reduces each term over its own tensor and adds them
("mean": mean(term_r) + mean(term_f), "sum": sum + sum), so real and fake may hold different
numbers of logits. rsgan pairs r and f elementwise: their shapes must match. Reduction "none"
returns the per-element loss (term_r + term_f, so the shapes must match where both appear); it is
not defined for ragan, whose terms depend on the means of the other side.

Math is float32 (float64 for float64 inputs); the loss comes back in the input dtype. Empty inputs
follow torch: a mean over nothing is NaN, a sum over nothing 0. NaN logits give a NaN loss.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

KINDS = ("bce", "hinge", "wasserstein", "rsgan", "ragan")
ROLES = ("discriminator", "generator")
REDUCTIONS = ("none", "mean", "sum")
# (kind, role) pairs whose loss does not read the real logits.
FAKE_ONLY = {("bce", "generator"), ("hinge", "generator"), ("wasserstein", "generator")}


def loss_terms(r: Optional[torch.Tensor], f: torch.Tensor, kind: str, role: str):
    """The loss of `kind` for `role` before its reduction: a list of elementwise terms (one per
    side), in the dtype of r and f. The reference adds their reductions; `gencore check` sizes
    its tolerance by them (gencore.tolerance.loss_l1)."""
    disc = role == "discriminator"
    sp = F.softplus
    if kind == "bce":
        return [sp(-r), sp(f)] if disc else [sp(-f)]
    if kind == "hinge":
        return [F.relu(1 - r), F.relu(1 + f)] if disc else [-f]
    if kind == "wasserstein":
        return [-r, f] if disc else [-f]
    if kind == "rsgan":
        return [sp(-(r - f))] if disc else [sp(-(f - r))]
    if kind == "ragan":
        if disc:
            return [sp(-(r - f.mean())), sp(f - r.mean())]
        return [sp(-(f - r.mean())), sp(r - f.mean())]
    raise ValueError(f"gan_loss: unknown kind {kind!r}")


def gan_loss_reference(real_logits: Optional[torch.Tensor], fake_logits: torch.Tensor, kind: str,
                       role: str, reduction: str = "mean") -> torch.Tensor:
    """The GAN loss of `kind` for `role`, differentiable with respect to both logit tensors."""
    acc = torch.float64 if fake_logits.dtype == torch.float64 else torch.float32
    f = fake_logits.to(acc)
    r = None if (kind, role) in FAKE_ONLY else real_logits.to(acc)
    terms = loss_terms(r, f, kind, role)
    if reduction == "none":
        out = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    elif reduction == "mean":
        out = sum(t.mean() for t in terms)
    elif reduction == "sum":
        out = sum(t.sum() for t in terms)
    else:
        raise ValueError(f"gan_loss: unknown reduction {reduction!r}")
    return out.to(fake_logits.dtype)
