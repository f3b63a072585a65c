"""DCGAN-style generator and discriminator (Radford et al. 2016) for small square images, and the
R1 gradient penalty (Mescheder et al. 2018).

    G = Generator(latent_dim=32, image_size=8, channels=1, width=64)
    D = Discriminator(image_size=8, channels=1, width=64)
    loss = GANLoss("bce", impl="auto")                    # gencore.nn: fused GAN losses
    real = x.requires_grad_(True)
    d_real, d_fake = D(real), D(G(z).detach())
    d_loss = loss.discriminator(d_real, d_fake) + gamma / 2 * r1_penalty(d_real, real)

The generator maps z through a linear layer to a 4x4 feature map and doubles the resolution with
transposed convolutions up to `image_size` (a power of two from 8 to 64); the discriminator
mirrors it with stride-2 convolutions down to 4x4 and a linear layer to one logit per image.
Channels: 8 * width at 4x4 in G (halving with each doubling, at least width), and the mirror image
in D. No batch norm: samples come from the Trainer's EMA copy of G in eval mode, and R1 keeps D
smooth without it. The generator's last layer is a sigmoid: images in [0, 1], like the data.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._checks import positive_int
from .vae import check_image_size, stage_widths

__all__ = ["Generator", "Discriminator", "r1_penalty"]


class Generator(nn.Module):
    def __init__(self, latent_dim: int = 32, image_size: int = 8, channels: int = 1, width: int = 64):
        super().__init__()
        who = "Generator"
        stages = check_image_size(image_size, who)
        positive_int(latent_dim, "latent_dim", who)
        positive_int(channels, "channels", who)
        positive_int(width, "width", who)
        self.latent_dim, self.image_size, self.channels = latent_dim, image_size, channels
        widths = stage_widths(width, stages)[::-1]            # from 4x4 up to image_size
        self._top_shape = (widths[0], 4, 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, widths[0] * 16), nn.LeakyReLU(0.2))
        layers = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        layers += [nn.Conv2d(widths[-1], channels, 3, padding=1), nn.Sigmoid()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (N, latent_dim) -> images (N, C, H, W) in [0, 1]."""
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator: expected latents of shape (N, {self.latent_dim}), "
                             f"got {tuple(z.shape)}")
        return self.body(self.project(z).view(z.shape[0], *self._top_shape))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator = None) -> torch.Tensor:
        """n images (n, C, H, W) in [0, 1] for z ~ N(0, I) (seeded by `generator`)."""
        positive_int(n, "n", "Generator.sample")
        dev = next(self.parameters()).device
        return self(torch.randn((n, self.latent_dim), generator=generator, device=dev)).float()


class Discriminator(nn.Module):
    def __init__(self, image_size: int = 8, channels: int = 1, width: int = 64):
        super().__init__()
        who = "Discriminator"
        stages = check_image_size(image_size, who)
        positive_int(channels, "channels", who)
        positive_int(width, "width", who)
        self.image_size, self.channels = image_size, channels
        widths = stage_widths(width, stages)
        layers = [nn.Conv2d(channels, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(widths[-1] * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> one logit per image (N,)."""
        want = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"Discriminator: expected images of shape (N, {want[0]}, {want[1]}, "
                             f"{want[2]}), got {tuple(x.shape)}")
        return self.head(self.body(x)).squeeze(1)


def r1_penalty(d_real_logits: torch.Tensor, real_images: torch.Tensor) -> torch.Tensor:
    """R1 = mean over images of ||d D(x) / d x||^2 on real images (Mescheder et al. 2018). The
    images must have requires_grad=True before D sees them. The result is differentiable (built
    with create_graph=True); the discriminator loss adds gamma / 2 * R1."""
    if not real_images.requires_grad:
        raise ValueError("r1_penalty: real_images must require grad before the discriminator "
                         "runs on them (real.requires_grad_(True))")
    if d_real_logits.shape[0] != real_images.shape[0]:
        raise ValueError(f"r1_penalty: {d_real_logits.shape[0]} logits for "
                         f"{real_images.shape[0]} images")
    grad, = torch.autograd.grad(d_real_logits.float().sum(), real_images, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()
