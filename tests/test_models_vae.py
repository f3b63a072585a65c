"""gencore.models.VAE, gencore.train.tasks.VAETask and the vae-digits recipe."""
import math

import pytest
import torch

from _recipe_run import assert_resume_is_exact, train_recipe_briefly
from gencore.data import digits
from gencore.models import VAE
from gencore.models.flow_prior import FlowPrior
from gencore.recipes.vae import RECIPES
from gencore.train.tasks import VAETask

torch.set_num_threads(1)
SIZES = [8, 16, 32, 64]


@pytest.fixture(scope="module")
def some_digits():
    return digits().train[:64]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("size", SIZES)
def test_shapes_and_dtypes(size, likelihood):
    torch.manual_seed(0)
    vae = VAE(size, channels=3, latent_dim=5, width=4, likelihood=likelihood)
    x = torch.rand(2, 3, size, size)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (2, 5) and mu.dtype == torch.float32
    assert vae.decode(mu).shape == (2, 3, size, size)
    s = vae.sample(3)
    assert s.shape == (3, 3, size, size) and s.dtype == torch.float32
    assert 0 <= float(s.min()) and float(s.max()) <= 1
    r = vae.reconstruct(x)
    assert r.shape == x.shape and 0 <= float(r.min()) and float(r.max()) <= 1
    assert vae.log_likelihood(x, k=3).shape == (2,)


@pytest.mark.parametrize("likelihood,prior", [("bernoulli", "standard"), ("gaussian", "standard"),
                                              ("gaussian", "mixture"), ("gaussian", "flow")])
def test_gradients_reach_every_parameter(likelihood, prior, some_digits):
    torch.manual_seed(0)
    vae = VAE(8, latent_dim=4, width=8, likelihood=likelihood, gaussian_var="global", prior=prior,
              prior_components=3)
    vae.elbo(some_digits[:8]).loss.backward()
    for name, p in vae.named_parameters():
        if name.startswith("prior_flow.couplings") and not name.endswith(("4.weight", "4.bias")):
            continue  # zero last layers (the identity start) block these at init: tested below
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


@pytest.mark.parametrize("prior", ["standard", "mixture", "flow"])
def test_seeded_sampling_repeats(prior):
    torch.manual_seed(0)
    vae = VAE(16, latent_dim=4, width=4, prior=prior)
    a = vae.sample(5, generator=torch.Generator().manual_seed(3))
    b = vae.sample(5, generator=torch.Generator().manual_seed(3))
    c = vae.sample(5, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_elbo_terms_finite_and_kl_nonnegative(likelihood, some_digits):
    torch.manual_seed(0)
    vae = VAE(8, latent_dim=6, width=8, likelihood=likelihood)
    out = vae.elbo(some_digits)
    for t in out:
        assert t.dim() == 0 and torch.isfinite(t)
    assert float(out.kl.detach()) >= 0
    assert torch.allclose(out.loss, out.recon + out.kl)


def test_mixture_prior_by_hand():
    """log_prior is the log density of the mixture (torch.distributions.MixtureSameFamily), and
    sample_prior draws from it (the sample mean matches the mixture mean)."""
    torch.manual_seed(0)
    vae = VAE(8, latent_dim=3, width=4, prior="mixture", prior_components=5)
    with torch.no_grad():
        vae.prior_logvars.uniform_(-1, 1)
        vae.prior_logits.uniform_(-2, 2)
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=vae.prior_logits.detach()),
        torch.distributions.Independent(torch.distributions.Normal(
            vae.prior_means.detach(), (0.5 * vae.prior_logvars.detach()).exp()), 1))
    z = torch.randn(7, 2, 3) * 2
    torch.testing.assert_close(vae.log_prior(z).detach(), mix.log_prob(z))
    with torch.no_grad():
        draws = vae.sample_prior(40000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), mix.mean, atol=0.05, rtol=0)
    # The Monte Carlo KL averages to KL(q || p) >= 0 over many draws of z.
    mu, logvar = torch.zeros(1, 3), torch.zeros(1, 3)
    with torch.no_grad():
        kls = vae.kl(mu.expand(20000, 3), logvar.expand(20000, 3), torch.randn(20000, 3))
    assert float(kls.mean()) > 0


def test_log_densities_by_hand(some_digits):
    """k=1 importance weight = log p(x|z) + log p(z) - log q(z|x), each computed with
    torch.distributions from the same z; and the closed-form KL matches its Monte Carlo value."""
    torch.manual_seed(0)
    x = some_digits[:4]
    for likelihood in ("bernoulli", "gaussian"):
        vae = VAE(8, latent_dim=3, width=8, likelihood=likelihood).eval()
        if likelihood == "gaussian":
            with torch.no_grad():
                vae.log_var.uniform_(-4, -1)
        got = vae.log_likelihood(x, k=1, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            mu, logvar = vae.encode(x)
            std = (0.5 * logvar).exp()
            eps = torch.randn((1, 4, 3), generator=torch.Generator().manual_seed(7))[0]
            z = mu + eps * std
            params = vae.decode(z)
            if likelihood == "bernoulli":
                # Soft targets: x log p + (1 - x) log(1 - p), written out.
                p = torch.sigmoid(params.double())
                log_px = (x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1)
            else:
                px = torch.distributions.Normal(params, (0.5 * vae.log_var).exp())
                log_px = px.log_prob(x).flatten(1).sum(1)
            log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
            log_qz = torch.distributions.Normal(mu, std).log_prob(z).sum(1)
        torch.testing.assert_close(got, (log_px + log_pz - log_qz).float(), rtol=1e-4, atol=1e-3)
    # KL: closed form vs the mean of log q - log p over many samples.
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
        z = q.sample((20000,))
        mc = (q.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)).sum(-1).mean()
        closed = (0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)).mean()
    assert abs(float(mc - closed)) < 0.02 * max(1.0, float(closed))


def test_iwae_bound_tighter_than_elbo_and_chunking(some_digits):
    """E[log p_k(x)] increases with k (Burda et al.), so the k=200 estimate sits above the ELBO
    averaged over many draws; the chunk size changes only the random draws, not the estimate."""
    torch.manual_seed(0)
    vae = VAE(8, latent_dim=4, width=8).eval()
    x = some_digits[:16]
    with torch.no_grad():
        elbo = -torch.stack([vae.elbo(x).loss for _ in range(50)]).mean()
    ll = vae.log_likelihood(x, k=200, generator=torch.Generator().manual_seed(0)).mean()
    ll_chunked = vae.log_likelihood(x, k=200, chunk_images=40,
                                    generator=torch.Generator().manual_seed(1)).mean()
    assert float(ll) > float(elbo)
    assert abs(float(ll - ll_chunked)) < 0.5


def test_tiny_overfit_loss_drops(some_digits):
    torch.manual_seed(0)
    vae = VAE(8, latent_dim=8, width=16)
    x = some_digits[:16]
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = float(vae.elbo(x).loss.detach())
    for _ in range(60):
        loss = vae.elbo(x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        last = float(torch.stack([vae.elbo(x).loss for _ in range(5)]).mean())
    # From ~44 nats (random decoder) to below 30: a model that does not learn stays above 40.
    assert first > 40 and last < 30, (first, last)


def test_fit_prior_recovers_a_known_mixture():
    """EM on latents from a known two-component mixture finds its means, variances and weights,
    and the fitted prior gives those latents a higher likelihood than the initial one."""
    torch.manual_seed(0)
    vae = VAE(8, latent_dim=2, width=4, prior="mixture", prior_components=2)
    g = torch.Generator().manual_seed(0)
    z = torch.cat([torch.randn(3000, 2, generator=g) * 0.5 + torch.tensor([3.0, 0.0]),
                   torch.randn(1000, 2, generator=g) * 0.2 + torch.tensor([-3.0, 1.0])])
    before = float(vae.log_prior(z).mean().detach())
    after = vae.fit_prior(z, generator=torch.Generator().manual_seed(1))
    assert after > before + 1
    order = vae.prior_means[:, 0].argsort(descending=True)
    torch.testing.assert_close(vae.prior_means[order].detach(),
                               torch.tensor([[3.0, 0.0], [-3.0, 1.0]]), atol=0.05, rtol=0)
    torch.testing.assert_close((0.5 * vae.prior_logvars[order]).exp().detach(),
                               torch.tensor([[0.5, 0.5], [0.2, 0.2]]), atol=0.03, rtol=0)
    torch.testing.assert_close(torch.softmax(vae.prior_logits[order], 0).detach(),
                               torch.tensor([0.75, 0.25]), atol=0.02, rtol=0)
    with pytest.raises(ValueError, match="standard"):
        VAE(8, latent_dim=2, width=4).fit_prior(z)
    with pytest.raises(ValueError, match="expected latents"):
        vae.fit_prior(z[:, :1])


@pytest.mark.parametrize("kwargs", [
    {"image_size": 12}, {"image_size": 4}, {"image_size": 128}, {"image_size": 8.0},
    {"image_size": 8, "channels": 0}, {"image_size": 8, "latent_dim": -1},
    {"image_size": 8, "width": 0}, {"image_size": 8, "likelihood": "poisson"},
    {"image_size": 8, "gaussian_var": "channel"}, {"image_size": 8, "min_logvar": 5.0},
    {"image_size": 8, "prior": "vamp"}, {"image_size": 8, "prior_components": 0},
    {"image_size": 8, "prior": "flow", "flow_layers": 0}, {"image_size": 8, "prior": "flow", "flow_hidden": 0},
])
def test_bad_arguments_raise(kwargs):
    with pytest.raises(ValueError, match="VAE"):
        VAE(**kwargs)


def test_bad_inputs_raise():
    vae = VAE(8, latent_dim=2, width=4)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        vae.elbo(torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="k must be"):
        vae.log_likelihood(torch.rand(2, 1, 8, 8), k=0)
    with pytest.raises(ValueError, match="n must be"):
        vae.sample(0)
    with pytest.raises(TypeError, match="VAETask"):
        VAETask(torch.nn.Linear(2, 2), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="prior_refit_every"):
        VAETask(vae, torch.rand(2, 1, 8, 8), prior_refit_every=10, train_images=torch.rand(2, 1, 8, 8))


def test_task_generate_is_seeded_and_takes_no_prompt():
    task = VAETask(VAE(8, latent_dim=2, width=4), torch.rand(2, 1, 8, 8))
    a, b = task.generate(3, seed=1), task.generate(3, seed=1)
    assert a.shape == (3, 1, 8, 8) and torch.equal(a, b)
    assert not torch.equal(a, task.generate(3, seed=2))
    with pytest.raises(ValueError, match="takes no prompt"):
        task.generate(3, prompt="a")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_recipe_smoke(tmp_path, likelihood):
    recipe, = RECIPES
    assert recipe.name == "vae-digits"
    plan, trainer = train_recipe_briefly(recipe, {
        "steps": 6, "batch_size": 16, "width": 8, "nll_k": 4, "likelihood": likelihood,
        "ema_decay": 0.9}, tmp_path)
    assert (tmp_path / "metrics.jsonl").is_file() and list((tmp_path / "samples").glob("*.png"))
    assert plan.task._prior_ll is not None  # the prior was refitted after the last step
    with torch.no_grad():
        metrics = plan.task.evaluate()
        images = plan.task.generate(4)
    for key in ("nll", "elbo", "fd", "fd_floor", "kid", "kid_floor"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert metrics["nll_k"] == 4 and metrics["fd_floor"] < metrics["fd"]
    assert images.shape == (4, 1, 8, 8) and 0 <= float(images.min()) <= float(images.max()) <= 1
    # The EMA copy is what evaluate/generate use; generating leaves the training RNG alone.
    assert plan.task.inference_module("vae") is trainer.ema["vae"].module
    state = torch.get_rng_state()
    again = plan.task.generate(4)
    assert torch.equal(state, torch.get_rng_state()) and torch.equal(images, again)


def test_recipe_resume_is_exact(tmp_path):
    """The prior's EM refits (every 2 steps here) run from the optimizer's step hook with the
    training RNG: a resumed run repeats them exactly."""
    recipe, = RECIPES
    assert_resume_is_exact(recipe, {"steps": 6, "batch_size": 16, "width": 4, "latent": 4,
                                    "prior_components": 8, "prior_refit_every": 2}, tmp_path)


def test_ema_copy_gets_a_prior_fitted_to_its_own_codes(tmp_path):
    """With an EMA of the weights the averaged copy's prior is an average over EM refits whose
    components restart at random codes: no fit of anything. The copy evaluate/generate use must
    get a prior refitted to its own codes."""
    recipe, = RECIPES
    plan, trainer = train_recipe_briefly(recipe, {
        "steps": 30, "batch_size": 16, "width": 8, "latent": 4, "prior_components": 8,
        "prior_refit_every": 1, "ema_decay": 0.95, "nll_k": 4}, tmp_path)
    task, ema = plan.task, trainer.ema["vae"]

    def spread(vae):  # variance of the prior's component means / of codes drawn from q(z|x)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            mu, logvar = vae.encode(task.train_images)
            z = mu + torch.randn(mu.shape, generator=g) * (0.5 * logvar).exp()
            w = torch.softmax(vae.prior_logits, 0)[:, None]
            means = vae.prior_means
            return float((w * (means - (w * means).sum(0)) ** 2).sum() / z.var(0).sum())

    ema.update(task.model)  # one more average, towards the live model's prior
    averaged = spread(ema.module)
    state = torch.get_rng_state()
    refitted = task.inference_module("vae")
    assert refitted is ema.module and torch.equal(state, torch.get_rng_state())
    assert spread(refitted) > 1.3 * averaged  # 1.6x here; without the refit 1.0x


def _random_flow(dim, seed=0):
    """A FlowPrior away from its identity start (every layer randomised)."""
    torch.manual_seed(seed)
    flow = FlowPrior(dim, layers=4, hidden=16)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(0, 0.2)
    return flow


def test_flow_prior_is_normalised_and_sample_consistent():
    """The density integrates to 1 (a 2-D grid), and samples (the inverse map) follow it: their
    mean and second moments match the grid's, and log_prob inverts sample exactly."""
    flow = _random_flow(2)
    ax = torch.linspace(-15, 15, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        p = flow.log_prob(grid.float()).double().exp() * float(ax[1] - ax[0]) ** 2
        assert abs(float(p.sum()) - 1) < 2e-3, float(p.sum())
        z = flow.sample(200_000, generator=torch.Generator().manual_seed(0)).double()
        mean = (p[:, None] * grid).sum(0)
        second = (p[:, None] * grid ** 2).sum(0)
    assert torch.allclose(z.mean(0), mean, atol=0.03), (z.mean(0), mean)
    assert torch.allclose((z ** 2).mean(0), second, rtol=0.03, atol=0.03)
    # Round trip: u -> z -> u (the forward map of log_prob undoes sample's inverse map).
    flow3 = _random_flow(5, seed=1)
    with torch.no_grad():
        y = torch.randn(7, 5)
        for c in reversed(flow3.couplings):
            y2 = c.inverse(y)
            assert torch.allclose(c(y2)[0], y, atol=1e-5)
            y = y2


def test_flow_prior_log_prob_shapes_gradients_and_bad_input():
    flow = _random_flow(4)
    z = torch.randn(3, 5, 4, requires_grad=True)
    lp = flow.log_prob(z)
    assert lp.shape == (3, 5) and lp.dtype == torch.float32 and torch.isfinite(lp).all()
    lp.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    with pytest.raises(ValueError, match=r"FlowPrior: expected latents of shape \(..., 4\)"):
        flow.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match="n must be"):
        flow.sample(0)
    with pytest.raises(ValueError, match="dim must be >= 2"):
        FlowPrior(1)
    vae = VAE(8, latent_dim=4, width=4, prior="flow")
    with pytest.raises(ValueError, match="EM fits a mixture"):
        vae.fit_prior(torch.randn(10, 4))


def test_flow_prior_starts_as_a_standard_normal():
    vae = VAE(8, latent_dim=4, width=4, prior="flow")
    ref = VAE(8, latent_dim=4, width=4, prior="standard")
    z = torch.randn(6, 4)
    assert torch.allclose(vae.log_prior(z), ref.log_prior(z), atol=1e-6)


def test_recipe_resume_is_exact_with_the_flow_prior(tmp_path):
    recipe, = RECIPES
    assert_resume_is_exact(recipe, {"steps": 6, "batch_size": 16, "width": 4, "latent": 4,
                                    "prior": "flow", "flow_layers": 2, "flow_hidden": 8}, tmp_path)
