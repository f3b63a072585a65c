"""Baseline for the gpt-text recipe: nanoGPT's model and training loop, re-implemented.

This file re-implements (written here, not copied) Andrej Karpathy's nanoGPT as published
(model.py and train.py) at the CPU setting its shakespeare_char config documents:
    --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
    --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
with the config's other values: learning_rate 1e-3, min_lr 1e-4, warmup_iters 100, beta2 0.99,
eval_interval 250, gradient_accumulation_steps 1, and train.py's defaults: weight_decay 0.1,
beta1 0.9, grad_clip 1.0, bias False, torch.manual_seed(1337).
Architecture: token + learned position embeddings, pre-LayerNorm blocks (causal self-attention on
F.scaled_dot_product_attention, 4x GELU MLP), final LayerNorm, LM head tied to the token
embedding, N(0, 0.02) init with the residual projections at 0.02 / sqrt(2 n_layer); AdamW with
decay on the >= 2-d parameters only; nanoGPT's warmup-then-cosine learning rate; random batches.

The data is gencore's (nothing is downloaded): gencore.data.english_text() with its char
tokenizer, the same train/validation split the gpt-text recipe trains and evaluates on. Both
models are scored the same way: mean cross-entropy (nats per character) over every
non-overlapping 64-character window of the validation text (gpt-text's `evaluate()`); nanoGPT's
own estimate (20 random batches) is printed too.

    python benchmarks/baseline_nanogpt.py --which nanogpt --threads 2
    python benchmarks/baseline_nanogpt.py --which gencore --threads 2   # the gpt-text recipe
    python benchmarks/baseline_nanogpt.py --which steptime --threads 2  # one step of each

Prints the final validation loss and the training time (the loop only; the final evaluation is
timed apart).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# nanoGPT's shakespeare_char CPU setting.
CFG = dict(block_size=64, batch_size=12, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False,
           max_iters=2000, lr_decay_iters=2000, learning_rate=1e-3, min_lr=1e-4, warmup_iters=100,
           beta1=0.9, beta2=0.99, weight_decay=0.1, grad_clip=1.0, eval_interval=250, eval_iters=20)


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (nanoGPT's, from before torch had bias=False)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_attn = nn.Linear(c["n_embd"], 3 * c["n_embd"], bias=c["bias"])
        self.c_proj = nn.Linear(c["n_embd"], c["n_embd"], bias=c["bias"])
        self.resid_dropout = nn.Dropout(c["dropout"])
        self.n_head, self.n_embd, self.dropout = c["n_head"], c["n_embd"], c["dropout"]

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None,
                                           dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c_fc = nn.Linear(c["n_embd"], 4 * c["n_embd"], bias=c["bias"])
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * c["n_embd"], c["n_embd"], bias=c["bias"])
        self.dropout = nn.Dropout(c["dropout"])

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.ln_1 = LayerNorm(c["n_embd"], c["bias"])
        self.attn = CausalSelfAttention(c)
        self.ln_2 = LayerNorm(c["n_embd"], c["bias"])
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, c, vocab_size):
        super().__init__()
        self.c = c
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, c["n_embd"]),
            wpe=nn.Embedding(c["block_size"], c["n_embd"]),
            drop=nn.Dropout(c["dropout"]),
            h=nn.ModuleList([Block(c) for _ in range(c["n_layer"])]),
            ln_f=LayerNorm(c["n_embd"], c["bias"]),
        ))
        self.lm_head = nn.Linear(c["n_embd"], vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c["n_layer"]))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        t = idx.size(1)
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)  # fused only on CUDA


def get_lr(it, c):
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
    return c["min_lr"] + coeff * (c["learning_rate"] - c["min_lr"])


def data():
    from gencore.data import english_text
    d = english_text()
    tok = d.tokenizer("char")
    return d, tok, tok.encode_tensor(d.train), tok.encode_tensor(d.val)


@torch.no_grad()
def full_val_loss(logits_fn, val_tokens, block_size):
    """Mean NLL over every non-overlapping window of the validation text (as gpt-text scores)."""
    from gencore.data import LMEvalBatches
    total, count = 0.0, 0
    for x, y in LMEvalBatches(val_tokens, block_size, 32):
        logits = logits_fn(x)
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                       reduction="sum"))
        count += y.numel()
    return total / count


def run_nanogpt(c, seed=1337):
    _, tok, train, val = data()
    torch.manual_seed(seed)
    model = NanoGPT(c, tok.vocab_size)
    opt = model.configure_optimizers(c["weight_decay"], c["learning_rate"], (c["beta1"], c["beta2"]))
    bs, T = c["batch_size"], c["block_size"]

    def get_batch(split):
        d = train if split == "train" else val
        ix = torch.randint(len(d) - T, (bs,))
        return (torch.stack([d[i:i + T] for i in ix]), torch.stack([d[i + 1:i + 1 + T] for i in ix]))

    @torch.no_grad()
    def estimate_loss():
        out = {}
        model.eval()
        for split in ("train", "val"):
            out[split] = sum(float(model(*get_batch(split))[1]) for _ in range(c["eval_iters"])) / c["eval_iters"]
        model.train()
        return out

    t0 = time.time()
    X, Y = get_batch("train")
    it, estimate = 0, None
    while True:
        for g in opt.param_groups:
            g["lr"] = get_lr(it, c)
        if it % c["eval_interval"] == 0:
            estimate = estimate_loss()
            print(f"step {it}: train loss {estimate['train']:.4f}, val loss {estimate['val']:.4f}",
                  flush=True)
        if it == c["max_iters"]:  # nanoGPT also takes one more step after its last eval
            break
        _, loss = model(X, Y)
        X, Y = get_batch("train")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        it += 1
    train_s = time.time() - t0
    model.eval()
    t1 = time.time()
    # The full-sequence logits (nanoGPT's forward returns only the last position without targets).
    val_loss = full_val_loss(lambda x: model(x, x.contiguous())[0], val, T)
    return {"val_loss": val_loss, "nanogpt_estimate_val": estimate["val"], "train_seconds": train_s,
            "eval_seconds": time.time() - t1, "params": sum(p.numel() for p in model.parameters())}


def run_gencore(c, seed=0, overrides=None):
    from gencore.recipes import build_run, get_recipe, resolve_settings
    recipe = get_recipe("gpt-text")
    settings = resolve_settings(recipe, {**(overrides or {}), "steps": c["max_iters"], "seed": seed,
                                         "sample_every": None, "ckpt_every": None})
    plan, trainer = build_run(recipe, settings, "cpu", progress="none")
    t0 = time.time()
    summary = trainer.fit()
    train_s = time.time() - t0
    t1 = time.time()
    metrics = plan.task.evaluate()
    return {"val_loss": metrics["loss"], "bpc": metrics["bpc"], "train_seconds": train_s,
            "eval_seconds": time.time() - t1, "params": plan.task.model.num_params(),
            "train_loss_last50": summary["train"]["loss"]}


def step_times(c, overrides=None, rounds=40):
    """Median ms of one training step (forward, backward, clipping, optimizer) of nanoGPT and of
    the gpt-text recipe's model and optimizer (with `overrides`) on the same batch, timed by
    gencore.timing.round_robin (the harness of every comparison), so the load of a shared
    machine hits both alike."""
    from gencore.recipes import get_recipe, resolve_settings
    from gencore.timing import round_robin
    from gencore.train.precision import resolve_precision
    _, tok, train, _ = data()
    x = torch.stack([train[i:i + c["block_size"]] for i in range(0, 12 * 997, 997)])
    y = torch.stack([train[i + 1:i + 1 + c["block_size"]] for i in range(0, 12 * 997, 997)])
    torch.manual_seed(1337)
    nano = NanoGPT(c, tok.vocab_size)
    recipe = get_recipe("gpt-text")
    settings = resolve_settings(recipe, overrides)
    plan = recipe.build(settings, torch.device("cpu"))
    (opt,) = plan.task.configure_optimizers().values()
    bf16 = resolve_precision(settings.trainer.precision, "cpu") == "bf16"  # as the recipe trains

    def step(model, opt, autocast):
        def call():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
            opt.step()
            opt.zero_grad(set_to_none=True)
        return call
    stats = round_robin({"nanogpt": step(nano, nano.configure_optimizers(0.1, 1e-3, (0.9, 0.99)), False),
                         "gencore": step(plan.task.model, opt, bf16)},
                        min_reps=rounds, max_reps=rounds, warmup=3)
    return {k: st["median"] * 1e3 for k, st in stats.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--which", choices=("nanogpt", "gencore", "steptime"), default="nanogpt",
                    help="train nanoGPT, train the gpt-text recipe, or time one step of each")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=CFG["max_iters"])
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="one run per seed (default: nanoGPT's 1337, the recipe's 0)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="gpt-text recipe settings (--which gencore), as `gencore train --set`")
    ap.add_argument("--json", default=None, help="append one JSON line per run to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    c = {**CFG, "max_iters": args.steps, "lr_decay_iters": args.steps}
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.which == "steptime":
        ms = step_times(c, overrides)
        print(f"training step, median ms ({args.threads} threads): nanogpt {ms['nanogpt']:.2f}, "
              f"gencore {ms['gencore']:.2f} (gencore / nanogpt = {ms['gencore'] / ms['nanogpt']:.3f}) "
              f"{' '.join(args.set)}")
        return
    seeds = args.seeds or ([1337] if args.which == "nanogpt" else [0])
    losses = []
    for seed in seeds:
        res = (run_nanogpt(c, seed) if args.which == "nanogpt" else
               run_gencore(c, seed, overrides))
        losses.append(res["val_loss"])
        print(f"{args.which} seed {seed}: final val loss {res['val_loss']:.4f} nats/char "
              f"({res['val_loss'] / math.log(2):.4f} bits/char), train {res['train_seconds']:.1f} s, "
              f"eval {res['eval_seconds']:.1f} s, {args.threads} threads, {c['max_iters']} steps, "
              f"{res['params']} params", flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"which": args.which, "set": overrides, "seed": seed,
                                    "steps": c["max_iters"], "threads": args.threads, **res}) + "\n")
    if len(losses) > 1:
        print(f"{args.which} {' '.join(args.set)}: mean {statistics.mean(losses):.4f} "
              f"std {statistics.stdev(losses):.4f} min {min(losses):.4f} max {max(losses):.4f} "
              f"over seeds {seeds}")


if __name__ == "__main__":
    main()
