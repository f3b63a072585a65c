"""A recipe's final metrics over several seeds, for one or more settings side by side.

    python benchmarks/recipe_seeds.py vae-digits --seeds 0 1 2
    python benchmarks/recipe_seeds.py textgan-oracle --seeds 0 1 2 --threads 1 \
        --arm "adversarial=" --arm "mle only=mle_steps=1200"
    python benchmarks/recipe_seeds.py gan-digits --arm "w48=width=48" --threads 1

Each arm is `label=key=value,key=value` (recipe settings, as `gencore train --set`; an empty list
is the recipe's defaults). Every (arm, seed) trains through `gencore.recipes.train_recipe` into
`--out/<arm>/seed<seed>` (an existing finished run is read back, not retrained), then the table
gives, per arm, each metric's mean and spread (min..max over the seeds) and the training time.
`--json` writes every run's results.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from gencore.recipes import train_recipe
from gencore.recipes.run import RESULTS_FILE


def parse_arm(text: str):
    label, _, settings = text.partition("=")
    if not label:
        raise SystemExit(f"--arm expects label=key=value,...; got {text!r}")
    overrides = dict(item.split("=", 1) for item in settings.split(",") if item)
    return label, overrides


def run_arm(recipe: str, label: str, overrides: dict, seeds, out: Path):
    runs = []
    for seed in seeds:
        run_dir = out / label.replace(" ", "_") / f"seed{seed}"
        done = run_dir / RESULTS_FILE
        if done.is_file():
            res = json.loads(done.read_text())
        else:
            res = train_recipe(recipe, {**overrides, "seed": str(seed)}, out_dir=run_dir,
                               progress="none", log=lambda m: None)
        runs.append(res)
        m = res["metrics"]
        print(f"  {label} seed {seed}: " + ", ".join(
            f"{k} {v:.4f}" for k, v in m.items()
            if not k.endswith(("_std", "_floor", "_k")) and not isinstance(v, list)) +
            f" ({res['train_seconds']:.0f} s)", flush=True)
    return runs


def summary_rows(label: str, runs):
    keys = [k for k, v in runs[0]["metrics"].items()
            if not k.endswith(("_std", "_k")) and not isinstance(v, list)]  # lists: frontiers
    rows = []
    for k in keys + ["train_seconds"]:
        vals = [r[k] if k == "train_seconds" else r["metrics"][k] for r in runs]
        mean = statistics.fmean(vals)
        rows.append(f"| {label} | {k} | {mean:.4f} | {min(vals):.4f}..{max(vals):.4f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arm", action="append", default=None,
                    help="label=key=value,... (repeatable; default: the recipe's defaults)")
    ap.add_argument("--out", default="runs/seeds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write every run's results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arms = [parse_arm(a) for a in (args.arm or ["defaults="])]
    out = Path(args.out) / args.recipe
    results, table = {}, ["| arm | metric | mean | min..max |", "|---|---|---:|---|"]
    for label, overrides in arms:
        runs = run_arm(args.recipe, label, overrides, args.seeds, out)
        results[label] = runs
        table += summary_rows(label, runs)
    print(f"\n{args.recipe}, seeds {args.seeds}, {torch.get_num_threads()} threads\n")
    print("\n".join(table))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
