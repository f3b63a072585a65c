"""textgan recipes: RelGAN (LSTM generator, Gumbel-softmax, CNN discriminator) on the synthetic
oracle of SeqGAN/RelGAN (vocabulary 5000, length 20, oracle LSTM 32/32 with N(0, 1) weights).

MLE-only baseline with the same budget: `--set mle_steps=<steps>`. Metrics (nats per token):
nll_oracle (quality; floor nll_oracle_floor = H(oracle)), nll_gen (coverage), nll_div (the
generator's own entropy: a low value beside a low nll_oracle means mode collapse).

Every run also writes the quality-diversity frontier (`metrics.frontier`: NLL_oracle and NLL_div
of the generator sampled and scored at temperatures 0.7 .. 1.5) and the same for the MLE-only
generator with the same 1200 updates, trained beside it from step mle_steps on
(`metrics.frontier_mle`, equal to a `--set mle_steps=1200` run's `frontier`); frontier_samples
(1000) samples per point keep the 14 points at about a minute on one thread.

Defaults (1000 MLE + 200 adversarial steps, discriminator with 16 representations, beta_max 10,
exp schedule, g_lr 1e-3, d_lr 1e-4) were tuned on 2 shared CPU cores, one thread per run (about
4 min) for NLL_oracle at T = 1, where they beat MLE only by about 0.4 nats. On the frontier they
do not: the adversarial generator is a sharper one, and at equal NLL_div the MLE-only generator
sampled colder is better (by 0.05-0.33 nats, seeds 0-2). Figures and what was tried:
benchmarks/RESULTS.md ("textgan-oracle"), `benchmarks/textgan_frontier.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .._settings import setting
from ..data import SampledDataset
from ..models.oracle import OracleLSTM
from ..models.text_gan import SCHEDULES, CNNDiscriminator, TextGenerator
from ..ops.reference.gan_loss import KINDS
from ..train import TrainerConfig
from ..train.tasks.text_gan import TextGANTask
from .base import Recipe, RecipeSettings, RunPlan

__all__ = ["RECIPES", "TextGANSettings"]


@dataclass
class TextGANSettings(RecipeSettings):
    mle_steps: int = setting(1000, "MLE pretraining steps before the adversarial ones")
    oracle_seed: int = setting(0, "seeds the oracle LSTM (the data)")
    vocab_size: int = setting(5000, "the oracle's vocabulary")
    seq_len: int = setting(20, "sequence length")
    gen_embed: int = setting(32, "generator embedding width")
    gen_hidden: int = setting(32, "generator LSTM width")
    disc_embed: int = setting(64, "discriminator embedding width")
    disc_filters: int = setting(64, "discriminator filters per kernel size")
    disc_dropout: float = setting(0.25, "discriminator dropout")
    disc_rep: int = setting(16, "discriminator representations (RelGAN's)")
    loss: str = setting("rsgan", "GAN loss", choices=KINDS)
    temperature: str = setting("exp", "Gumbel-softmax inverse-temperature schedule",
                               choices=SCHEDULES)
    beta_max: float = setting(10.0, "the schedule's largest inverse temperature")
    mle_lr: float = setting(1e-2, "MLE Adam learning rate")
    g_lr: float = setting(1e-3, "adversarial generator Adam learning rate")
    d_lr: float = setting(1e-4, "discriminator Adam learning rate")
    d_steps: int = setting(1, "discriminator updates per generator update")
    eval_samples: int = setting(5000, "samples of the final NLL_oracle / NLL_gen")
    frontier_samples: int = setting(1000, "samples per temperature of the frontier")


def build_textgan_oracle(s: TextGANSettings, device: torch.device) -> RunPlan:
    oracle = OracleLSTM(s.vocab_size, 32, 32, s.seq_len, seed=s.oracle_seed)
    data = SampledDataset(oracle.sample, name=f"oracle-lstm-{s.oracle_seed}")
    torch.manual_seed(s.seed)  # the generator's and discriminator's initial weights
    gen = TextGenerator(s.vocab_size, s.gen_embed, s.gen_hidden, s.seq_len)
    disc = CNNDiscriminator(s.vocab_size, s.seq_len, s.disc_embed, num_filters=s.disc_filters,
                            dropout=s.disc_dropout, num_rep=s.disc_rep)
    task = TextGANTask(
        oracle, gen, disc, total_steps=s.steps, mle_steps=min(s.mle_steps, s.steps),
        loss=s.loss, schedule=s.temperature, beta_max=s.beta_max, mle_lr=s.mle_lr, g_lr=s.g_lr,
        d_lr=s.d_lr, d_steps=s.d_steps, test_data=data.fixed(s.eval_samples, s.seed + 1_000_003),
        eval_samples=s.eval_samples, frontier_samples=s.frontier_samples)
    return RunPlan(task=task, train_data=data.batches(s.batch_size, s.seed))


RECIPES = [
    Recipe(
        name="textgan-oracle",
        summary="RelGAN-style text GAN (LSTM G, Gumbel-softmax, CNN D) on the synthetic oracle LSTM",
        settings=TextGANSettings(steps=1200, batch_size=64, trainer=TrainerConfig(
            grad_clip=5.0, lr_schedule="constant", log_every=50, sample_every=300)),
        demo={},  # the full run: MLE, then adversarial; about 4 min on 2 cores
        build=build_textgan_oracle,
    ),
]
