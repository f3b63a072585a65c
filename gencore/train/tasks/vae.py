"""VAETask: trains a gencore.models.VAE on image batches by maximising the ELBO.

With a mixture prior and `prior_refit_every` set (not None) the prior is refitted by EM to the training
images' codes every that many steps and after the last step (VAE.fit_prior). With an EMA of the
weights (TrainerConfig.ema_decay) the averaged copy's prior is refitted to that copy's own codes
whenever it is used (see `inference_module`).

Logged numbers are nats per image: `loss` (the negative ELBO, with the KL weight of the warmup
when `kl_warmup` > 0), `recon` (-E_q log p(x|z)) and `kl`. Validation reports the plain negative
ELBO. `evaluate()` reports, on the held-out images:
  nll       importance-sampled -log p(x) with `nll_k` samples per image (IWAE bound; nats/image)
  elbo      the negative ELBO (an upper bound on nll), nats per image
  fd, kid   Frechet distance / KID of `eval_samples` samples in the digit classifier's feature
            space, next to fd_floor / kid_floor (real train vs real test); digits (1x8x8) only
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...models.vae import VAE
from ..optim import fused
from ..task import Task
from ._images import DIGIT_SHAPE, digit_image_metrics, unconditional_samples
from ._sampling import seeded_generator

__all__ = ["VAETask"]


class VAETask(Task):
    def __init__(self, model: VAE, val_images: torch.Tensor, lr: float = 1e-3,
                 weight_decay: float = 0.0, kl_warmup: int = 0, nll_k: int = 1000,
                 eval_samples: int = 1437, seed: int = 0,
                 train_images: Optional[torch.Tensor] = None, prior_refit_every: Optional[int] = None,
                 prior_refit_draws: int = 4):
        if not isinstance(model, VAE):
            raise TypeError(f"VAETask: model must be a gencore.models.VAE, got {type(model).__name__}")
        if not lr > 0:
            raise ValueError(f"VAETask: lr must be > 0, got {lr}")
        if kl_warmup < 0:
            raise ValueError(f"VAETask: kl_warmup must be >= 0 steps, got {kl_warmup}")
        if prior_refit_every and (model.prior != "mixture" or train_images is None):
            raise ValueError("VAETask: prior_refit_every needs a VAE with prior='mixture' and "
                             "train_images (the latents the prior is refitted to)")
        if prior_refit_every is not None and (not isinstance(prior_refit_every, int)
                                              or prior_refit_every < 1):
            raise ValueError(f"VAETask: prior_refit_every must be None (never) or an integer >= 1, "
                             f"got {prior_refit_every!r}")
        for name, v in (("nll_k", nll_k), ("eval_samples", eval_samples),
                        ("prior_refit_draws", prior_refit_draws)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"VAETask: {name} must be a positive integer, got {v!r}")
        self.model, self.val_images = model, val_images
        self.lr, self.weight_decay, self.kl_warmup = lr, weight_decay, kl_warmup
        self.nll_k, self.eval_samples, self.seed = nll_k, eval_samples, seed
        self.train_images, self.prior_refit_every = train_images, prior_refit_every
        self.prior_refit_draws = prior_refit_draws
        self._prior_ll = None  # mean log p(z) of the codes at the last refit
        self._ema_prior_fit_at = None  # EMA update count at the EMA copy's last prior refit
        self._step = 0

    def modules(self):
        return {"vae": self.model}

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay,
                                fused=fused(self.model.parameters()))
        if self.prior_refit_every:
            # After the update (the refit writes the prior's parameters in place, which must
            # not happen between the forward pass and backward).
            opt.register_step_post_hook(lambda *_: self._maybe_refit_prior())
        return {"adam": opt}

    def _maybe_refit_prior(self) -> None:
        step = self._step
        last = self.trainer is not None and step + 1 == self.trainer.config.max_steps
        if (step + 1) % self.prior_refit_every == 0 or last:
            self._prior_ll = self.refit_prior()

    def kl_weight(self, step: int) -> float:
        return 1.0 if self.kl_warmup == 0 else min(1.0, (step + 1) / self.kl_warmup)

    def training_step(self, batch, step):
        out = self.training_module("vae")(batch)  # forward = elbo
        loss = out.recon + self.kl_weight(step) * out.kl
        metrics = {"loss": loss, "recon": out.recon, "kl": out.kl}
        self._step = step
        if self._prior_ll is not None:  # logged every step: the Trainer averages over steps
            metrics["prior_ll"] = self._prior_ll  # (as of the previous step)
        return metrics

    def refit_prior(self) -> float:
        """EM refit of the mixture prior to latents drawn from q(z|x) on the training images
        (`prior_refit_draws` per image; see VAE.fit_prior), with the training RNG."""
        return self._fit_prior_to_codes(self.model)

    @torch.no_grad()
    def _fit_prior_to_codes(self, vae: VAE, generator: Optional[torch.Generator] = None) -> float:
        x = self.train_images.to(next(vae.parameters()).device)
        mu, logvar = (torch.cat(t) for t in zip(*(vae.encode(b) for b in x.split(1024))))
        mu, std = mu.float().repeat(self.prior_refit_draws, 1), (0.5 * logvar.float()).exp()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device)
        return vae.fit_prior(mu + noise * std.repeat(self.prior_refit_draws, 1), generator=generator)

    def inference_module(self, name: str):
        module = super().inference_module(name)
        ema = getattr(self.trainer, "ema", None) or {}
        if self.prior_refit_every and name in ema and self._ema_prior_fit_at != ema[name].num_updates:
            # The EMA averages the prior's parameters across EM refits whose components start at
            # random codes: that average is no mixture fitted to anything (FD 0.36 on digits).
            # Refit the copy's prior to its own encoder's codes, with a generator of its own so
            # the training RNG is left as it is.
            self._fit_prior_to_codes(module, seeded_generator(module, self.seed))
            self._ema_prior_fit_at = ema[name].num_updates
        return module

    def validation_step(self, batch):
        out = self.training_module("vae")(batch)  # forward = elbo
        return {"loss": out.loss, "recon": out.recon, "kl": out.kl}

    def state_dict(self):
        return {"prior_ll": self._prior_ll}

    def load_state_dict(self, state):
        self._prior_ll = state.get("prior_ll")

    def sample(self, step):
        vae = self.inference_module("vae")
        g = seeded_generator(vae, self.seed)
        x = self.val_images[:32].to(next(vae.parameters()).device)
        return {"samples": vae.sample(64, generator=g),
                "recon": torch.cat([x, vae.reconstruct(x)])}

    def _held_out(self):
        vae = self.inference_module("vae")
        return vae, self.val_images.to(next(vae.parameters()).device)

    def evaluate(self) -> Dict[str, float]:
        vae, x = self._held_out()
        g = seeded_generator(vae, self.seed)
        ll = torch.cat([vae.log_likelihood(b, self.nll_k, generator=g) for b in x.split(256)])
        # The ELBO with the same generator, so evaluation repeats exactly.
        elbo = []
        for b in x.split(256):
            mu, logvar = vae.encode(b)
            eps = torch.randn(mu.shape, generator=g, device=mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
            elbo.append(-vae.log_px_given_z(b, vae.decode(z)) + vae.kl(mu, logvar, z))
        res = {"nll": float(-ll.mean()), "nll_k": float(self.nll_k),
               "elbo": float(torch.cat(elbo).mean())}
        if (vae.channels, vae.image_size, vae.image_size) == DIGIT_SHAPE:
            res.update(digit_image_metrics(lambda n, gen: vae.sample(n, generator=gen),
                                           self.eval_samples, g))
        return res

    def generate(self, n: int, prompt: Optional[str] = None,
                 seed: Optional[int] = None) -> torch.Tensor:
        return unconditional_samples(self.inference_module("vae"), n, prompt,
                                     self.seed if seed is None else seed)
