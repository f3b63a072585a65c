"""The `gencore` command (also `python -m gencore`)."""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from . import _backend, check
from ._device import available_devices, cpu_model, describe_device, resolve_device
from .ops import auto
from .train.trainer import STOPPED_EXIT_STATUS


def cmd_info(args) -> int:
    print(f"gencore {__import__('gencore').__version__}  python {platform.python_version()}  "
          f"torch {torch.__version__}")
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"vector ISA {torch.backends.cpu.get_cpu_capability()}, gencore kernels {_backend.cpu_capability()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        print(f"cuda: not available (torch built with CUDA {torch.version.cuda})")
    info = _backend.build_info()
    if info is None:
        print(f"compiled core: NOT USED ({_backend.reason()}); every op runs its PyTorch reference")
    else:
        archs = info["cuda_archs"] or "-"
        print(f"compiled core: built for torch {info['torch_version']}, CPU ISAs "
              f"{', '.join(info['cpu_capabilities'])} (running {info['cpu_capability']}), "
              f"CUDA {'yes, archs ' + archs if info['cuda'] else 'no'}")
    print("fused kernels built: " + ", ".join(
        f"{op} ({'/'.join(d for d in ('cpu', 'cuda') if _backend.has_kernel(op, d)) or 'none'})"
        for op in check.OPS))
    _print_auto_table()
    return 0


def _print_auto_table() -> None:
    """Per op, device and case: what impl="auto" runs here and where that came from (your
    records, the project's, calibrated here on DATE, a failed check, or no evidence)."""
    from .ops import calibration
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    tune = "on" if auto.autotune_enabled() else "off (GENCORE_AUTOTUNE=0)"
    print(f"impl='auto' (gencore/ops/auto.py): the fused kernel where it passed its check here and "
          f"evidence about this machine shows it >= {auto.MARGIN:.2f}x the built-in's speed; "
          f"first-use calibration {tune}; cache {calibration.cache_dir()}")
    print("  gumbel_softmax's built-in is torch's F.gumbel_softmax: torch's noise (other samples, "
          "the same distribution); impl='fused'/'reference' keep gencore's samples")
    for device in devices:
        print(f"  {device}: machine class {auto.machine(device)}")
        for op in check.OPS:
            outcome = calibration.check_outcome(op, device)
            if outcome is not None:
                verdict = "passed" if outcome["passed"] else "FAILED: " + "; ".join(outcome["failures"][:2])
                print(f"    {op}: kernel check in a child process {outcome['when']}: {verdict}")
        rows = auto.decisions(device)
        if not rows:
            print("    no evidence yet: auto calibrates each case on first use" if auto.autotune_enabled()
                  else "    no evidence: auto runs the built-ins")
        for (op, case), d in rows.items():
            ratio = (f"{d['builtin_s'] / d['fused_s']:.2f}x" if d.get("fused_s") else "")
            where = {"calibrated": f"calibrated here {d.get('when', '')}",
                     "project records": f"project records {d.get('when', '')} {d.get('commit', '')}",
                     "your records": f"your records {d.get('when', '')}",
                     "check failed": "the kernel failed its check here",
                     "none": "no evidence"}[d["source"]]
            print(f"    {op:<15} {case:<44} {d['pick']:<8} {ratio:>7}  {where.strip()}")


def cmd_check(args) -> int:
    devices = available_devices() if args.device == "all" else [str(resolve_device(args.device))]
    return check.main(devices, ops=args.op or check.OPS)


def _overrides(pairs) -> dict:
    out = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def cmd_train(args) -> int:
    from .recipes import train_recipe
    if args.help or args.recipe is None:
        print(args.parser.format_help())
        if args.recipe is not None:
            print(_recipe_help(args.recipe))
        elif not args.help:
            print("gencore train: error: name a recipe", file=sys.stderr)
        return 0 if args.help else 2
    overrides = _overrides(args.set)
    if args.steps is not None:
        overrides["steps"] = str(args.steps)
    out = args.out or os.path.join("runs", args.recipe)
    res = train_recipe(args.recipe, overrides, out_dir=out, device=args.device,
                       resume=args.resume, progress=args.progress)
    if res.get("stopped_by"):  # SIGTERM/SIGUSR1: checkpointed; `--resume` continues exactly
        return STOPPED_EXIT_STATUS
    if res:
        _print_results(res, out)
    return 0


def _print_results(res: dict, out) -> None:
    print(f"{res['recipe']}: {res['steps']} steps in {res['train_seconds']:.0f} s")
    m = res["metrics"]
    for k, v in m.items():
        if isinstance(v, list):  # a frontier: one (temperature, nll_oracle, nll_div) per point
            print(f"  {k:<14} " + "  ".join(
                f"T {p['temperature']:g}: {p['nll_oracle']:.3f}/{p['nll_div']:.3f}" for p in v)
                + "   (nll_oracle/nll_div)")
        elif not k.endswith("_floor") and not k.endswith("_std"):
            std = f" ± {m[k + '_std']:.4f}" if k + "_std" in m else ""
            floor = m.get(f"{k}_floor")
            print(f"  {k:<14} {v:10.4f}{std}" + (f"   (floor {floor:.4f})" if floor is not None else ""))
    print(f"  samples: {Path(out) / res['samples']}")


def cmd_sample(args) -> int:
    from .recipes import load_run, save_samples
    device = resolve_device(args.device)
    print(f"gencore sample: on {describe_device(device)}", file=sys.stderr)  # stdout: the samples
    _, _, trainer = load_run(args.run_dir, device=device)
    with trainer.eval_mode():
        samples = trainer.task.generate(args.n, args.prompt, seed=args.seed)
    if isinstance(samples, str):
        if args.out:
            print(save_samples(samples, Path(args.out).with_suffix("")))
        else:
            print(samples)
        return 0
    out = Path(args.out) if args.out else Path(args.run_dir) / "samples" / f"sample-seed{args.seed}.png"
    print(save_samples(samples, out.with_suffix("")))
    return 0


def _fresh_dir(parent: Path, stem: str) -> Path:
    """A new directory `parent/stem` (or stem-2, stem-3...): created here, so nothing that was
    there before is touched."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (stem if i == 1 else f"{stem}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ValueError(f"cannot create a fresh folder for the demo in {parent}")


def cmd_demo(args) -> int:
    """Short runs of every recipe on the embedded data, then one report.html, all in a new
    folder OUT/demo-<date>-<time>/: the demo never deletes or overwrites anything."""
    from .recipes import recipe_names, train_recipe
    from .report import write_report

    names = args.only or recipe_names()
    for n in names:  # fail before any training on a typo
        if n not in recipe_names():
            raise ValueError(f"unknown recipe {n!r}; valid recipes: {', '.join(recipe_names())}")
    device = resolve_device(args.device)
    root = _fresh_dir(Path(args.out), time.strftime("demo-%Y%m%d-%H%M%S"))
    t0 = time.time()
    runs = []
    print(f"gencore demo: {len(names)} short runs ({', '.join(names)}) on "
          f"{describe_device(device)}; output in {root}")
    for i, name in enumerate(names, 1):
        out = root / name
        print(f"\n[{i}/{len(names)}] {name}")
        overrides = {"steps": str(args.steps)} if args.steps is not None else {}
        res = train_recipe(name, overrides, out_dir=out, device=device, demo=True,
                           progress=args.progress)
        if res.get("stopped_by"):
            return STOPPED_EXIT_STATUS
        _print_results(res, out)
        runs.append(out)
    report = write_report(runs, root / "report.html", title="gencore demo",
                          note=f"{len(names)} recipes trained in {time.time() - t0:.0f} s in total.")
    print(f"\ndemo done in {time.time() - t0:.0f} s; report: {report.resolve()}")
    return 0


def cmd_bench(args) -> int:
    """Runs the pytest-benchmark suites and prints the ratio tables; with --record, times the
    auto table's cases (gencore/bench_cases.py) and writes this machine's records."""
    if args.record:
        from . import bench_cases, records
        device = resolve_device(args.device)
        torch.set_num_threads(args.threads or torch.get_num_threads())
        print(f"gencore bench --record: {records.machine_class(device.type)}, "
              f"{describe_device(device)}, {torch.get_num_threads()} threads", flush=True)
        try:
            path = bench_cases.record(device.type, args.k, Path(args.out) if args.out else None,
                                      log=lambda line: print(line, flush=True))
        except ValueError as exc:
            print(f"gencore bench: error: {exc}", file=sys.stderr)
            return 2
        print(f"gencore bench: records written to {path}; impl='auto' follows them on this "
              f"machine (`gencore info` shows what it runs)")
        return 0
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    if not root.is_dir():
        print("gencore bench: the benchmarks/ folder is only in a source checkout", file=sys.stderr)
        return 2
    device = resolve_device(args.device)
    print(f"gencore bench: on {describe_device(device)}", flush=True)
    out = Path(args.json)
    # The suites by name: pytest's default collection only picks up test_*.py files.
    suites = [str(p) for p in sorted(root.glob("bench_*.py"))]
    cmd = [sys.executable, "-m", "pytest", *suites, "-q", "--benchmark-only",
           f"--benchmark-json={out}"] + (["-k", args.k] if args.k else [])
    code = subprocess.call(cmd, env={**os.environ, "GENCORE_BENCH_DEVICE": str(device)})
    if code == 5:  # pytest: nothing collected
        print(f"gencore bench: error: no benchmark matches -k {args.k!r} on {device}",
              file=sys.stderr)
        return 2
    if code != 0:
        return code
    return subprocess.call([sys.executable, str(root / "report.py"), str(out)] +
                           (["--markdown"] if args.markdown else []))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gencore", description="gencore: train generative models fast")
    sub = ap.add_subparsers(dest="command", required=True)
    progress = dict(default="auto", choices=["auto", "bar", "lines", "none"],
                    help="progress display (auto: a tqdm bar when stdout and stderr are "
                         "terminals, log lines otherwise)")
    device = dict(default="auto", help="auto (the first CUDA device if there is one, else the "
                                       "CPU), cpu, cuda, cuda:N")

    t = sub.add_parser("train", help="train a recipe (run `gencore train --help` for the list)",
                       epilog=_recipes_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter,
                       add_help=False)
    t.add_argument("-h", "--help", action="store_true",
                   help="show this help and exit; with a RECIPE, also its settings (types, "
                        "defaults, help)")
    t.add_argument("recipe", nargs="?", help="recipe name")
    t.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    t.add_argument("--device", **device)
    t.add_argument("--out", default=None, help="run directory (default runs/RECIPE)")
    t.add_argument("--resume", action="store_true", help="continue from the newest good checkpoint")
    t.add_argument("--set", nargs="+", metavar="KEY=VALUE",
                   help="change recipe settings (`gencore train RECIPE --help` lists them; "
                        "none = off)")
    t.add_argument("--progress", **progress)
    t.set_defaults(fn=cmd_train, parser=t)

    s = sub.add_parser("sample", help="sample from a trained run")
    s.add_argument("run_dir", help="a run directory written by `gencore train`")
    s.add_argument("--n", type=int, default=16, help="number of samples")
    s.add_argument("--prompt", default=None, help="text prompt (text recipes)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", **device)
    s.add_argument("--out", default=None, help="file to write (images: default RUN_DIR/samples/)")
    s.set_defaults(fn=cmd_sample)

    d = sub.add_parser("demo", help="train every recipe briefly and write report.html (~10 min)")
    d.add_argument("--out", default=os.path.join("out", "demo"),
                   help="where the demo creates its own new folder demo-<date>-<time>/ (nothing "
                        "already there is touched)")
    d.add_argument("--only", nargs="+", default=None, metavar="RECIPE", help="run these recipes only")
    d.add_argument("--steps", type=int, default=None, help="steps per recipe (default: each demo's)")
    d.add_argument("--device", **device)
    d.add_argument("--progress", **progress)
    d.set_defaults(fn=cmd_demo)

    b = sub.add_parser("bench", help="run the benchmarks and print ratio tables")
    b.add_argument("-k", default=None, help="pytest -k expression selecting benchmarks")
    b.add_argument("--json", default="benchmark.json", help="where to write pytest-benchmark's JSON")
    b.add_argument("--device", **device)
    b.add_argument("--markdown", action="store_true", help="print Markdown tables")
    b.add_argument("--record", action="store_true",
                   help="time the benchmark cases (gencore/bench_cases.py) and write this machine's "
                        "records (impl='auto' then follows them here)")
    b.add_argument("--out", default=None, help="with --record: the records folder (default "
                                              "$GENCORE_RECORDS_DIR or ~/.cache/gencore/records)")
    b.add_argument("--threads", type=int, default=None, help="with --record: torch threads")
    b.set_defaults(fn=cmd_bench)
    sub.add_parser("info", help="versions, devices, and which fused kernels are built").set_defaults(fn=cmd_info)

    c = sub.add_parser("check", help="check every fused kernel against its reference (run it after "
                                     "installing); exit status 1 on any failure")
    c.add_argument("--device", default="all", help="all (every available device: the default), "
                                                   "auto, cpu, cuda, cuda:N")
    c.add_argument("--op", nargs="+", choices=check.OPS,
                   help="check these ops only (default: all)")
    c.set_defaults(fn=cmd_check)
    return ap


def _recipes_epilog() -> str:
    from .recipes import get_recipe, recipe_names
    lines = ["recipes (`gencore train RECIPE --help` lists a recipe's settings):"]
    for n in recipe_names():
        lines.append(f"  {n:<16} {get_recipe(n).summary}")
    return "\n".join(lines)


def _recipe_help(name: str) -> str:
    """A recipe's settings, generated from its settings dataclass: name=default (type): help."""
    from . import _settings
    from .recipes import get_recipe
    r = get_recipe(name)
    demo = ", ".join(f"{k}={v}" for k, v in r.demo.items()) or "the full run"
    return (f"{r.name}: {r.summary}\n`gencore demo` runs: {demo}\n\n"
            f"settings (--set KEY=VALUE ...; 'none' turns off a setting that may be none):\n"
            + _settings.describe(r.settings))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ValueError as exc:  # user errors (recipe, setting, run directory): say what, no trace
        if os.environ.get("GENCORE_DEBUG"):
            raise
        print(f"gencore {args.command}: error: {exc}", file=sys.stderr)
        return 2
