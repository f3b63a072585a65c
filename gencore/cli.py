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

from . import _backend

# Every compiled op, by the schema name its kernels register under.
OPS = ["gumbel_softmax", "gan_loss", "attention"]


def cmd_info(args) -> int:
    print(f"gencore {__import__('gencore').__version__}  python {platform.python_version()}  "
          f"torch {torch.__version__}")
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}, vector ISA {torch.backends.cpu.get_cpu_capability()}")
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
        print(f"compiled core: built for torch {info['torch_version']}, CPU ISA "
              f"{info['cpu_capability']}, CUDA {'yes, archs ' + archs if info['cuda'] else 'no'}")
    print("ops (fused kernel per device; otherwise the reference runs):")
    for op in OPS:
        cpu = "fused" if _backend.has_kernel(op, "cpu") else "reference"
        cuda = "fused" if _backend.has_kernel(op, "cuda") else "reference"
        print(f"  {op:<16} cpu: {cpu:<10} cuda: {cuda}")
    return 0


def _time(fn, repeat: int = 5) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cmd_demo(args) -> int:
    """A short demonstration of the fused Gumbel-softmax op."""
    from .ops import gumbel_softmax
    import torch.nn.functional as F

    torch.manual_seed(0)
    print("gencore demo: Gumbel-softmax sampling with the fused kernel\n")
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    n = 100_000
    counts = gumbel_softmax(logits.expand(n, -1), hard=True).sum(0)
    print("1) hard samples follow softmax(logits): the Gumbel-max trick")
    print("   category         " + "".join(f"{i:>9}" for i in range(4)))
    print("   softmax          " + "".join(f"{p:>9.4f}" for p in torch.softmax(logits, 0).tolist()))
    print(f"   freq, {n // 1000}k draws" + "".join(f"{c / n:>9.4f}" for c in counts.tolist()))
    print("\n2) the temperature sharpens the soft samples (mean max probability over 10k draws)")
    for tau in (5.0, 1.0, 0.5, 0.1):
        y = gumbel_softmax(logits.expand(10_000, -1), tau=tau)
        print(f"   tau={tau:<4} mean max = {y.max(-1).values.mean():.3f}")
    print("\n3) same seed, same samples; a generator of your own works too")
    g = torch.Generator().manual_seed(42)
    a = gumbel_softmax(logits, hard=True, generator=g)
    b = gumbel_softmax(logits, hard=True, generator=torch.Generator().manual_seed(42))
    print(f"   {a.tolist()} == {b.tolist()}: {torch.equal(a, b)}")
    x = torch.randn(1280, 5000, requires_grad=True)
    print("\n4) speed, forward + backward over a (1280, 5000) float32 tensor "
          f"(RelGAN batch x vocab), {torch.get_num_threads()} threads:")

    def run(fn):
        def step():
            y = fn(x)
            y.backward(torch.ones_like(y))
        return _time(step, 3)

    fused = run(lambda t: gumbel_softmax(t))
    builtin = run(lambda t: F.gumbel_softmax(t))
    print(f"   gencore fused {fused * 1e3:7.1f} ms   F.gumbel_softmax {builtin * 1e3:7.1f} ms   "
          f"-> {builtin / fused:.1f}x faster")
    if not _backend.has_kernel("gumbel_softmax", "cpu"):
        print(f"   (the compiled core is not in use: {_backend.reason()})")
    return 0


def cmd_bench(args) -> int:
    """Runs the pytest-benchmark suites and prints the ratio tables."""
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    if not root.is_dir():
        print("gencore bench: the benchmarks/ folder is only in a source checkout", file=sys.stderr)
        return 2
    out = Path(args.json)
    cmd = [sys.executable, "-m", "pytest", str(root), "-q", "--benchmark-only",
           f"--benchmark-json={out}"] + (["-k", args.k] if args.k else [])
    code = subprocess.call(cmd)
    if code != 0:
        return code
    return subprocess.call([sys.executable, str(root / "report.py"), str(out)] +
                           (["--markdown"] if args.markdown else []))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gencore", description="gencore: fused ops for generative models")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, devices, and which fused kernels are built").set_defaults(fn=cmd_info)
    sub.add_parser("demo", help="a short demonstration").set_defaults(fn=cmd_demo)
    b = sub.add_parser("bench", help="run the benchmarks and print ratio tables")
    b.add_argument("-k", default=None, help="pytest -k expression selecting benchmarks")
    b.add_argument("--json", default="benchmark.json", help="where to write pytest-benchmark's JSON")
    b.add_argument("--markdown", action="store_true", help="print Markdown tables")
    b.set_defaults(fn=cmd_bench)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.fn(args)
