"""gencore.nn.GANLoss: the discriminator and generator losses of one GAN objective."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..ops._gan_loss import gan_loss
from ..ops.reference.gan_loss import KINDS, REDUCTIONS


class GANLoss(nn.Module):
    """GAN objective `kind` ("bce", "hinge", "wasserstein", "rsgan", "ragan"), fused.

        crit = GANLoss("hinge")
        d_loss = crit.discriminator(D(x), D(G(z).detach()))
        g_loss = crit.generator(None, D(G(z)))     # hinge/bce/wasserstein need no real logits

    `forward(real, fake, role)` is the same as calling the method named by `role`.
    """

    def __init__(self, kind: str, reduction: str = "mean", impl: str = "auto"):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"GANLoss: kind must be one of {KINDS}, got {kind!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"GANLoss: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.kind, self.reduction, self.impl = kind, reduction, impl

    def discriminator(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return gan_loss(real_logits, fake_logits, self.kind, "discriminator", self.reduction, self.impl)

    def generator(self, real_logits: Optional[torch.Tensor], fake_logits: torch.Tensor) -> torch.Tensor:
        return gan_loss(real_logits, fake_logits, self.kind, "generator", self.reduction, self.impl)

    def forward(self, real_logits: Optional[torch.Tensor], fake_logits: torch.Tensor,
                role: str = "discriminator") -> torch.Tensor:
        return gan_loss(real_logits, fake_logits, self.kind, role, self.reduction, self.impl)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, reduction={self.reduction!r}"
