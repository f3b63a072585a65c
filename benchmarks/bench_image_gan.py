"""One full GAN training step (D step with R1, then G step) on the gan-digits models: the fused
GAN losses vs the same models with the losses composed of F.binary_cross_entropy_with_logits.

    OMP_NUM_THREADS=1 python -m pytest benchmarks/bench_image_gan.py -q --benchmark-json ig.json
    python benchmarks/report.py ig.json --markdown

Groups: "image_gan step <image_size> width=<w> batch=<b> r1=<on|off>"; impl "fused" (gencore
GANLoss, impl="fused") or "torch" (BCE-with-logits against ones/zeros). Same seeds, same models,
same Adam optimizers; only the loss differs. The loss is a tiny part of the step at these sizes
(convolutions and R1's double backward dominate), so expect ratios near 1: this measures what the
fused loss buys in a real step, not the op itself (bench_gan_loss.py does that).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gencore.models import Discriminator, Generator, r1_penalty
from gencore.nn import GANLoss

CASES = [(8, 32, 64), (32, 16, 64)]  # (image_size, width, batch): gan-digits, and a bigger image


def _losses(impl):
    if impl == "fused":
        crit = GANLoss("bce", impl="fused")
        return crit.discriminator, lambda d_fake: crit.generator(None, d_fake)
    bce = F.binary_cross_entropy_with_logits

    def d_loss(r, f):
        return bce(r, torch.ones_like(r)) + bce(f, torch.zeros_like(f))
    return d_loss, lambda f: bce(f, torch.ones_like(f))


def make_step(size, width, batch, r1, impl):
    torch.manual_seed(0)
    G, D = Generator(32, size, 1, width), Discriminator(size, 1, width)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.99))
    real = torch.rand(batch, 1, size, size)
    z = torch.randn(batch, 32)
    d_loss_fn, g_loss_fn = _losses(impl)
    use_r1 = r1 == "on"

    def step():
        fake = G(z)
        x = real.detach().requires_grad_(use_r1)
        d_real = D(x)
        loss = d_loss_fn(d_real, D(fake.detach()))
        if use_r1:
            loss = loss + 0.5 * r1_penalty(d_real, x)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()
        D.requires_grad_(False)
        g_loss = g_loss_fn(D(fake))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        D.requires_grad_(True)
    return step


@pytest.mark.parametrize("impl", ["fused", "torch"])
@pytest.mark.parametrize("r1", ["on", "off"])
@pytest.mark.parametrize("size,width,batch", CASES)
def test_image_gan_step(compare, size, width, batch, r1, impl):
    compare(f"image_gan step {size} width={width} batch={batch} r1={r1}", impl,
            lambda: {name: make_step(size, width, batch, r1, name) for name in ("fused", "torch")},
            min_time=1.0, min_reps=10)
