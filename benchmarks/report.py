"""Turns pytest-benchmark JSON into ratio tables.

Each benchmark sets `benchmark.group` (op, shape, dtype, pass) and `benchmark.extra_info["impl"]`
("fused", "reference", "torch" for PyTorch's built-in); extra_info may also carry "peak_mb".
The table gives each implementation's median time and its ratio to the fused one (time / fused
time: > 1 means the fused op is that many times faster).

    python benchmarks/report.py results.json [--markdown]
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

ORDER = {"fused": 0, "reference": 1, "torch": 2}


def rows(data: dict):
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        impl = b.get("extra_info", {}).get("impl", b["name"])
        groups[b["group"] or b["name"]][impl] = b
    for group in sorted(groups):
        impls = groups[group]
        fused = impls.get("fused")
        base = fused["stats"]["median"] if fused else None
        for impl in sorted(impls, key=lambda i: (ORDER.get(i, 9), i)):
            b = impls[impl]
            med = b["stats"]["median"]
            ratio = f"{med / base:.2f}" if base else "-"
            peak = b.get("extra_info", {}).get("peak_mb")
            yield group, impl, med * 1e3, ratio, peak


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="file written by pytest --benchmark-json")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
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
