"""gencore.ops.gumbel_softmax: fused Gumbel-softmax sampling (soft and straight-through hard).

The fused kernels (csrc/cpu/gumbel_softmax.cpp, csrc/cuda/gumbel_softmax*.cu) generate the noise
in-kernel with Philox keyed by (seed, offset, element index), so they match the reference
(reference/gumbel_softmax.py) sample for sample: soft outputs to rounding, hard one-hots exactly.
Where impl="auto" does not run the kernel it runs torch's own `F.gumbel_softmax` (impl="torch"):
the same distribution drawn with torch's RNG, so other samples than gencore's.
"""
from __future__ import annotations

import operator
from typing import Optional

import torch
import torch.nn.functional as F

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
        impl: "auto" (the fused kernel where it passed its check here and evidence about this
            machine shows it faster than torch's, else torch's `F.gumbel_softmax`: see
            gencore/ops/auto.py), "fused", "reference", or "torch". "fused" and "reference" draw
            gencore's counter-based noise (the same samples on every device for a seed); "torch",
            and "auto" where it runs torch's, draw torch's noise: the same distribution, other
            samples (and torch's `exponential_`, not gencore's never-infinite noise).

    Returns a tensor of the shape and dtype of `logits`. Math is float32 (float64 for float64).
    Rows holding NaN or +inf, or only -inf, come out as NaN rows, as with torch.softmax.
    """
    dim = _check(logits, tau, dim)
    if logits.numel() == 0:
        return logits.clone()  # empty in, empty out (still attached to the graph)
    choice = auto.choose("gumbel_softmax", impl, logits.device.type, logits=logits, tau=tau,
                         hard=hard, dim=dim)
    if choice == auto.BUILTIN:
        return gumbel_softmax_torch(logits, tau, hard, dim, generator)
    seed_offset = philox_seed_offset(generator, logits.device)  # on the device under CUDA-graph capture
    if choice == auto.FUSED:
        out, _ = torch.ops.gencore.gumbel_softmax(logits, seed_offset, float(tau), bool(hard), dim)
        return out
    return gumbel_softmax_reference(logits, seed_offset[0], seed_offset[1], tau, hard, dim)


def gumbel_softmax_torch(logits: torch.Tensor, tau: float, hard: bool, dim: int,
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """torch's Gumbel-softmax (`F.gumbel_softmax`), with `generator` where one is given."""
    if generator is None:
        return F.gumbel_softmax(logits, tau=tau, hard=hard, dim=dim)
    noise = -torch.empty_like(logits, memory_format=torch.legacy_contiguous_format).exponential_(
        generator=generator).log()
    soft = ((logits + noise) / tau).softmax(dim)
    if not hard:
        return soft
    index = soft.argmax(dim, keepdim=True)
    return torch.zeros_like(soft).scatter_(dim, index, 1.0) - soft.detach() + soft


# -- what auto sees (ops/auto.py) -------------------------------------------------------------------

def _trains(t: torch.Tensor) -> bool:
    return t.requires_grad and torch.is_grad_enabled()


def _auto_key(logits, **_):
    return logits.dtype, (logits.numel().bit_length() - 1) // 2, _trains(logits)


def _auto_case(logits, **_) -> str:
    dtype = str(logits.dtype).replace("torch.", "")
    return f"{dtype} {'fwd+bwd' if _trains(logits) else 'fwd'} {auto.size_class(logits.numel())}"


def _auto_calls(device_type, logits, tau=1.0, hard=False, dim=-1):
    x = torch.randn(logits.shape, device=logits.device).to(logits.dtype)
    impls = {"fused": lambda t: gumbel_softmax(t, tau, hard, dim, impl="fused"),
             "builtin": lambda t: gumbel_softmax_torch(t, tau, hard, dim)}
    if not _trains(logits):
        def forward(fn):
            def call():
                with torch.no_grad():
                    fn(x)
            return call
        return {name: forward(fn) for name, fn in impls.items()}
    leaf, grad = x.clone().requires_grad_(True), torch.randn_like(x)

    def train(fn):
        def call():
            leaf.grad = None
            fn(leaf).backward(grad)
        return call
    return {name: train(fn) for name, fn in impls.items()}


auto.register("gumbel_softmax", key=_auto_key, case=_auto_case, calls=_auto_calls, builtin="torch")


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
