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

from typing import Any, Dict

import torch

from ..data import SampledDataset
from ..models.oracle import OracleLSTM
from ..models.text_gan import SCHEDULES, CNNDiscriminator, TextGenerator
from ..ops.reference.gan_loss import KINDS
from ..train.tasks.text_gan import TextGANTask
from .base import Recipe, RunPlan

__all__ = ["RECIPES"]


def build_textgan_oracle(config: Dict[str, Any], device: torch.device) -> RunPlan:
    oracle = OracleLSTM(config["vocab_size"], 32, 32, config["seq_len"], seed=config["oracle_seed"])
    data = SampledDataset(oracle.sample, name=f"oracle-lstm-{config['oracle_seed']}")
    seed = config["seed"]
    torch.manual_seed(seed)  # the generator's and discriminator's initial weights
    gen = TextGenerator(config["vocab_size"], config["gen_embed"], config["gen_hidden"],
                        config["seq_len"])
    disc = CNNDiscriminator(config["vocab_size"], config["seq_len"], config["disc_embed"],
                            num_filters=config["disc_filters"], dropout=config["disc_dropout"],
                            num_rep=config["disc_rep"])
    task = TextGANTask(
        oracle, gen, disc, total_steps=config["steps"], mle_steps=min(config["mle_steps"], config["steps"]),
        loss=config["loss"], schedule=config["temperature"], beta_max=config["beta_max"],
        mle_lr=config["mle_lr"], g_lr=config["g_lr"], d_lr=config["d_lr"],
        d_steps=config["d_steps"], test_data=data.fixed(config["eval_samples"], seed + 1_000_003),
        eval_samples=config["eval_samples"], frontier_samples=config["frontier_samples"])
    return RunPlan(task=task, train_data=data.batches(config["batch_size"], seed),
                   trainer={"grad_clip": 5.0, "lr_schedule": "constant", "log_every": 50,
                            "sample_every": max(1, config["steps"] // 4)})


RECIPES = [
    Recipe(
        name="textgan-oracle",
        summary="RelGAN-style text GAN (LSTM G, Gumbel-softmax, CNN D) on the synthetic oracle LSTM",
        defaults={"steps": 1200, "mle_steps": 1000, "seed": 0, "oracle_seed": 0,
                  "batch_size": 64, "vocab_size": 5000, "seq_len": 20,
                  "gen_embed": 32, "gen_hidden": 32, "disc_embed": 64, "disc_filters": 64,
                  "disc_dropout": 0.25, "disc_rep": 16, "loss": "rsgan", "temperature": "exp",
                  "beta_max": 10.0, "mle_lr": 1e-2, "g_lr": 1e-3, "d_lr": 1e-4, "d_steps": 1,
                  "eval_samples": 5000, "frontier_samples": 1000},
        choices={"loss": KINDS, "temperature": SCHEDULES},
        demo={},  # the full run: MLE, then adversarial; about 4 min on 2 cores
        build=build_textgan_oracle,
    ),
]
