"""What impl="auto" gives on a machine it has no records of: first-use calibration, then speed.

    python benchmarks/auto_first_use.py [--device cpu|cuda] [-k SUBSTRING] [--keep-project-records]

Phase 1 (this process): an empty calibration cache, no user records and (unless
--keep-project-records) the project's records ignored, as on a machine class nobody measured; the
first auto call of each benchmark case (gencore/bench_cases.py) runs the op's check in a child
process (once per op) and calibrates; its wall time is the first-use cost. Phase 2 (a new
process, the same cache): every case timed round robin, auto against PyTorch's own function
("torch"), the kernel and the built-in auto falls back to. Prints one table, Markdown with
--markdown: the Done-when table of issue 31.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def _cases(device, k):
    from gencore import bench_cases
    return [c for c in bench_cases.cases(device) if not k or any(part in c.id for part in k)]


def calibrate(device, k) -> dict:
    import torch
    from gencore.ops import auto
    cost = {}
    for case in _cases(device, k):
        calls = case.make()
        t0 = time.perf_counter()
        calls["auto"]()
        if device == "cuda":
            torch.cuda.synchronize()
        cost[case.id] = time.perf_counter() - t0
        d = auto.decide(case.op, device, case.auto_case, calibrate=False)
        print(f"  {case.id:<62} first call {cost[case.id]:6.2f} s  {d['pick']:<8} ({d['source']})",
              flush=True)
    return cost


def measure(device, k) -> list:
    from gencore import timing
    from gencore.ops import auto
    rows = []
    for case in _cases(device, k):
        calls = case.make()
        builtin = auto.builtin_impl(case.op)
        names = [n for n in ("auto", "torch", "fused", builtin) if n in calls]
        try:
            calls["fused"]()
        except RuntimeError:  # a case the device's kernel does not run (float32 attention on CUDA)
            names.remove("fused")
        stats = timing.round_robin({n: calls[n] for n in dict.fromkeys(names)}, device)
        med = {n: s["median"] for n, s in stats.items()}
        d = auto.decide(case.op, device, case.auto_case, calibrate=False)
        rows.append({"id": case.id, "auto_case": case.auto_case, "pick": d["pick"], "source": d["source"],
                     "torch_over_auto": med["torch"] / med["auto"],
                     "torch_over_fused": med["torch"] / med["fused"] if "fused" in med else float("nan"),
                     "auto_us": med["auto"] * 1e6})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-k", nargs="+", default=None, help="only the cases whose id contains one of these")
    ap.add_argument("--keep-project-records", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)  # phase 2: JSON out path
    args = ap.parse_args()
    if args.measure:
        rows = measure(args.device, args.k)
        with open(args.measure, "w") as f:
            json.dump(rows, f)
        return 0
    scratch = tempfile.mkdtemp(prefix="gencore-first-use-")
    os.environ.update(GENCORE_CACHE_DIR=os.path.join(scratch, "cache"), GENCORE_AUTOTUNE="1",
                      GENCORE_RECORDS_DIR=os.path.join(scratch, "records"))
    if not args.keep_project_records:
        os.environ["GENCORE_PROJECT_RECORDS"] = "0"
    import torch
    from gencore.ops import auto
    print(f"phase 1: first use on {args.device} ({auto.machine(args.device)}, "
          f"{torch.get_num_threads()} threads), cache {os.environ['GENCORE_CACHE_DIR']}", flush=True)
    t0 = time.perf_counter()
    cost = calibrate(args.device, args.k)
    total = time.perf_counter() - t0
    print(f"phase 1: {len(cost)} cases in {total:.1f} s (checks in child processes included)", flush=True)
    out = os.path.join(scratch, "measure.json")
    subprocess.run([sys.executable, __file__, "--device", args.device, "--measure", out]
                   + (["-k", *args.k] if args.k else []), check=True)
    rows = json.load(open(out))
    head = ["case", "auto case", "auto runs", "from", "first call s", "torch / auto", "torch / fused"]
    lines = [[r["id"], r["auto_case"], r["pick"], r["source"], f"{cost[r['id']]:.2f}",
              f"{r['torch_over_auto']:.2f}", f"{r['torch_over_fused']:.2f}"] for r in rows]
    if args.markdown:
        print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *lines)]
        for line in [head, *lines]:
            print("  ".join(x.ljust(w) for x, w in zip(line, widths)))
    worst = min(r["torch_over_auto"] for r in rows)
    print(f"worst torch / auto: {worst:.2f} (the promise: >= 0.95); first-use cost {total:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
