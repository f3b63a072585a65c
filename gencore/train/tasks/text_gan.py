"""TextGANTask: RelGAN on the synthetic oracle: MLE pre-training, then Gumbel-softmax adversarial
training, with NLL_oracle / NLL_gen / NLL_div as the final metrics.

Steps [0, mle_steps) are MLE steps of the generator on the oracle batch (optimizer "mle"); the
remaining `total_steps - mle_steps` steps are adversarial: `d_steps` discriminator updates, then
one generator update through the Gumbel-softmax relaxation (optimizers "d" and "g"). The inverse
temperature beta follows its schedule over exactly those adversarial steps. Learning rates are
constant (RelGAN), so `configure_schedulers` returns none.

The MLE-only baseline rides along (`mle_baseline=True`, when there are adversarial steps): the
MLE-only run with the same generator updates shares the first mle_steps steps exactly, so at
step mle_steps the task copies G and the "mle" optimizer's state into "G_mle" / "mle_baseline",
and every adversarial step also takes one MLE step of G_mle on the same real batch (the Trainer
clips, guards, checkpoints and resumes it like any module). `evaluate` sweeps both generators
over `frontier_temperatures` (samples drawn and scored from softmax(logits / T)): NLL_oracle
against NLL_div, the quality-diversity frontier of Caccia et al. ("Language GANs Falling Short").
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...metrics.nll import nll_div, nll_gen, nll_oracle
from ...models.oracle import OracleLSTM
from ...models.text_gan import (LOSS_KINDS, CNNDiscriminator, TemperatureSchedule, TextGenerator,
                                discriminator_loss, generator_loss)
from ..optim import fused
from ..task import Task
from ._sampling import seeded_generator

__all__ = ["TextGANTask", "FRONTIER_TEMPERATURES"]

FRONTIER_TEMPERATURES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5)


@contextlib.contextmanager
def _frozen(module: nn.Module):
    """No parameter gradients for `module` (the discriminator during the generator step: its
    gradients would be thrown away, and its weight gradient is the biggest matmul of the step)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in zip(module.parameters(), flags):
            p.requires_grad_(f)


class TextGANTask(Task):
    automatic_optimization = False

    def __init__(self, oracle: OracleLSTM, generator: TextGenerator,
                 discriminator: CNNDiscriminator, total_steps: int, mle_steps: int,
                 loss: str = "rsgan", schedule: str = "exp", beta_max: float = 100.0,
                 mle_lr: float = 1e-2, g_lr: float = 1e-4, d_lr: float = 1e-4,
                 betas: Tuple[float, float] = (0.9, 0.999), d_steps: int = 1,
                 test_data: Optional[torch.Tensor] = None, eval_samples: int = 10_000,
                 eval_seed: int = 777, impl: str = "auto",
                 frontier_temperatures: Sequence[float] = FRONTIER_TEMPERATURES,
                 frontier_samples: Optional[int] = None, mle_baseline: bool = True):
        if not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        if not isinstance(mle_steps, int) or not 0 <= mle_steps <= total_steps:
            raise ValueError(f"mle_steps must be an int in [0, total_steps={total_steps}], "
                             f"got {mle_steps!r}")
        if loss not in LOSS_KINDS:
            raise ValueError(f"loss must be one of {LOSS_KINDS}, got {loss!r}")
        if not isinstance(d_steps, int) or d_steps < 1:
            raise ValueError(f"d_steps must be an int >= 1, got {d_steps!r}")
        for name, lr in (("mle_lr", mle_lr), ("g_lr", g_lr), ("d_lr", d_lr)):
            if not lr > 0:
                raise ValueError(f"{name} must be > 0, got {lr!r}")
        if generator.vocab_size != oracle.vocab_size or generator.seq_len != oracle.seq_len \
                or discriminator.vocab_size != oracle.vocab_size:
            raise ValueError("generator, discriminator and oracle must share vocab_size and seq_len")
        self.oracle, self.G, self.D = oracle, generator, discriminator
        self.total_steps, self.mle_steps = total_steps, mle_steps
        self.loss, self.d_steps, self.impl = loss, d_steps, impl
        self.mle_lr, self.g_lr, self.d_lr, self.betas = mle_lr, g_lr, d_lr, tuple(betas)
        # horizon = the real number of adversarial steps (at least 1 so an MLE-only run is legal)
        self.temperature = TemperatureSchedule(beta_max, schedule, max(1, total_steps - mle_steps))
        self.phase = "mle" if mle_steps > 0 else "adversarial"
        self.test_data, self.eval_samples, self.eval_seed = test_data, eval_samples, eval_seed
        self._floor: Optional[float] = None
        self.frontier_temperatures = tuple(float(t) for t in frontier_temperatures)
        # samples per frontier point (default eval_samples): one point costs about as much as
        # the whole T = 1 evaluation, and a frontier is 14 of them
        self.frontier_samples = eval_samples if frontier_samples is None else frontier_samples
        if not all(t > 0 for t in self.frontier_temperatures):
            raise ValueError(f"frontier temperatures must be > 0, got {frontier_temperatures!r}")
        # the MLE-only generator with the same updates (a copy of G from step mle_steps on)
        self.G_mle = copy.deepcopy(generator) if mle_baseline and mle_steps < total_steps else None

    # -- Task protocol --------------------------------------------------------------------------
    def modules(self) -> Dict[str, nn.Module]:
        mods = {"G": self.G, "D": self.D}
        if self.G_mle is not None:
            mods["G_mle"] = self.G_mle
        return mods

    def ema_modules(self):
        return ["G"]

    def configure_optimizers(self):
        f_g, f_d = fused(self.G.parameters()), fused(self.D.parameters())
        opts = {"mle": torch.optim.Adam(self.G.parameters(), self.mle_lr, fused=f_g),
                "g": torch.optim.Adam(self.G.parameters(), self.g_lr, betas=self.betas, fused=f_g),
                "d": torch.optim.Adam(self.D.parameters(), self.d_lr, betas=self.betas, fused=f_d)}
        if self.G_mle is not None:  # the "mle" optimizer's twin, for the baseline's copy of G
            opts["mle_baseline"] = torch.optim.Adam(self.G_mle.parameters(), self.mle_lr, fused=f_g)
        return opts

    def configure_schedulers(self, optimizers, total_steps):
        return {}  # constant learning rates

    def training_step(self, batch: torch.Tensor, step: int) -> Dict[str, float]:
        real = batch.to(self.G.out.weight.device)
        if step < self.mle_steps:
            self.phase = "mle"
            loss = self.G.mle_loss(real)
            self.trainer.optimizer_step("mle", loss)
            return {"mle_loss": loss.detach()}  # tensors: the Trainer reads them once per log
        self.phase = "adversarial"
        if self.G_mle is not None:
            self._mle_baseline_step(real, step)
        out = self.adversarial_step(real, self.trainer.optimizer_step)
        self.temperature.step()
        return out

    def _mle_baseline_step(self, real: torch.Tensor, step: int) -> None:
        """The MLE-only run's step `step` on G_mle; at the first adversarial step, G_mle and its
        optimizer become copies of G and the "mle" optimizer (a resumed run past that step has
        them from its checkpoint)."""
        opts = self.trainer.optimizers
        if step == self.mle_steps:
            self.G_mle.load_state_dict(self.G.state_dict())
            # deepcopy: the state dict holds the "mle" optimizer's own moment tensors
            opts["mle_baseline"].load_state_dict(copy.deepcopy(opts["mle"].state_dict()))
        self.trainer.optimizer_step("mle_baseline", self.G_mle.mle_loss(real))

    def adversarial_step(self, real: torch.Tensor, optimizer_step) -> Dict[str, float]:
        """d_steps discriminator updates, then one generator update; `optimizer_step(name, loss)`
        does backward and the update (the Trainer's, or a bare one in the benchmark)."""
        tau, n = self.temperature.tau, real.shape[0]
        soft, _ = self.G.gumbel_sample(n, tau)  # kept with its graph for the generator step
        for i in range(self.d_steps):
            if i == 0:
                fake = soft.detach()
            else:
                with torch.no_grad():
                    fake, _ = self.G.gumbel_sample(n, tau)
            d_loss = self.d_loss(self.D(real), self.D(fake))
            optimizer_step("d", d_loss)
        with _frozen(self.D):
            real_logits = self.D(real) if self._g_needs_real() else None
            g_loss = self.g_loss(real_logits, self.D(soft))
            optimizer_step("g", g_loss)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "beta": 1.0 / tau}

    def _g_needs_real(self) -> bool:
        return self.loss in ("rsgan", "ragan")

    # The losses as methods, so the benchmark can run the same task on PyTorch built-ins.
    def d_loss(self, real_logits, fake_logits):
        return discriminator_loss(real_logits, fake_logits, self.loss, self.impl)

    def g_loss(self, real_logits, fake_logits):
        return generator_loss(real_logits, fake_logits, self.loss, self.impl)

    def _eval_generator(self, seed: Optional[int] = None) -> torch.Generator:
        return seeded_generator(self.G, self.eval_seed if seed is None else seed)

    @torch.no_grad()
    def _point(self, G: TextGenerator, temperature: float, n: int) -> Dict[str, float]:
        """NLL_oracle and NLL_div of n samples of G at `temperature` (the same seed at every
        temperature), NLL_div scored at that temperature too."""
        gen = self._eval_generator()
        # in chunks: a (10000, V) float64 CDF per step would cost 400 MB at V = 5000
        samples = torch.cat([G.sample(len(c), gen, temperature) for c in
                             torch.arange(n).split(1000)])
        return {"temperature": temperature,
                "nll_oracle": nll_oracle(self.oracle, samples.to(self.oracle.out.weight.device)),
                "nll_div": nll_div(lambda x: G.nll(x, temperature), samples)}

    @torch.no_grad()
    def evaluate(self) -> Dict[str, Any]:
        """NLL_oracle (oracle NLL of generator samples), NLL_gen (generator NLL of held-out oracle
        samples), NLL_div (generator NLL of its own samples), NLL_oracle_floor = H(oracle); all in
        nats per token, from `eval_samples` generator samples drawn with a fixed seed. "frontier":
        {temperature, nll_oracle, nll_div} per frontier temperature; "frontier_mle": the same
        for the MLE-only baseline (when the task keeps one)."""
        G = self.inference_module("G")
        gens = [G] + ([self.G_mle] if self.G_mle is not None else [])
        was_training = [g.training for g in gens]
        for g in gens:
            g.eval()
        try:
            nf = self.frontier_samples
            frontier = {t: self._point(G, t, nf) for t in self.frontier_temperatures}
            one = (frontier.get(1.0) if nf == self.eval_samples else None) \
                or self._point(G, 1.0, self.eval_samples)
            out: Dict[str, Any] = {"nll_oracle": one["nll_oracle"], "nll_div": one["nll_div"]}
            if self.test_data is not None:
                out["nll_gen"] = nll_gen(G, self.test_data.to(G.out.weight.device))
            if self._floor is None:
                self._floor = self.oracle.entropy(self.eval_samples)
            out["nll_oracle_floor"] = self._floor
            if frontier:
                out["frontier"] = list(frontier.values())
                if self.G_mle is not None:
                    out["frontier_mle"] = [self._point(self.G_mle, t, nf)
                                           for t in self.frontier_temperatures]
        finally:
            for g, w in zip(gens, was_training):
                g.train(w)
        return out

    @torch.no_grad()
    def generate(self, n: int, prompt: Optional[str] = None, seed: Optional[int] = None) -> str:
        """n generator samples as text: token ids separated by spaces, one sequence per line."""
        if prompt is not None:
            raise ValueError("textgan samples unconditionally: prompt must be None")
        tokens = self.inference_module("G").sample(n, self._eval_generator(seed))
        return "\n".join(" ".join(str(t) for t in row) for row in tokens.tolist())

    def sample(self, step: int) -> str:
        return self.generate(8)

    def state_dict(self):
        return {"temperature": self.temperature.state_dict(), "phase": self.phase}

    def load_state_dict(self, state):
        self.temperature.load_state_dict(state["temperature"])
        self.phase = state["phase"]
