"""Sample quality of the digit recipes: the recipes' defaults against the settings they replaced.

Trains `vae-digits` and `gan-digits` at their defaults and with the previous defaults (OLD below)
for a few seeds, interleaved (old, new, old, new...) so that both see the same machine load, and
prints each run's Frechet distance (`fd`, exactly what the recipe reports: gencore.metrics on
the digit classifier's features against the real test split), the real-data floor, KID, NLL for
the VAE, and the training time (the loop only; the evaluation is timed apart).

    OMP_NUM_THREADS=1 python benchmarks/digits_quality.py --seeds 0 1 2 --threads 1
    python benchmarks/digits_quality.py --recipes gan-digits --seeds 0 --jsonl /tmp/q.jsonl

One line of JSON per run (also appended to --jsonl when given), then a summary per recipe and
setting: mean fd over the seeds and mean training time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from gencore.recipes.run import train_recipe

# The defaults before issue 15's "digits closer to real" change (the same keys the recipes take).
OLD = {
    "vae-digits": {"prior_components": 128},
    "gan-digits": {"lr_g": 4e-4, "lr_d": 4e-4, "beta1": 0.5, "ema_decay": 0.999},
}


def run_one(recipe: str, setting: str, seed: int) -> dict:
    overrides = {**(OLD[recipe] if setting == "old" else {}), "seed": seed}
    with tempfile.TemporaryDirectory() as out:
        res = train_recipe(recipe, overrides, out_dir=out, progress="none", log=lambda m: None)
    m = res["metrics"]
    return {"recipe": recipe, "setting": setting, "seed": seed, "train_s": res["train_seconds"],
            "eval_s": res["eval_seconds"], "load": round(os.getloadavg()[0], 2),
            **{k: round(m[k], 4) for k in ("fd", "fd_floor", "kid", "nll") if k in m}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", nargs="+", default=list(OLD), choices=list(OLD))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--jsonl", default=None, help="also append each run's line to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for recipe in args.recipes:
        for seed in args.seeds:
            for setting in ("old", "new"):
                t0 = time.time()
                row = run_one(recipe, setting, seed)
                row["wall_s"] = round(time.time() - t0, 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
    for recipe in args.recipes:
        for setting in ("old", "new"):
            sel = [r for r in rows if r["recipe"] == recipe and r["setting"] == setting]
            print(f"{recipe:11s} {setting}: fd {statistics.mean(r['fd'] for r in sel):.4f} "
                  f"(per seed {[r['fd'] for r in sel]}), floor {sel[0]['fd_floor']:.4f}, "
                  f"train {statistics.mean(r['train_s'] for r in sel):.0f} s")


if __name__ == "__main__":
    main()
