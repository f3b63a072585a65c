"""Recipe `vae-digits`: a convolutional VAE on scikit-learn's 8x8 digits (gencore.models.VAE).

Evaluation: importance-sampled NLL (nats per image, k = nll_k samples) and ELBO on the validation
digits, and the Frechet distance / KID of samples in the digit classifier's feature space next to
the real-data floor (fd_floor, kid_floor).

Defaults: the mixture prior has 256 components, refitted by EM every 250 steps. Against 128
components: FD of samples 0.031 (0.024 to 0.043 over seeds 0-4) -> 0.028 (0.024 to 0.032), floor
0.014 (benchmarks/digits_quality.py), for a validation NLL ~1.1 nats per image higher and ~10%
more training time. More components fit the training codes more closely still (NLL with k = 10:
512 components 9 nats worse, 1024 58 nats worse: the prior memorises the training set) without
better samples at 512. `prior=flow` (a RealNVP prior, flow_layers / flow_hidden) gives a better
validation NLL (-63.8 against -61.3, seed 0) but worse samples (FD 0.041; issue 23 in RESULTS.md).
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from ..data import ImageBatches, digits
from ..models.vae import GAUSSIAN_VARS, LIKELIHOODS, PRIORS, VAE
from ..train.tasks.vae import VAETask
from .base import Recipe, RunPlan

__all__ = ["RECIPES", "build_vae_digits"]


def build_vae_digits(config: Dict[str, Any], device: torch.device) -> RunPlan:
    data = digits()
    torch.manual_seed(config["seed"])
    model = VAE(image_size=8, channels=1, latent_dim=config["latent"], width=config["width"],
                likelihood=config["likelihood"], gaussian_var=config["gaussian_var"],
                prior=config["prior"], prior_components=config["prior_components"],
                flow_layers=config["flow_layers"], flow_hidden=config["flow_hidden"])
    task = VAETask(model, data.val, lr=config["lr"], kl_warmup=config["kl_warmup"],
                   nll_k=config["nll_k"], eval_samples=data.train.shape[0], seed=config["seed"],
                   train_images=data.train,
                   prior_refit_every=config["prior_refit_every"] if config["prior"] == "mixture" else 0)
    steps = config["steps"]
    return RunPlan(
        task=task,
        train_data=ImageBatches(data.train, config["batch_size"], seed=config["seed"]),
        val_data=list(data.val.split(360)),
        trainer={"lr_schedule": "cosine", "warmup_steps": min(100, steps // 10),
                 "grad_clip": config["grad_clip"] if config["grad_clip"] > 0 else None,
                 "ema_decay": config["ema_decay"] if config["ema_decay"] > 0 else None,
                 "val_every": max(1, steps // 5), "sample_every": max(1, steps // 5),
                 "log_every": max(1, steps // 20)},
    )


RECIPES = [
    Recipe(
        name="vae-digits",
        summary="convolutional VAE on scikit-learn's 8x8 digits (NLL by importance sampling, FD/KID)",
        defaults={"steps": 3000, "seed": 0, "batch_size": 64, "lr": 2e-3, "latent": 16,
                  "width": 32, "likelihood": "gaussian", "gaussian_var": "pixel",
                  "prior": "mixture", "prior_components": 256, "prior_refit_every": 250,
                  "flow_layers": 6, "flow_hidden": 128,
                  "kl_warmup": 0, "grad_clip": 0.0, "ema_decay": 0.0, "nll_k": 1000},
        choices={"likelihood": LIKELIHOODS, "gaussian_var": GAUSSIAN_VARS, "prior": PRIORS},
        demo={},  # the full run: under a minute on 2 cores
        build=build_vae_digits,
    ),
]
