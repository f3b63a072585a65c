"""A convolutional variational autoencoder (Kingma & Welling 2014) for small square images.

    vae = VAE(image_size=8, channels=1, latent_dim=16, width=32)
    out = vae.elbo(x)                  # out.loss = out.recon + out.kl, nats per image
    out.loss.backward()
    imgs = vae.sample(64)              # (64, 1, 8, 8) in [0, 1]
    nll = -vae.log_likelihood(x, k=1000).mean()   # importance-sampled, nats per image

Shapes: the encoder halves the resolution with stride-2 convolutions until 4x4 (one for 8x8,
... four for 64x64) and the decoder mirrors it with transposed convolutions, so any
power-of-two size from 8 to 64 works. Channels double at each halving, up to 8 * width.

Likelihoods p(x|z), per pixel, summed over the image (all numbers are nats per image):
- "bernoulli": the decoder gives logits; log p(x|z) = x log p + (1 - x) log(1 - p), i.e.
  -binary_cross_entropy_with_logits with the targets as given. Data in [0, 1] that are not
  binary (the digits are k/16) are used as soft targets: the value is then the *expected*
  log-likelihood of an image binarised pixel-wise with P(pixel = 1) = x, which is what the reported
  NLL measures (not a density over [0, 1]; that would need the continuous Bernoulli's normaliser).
- "gaussian": the decoder gives the mean; the log-variance is a learned parameter, one per pixel
  and channel (`gaussian_var="pixel"`, the default) or one for the whole image ("global"),
  clamped to [min_logvar, 2]: the data are discrete (k/16), so an unclamped variance on a pixel
  that is always 0 would shrink forever and the density grow without bound.

Priors p(z):
- "standard": N(0, I); the KL term of the ELBO is then in closed form (and >= 0).
- "mixture": a learned mixture of `prior_components` diagonal Gaussians (means, log-variances and
  weights trained with everything else, the "MoG prior" of e.g. Tomczak & Welling 2018). It lets
  the prior follow the aggregate posterior, so that samples do not fall into the holes a standard
  normal leaves between the encoder's codes (digits, 3000 steps: Frechet distance of samples
  0.30 with N(0, I), 0.031 with 128 components and 0.028 with 256 refitted by EM every 250
  steps, means over 5 seeds; floor 0.014).
  Trained by gradient with the rest, it lags far behind the codes (on digits most components
  stay unused), so `fit_prior(z)` also refits it by EM to latents drawn from q(z|x) on the
  training images (what VAETask does every few hundred steps and at the end): for fixed encoder and
  decoder that is the maximum-likelihood prior for those codes, the one that maximises the ELBO's
  E_q[log p(z)] term (the "ex-post density estimation" of Ghosh et al. 2020, done in the loop).
  The KL term is then a one-sample Monte Carlo estimate, log q(z|x) - log p(z) at the z of the
  reconstruction term: unbiased, but one batch's value can be negative.

- "flow": a RealNVP flow over z (`flow_layers` affine couplings of `flow_hidden` units,
  gencore.models.flow_prior), trained by gradient with the rest; exact log p(z), the KL term a
  one-sample estimate as for the mixture. On digits it gives a better validation NLL than the
  mixture but worse samples (benchmarks/RESULTS.md, issue 23): a continuous bijection of one
  Gaussian leaves mass between the digit classes.

`sample` and `reconstruct` return the decoder's mean (Bernoulli probabilities, or the Gaussian
mean clamped to [0, 1]), not noisy draws from p(x|z): the usual way to look at VAE samples.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import positive_int
from .flow_prior import FlowPrior

__all__ = ["VAE", "ELBO", "check_image_size"]

LIKELIHOODS = ("bernoulli", "gaussian")
PRIORS = ("standard", "mixture", "flow")
GAUSSIAN_VARS = ("pixel", "global")
_LOG_2PI = math.log(2 * math.pi)


def check_image_size(image_size, who: str, smallest: int = 8, largest: int = 64) -> int:
    """Number of stride-2 stages between `image_size` and 4x4; clear error for a bad size."""
    if (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < smallest
            or image_size > largest or image_size & (image_size - 1)):
        sizes = [2 ** i for i in range(int(math.log2(smallest)), int(math.log2(largest)) + 1)]
        raise ValueError(f"{who}: image_size must be a power of two in {sizes}, got {image_size!r}")
    return int(math.log2(image_size)) - 2


def diag_gaussian_log_pdf(z: torch.Tensor, means: torch.Tensor, logvars: torch.Tensor) -> torch.Tensor:
    """log N(z; means_k, diag exp(logvars_k)) for z (..., D) and K components (K, D) -> (..., K).
    Expanded as sum(z^2 / v) - 2 z.(m / v) + sum(m^2 / v): matrix products, no (..., K, D)
    intermediate (the EM refit evaluates it for thousands of codes x hundreds of components)."""
    inv = torch.exp(-logvars)
    quad = (z ** 2) @ inv.T - 2 * z @ (means * inv).T + (means ** 2 * inv).sum(-1)
    return -0.5 * (quad + logvars.sum(-1) + means.shape[-1] * _LOG_2PI)


def stage_widths(width: int, stages: int) -> list:
    """Channels after the stem and after each halving: width, 2*width, ... capped at 8*width."""
    return [width * min(2 ** i, 8) for i in range(stages + 1)]


class ELBO(NamedTuple):
    """Batch means, nats per image: loss = recon + kl is the negative ELBO (an upper bound on
    -log p(x)); recon = -E_q[log p(x|z)] (one z sample); kl = KL(q(z|x) || p(z)) (closed form,
    >= 0, for the standard prior; a one-sample estimate for the mixture prior)."""
    loss: torch.Tensor
    recon: torch.Tensor
    kl: torch.Tensor


class VAE(nn.Module):
    def __init__(self, image_size: int, channels: int = 1, latent_dim: int = 16, width: int = 32,
                 likelihood: str = "bernoulli", gaussian_var: str = "pixel",
                 min_logvar: float = -6.0, prior: str = "standard", prior_components: int = 64,
                 flow_layers: int = 6, flow_hidden: int = 128):
        super().__init__()
        who = "VAE"
        stages = check_image_size(image_size, who)
        positive_int(channels, "channels", who)
        positive_int(latent_dim, "latent_dim", who)
        positive_int(width, "width", who)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"{who}: likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if gaussian_var not in GAUSSIAN_VARS:
            raise ValueError(f"{who}: gaussian_var must be one of {GAUSSIAN_VARS}, got {gaussian_var!r}")
        if prior not in PRIORS:
            raise ValueError(f"{who}: prior must be one of {PRIORS}, got {prior!r}")
        positive_int(prior_components, "prior_components", who)
        positive_int(flow_layers, "flow_layers", who)
        positive_int(flow_hidden, "flow_hidden", who)
        if not isinstance(min_logvar, (int, float)) or not -20.0 <= min_logvar < 2.0:
            raise ValueError(f"{who}: min_logvar must be a number in [-20, 2), got {min_logvar!r}")
        self.image_size, self.channels, self.latent_dim = image_size, channels, latent_dim
        self.likelihood, self.gaussian_var, self.min_logvar = likelihood, gaussian_var, float(min_logvar)
        self.prior = prior
        widths = stage_widths(width, stages)
        top = widths[-1] * 4 * 4

        enc = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.SiLU()]
        for cin, cout in zip(widths[:-1], widths[1:]):
            enc += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.SiLU()]
        self.encoder = nn.Sequential(*enc, nn.Flatten())
        self.to_posterior = nn.Linear(top, 2 * latent_dim)   # -> (mu, logvar)

        self.from_latent = nn.Sequential(nn.Linear(latent_dim, top), nn.SiLU())
        dec = []
        for cin, cout in zip(widths[::-1][:-1], widths[::-1][1:]):
            dec += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.SiLU()]
        dec += [nn.Conv2d(widths[0], channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)
        self._top_shape = (widths[-1], 4, 4)
        if likelihood == "gaussian":
            shape = (channels, image_size, image_size) if gaussian_var == "pixel" else (1, 1, 1)
            # Start at std 0.1 (data in [0, 1]); trained with everything else.
            self.log_var = nn.Parameter(torch.full(shape, 2 * math.log(0.1)))
        if prior == "mixture":
            # Components start spread like N(0, I) samples, each with unit variance, equal weights.
            g = torch.Generator().manual_seed(0)
            self.prior_means = nn.Parameter(torch.randn(prior_components, latent_dim, generator=g))
            self.prior_logvars = nn.Parameter(torch.zeros(prior_components, latent_dim))
            self.prior_logits = nn.Parameter(torch.zeros(prior_components))
        if prior == "flow":
            self.prior_flow = FlowPrior(latent_dim, layers=flow_layers, hidden=flow_hidden)

    # ------------------------------------------------------------------ pieces
    def _check_images(self, x: torch.Tensor) -> None:
        want = (self.channels, self.image_size, self.image_size)
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"VAE: expected images of shape (N, {want[0]}, {want[1]}, {want[2]}), got {got}")

    def encode(self, x: torch.Tensor):
        """Images (N, C, H, W) in [0, 1] -> posterior mean and log-variance, each (N, latent_dim)."""
        self._check_images(x)
        mu, logvar = self.to_posterior(self.encoder(x)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> likelihood parameters (N, C, H, W): Bernoulli logits, or the
        Gaussian mean (its log-variance is `self.pixel_logvar()`)."""
        h = self.from_latent(z).view(z.shape[0], *self._top_shape)
        return self.decoder(h)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) for latents (..., latent_dim) -> (...), float32."""
        z = z.float()
        if self.prior == "standard":
            return -0.5 * (z ** 2 + _LOG_2PI).sum(-1)
        if self.prior == "flow":
            return self.prior_flow.log_prob(z)
        logvars = self.prior_logvars.float().clamp(-8.0, 4.0)
        comp = diag_gaussian_log_pdf(z, self.prior_means.float(), logvars)    # (..., K)
        return torch.logsumexp(comp + torch.log_softmax(self.prior_logits.float(), 0), dim=-1)

    def sample_prior(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n latents (n, latent_dim) from p(z)."""
        if self.prior == "flow":
            return self.prior_flow.sample(n, generator)
        dev = next(self.parameters()).device
        eps = torch.randn((n, self.latent_dim), generator=generator, device=dev)
        if self.prior == "standard":
            return eps
        weights = torch.softmax(self.prior_logits.float(), 0)
        k = torch.multinomial(weights, n, replacement=True, generator=generator)
        std = torch.exp(0.5 * self.prior_logvars.float().clamp(-8.0, 4.0))
        return self.prior_means[k].float() + eps * std[k]

    @torch.no_grad()
    def fit_prior(self, z: torch.Tensor, iters: int = 50, min_var: float = 1e-3,
                  generator: Optional[torch.Generator] = None) -> float:
        """Refits the mixture prior to latents z (N, latent_dim) by EM (diagonal Gaussians,
        initialised at K random latents with the latents' overall variance and equal weights).
        Returns the mean log-likelihood of z under the fitted prior (nats per latent vector)."""
        if self.prior != "mixture":
            raise ValueError(f"VAE.fit_prior: the prior is {self.prior!r} (EM fits a mixture); "
                             "build the VAE with prior='mixture'")
        if z.dim() != 2 or z.shape[1] != self.latent_dim or z.shape[0] < 2:
            raise ValueError(f"VAE.fit_prior: expected latents (N >= 2, {self.latent_dim}), "
                             f"got {tuple(z.shape)}")
        z = z.detach().float()
        n, k = z.shape[0], self.prior_means.shape[0]
        pick = torch.randint(0, n, (k,), generator=generator, device=z.device) if k > n else \
            torch.randperm(n, generator=generator, device=z.device)[:k]
        means, var = z[pick].clone(), z.var(0).clamp_min(min_var).expand(k, -1).clone()
        log_w = torch.full((k,), -math.log(k), device=z.device)
        for _ in range(iters):
            # E step: responsibilities; M step: weighted means, variances, weights.
            log_p = diag_gaussian_log_pdf(z, means, var.log()) + log_w
            resp = torch.softmax(log_p, 1)
            nk = resp.sum(0) + 1e-10
            means = resp.T @ z / nk[:, None]
            var = (resp.T @ z ** 2 / nk[:, None] - means ** 2).clamp_min(min_var)
            log_w = (nk / n).log()
        self.prior_means.copy_(means)
        self.prior_logvars.copy_(var.log())
        self.prior_logits.copy_(log_w)
        return float(self.log_prior(z).mean())

    def pixel_logvar(self) -> torch.Tensor:
        """The Gaussian likelihood's log-variance, clamped (see the module docstring)."""
        return self.log_var.clamp(self.min_logvar, 2.0)

    def log_px_given_z(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """log p(x|z) per image (N,), summed over pixels and channels, in float32."""
        params, x = params.float(), x.float()
        if self.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(params, x, reduction="none")
        else:
            logvar = self.pixel_logvar().float()
            ll = -0.5 * (_LOG_2PI + logvar + (x - params) ** 2 * torch.exp(-logvar))
        return ll.flatten(1).sum(1)

    def mean_image(self, params: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image in [0, 1]."""
        return torch.sigmoid(params) if self.likelihood == "bernoulli" else params.clamp(0, 1)

    # ------------------------------------------------------------------ objectives
    def elbo(self, x: torch.Tensor) -> ELBO:
        """One-sample ELBO terms (reparameterised, so the loss is differentiable)."""
        mu, logvar = self.encode(x)
        mu, logvar = mu.float(), logvar.float()
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = -self.log_px_given_z(x, self.decode(z)).mean()
        kl = self.kl(mu, logvar, z).mean()
        return ELBO(recon + kl, recon, kl)

    def kl(self, mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Per image (N,): KL(q(z|x) || p(z)) in closed form for the standard prior; for the
        mixture prior the one-sample estimate log q(z|x) - log p(z) at the given z."""
        if self.prior == "standard":
            return 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
        log_q = -0.5 * ((z - mu) ** 2 * torch.exp(-logvar) + logvar + _LOG_2PI).sum(1)
        return log_q - self.log_prior(z)

    def forward(self, x: torch.Tensor) -> ELBO:
        return self.elbo(x)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 1000, chunk_images: int = 4096,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) per image (N,), nats, with k samples from
        q(z|x) (the IWAE bound, Burda et al. 2016): log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x).
        It is a lower bound on log p(x) that tightens as k grows (k = 1 is the ELBO in
        expectation). The k samples are drawn in chunks of about `chunk_images` decoded images, so
        k = 1000 fits in memory for any batch size."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"VAE.log_likelihood: k must be a positive integer, got {k!r}")
        positive_int(chunk_images, "chunk_images", "VAE.log_likelihood")
        mu, logvar = (t.float() for t in self.encode(x))
        std = torch.exp(0.5 * logvar)
        n = x.shape[0]
        per_chunk = max(1, min(k, chunk_images // max(n, 1)))
        log_w = []
        done = 0
        while done < k:
            m = min(per_chunk, k - done)
            eps = torch.randn((m, n, self.latent_dim), generator=generator, device=mu.device)
            z = mu + eps * std                                            # (m, n, latent)
            log_pz = self.log_prior(z)
            log_qz = -0.5 * (eps ** 2 + _LOG_2PI + logvar).sum(-1)
            params = self.decode(z.reshape(m * n, -1))
            log_px = self.log_px_given_z(x.repeat(m, 1, 1, 1), params).view(m, n)
            log_w.append(log_px + log_pz - log_qz)
            done += m
        return torch.logsumexp(torch.cat(log_w, 0), dim=0) - math.log(k)

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1]: the decoder's mean for z ~ p(z)."""
        positive_int(n, "n", "VAE.sample")
        return self.mean_image(self.decode(self.sample_prior(n, generator))).float()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image at the posterior mean: (N, C, H, W) in [0, 1]."""
        mu, _ = self.encode(x)
        return self.mean_image(self.decode(mu)).float()
