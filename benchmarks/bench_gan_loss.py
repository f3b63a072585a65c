"""GAN losses: fused vs reference vs the closest composition of PyTorch built-ins.

Groups are "gan_loss <kind> <role> <size> <pass>" with pass "fwd" (no autograd) or "fwd+bwd"
(inputs require grad, loss.backward()). The discriminator loss is both terms (real and fake)
summed, as a GAN step computes it. By default every kind runs for the discriminator and bce/hinge
for the generator; GENCORE_BENCH_FULL=1 runs every kind x role. The CUDA cases (bce discriminator,
64 to 2^24 elements, timed with CUDA events) are skipped without a GPU;
benchmarks/gpu/ops_check.py also times CUDA graph replay.

    python -m pytest benchmarks/bench_gan_loss.py --benchmark-json out.json -q
    python benchmarks/report.py out.json --markdown
"""
import os

import pytest
import torch
import torch.nn.functional as F

from gencore.ops import gan_loss
from gencore.ops.reference import gan_loss_reference

SIZES = {"64": (64,), "4096": (4096,), "64x1x30x30": (64, 1, 30, 30), "1048576": (1 << 20,)}
CUDA_SIZES = {"64": (64,), "4096": (4096,), "1048576": (1 << 20,), "16777216": (1 << 24,)}
ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
FULL = os.environ.get("GENCORE_BENCH_FULL") == "1"
CASES = [(k, "discriminator") for k in ("bce", "hinge", "wasserstein", "rsgan", "ragan")]
CASES += [(k, "generator") for k in (("bce", "hinge", "wasserstein", "rsgan", "ragan") if FULL
                                     else ("bce", "hinge"))]


def torch_builtin(kind, role, ones, zeros):
    """The closest composition of PyTorch built-ins (BCE-with-logits, relu, mean)."""
    bce = F.binary_cross_entropy_with_logits
    disc = role == "discriminator"
    if kind == "bce":
        return (lambda r, f: bce(r, ones) + bce(f, zeros)) if disc else (lambda r, f: bce(f, ones))
    if kind == "hinge":
        return ((lambda r, f: F.relu(1 - r).mean() + F.relu(1 + f).mean()) if disc
                else (lambda r, f: -f.mean()))
    if kind == "wasserstein":
        return (lambda r, f: f.mean() - r.mean()) if disc else (lambda r, f: -f.mean())
    if kind == "rsgan":
        return (lambda r, f: bce(r - f, ones)) if disc else (lambda r, f: bce(f - r, ones))
    if disc:
        return lambda r, f: bce(r - f.mean(), ones) + bce(f - r.mean(), zeros)
    return lambda r, f: bce(f - r.mean(), ones) + bce(r - f.mean(), zeros)


@pytest.mark.parametrize("impl", ["fused", "reference", "torch"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("kind,role", CASES)
def test_gan_loss(compare, kind, role, size, pass_, impl):
    compare(f"gan_loss {kind} {role} {size} {pass_}", impl,
            lambda: calls(kind, role, SIZES[size], pass_, "cpu"))


@ON_CUDA
@pytest.mark.parametrize("impl", ["fused", "torch"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("size", list(CUDA_SIZES))
def test_gan_loss_cuda(compare, size, pass_, impl):
    compare(f"gan_loss bce discriminator {size} {pass_} cuda", impl,
            lambda: calls("bce", "discriminator", CUDA_SIZES[size], pass_, "cuda"), "cuda")


def calls(kind, role, shape, pass_, device):
    """{impl: one call}: the loss alone under no_grad ("fwd"), or the loss and its backward."""
    gen = torch.Generator().manual_seed(0)
    real = (torch.randn(shape, generator=gen) * 2).to(device)
    fake = (torch.randn(shape, generator=gen) * 2).to(device)
    ones, zeros = torch.ones(shape, device=device), torch.zeros(shape, device=device)
    fns = {"fused": lambda r, f: gan_loss(r, f, kind, role, impl="fused"),
           "reference": lambda r, f: gan_loss_reference(r, f, kind, role),
           "torch": torch_builtin(kind, role, ones, zeros)}
    if device == "cuda":
        del fns["reference"]
    if pass_ == "fwd":
        def forward(fn):
            def call():
                with torch.no_grad():
                    fn(real, fake)
            return call
        return {impl: forward(fn) for impl, fn in fns.items()}
    real.requires_grad_(True)
    fake.requires_grad_(True)

    def step(fn):
        def call():
            real.grad = fake.grad = None
            fn(real, fake).backward()
        return call
    return {impl: step(fn) for impl, fn in fns.items()}
