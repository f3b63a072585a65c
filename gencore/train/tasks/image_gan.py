"""ImageGANTask: a DCGAN-style generator and discriminator trained with a GAN loss from
gencore.nn.GANLoss (fused kernels) and an optional R1 penalty on real images.

One training step (manual optimization, two optimizers):
  1. D step: loss(D(real), D(G(z).detach())) [+ r1_gamma / 2 * R1 * r1_every on the steps where
     step % r1_every == 0: the lazy R1 of StyleGAN2, same average strength, fewer double backwards]
  2. G step: loss for the generator on D(G(z)), with D's weights frozen (no grads computed).
Sampling and evaluation use `inference_module("G")`: the Trainer's EMA copy of G when
TrainerConfig.ema_decay is set. `evaluate()`: fd / kid of `eval_samples` samples in the digit
classifier's feature space, next to fd_floor / kid_floor (real train vs real test).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from ...models.dcgan import Discriminator, Generator, r1_penalty
from ...nn import GANLoss
from ...ops.reference.gan_loss import FAKE_ONLY
from ..optim import fused
from ..task import Task
from ._images import DIGIT_SHAPE, digit_image_metrics, unconditional_samples
from ._sampling import seeded_generator

__all__ = ["ImageGANTask"]


class ImageGANTask(Task):
    automatic_optimization = False

    def __init__(self, G: Generator, D: Discriminator, loss: str = "bce", lr_g: float = 2e-4,
                 lr_d: float = 2e-4, betas=(0.5, 0.99), r1_gamma: float = 0.0, r1_every: int = 1,
                 impl: str = "auto", eval_samples: int = 1437, seed: int = 0):
        if not isinstance(G, Generator) or not isinstance(D, Discriminator):
            raise TypeError("ImageGANTask: G must be a gencore.models.Generator and D a "
                            f"Discriminator, got {type(G).__name__} and {type(D).__name__}")
        if (G.channels, G.image_size) != (D.channels, D.image_size):
            raise ValueError(f"ImageGANTask: G makes {G.channels}x{G.image_size}x{G.image_size} "
                             f"images, D reads {D.channels}x{D.image_size}x{D.image_size}")
        if not lr_g > 0 or not lr_d > 0:
            raise ValueError(f"ImageGANTask: learning rates must be > 0, got lr_g={lr_g}, lr_d={lr_d}")
        if not r1_gamma >= 0:
            raise ValueError(f"ImageGANTask: r1_gamma must be >= 0, got {r1_gamma}")
        if not isinstance(r1_every, int) or r1_every < 1:
            raise ValueError(f"ImageGANTask: r1_every must be a positive integer, got {r1_every!r}")
        if impl not in ("auto", "fused", "reference"):
            raise ValueError(f"ImageGANTask: impl must be 'auto', 'fused' or 'reference', got {impl!r}")
        if not isinstance(eval_samples, int) or eval_samples < 2:
            raise ValueError(f"ImageGANTask: eval_samples must be an integer >= 2, got {eval_samples!r}")
        self.G, self.D = G, D
        self.criterion = GANLoss(loss, impl=impl)  # validates `loss`
        self.lr_g, self.lr_d, self.betas = lr_g, lr_d, tuple(betas)
        self.r1_gamma, self.r1_every = float(r1_gamma), r1_every
        self.eval_samples, self.seed = eval_samples, seed
        self._last_r1 = None  # R1 of the last step that computed it

    def modules(self):
        return {"G": self.G, "D": self.D}

    def ema_modules(self):
        return ["G"]

    def configure_optimizers(self):
        return {"g": torch.optim.Adam(self.G.parameters(), self.lr_g, betas=self.betas,
                                      fused=fused(self.G.parameters())),
                "d": torch.optim.Adam(self.D.parameters(), self.lr_d, betas=self.betas,
                                      fused=fused(self.D.parameters()))}

    def discriminator_loss(self, real: torch.Tensor, fake: torch.Tensor, step: int):
        """D's loss on a real and a (detached) fake batch, with R1 on the steps that take it."""
        use_r1 = self.r1_gamma > 0 and step % self.r1_every == 0
        real = real.detach().requires_grad_(use_r1)
        d_real, d_fake = self.D(real), self.D(fake.detach())
        d_loss = self.criterion.discriminator(d_real, d_fake)
        out = {"d_loss": d_loss, "d_real": d_real.detach().mean(), "d_fake": d_fake.detach().mean()}
        total = d_loss
        if use_r1:
            r1 = r1_penalty(d_real, real)
            total = d_loss + (0.5 * self.r1_gamma * self.r1_every) * r1
            self._last_r1 = r1.detach()  # a tensor: logged without a host read
        if self._last_r1 is not None:  # logged every step (the Trainer averages over steps)
            out["r1"] = self._last_r1
        return total, out

    def generator_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        d_fake = self.D(fake)
        d_real = None
        if (self.criterion.kind, "generator") not in FAKE_ONLY:  # relativistic losses read D(real)
            with torch.no_grad():
                d_real = self.D(real)
        return self.criterion.generator(d_real, d_fake)

    def training_step(self, batch, step):
        real = batch[0] if isinstance(batch, (tuple, list)) else batch
        z = torch.randn(real.shape[0], self.G.latent_dim, device=real.device)
        fake = self.G(z)
        d_total, out = self.discriminator_loss(real, fake, step)
        self.trainer.optimizer_step("d", d_total)
        self.D.requires_grad_(False)  # G's step needs gradients through D, not for D's weights
        try:
            g_loss = self.generator_loss(real, fake)
            self.trainer.optimizer_step("g", g_loss)
        finally:
            self.D.requires_grad_(True)
        out["g_loss"] = g_loss
        return out

    def state_dict(self):
        return {"last_r1": self._last_r1}

    def load_state_dict(self, state):
        self._last_r1 = state.get("last_r1")

    def sample(self, step):
        G = self.inference_module("G")
        return G.sample(64, generator=seeded_generator(G, self.seed))

    def evaluate(self) -> Dict[str, float]:
        G = self.inference_module("G")
        if (G.channels, G.image_size, G.image_size) != DIGIT_SHAPE:
            return {}
        return digit_image_metrics(lambda n, g: G.sample(n, generator=g), self.eval_samples,
                                   seeded_generator(G, self.seed))

    def generate(self, n: int, prompt: Optional[str] = None,
                 seed: Optional[int] = None) -> torch.Tensor:
        return unconditional_samples(self.inference_module("G"), n, prompt,
                                     self.seed if seed is None else seed)
