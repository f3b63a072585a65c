"""gencore.ops.gan_loss: fused GAN losses (bce, hinge, wasserstein, rsgan, ragan).

One kernel pass (csrc/cpu/gan_loss.cpp, csrc/cuda/gan_loss_kernels.cu) computes the loss and its
gradients with respect to both logit tensors; autograd saves the gradients, so the backward only
scales them by the incoming gradient. The semantics are those of the reference
(reference/gan_loss.py). Results are deterministic: fixed-order reductions, no float atomics.

NaN logits are not an error (checking would cost a device sync): they give a NaN loss.
Double backward (create_graph=True through this loss) raises an error.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backend
from . import auto
from .reference.gan_loss import FAKE_ONLY, KINDS, REDUCTIONS, ROLES, gan_loss_reference

_FLOATING = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
_KIND = {k: i for i, k in enumerate(KINDS)}
_ROLE = {r: i for i, r in enumerate(ROLES)}
_REDUCTION = {r: i for i, r in enumerate(REDUCTIONS)}
# Codes (kind, role) whose loss does not read real_logits.
_FAKE_ONLY_CODES = frozenset((_KIND[k], _ROLE[r]) for k, r in FAKE_ONLY)
_CODES = {(k, r, red): (_KIND[k], _ROLE[r], _REDUCTION[red])
          for k in KINDS for r in ROLES for red in REDUCTIONS}
_Tensor, _is_compiling = torch.Tensor, torch.compiler.is_compiling


def _check(real_logits, fake_logits, kind, role, reduction) -> None:
    """Raises a clear error for every bad argument (the kernels check again, in C++)."""
    if kind not in _KIND:
        raise ValueError(f"gan_loss: kind must be one of {KINDS}, got {kind!r}")
    if role not in _ROLE:
        raise ValueError(f"gan_loss: role must be one of {ROLES}, got {role!r}")
    if reduction not in _REDUCTION:
        raise ValueError(f"gan_loss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    uses_real = (kind, role) not in FAKE_ONLY
    for name, t in (("fake_logits", fake_logits), ("real_logits", real_logits)):
        if t is None and (name == "real_logits" and not uses_real):
            continue
        if t is None:
            raise ValueError(f"gan_loss: kind {kind!r} role {role!r} needs {name}, got None")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"gan_loss: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATING:
            raise TypeError(f"gan_loss: {name} must be float32, float64, bfloat16 or float16, "
                            f"got {t.dtype}")
    if real_logits is None:
        return
    if real_logits.dtype != fake_logits.dtype:
        raise TypeError("gan_loss: real_logits and fake_logits must have the same dtype, got "
                        f"{real_logits.dtype} and {fake_logits.dtype}")
    if real_logits.device != fake_logits.device:
        raise ValueError("gan_loss: real_logits and fake_logits must be on the same device, got "
                         f"{real_logits.device} and {fake_logits.device}")
    if not uses_real:
        return
    if kind == "rsgan" and real_logits.shape != fake_logits.shape:
        raise ValueError("gan_loss: kind 'rsgan' pairs real and fake logits elementwise, so their "
                         f"shapes must match, got {tuple(real_logits.shape)} and "
                         f"{tuple(fake_logits.shape)}")
    if reduction == "none":
        if kind == "ragan":
            raise ValueError("gan_loss: reduction 'none' is not defined for kind 'ragan' (each "
                             "term depends on the mean of the other side); use 'mean' or 'sum'")
        if real_logits.shape != fake_logits.shape:
            raise ValueError(f"gan_loss: reduction 'none' for the {role} loss adds the real and "
                             "fake terms elementwise, so their shapes must match, got "
                             f"{tuple(real_logits.shape)} and {tuple(fake_logits.shape)}")


def gan_loss(real_logits: Optional[torch.Tensor], fake_logits: torch.Tensor, kind: str, role: str,
             reduction: str = "mean", impl: str = "auto") -> torch.Tensor:
    """The GAN loss `kind` for `role` ("discriminator" or "generator").

    Args:
        real_logits: discriminator logits on real data, any shape; may be None for the generator
            roles that do not read it (bce, hinge, wasserstein).
        fake_logits: discriminator logits on generated data, any shape. Its size may differ from
            real_logits' except for rsgan (pairs them) and reduction "none" with both terms.
        kind: "bce" (non-saturating), "hinge", "wasserstein", "rsgan", "ragan".
        role: "discriminator" or "generator".
        reduction: "mean" (each term averaged over its own tensor, then added), "sum", or "none"
            (the per-element loss; not for ragan).
        impl: "auto" (the fused kernel where it passed its check here and evidence about this
            machine shows it faster, else the composed built-ins of the reference: see
            gencore/ops/auto.py), "fused", "reference", or "builtin" (the composed built-ins).

    Returns the loss in the logits' dtype (float32 math; float64 for float64), a scalar unless
    reduction is "none". Gradients flow to both inputs. See reference/gan_loss.py for formulas.
    """
    # Fast path (GAN losses run on tiny tensors, where Python costs more than the kernel): where
    # auto picks the kernel, call it before any Python-side check; it checks everything again in
    # C++, and any error sends the call down the checked path, which raises the clear error.
    codes = _CODES.get((kind, role, reduction))
    if codes is not None and type(fake_logits) is _Tensor and not _is_compiling():
        if auto.choose("gan_loss", impl, fake_logits.device.type, fake_logits=fake_logits) == auto.FUSED:
            try:
                return torch.ops.gencore.gan_loss.default(real_logits, fake_logits, *codes)[0]
            except (RuntimeError, TypeError):
                pass
    _check(real_logits, fake_logits, kind, role, reduction)
    if auto.choose("gan_loss", impl, fake_logits.device.type, fake_logits=fake_logits) == auto.FUSED:
        return torch.ops.gencore.gan_loss.default(
            real_logits, fake_logits, _KIND[kind], _ROLE[role], _REDUCTION[reduction])[0]
    return gan_loss_reference(real_logits, fake_logits, kind, role, reduction)


# -- what auto sees (ops/auto.py): the size of the fake logits, the pass ------------------------------

def _auto_key(fake_logits):
    return fake_logits.dtype, (fake_logits.numel().bit_length() - 1) // 2


def _auto_case(fake_logits) -> str:
    dtype = str(fake_logits.dtype).replace("torch.", "")
    return f"{dtype} fwd+bwd {auto.size_class(fake_logits.numel())}"


def _auto_calls(device_type, fake_logits):
    """The discriminator's non-saturating loss on real and fake logits of the call's size."""
    n = fake_logits.numel()
    real, fake = ((torch.randn(n, device=fake_logits.device) * 2).to(fake_logits.dtype).requires_grad_(True)
                  for _ in range(2))

    def call(impl):
        def run():
            real.grad = fake.grad = None
            gan_loss(real, fake, "bce", "discriminator", impl=impl).backward()
        return run
    return {"fused": call("fused"), "builtin": call("builtin")}


auto.register("gan_loss", key=_auto_key, case=_auto_case, calls=_auto_calls, builtin="builtin")


# -- torch.library: fake kernel for the compiled op ---------------------------------

def _fake(real_logits, fake_logits, kind, role, reduction):
    if real_logits is not None:
        torch._check(real_logits.device == fake_logits.device and
                     real_logits.dtype == fake_logits.dtype,
                     lambda: "gan_loss: real_logits and fake_logits must have the same device and dtype")
    loss = fake_logits.new_empty(fake_logits.shape if reduction == 0 else ())
    if (kind, role) in _FAKE_ONLY_CODES:
        grad_real = fake_logits.new_empty((0,))
    else:
        torch._check(real_logits is not None, lambda: "gan_loss: this loss needs real_logits")
        grad_real = real_logits.new_empty(real_logits.shape)
    return loss, grad_real, fake_logits.new_empty(fake_logits.shape)


# Autograd is registered in C++ (csrc/gan_loss_autograd.cpp, the Autograd key): at GAN batch
# sizes a Python autograd.Function round trip costs more than the whole reference loss. The
# backward scales the saved gradients by the incoming gradient; double backward raises.
_backend.register_fake("gan_loss", _fake)
