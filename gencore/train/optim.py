"""Muon: momentum SGD whose update for a weight matrix is orthogonalised (Newton-Schulz).

    opt = Muon([{"params": hidden_matrices, "muon": True},
                {"params": everything_else, "muon": False, "weight_decay": 0.0}],
               lr=3e-3, weight_decay=0.1)

For a matrix parameter (a group with `muon=True`) the step is: momentum buffer
`m = beta * m + g`, the Nesterov direction `u = g + beta * m`, then `u` replaced by the
orthogonal matrix nearest to it (its singular values all set to about 1, by a few Newton-Schulz
iterations: no SVD) and scaled to an RMS of 0.2, the RMS of a typical AdamW update, so one
learning rate serves both kinds of groups. Every other parameter (embeddings, the LM head, norm
gains) gets AdamW. Weight decay is decoupled (`p -= lr * wd * p`) in both.

Why: for the matrices of a transformer the orthogonalised update changes every direction of the
weight by the same amount, instead of the few dominant ones the raw gradient favours; at a fixed
token budget it trains to a lower loss than AdamW (Keller Jordan's Muon, 2024, used in the
modded-nanoGPT speedruns; the RMS matching follows Moonshot AI's "Muon is scalable", 2025).
Matrices of the same shape are orthogonalised together in one batched matmul per iteration.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch

from .precision import native_bf16

__all__ = ["Muon", "orthogonalize", "fused"]

# Quintic Newton-Schulz coefficients chosen (by Keller Jordan) to push singular values in
# (0, 1] up to about 1 within a few steps; they land in [0.7, 1.2], not exactly 1, which
# training does not mind.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def fused(params) -> Optional[bool]:
    """`fused=` for torch's Adam/AdamW: True where every parameter is a floating-point tensor on
    the CPU or a CUDA device (one kernel for all parameters, and a skipped step, `found_inf`,
    decided on the device: see the Trainer's NaN/inf guard), else None (the default)."""
    params = list(params)
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None


def orthogonalize(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately U V^T for g = U S V^T (..., m, n): every singular value mapped near 1.

    Each step maps X -> p(X X^T) X with p(A) = a + b A + c A^2, on the smaller Gram matrix. The
    iterations run in `dtype` (bfloat16 by default: the result is approximate anyway, and bf16
    matmuls take half the time of float32 ones on CPUs with AVX512-BF16 and on GPUs)."""
    a, b, c = _NS_COEFFS
    wide = g.shape[-2] <= g.shape[-1]
    x = g if wide else g.mT  # x (m, n) with m <= n
    m, n = x.shape[-2:]
    x = (x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)).to(dtype)  # singular values in (0, 1]
    x = x.reshape(-1, m, n)
    for _ in range(steps):
        gram = torch.bmm(x, x.mT)
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = torch.baddbmm(x, poly, x, beta=a, alpha=1.0)        # a X + (b A + c A^2) X
    x = x.reshape(g.shape[:-2] + (m, n)).to(g.dtype)
    return x if wide else x.mT


class Muon(torch.optim.Optimizer):
    """Muon for the groups with `muon=True` (2-D parameters), AdamW for the others.

    Args:
        lr: learning rate of every group (a group may set its own).
        momentum: Muon's momentum (Nesterov).
        betas, eps: AdamW's, for the non-Muon groups.
        weight_decay: decoupled, scaled by lr, for every group that does not set its own.
        ns_steps: Newton-Schulz iterations.
        ns_dtype: their precision; None: bfloat16 where the device computes it natively
            (gencore.train.native_bf16), float32 elsewhere.
    """

    def __init__(self, params, lr: float = 3e-3, momentum: float = 0.95,
                 betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.0, ns_steps: int = 5,
                 ns_dtype: Optional[torch.dtype] = None):
        if not lr > 0:
            raise ValueError(f"Muon: lr must be > 0, got {lr}")
        if not 0.0 <= momentum < 1.0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Muon: momentum and betas must lie in [0, 1), got {momentum}, {betas}")
        if weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"Muon: weight_decay must be >= 0 and ns_steps >= 1, got "
                             f"{weight_decay}, {ns_steps}")
        super().__init__(params, dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps,
                                      weight_decay=weight_decay, ns_steps=ns_steps, muon=False))
        for g in self.param_groups:
            if g["muon"] and any(p.dim() != 2 for p in g["params"]):
                raise ValueError("Muon: a group with muon=True may hold only 2-D parameters")
        self.ns_dtype = ns_dtype

    # GradScaler's protocol (as torch's fused Adam/AdamW): `found_inf` (a 0-dim float tensor, 1.0
    # when a gradient is not finite) makes the step leave parameters and state as they were,
    # decided on the device; `grad_scale` divides the gradients first. The Trainer's NaN/inf guard
    # sets `found_inf` so that a skipped step costs no host-device sync.
    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = getattr(self, "found_inf", None)
        grad_scale = getattr(self, "grad_scale", None)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if grad_scale is not None:
                torch._foreach_div_(grads, grad_scale.to(grads[0].device))
            keep = None
            if found_inf is not None:
                skip = found_inf.to(grads[0].device) > 0
                for g in grads:  # NaN * 0 is NaN: zero them, then scale every change by keep
                    g.masked_fill_(skip, 0.0)
                keep = (~skip).to(torch.float32)
            (self._muon_step if group["muon"] else self._adamw_step)(group, params, grads, keep)
        return loss

    def _muon_step(self, group, params: List[torch.Tensor], grads: List[torch.Tensor],
                   keep: Optional[torch.Tensor]) -> None:
        lr, beta, wd = group["lr"], group["momentum"], group["weight_decay"]
        bufs = []
        for p in params:
            if "momentum_buffer" not in self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(self.state[p]["momentum_buffer"])
        # keep = 1: buf = beta * buf + g; keep = 0 (skipped step, g zeroed): buf unchanged
        torch._foreach_mul_(bufs, beta if keep is None else keep * beta + (1 - keep))
        torch._foreach_add_(bufs, grads)
        nesterov = torch._foreach_add(grads, bufs, alpha=beta)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd if keep is None else 1 - lr * wd * keep)
        by_shape: Dict[torch.Size, Tuple[List[torch.Tensor], List[torch.Tensor]]] = {}
        for p, u in zip(params, nesterov):
            ps, us = by_shape.setdefault(p.shape, ([], []))
            ps.append(p)
            us.append(u)
        for shape, (ps, us) in by_shape.items():
            sharded = hasattr(ps[0], "full_tensor")  # FSDP2: orthogonalise the whole matrices
            if sharded:
                us = [u.full_tensor() for u in us]
            dtype = self.ns_dtype or (torch.bfloat16 if native_bf16(ps[0].device) else torch.float32)
            update = orthogonalize(torch.stack(us), group["ns_steps"], dtype).to(ps[0].dtype)
            scale = 0.2 * max(shape) ** 0.5  # RMS 0.2: an orthogonal m x n matrix has 1/sqrt(max)
            update.mul_(-lr * scale if keep is None else keep * (-lr * scale))
            updates = list(update.unbind(0))
            if sharded:
                from torch.distributed.tensor import distribute_tensor
                updates = [distribute_tensor(u, p.device_mesh, p.placements, src_data_rank=None)
                           for u, p in zip(updates, ps)]
            torch._foreach_add_(ps, updates)

    def _adamw_step(self, group, params: List[torch.Tensor], grads: List[torch.Tensor],
                    keep: Optional[torch.Tensor]) -> None:
        """torch.optim.AdamW's update (decoupled weight decay); the step counts and bias
        corrections stay tensors on the parameters' device (no host reads)."""
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for p, g in zip(params, grads):
            state = self.state[p]
            if "exp_avg" not in state:
                state.update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                             exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
            step, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
            k = 1.0 if keep is None else keep.to(step.device)
            step.add_(k)  # per parameter: some may have missed steps
            m.lerp_(g, (1 - b1) * k)
            v.mul_(1 - (1 - b2) * k).addcmul_(g, g, value=1 - b2)  # g is zero when skipped
            t = step.to(p.device)
            denom = (v.sqrt() / (1 - b2 ** t).clamp_min(1e-30).sqrt()).add_(eps)
            if wd:
                p.mul_(1 - lr * wd * k)
            upd = m / denom * (-lr / (1 - b1 ** t).clamp_min(1e-30))
            p.add_(upd if keep is None else torch.where(keep.to(p.device) > 0, upd, 0.0))
