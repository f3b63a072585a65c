"""gencore.models.dcgan (Generator, Discriminator, r1_penalty), ImageGANTask and gan-digits."""
import math

import pytest
import torch

from _helpers import need_fused
from _recipe_run import assert_resume_is_exact, train_recipe_briefly
from gencore.data import digits
from gencore.models import Discriminator, Generator, r1_penalty
from gencore.nn import GANLoss
from gencore.recipes.gan import RECIPES
from gencore.train.tasks import ImageGANTask

torch.set_num_threads(1)
SIZES = [8, 16, 32, 64]


@pytest.mark.parametrize("size", SIZES)
def test_shapes_and_dtypes(size):
    torch.manual_seed(0)
    G = Generator(latent_dim=5, image_size=size, channels=3, width=4)
    D = Discriminator(image_size=size, channels=3, width=4)
    x = G(torch.randn(2, 5)).detach()
    assert x.shape == (2, 3, size, size) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    logits = D(x)
    assert logits.shape == (2,) and logits.dtype == torch.float32
    assert G.sample(3).shape == (3, 3, size, size)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    G, D = Generator(4, 16, 1, 4), Discriminator(16, 1, 4)
    crit = GANLoss("bce")
    real = torch.rand(4, 1, 16, 16, requires_grad=True)
    fake = G(torch.randn(4, 4))
    d_real = D(real)
    (crit.discriminator(d_real, D(fake.detach())) + r1_penalty(d_real, real)).backward()
    for name, p in D.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches D.{name}"
    crit.generator(None, D(fake)).backward()
    for name, p in G.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches G.{name}"


def test_seeded_sampling_repeats():
    torch.manual_seed(0)
    G = Generator(4, 8, 1, 4)
    a = G.sample(5, generator=torch.Generator().manual_seed(3))
    b = G.sample(5, generator=torch.Generator().manual_seed(3))
    c = G.sample(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("kind", ["bce", "hinge"])
def test_fused_and_reference_losses_agree(kind):
    """One D step and one G step of the task's losses with impl='fused' and 'reference': same
    losses and same gradients on every parameter."""
    need_fused("gan_loss", "cpu")
    real = digits().train[:16]
    results = []
    for impl in ("fused", "reference"):
        torch.manual_seed(0)
        task = ImageGANTask(Generator(4, 8, 1, 8), Discriminator(8, 1, 8), loss=kind,
                            r1_gamma=1.0, impl=impl)
        fake = task.G(torch.randn(16, 4))
        d_total, out = task.discriminator_loss(real, fake, step=0)
        d_grads = torch.autograd.grad(d_total, list(task.D.parameters()))
        g_loss = task.generator_loss(real, fake)
        g_grads = torch.autograd.grad(g_loss, list(task.G.parameters()))
        results.append((d_total, g_loss, d_grads, g_grads))
    (d1, g1, dg1, gg1), (d2, g2, dg2, gg2) = results
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(g1, g2)
    for a, b in zip(dg1 + gg1, dg2 + gg2):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_r1_penalty_by_hand():
    """D(x) = w.x + sum(x^2) has d D / d x = w + 2x, so R1 = mean_i ||w + 2 x_i||^2, and
    d R1 / d w = mean_i 2 (w + 2 x_i)."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, 2, 2, requires_grad=True)
    w = torch.randn(4, requires_grad=True)
    logits = x.flatten(1) @ w + (x ** 2).flatten(1).sum(1)
    r1 = r1_penalty(logits, x)
    by_hand = ((w + 2 * x.flatten(1)) ** 2).sum(1).mean()
    torch.testing.assert_close(r1, by_hand)
    grad_w, = torch.autograd.grad(r1, w)
    torch.testing.assert_close(grad_w, (2 * (w + 2 * x.flatten(1))).mean(0).detach())
    with pytest.raises(ValueError, match="require grad"):
        r1_penalty(logits, x.detach())


def test_discriminator_separates_real_from_frozen_generator():
    """A few dozen D steps (the task's D loss, with R1) on a fixed real set against a frozen G:
    D must give every real image a higher logit than every fake one, and its loss must fall
    well below log(4) (the loss of a D that cannot tell them apart)."""
    torch.manual_seed(0)
    task = ImageGANTask(Generator(8, 8, 1, 8), Discriminator(8, 1, 8), r1_gamma=0.1)
    task.G.requires_grad_(False)
    real = digits().train[:32]
    z = torch.randn(32, 8)
    opt = torch.optim.Adam(task.D.parameters(), 1e-3, betas=(0.5, 0.99))
    with torch.no_grad():
        fake = task.G(z)
    for step in range(60):
        loss, out = task.discriminator_loss(real, fake, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        d_real, d_fake = task.D(real), task.D(fake)
    assert float(out["d_loss"].detach()) < 0.5 * math.log(4), float(out["d_loss"].detach())
    assert float(d_real.min()) > float(d_fake.max())


@pytest.mark.parametrize("make", [
    lambda: Generator(4, 12, 1, 4), lambda: Generator(4, 128, 1, 4), lambda: Generator(0, 8, 1, 4),
    lambda: Generator(4, 8, 0, 4), lambda: Discriminator(4, 1, 4), lambda: Discriminator(8, 1, 0),
    lambda: ImageGANTask(Generator(4, 8, 1, 4), Discriminator(16, 1, 4)),
    lambda: ImageGANTask(Generator(4, 8, 1, 4), Discriminator(8, 1, 4), r1_every=0),
    lambda: ImageGANTask(Generator(4, 8, 1, 4), Discriminator(8, 1, 4), impl="cuda"),
    lambda: ImageGANTask(Generator(4, 8, 1, 4), Discriminator(8, 1, 4), loss="l2"),
    lambda: ImageGANTask(Generator(4, 8, 1, 4), Discriminator(8, 1, 4), r1_gamma=-1.0),
])
def test_bad_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


def test_bad_inputs_raise():
    G, D = Generator(4, 8, 1, 4), Discriminator(8, 1, 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        G(torch.randn(2, 5))
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        D(torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("loss", ["bce", "hinge"])
def test_recipe_smoke(tmp_path, loss):
    recipe, = RECIPES
    assert recipe.name == "gan-digits"
    plan, trainer = train_recipe_briefly(recipe, {
        "steps": 6, "batch_size": 16, "width": 8, "loss": loss, "r1_every": 2}, tmp_path)
    assert any("r1" in rec for rec in trainer.history)
    with torch.no_grad():
        metrics = plan.task.evaluate()
        images = plan.task.generate(4)
    for key in ("fd", "fd_floor", "kid", "kid_floor"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert metrics["fd_floor"] < metrics["fd"]
    assert images.shape == (4, 1, 8, 8) and 0 <= float(images.min()) <= float(images.max()) <= 1
    assert plan.task.inference_module("G") is trainer.ema["G"].module
    state = torch.get_rng_state()
    assert torch.equal(plan.task.generate(4), images) and torch.equal(state, torch.get_rng_state())


def test_recipe_resume_is_exact(tmp_path):
    recipe, = RECIPES
    assert_resume_is_exact(recipe, {"steps": 6, "batch_size": 16, "width": 4, "r1_every": 2},
                           tmp_path)


def test_task_generate_is_seeded_and_takes_no_prompt():
    task = ImageGANTask(Generator(4, 8, 1, 8), Discriminator(8, 1, 8))
    a, b = task.generate(3, seed=1), task.generate(3, seed=1)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, task.generate(3, seed=2))
    with pytest.raises(ValueError, match="takes no prompt"):
        task.generate(3, prompt="a")
