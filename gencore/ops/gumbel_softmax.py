"""gencore.ops.gumbel_softmax: fused Gumbel-softmax sampling (soft and straight-through hard).

The fused kernels (csrc/cpu/gumbel_softmax.cpp, csrc/cuda/gumbel_softmax*.cu) generate the noise
in-kernel with Philox keyed by (seed, offset, element index), so they match the reference
(reference/gumbel_softmax.py) sample for sample: soft outputs to rounding, hard one-hots exactly.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch

from .. import _backend
from . import auto
from .reference.gumbel_softmax import gumbel_softmax_reference
from .rng import philox_seed_offset

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _check(logits: torch.Tensor, tau: float, dim: int) -> int:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"gumbel_softmax: logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dtype not in _FLOATING:
        raise TypeError(
            f"gumbel_softmax: logits must be float32, float64, bfloat16 or float16, got {logits.dtype}")
    if isinstance(tau, torch.Tensor):
        raise TypeError("gumbel_softmax: tau must be a Python number (it is a hyper-parameter)")
    if not tau > 0 or tau == float("inf"):
        raise ValueError(f"gumbel_softmax: tau must be a finite number > 0, got {tau}")
    if logits.dim() == 0:
        raise ValueError("gumbel_softmax: logits must have at least one dimension (the categories)")
    if isinstance(dim, bool) or not hasattr(type(dim), "__index__"):   # ints, numpy ints
        raise TypeError(f"gumbel_softmax: dim must be an int, got {type(dim).__name__} (the 4th "
                        "positional argument is dim here; F.gumbel_softmax's is eps: pass eps= by name)")
    if not -logits.dim() <= dim < logits.dim():
        raise IndexError(
            f"gumbel_softmax: dim {dim} is out of range for a {logits.dim()}-d tensor "
            f"(expected {-logits.dim()} <= dim < {logits.dim()})")
    return operator.index(dim) % logits.dim()


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False, dim: int = -1,
                   generator: Optional[torch.Generator] = None, impl: str = "auto", *,
                   eps: float = 1e-10) -> torch.Tensor:
    """Draws y ~ Gumbel-softmax(logits / tau) along `dim`.

    A drop-in for `F.gumbel_softmax(logits, tau=, hard=, eps=, dim=)` called with keywords, plus
    `generator=`. `eps` is accepted and unused, as in torch (the noise here is never inf).

    Args:
        logits: unnormalized log-probabilities; float32, float64, bfloat16 or float16, any strides.
        tau: temperature, > 0. Small tau gives near one-hot samples.
        hard: return one-hot samples (argmax), differentiated as the soft sample (straight-through).
        dim: the category dimension.
        generator: torch generator for the noise; default: torch's default CPU generator, so
            `torch.manual_seed` repeats runs and CPU and CUDA give the same samples.
        impl: "auto" (the fused kernel where built and measured faster, else the reference: see
            gencore/ops/auto.py), "fused", "reference".

    Returns a tensor of the shape and dtype of `logits`. Math is float32 (float64 for float64).
    Rows holding NaN or +inf, or only -inf, come out as NaN rows, as with torch.softmax.
    """
    dim = _check(logits, tau, dim)
    seed_offset = philox_seed_offset(generator)
    if logits.numel() == 0:
        return logits.clone()  # empty in, empty out (still attached to the graph)
    if auto.resolve("gumbel_softmax", impl, logits.device.type) == auto.FUSED:
        out, _ = torch.ops.gencore.gumbel_softmax(logits, seed_offset, float(tau), bool(hard), dim)
        return out
    return gumbel_softmax_reference(logits, seed_offset[0], seed_offset[1], tau, hard, dim)


# -- torch.library: fake kernels and autograd for the compiled op ---------------------------------

# The kernels return contiguous tensors whatever the input strides.
def _fake_forward(logits, seed_offset, tau, hard, dim):
    soft = logits.new_empty(logits.shape) if hard else logits.new_empty((0,))
    return logits.new_empty(logits.shape), soft


def _fake_backward(grad, soft, tau, dim):
    return soft.new_empty(soft.shape)


def _setup_context(ctx, inputs, output):
    _, _, tau, hard, dim = inputs
    out, soft = output
    ctx.save_for_backward(soft if hard else out)
    ctx.tau, ctx.dim = tau, dim
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a zero tensor


def _backward(ctx, grad_out, grad_soft):  # straight-through: gradients go through soft
    (soft,) = ctx.saved_tensors
    if grad_soft is not None and grad_soft.numel():  # hard mode, soft itself used downstream
        grad_out = grad_soft if grad_out is None else grad_out + grad_soft
    if grad_out is None:
        return None, None, None, None, None
    grad = torch.ops.gencore.gumbel_softmax_backward(grad_out, soft, ctx.tau, ctx.dim)
    return grad, None, None, None, None


# Double backward: dx = y * (g - <g, y>) / tau is differentiated in plain torch ops.
def _setup_context_bwd(ctx, inputs, output):
    grad, soft, tau, dim = inputs
    ctx.save_for_backward(grad, soft)
    ctx.tau, ctx.dim = tau, dim


def _backward_bwd(ctx, w):
    grad, soft = ctx.saved_tensors
    d_grad = torch.ops.gencore.gumbel_softmax_backward(w, soft, ctx.tau, ctx.dim)
    dot = (grad * soft).sum(ctx.dim, keepdim=True)
    w_soft = (w * soft).sum(ctx.dim, keepdim=True)
    d_soft = (w * (grad - dot) - grad * w_soft) / ctx.tau
    return d_grad, d_soft, None, None


_backend.register_autograd_and_fake(
    "gumbel_softmax", fake=_fake_forward, setup_context=_setup_context, backward=_backward)
_backend.register_autograd_and_fake(
    "gumbel_softmax_backward", fake=_fake_backward, setup_context=_setup_context_bwd,
    backward=_backward_bwd)
