"""Turns benchmark records (gencore/project_records/*.json) or pytest-benchmark JSON into ratio tables.

    python benchmarks/report.py --records gencore/project_records [--markdown]   # RESULTS.md's tables

Records (gencore.records): for the auto table's cases (gencore/bench_cases.py) one row per case:
the fused kernel, what auto runs instead, auto itself and PyTorch's own built-in, with ratios
(x / y > 1: y is that many times faster; "torch / auto" >= 0.95 is auto's promise);
on a GPU also the fraction of the machine's limit (bytes moved / copy bandwidth for memory-bound
ops, FLOP/s / matmul rate for attention).

Each benchmark sets `benchmark.group` (op, shape, dtype, pass) and `benchmark.extra_info["impl"]`
("fused", "reference", "torch" for PyTorch's built-in); extra_info may also carry "peak_mb".
The table gives each implementation's median time and its ratio to the fused one, or to "gencore"
in a whole-model benchmark (time / fused time: > 1 means the fused op is that many times faster).

    python benchmarks/report.py results.json [--markdown]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

ORDER = {"fused": 0, "gencore": 0, "reference": 1, "torch": 2}


def rows(data: dict):
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b.get("extra_info", {}).get("impl", b["name"])
        groups[b["group"] or b["name"]][impl] = b
    for group in sorted(groups):
        impls = groups[group]
        # The time each row is divided by: gencore's fused op, or gencore in a whole model.
        fused = impls.get("fused") or impls.get("gencore")
        base = fused["stats"]["median"] if fused else None
        for impl in sorted(impls, key=lambda i: (ORDER.get(i, 9), i)):
            b = impls[impl]
            med = b["stats"]["median"]
            ratio = f"{med / base:.2f}" if base else "-"
            peak = b.get("extra_info", {}).get("peak_mb")
            yield group, impl, med * 1e3, ratio, peak


# Ceilings measured on the lent GPUs (DESIGN.md): device copy bandwidth (bytes read + written per
# second) and bf16 dense matmul rate.
LIMITS = {"H200": {"bytes_per_s": 4.1e12, "flops_per_s": 744e12}}


def _limit(info: dict, rec: dict) -> str:
    gpu = info.get("gpu", "")
    limit = next((v for k, v in LIMITS.items() if k in gpu), None)
    if limit is None or not rec.get("median_s"):
        return ""
    if rec.get("flops"):
        return f"{rec['flops'] / rec['median_s'] / limit['flops_per_s']:.1%} of matmul"
    if rec.get("bytes"):
        return f"{rec['bytes'] / rec['median_s'] / limit['bytes_per_s']:.1%} of copy"
    return ""


def record_tables(directory: Path, markdown: bool) -> None:
    from gencore import records
    from gencore.ops import auto
    for path in sorted(Path(directory).glob("*.json")):
        machine = path.stem
        recs = records.load(machine, directory)
        if not recs:
            continue
        by_case = defaultdict(dict)
        for r in recs:
            by_case[(r["op"], r["case"])][r["impl"]] = r
        some = recs[0]
        info = some.get("machine_info", {})
        commits = sorted({r.get("commit", "")[:10] + ("+dirty" if r.get("dirty") else "") for r in recs})
        print(f"\n### {machine}: {info.get('gpu') or info.get('cpu', '?')}"
              f"{'' if 'gpu' in info else ', %s threads' % info.get('threads', '?')}, torch "
              f"{some.get('torch', '?')}, commits {', '.join(commits)}\n")
        head = ["case", "fused us", "alternative", "alt us", "alt / fused", "torch / fused",
                "torch / auto", "limit"]
        lines = []
        for (op, case), impls in sorted(by_case.items()):
            if "fused" not in impls:
                continue
            alt = auto.builtin_impl(op)
            f, a = impls["fused"]["median_s"], impls.get(alt, {}).get("median_s")
            auto_s = impls.get("auto", {}).get("median_s")
            torch_ = impls.get("torch", {}).get("median_s")
            lines.append([case, f"{f * 1e6:.1f}", alt, f"{a * 1e6:.1f}" if a else "-",
                          f"{a / f:.2f}" if a else "-", f"{torch_ / f:.2f}" if torch_ else "-",
                          f"{torch_ / auto_s:.2f}" if torch_ and auto_s else "-", _limit(info, impls["fused"])])
        _print_table(head, lines, markdown)


def _print_table(head, lines, markdown: bool) -> None:
    if markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|")
        for line in lines:
            print("| " + " | ".join(line) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    for line in [head, *lines]:
        print("  ".join(str(x).ljust(w) for x, w in zip(line, widths)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", nargs="?", help="file written by pytest --benchmark-json")
    ap.add_argument("--records", type=Path, default=None, help="a records folder (gencore/project_records)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    if args.records is not None:
        record_tables(args.records, args.markdown)
        return
    if args.json is None:
        ap.error("give a pytest-benchmark JSON file or --records DIR")
    with open(args.json) as f:
        data = json.load(f)
    machine = data.get("machine_info", {})
    extra = data.get("extra_info", {})
    print(f"# {machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}, "
          f"torch threads: {extra.get('torch_threads', '?')}, device: {extra.get('device', '?')}")
    table = list(rows(data))
    if args.markdown:
        print("| case | impl | median ms | x fused time | peak MB |")
        print("|---|---|---:|---:|---:|")
        for group, impl, ms, ratio, peak in table:
            print(f"| {group} | {impl} | {ms:.3f} | {ratio} | {'' if peak is None else f'{peak:.1f}'} |")
    else:
        width = max((len(r[0]) for r in table), default=10)
        print(f"{'case':<{width}}  {'impl':<10} {'median ms':>10} {'x fused':>8} {'peak MB':>8}")
        for group, impl, ms, ratio, peak in table:
            p = "" if peak is None else f"{peak:.1f}"
            print(f"{group:<{width}}  {impl:<10} {ms:>10.3f} {ratio:>8} {p:>8}")


if __name__ == "__main__":
    main()
