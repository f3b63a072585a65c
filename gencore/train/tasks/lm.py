"""LanguageModelTask: next-token training of any causal language model, for the Trainer.

    task = LanguageModelTask(GPT(cfg), tokenizer, val_text=data.val, lr=1e-3)
    Trainer(task, TrainerConfig(...), train_data=LMBatches(...), val_data=LMEvalBatches(...)).fit()
    task.evaluate()      # {'loss': ..., 'bpc': ..., 'perplexity': ...} on the held-out text
    print(task.generate(4))

The model must map `model(idx, targets)` -> (logits, loss) and have a
`generate(idx, max_new_tokens, temperature=, top_k=, generator=)` method and a
`config.block_size` (gencore.models.GPT does).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ...data import LMEvalBatches
from ...metrics import bits_per_char, perplexity
from ..optim import Muon, fused
from ..task import Task
from ._sampling import seeded_generator

__all__ = ["LanguageModelTask", "OPTIMIZERS"]

OPTIMIZERS = ("adamw", "muon", "muon_torch")


@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


class LanguageModelTask(Task):
    """Automatic optimization with AdamW; validation loss; final metrics and text samples.

    Args:
        model: the language model (see the module docstring).
        tokenizer: a gencore.data tokenizer (encode / decode).
        lr, weight_decay, betas: AdamW (PyTorch's fused implementation on CPU and CUDA). As in
            nanoGPT, every parameter with two or more dimensions (the matmul weights and the
            embeddings) decays; biases and LayerNorm weights do not.
        optimizer: "adamw", or "muon": gencore.train.Muon (orthogonalised momentum, `momentum`,
            `ns_steps` Newton-Schulz iterations) for the model's `hidden_matrices()`, AdamW for
            every other parameter, one lr; or "muon_torch": the same with torch.optim.Muon and
            torch's fused AdamW (two optimizers; torch's Muon cannot skip a non-finite step on
            the device, so the Trainer reads that flag on the host each step).
        val_text: held-out text for `evaluate()`; None: evaluate() raises.
        eval_batch_size: windows per batch in `evaluate()`.
        eval_batches: None: every non-overlapping block_size window of val_text; an int: that
            many batches of seeded random windows (a fixed set too, for long texts).
        sample_tokens, temperature, top_k: what `generate()` and the periodic samples draw.
        sample_seed: seeds the local generator of `generate()`.
    """

    def __init__(self, model: nn.Module, tokenizer, lr: float = 1e-3, weight_decay: float = 0.1,
                 betas: Sequence[float] = (0.9, 0.99), val_text: Optional[str] = None,
                 eval_batch_size: int = 32, eval_batches: Optional[int] = None,
                 sample_tokens: int = 200, temperature: float = 1.0, top_k: Optional[int] = None,
                 sample_seed: int = 0, optimizer: str = "adamw", momentum: float = 0.95,
                 ns_steps: int = 5):
        if not isinstance(model, nn.Module):
            raise TypeError(f"LanguageModelTask: model must be an nn.Module, got {type(model).__name__}")
        if not hasattr(getattr(model, "config", None), "block_size"):
            raise TypeError("LanguageModelTask: model needs a config.block_size (e.g. gencore.models.GPT)")
        if not lr > 0:
            raise ValueError(f"LanguageModelTask: lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"LanguageModelTask: weight_decay must be >= 0, got {weight_decay}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"LanguageModelTask: betas must be two numbers in [0, 1), got {betas}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"LanguageModelTask: optimizer must be one of {list(OPTIMIZERS)}, "
                             f"got {optimizer!r}")
        if optimizer.startswith("muon") and not hasattr(model, "hidden_matrices"):
            raise TypeError("LanguageModelTask: optimizer='muon' needs a model with "
                            "hidden_matrices() (e.g. gencore.models.GPT)")
        if eval_batch_size < 1 or (eval_batches is not None and eval_batches < 1):
            raise ValueError("LanguageModelTask: eval_batch_size and eval_batches must be >= 1")
        if sample_tokens < 1:
            raise ValueError(f"LanguageModelTask: sample_tokens must be >= 1, got {sample_tokens}")
        self.model, self.tokenizer = model, tokenizer
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.optimizer, self.momentum, self.ns_steps = optimizer, momentum, ns_steps
        self.sample_tokens, self.temperature, self.top_k = sample_tokens, temperature, top_k
        self.sample_seed = sample_seed
        self.val_text = val_text
        self._val_blocks: Optional[LMEvalBatches] = None
        if val_text is not None:
            tokens = tokenizer.encode_tensor(val_text)
            # Tokens per character: 1 for a char tokenizer, >= 1 for bytes (bpc stays per char).
            self._tokens_per_char = tokens.numel() / max(1, len(val_text))
            self._val_blocks = LMEvalBatches(tokens, model.config.block_size, eval_batch_size,
                                             max_batches=eval_batches)

    # ------------------------------------------------------------------ training
    def modules(self) -> Dict[str, nn.Module]:
        return {"model": self.model}

    def configure_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.optimizer == "muon_torch":
            # torch.optim.Muon (its update's RMS matched to AdamW's, as gencore's Muon does) for
            # the hidden matrices and torch's fused AdamW for the rest: two optimizers over
            # disjoint parameters, which the Trainer steps together after the one backward.
            matrices = {id(p) for p in self.model.hidden_matrices()}
            rest = [p for p in params if id(p) not in matrices]
            return {"muon": torch.optim.Muon(
                        [p for p in params if id(p) in matrices], lr=self.lr,
                        weight_decay=self.weight_decay, momentum=self.momentum,
                        ns_steps=self.ns_steps, adjust_lr_fn="match_rms_adamw"),
                    "adamw": torch.optim.AdamW(
                        [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": self.weight_decay},
                         {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                        lr=self.lr, betas=self.betas, fused=fused(rest))}
        if self.optimizer == "muon":
            matrices = {id(p) for p in self.model.hidden_matrices()}
            groups = [{"params": [p for p in params if id(p) in matrices], "muon": True,
                       "weight_decay": self.weight_decay},
                      {"params": [p for p in params if id(p) not in matrices and p.dim() >= 2],
                       "weight_decay": self.weight_decay},
                      {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
            return {"muon": Muon(groups, lr=self.lr, momentum=self.momentum, betas=self.betas,
                                 ns_steps=self.ns_steps)}
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        # PyTorch's fused AdamW (one kernel for all parameters; CPU and CUDA): ~3x faster
        # steps than the default for this model size on CPU, the same update.
        return {"adamw": torch.optim.AdamW(groups, lr=self.lr, betas=self.betas,
                                           fused=fused(params))}

    def training_step(self, batch: Tuple[torch.Tensor, torch.Tensor], step: int):
        x, y = batch
        _, loss = self.training_module("model")(x, y)
        return {"loss": loss}

    def validation_step(self, batch: Tuple[torch.Tensor, torch.Tensor]):
        x, y = batch
        _, loss = self.model(x, y)
        return {"loss": loss}

    def sample(self, step: int) -> str:
        return self.generate(2)

    # ------------------------------------------------------------------ results
    def _device(self, model: nn.Module) -> torch.device:
        return next(model.parameters()).device

    def evaluate(self) -> Dict[str, float]:
        """Mean NLL (nats per token) over the fixed validation windows, bits per character and
        perplexity (per token)."""
        if self._val_blocks is None:
            raise ValueError("LanguageModelTask.evaluate needs val_text (held-out text)")
        total, count = 0.0, 0
        with _eval_mode(self.inference_module("model")) as model:
            device = self._device(model)
            for x, y in self._val_blocks:
                _, loss = model(x.to(device), y.to(device))
                total += float(loss) * y.numel()
                count += y.numel()
        nll = total / count
        return {"loss": nll, "bpc": bits_per_char(nll, tokens=self._tokens_per_char, chars=1),
                "perplexity": perplexity(nll), "eval_tokens": float(count)}

    def _prompt_ids(self, prompt: Optional[str]) -> list:
        if prompt:
            return self.tokenizer.encode(prompt)
        try:  # start of a new line, as nanoGPT samples; any token when '\n' is not in the alphabet
            return self.tokenizer.encode("\n")
        except ValueError:
            return [0]

    def generate(self, n: int, prompt: Optional[str] = None, seed: Optional[int] = None) -> str:
        """n samples of `sample_tokens` tokens each after `prompt` (default: a newline), as one
        string with the samples separated by blank lines. Seeded by `seed` (default
        `sample_seed`) through a local generator, so the training RNG is left alone and the same
        call gives the same text."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"LanguageModelTask.generate: n must be an integer >= 1, got {n!r}")
        ids = self._prompt_ids(prompt)
        with _eval_mode(self.inference_module("model")) as model:
            g = seeded_generator(model, self.sample_seed if seed is None else seed)
            idx = torch.tensor([ids] * n, dtype=torch.long, device=self._device(model))
            out = model.generate(idx, self.sample_tokens, temperature=self.temperature,
                                 top_k=self.top_k, generator=g)
        skip = 0 if prompt else len(ids)  # keep the user's prompt, not the default newline
        return "\n\n".join(self.tokenizer.decode(row[skip:].cpu()) for row in out)
