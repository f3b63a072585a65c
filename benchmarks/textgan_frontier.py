"""textgan-oracle's quality-diversity frontiers, adversarial against MLE only, per seed.

    OMP_NUM_THREADS=1 python benchmarks/textgan_frontier.py --seeds 0 1 2 --threads 1
    OMP_NUM_THREADS=1 python benchmarks/textgan_frontier.py --seeds 0 --arm "hinge=loss=hinge"

Each run (an arm as in recipe_seeds.py: `label=key=value,...`, default the recipe's defaults)
trains through `train_recipe` into `--out/textgan-oracle/<arm>/seed<seed>` (a finished run is read
back); its results.json holds both frontiers: `frontier` (the adversarial generator sampled and
scored at T = 0.7 .. 1.5) and `frontier_mle` (the MLE-only generator with the same updates, which
the run keeps beside it). Per seed: one markdown table of both curves, then the gap
NLL_oracle(MLE) - NLL_oracle(adversarial) at equal NLL_div over the NLL_div range both cover
(`gencore.metrics.frontier_gap`: piecewise linear in NLL_div; positive = adversarial better).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gencore.metrics import frontier_gap
from recipe_seeds import parse_arm, run_arm

RECIPE = "textgan-oracle"


def frontier_table(res: dict) -> str:
    m = res["metrics"]
    rows = ["| T | adversarial NLL_oracle | NLL_div | MLE only NLL_oracle | NLL_div |",
            "|---:|---:|---:|---:|---:|"]
    for a, b in zip(m["frontier"], m["frontier_mle"]):
        rows.append(f"| {a['temperature']:g} | {a['nll_oracle']:.3f} | {a['nll_div']:.3f} | "
                    f"{b['nll_oracle']:.3f} | {b['nll_div']:.3f} |")
    return "\n".join(rows)


def gap_line(res: dict) -> str:
    g = frontier_gap(res["metrics"]["frontier"], res["metrics"]["frontier_mle"])
    if g is None:
        return "no NLL_div range shared by the two curves"
    return (f"gap (MLE - adversarial) over NLL_div {g['lo']:.3f}..{g['hi']:.3f}: min "
            f"{g['min_gap']:+.3f} (at {g['min_at']:.3f}), max {g['max_gap']:+.3f} (at "
            f"{g['max_at']:.3f}); goal: min >= +0.1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arm", action="append", default=None,
                    help="label=key=value,... (repeatable; default: the recipe's defaults)")
    ap.add_argument("--out", default="runs/frontier")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out) / RECIPE
    summary = ["| arm | seed | min gap | max gap | NLL_div overlap | train s |", "|---|---:|---:|---:|---|---:|"]
    for label, overrides in [parse_arm(a) for a in (args.arm or ["defaults="])]:
        for seed, res in zip(args.seeds, run_arm(RECIPE, label, overrides, args.seeds, out)):
            print(f"\n### {label}, seed {seed} ({res['train_seconds']:.0f} s training, "
                  f"{res['eval_seconds']:.0f} s evaluation)\n")
            print(frontier_table(res))
            print("\n" + gap_line(res))
            g = frontier_gap(res["metrics"]["frontier"], res["metrics"]["frontier_mle"])
            summary.append(f"| {label} | {seed} | " + (
                "- | - | none" if g is None else
                f"{g['min_gap']:+.3f} | {g['max_gap']:+.3f} | {g['lo']:.2f}..{g['hi']:.2f}")
                + f" | {res['train_seconds']:.0f} |")
    print(f"\n{RECIPE}, seeds {args.seeds}, {torch.get_num_threads()} threads\n")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
