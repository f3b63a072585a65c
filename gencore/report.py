"""One self-contained HTML page from run directories: loss curves (inline SVG), samples (text,
PNG grids inlined as base64), final metrics next to their real-data floors. No dependencies, no
network: the file opens anywhere.

    python -m gencore demo            # writes and prints the path of out/demo/report.html
    from gencore.report import write_report; write_report(["runs/a", "runs/b"], "report.html")
"""
from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import _atomic
from ._device import cpu_model

__all__ = ["write_report", "render_report", "line_chart", "frontier_chart", "read_metrics_log"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
Series = Dict[str, List[Tuple[float, float]]]


def read_metrics_log(path: Union[str, Path]) -> Tuple[Series, Series]:
    """(train series, validation series) by metric name from a Trainer's metrics.jsonl."""
    train: Series = {}
    val: Series = {}
    p = Path(path)
    if not p.is_file():
        return train, val
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        event, step = rec.get("event"), rec.get("step")
        if event not in ("train", "val") or step is None:
            continue
        for k, v in rec.items():
            if k in ("event", "step", "time") or k.startswith("lr") or not isinstance(v, (int, float)):
                continue
            if math.isfinite(v):
                (train if event == "train" else val).setdefault(k, []).append((float(step), float(v)))
    return train, val


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return str(v)
    a = abs(v)
    return f"{v:.3g}" if 1e-3 <= a < 1e4 else f"{v:.2e}"


def _frame(title: str, width: int, height: int, box, bottom: int, left: int = 52,
           right: int = 24, top: int = 22):
    """The opening of a chart: (x -> px, y -> px, plot width, plot height, SVG parts so far:
    the svg tag, the title and the plot's frame) for data box (x0, x1, y0, y1)."""
    x0, x1, y0, y1 = box
    w, h = width - left - right, height - top - bottom

    def sx(x):
        return left + (x - x0) / (x1 - x0) * w

    def sy(y):
        return top + (1 - (y - y0) / (y1 - y0)) * h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<text x="{left}" y="14" font-weight="bold">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#bbb"/>']
    return sx, sy, w, h, out


def line_chart(series: Series, title: str = "", width: int = 520, height: int = 220) -> str:
    """An SVG line chart of several (x, y) series sharing the axes."""
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    left, top = 52, 22
    sx, sy, w, h, out = _frame(title, width, height, (x0, x1, y0, y1), bottom=26)
    for frac in (0.0, 0.5, 1.0):
        y = y0 + frac * (y1 - y0)
        out.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{_fmt(y)}</text>')
        x = x0 + frac * (x1 - x0)  # steps: whole numbers
        out.append(f'<text x="{sx(x):.1f}" y="{height - 8}" text-anchor="middle">{x:.0f}</text>')
    legend_x = left + 8
    for i, (name, s) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s)
        if len(s) == 1:
            out.append(f'<circle cx="{sx(s[0][0]):.1f}" cy="{sy(s[0][1]):.1f}" r="3" fill="{color}"/>')
        else:
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        out.append(f'<text x="{legend_x}" y="{top + 14 + 13 * i}" fill="{color}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def frontier_chart(curves: Dict[str, List[Dict[str, float]]], floor: Optional[float] = None,
                   title: str = "", width: int = 560, height: int = 340) -> str:
    """An SVG of quality-diversity frontiers: NLL_oracle (y) against NLL_div (x), each curve a
    line through its points (`{"temperature", "nll_oracle", "nll_div"}`) labelled by T, and the
    oracle floor H(oracle) as a dashed line. Lower is better on both axes' quality side: a curve
    below another is better at equal diversity."""
    pts = [p for c in curves.values() for p in c]
    if not pts:
        return ""
    xs = [p["nll_div"] for p in pts]
    ys = [p["nll_oracle"] for p in pts] + ([floor] if floor is not None else [])
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    padx, pady = 0.04 * (x1 - x0 or 1.0), 0.08 * (y1 - y0 or 1.0)  # room for the T labels
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    left, top = 52, 22
    sx, sy, w, h, out = _frame(title, width, height, (x0, x1, y0, y1), bottom=40)
    for i in range(5):
        y, x = y0 + i / 4 * (y1 - y0), x0 + i / 4 * (x1 - x0)
        out.append(f'<text x="{left - 4}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.2f}</text>')
        out.append(f'<text x="{sx(x):.1f}" y="{top + h + 14}" text-anchor="middle">{x:.2f}</text>')
    out.append(f'<text x="{left + w / 2:.1f}" y="{height - 6}" text-anchor="middle">NLL_div '
               f'(diversity, nats/token)</text>')
    out.append(f'<text x="12" y="{top + h / 2:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + h / 2:.1f})">NLL_oracle (lower = better)</text>')
    if floor is not None:
        out.append(f'<line x1="{left}" x2="{left + w}" y1="{sy(floor):.1f}" y2="{sy(floor):.1f}" '
                   f'stroke="#777" stroke-dasharray="5,4"/><text x="{left + w - 4}" '
                   f'y="{sy(floor) - 4:.1f}" text-anchor="end" fill="#555">oracle floor '
                   f'H(oracle) {floor:.3f}</text>')
    for i, (name, c) in enumerate(curves.items()):
        color = _COLORS[i % len(_COLORS)]
        c = sorted(c, key=lambda p: p["temperature"])
        path = " ".join(f'{sx(p["nll_div"]):.1f},{sy(p["nll_oracle"]):.1f}' for p in c)
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{path}"/>')
        for p in c:
            cx, cy = sx(p["nll_div"]), sy(p["nll_oracle"])
            # labels above the first curve's points, below the others'
            dy = -6 if i % 2 == 0 else 14
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="2.5" fill="{color}"/>'
                       f'<text x="{cx:.1f}" y="{cy + dy:.1f}" text-anchor="middle" fill="{color}" '
                       f'font-size="9">T{p["temperature"]:g}</text>')
        out.append(f'<text x="{left + 8}" y="{top + 14 + 13 * i}" fill="{color}">'
                   f'{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _with_std(metrics: Dict[str, float], k: str) -> str:
    std = metrics.get(f"{k}_std")
    return _fmt(metrics[k]) + ("" if std is None else f" ± {_fmt(std)}")


def _metrics_table(metrics: Dict[str, float]) -> str:
    """One row per metric; `m_floor` goes in m's row, `m_std` / `m_floor_std` after a ±."""
    rows = []
    for k, v in metrics.items():
        if k.endswith("_floor") or k.endswith("_std") or isinstance(v, list):
            continue
        floor_key = f"{k}_floor"
        floor = metrics.get(floor_key)
        ratio = f"{v / floor:.2f}x" if floor not in (None, 0) else ""
        rows.append(f"<tr><td>{html.escape(k)}</td><td>{_with_std(metrics, k)}</td>"
                    f"<td>{'' if floor is None else _with_std(metrics, floor_key)}</td>"
                    f"<td>{ratio}</td></tr>")
    return ("<table><tr><th>metric</th><th>value</th><th>floor (real data, or H(oracle))</th><th>value / floor</th>"
            "</tr>" + "".join(rows) + "</table>")


def _samples_html(run: Path, rel: Optional[str]) -> str:
    if not rel or not (run / rel).is_file():
        return "<p><em>no samples</em></p>"
    p = run / rel
    if p.suffix == ".png":
        data = base64.b64encode(p.read_bytes()).decode()
        return f'<img alt="samples" src="data:image/png;base64,{data}">'
    text = p.read_text(errors="replace")
    if len(text) > 6000:
        text = text[:6000] + "\n..."
    return f"<pre>{html.escape(text)}</pre>"


def _load(run: Path) -> Tuple[dict, dict]:
    """(run.json, results.json or {}) of a run directory."""
    res_path = run / "results.json"
    return (json.loads((run / "run.json").read_text()),
            json.loads(res_path.read_text()) if res_path.is_file() else {})


def _settings(info: dict) -> dict:
    """The resolved settings of a run.json (runs written before typed settings: "config")."""
    return info.get("settings", info.get("config", {}))


def _provenance_html(info: dict, res: dict) -> str:
    """What produced the run: commit (dirty), torch, device, ISA path or GPU, command line."""
    p = res.get("provenance") or info.get("provenance")
    if not p:
        return '<p class="cfg">provenance: not recorded (a run from before gencore recorded it)</p>'
    commit = (p.get("commit") or "no git checkout")[:12] + (" (uncommitted changes)" if p.get("dirty") else "")
    where = (f"{p.get('gpu')} (sm_{p.get('sm')}, CUDA {p.get('cuda')})" if p.get("gpu") else
             f"{p.get('cpu')}, ISA {p.get('cpu_isa')}, {p.get('threads')} threads")
    parts = [f"commit {commit}", f"gencore {p.get('gencore')}", f"torch {p.get('torch')}",
             f"device {p.get('device')}: {where}", f"compiled core {p.get('compiled_core')}",
             f"command: {p.get('command')}"]
    return f'<p class="cfg">{html.escape(" · ".join(parts))}</p>'


def _mle_only(info: dict, res: dict) -> bool:
    cfg = _settings(info)
    return "mle_steps" in cfg and cfg["mle_steps"] >= res.get("steps", cfg.get("steps", 0))


def _frontier_html(run: Path, others: Sequence[Path]) -> str:
    """The quality-diversity frontier of a text-GAN run: its curve, and the MLE-only curve with
    the same generator updates beside it (its own frontier_mle, or another run directory of the
    report with mle_steps == steps, the same seeds and steps)."""
    info, res = _load(run)
    m = res.get("metrics", {})
    if not isinstance(m.get("frontier"), list):
        return ""
    mle_only = _mle_only(info, res)
    curves = {("MLE only" if mle_only else "adversarial") + " (this run)": m["frontier"]}
    if not mle_only and isinstance(m.get("frontier_mle"), list):
        curves["MLE only, same updates (frontier_mle)"] = m["frontier_mle"]
    elif not mle_only:
        cfg = _settings(info)
        for o in others:
            oi, orr = _load(o)
            oc, om = _settings(oi), orr.get("metrics", {})
            if (o != run and oi["recipe"] == info["recipe"] and _mle_only(oi, orr)
                    and orr.get("steps") == res.get("steps") and isinstance(om.get("frontier"), list)
                    and all(oc.get(k) == cfg.get(k) for k in ("seed", "oracle_seed"))):
                curves[f"MLE only ({o.name})"] = om["frontier"]
                break
    chart = frontier_chart(curves, m.get("nll_oracle_floor"),
                           "quality-diversity frontier: generator sampled at temperature T")
    return f'<h3>Frontier (NLL_oracle against NLL_div over temperatures)</h3><div>{chart}</div>'


def _run_section(run: Path, report_runs: Sequence[Path] = ()) -> Tuple[str, str, str]:
    """(section id, summary table row, section html) for one run directory."""
    info, res = _load(run)
    name = info["recipe"]
    metrics = res.get("metrics", {})
    sid = "run-" + "".join(c if c.isalnum() else "-" for c in name)
    train, val = read_metrics_log(run / "metrics.jsonl")
    # Losses share a chart; other logged numbers (grad norms, D outputs...) get their own scale.
    losses = {k: v for k, v in train.items() if "loss" in k}
    others = {k: v for k, v in train.items() if "loss" not in k}
    charts = [line_chart(series, title) for series, title in (
        (losses, "training losses (mean over each logging interval)"),
        (val, "validation"), (others, "other training numbers")) if series]
    config = ", ".join(f"{k}={v}" for k, v in _settings(info).items())
    head = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items()
                     if not k.endswith("_floor") and not k.endswith("_std")
                     and not isinstance(v, list))
    row = (f'<tr><td><a href="#{sid}">{html.escape(name)}</a></td><td>{res.get("steps", "-")}</td>'
           f'<td>{res.get("train_seconds", float("nan")):.0f} s</td><td>{html.escape(head)}</td></tr>')
    body = (f'<section id="{sid}"><h2>{html.escape(name)}</h2>'
            f'<p class="cfg">{html.escape(config)}</p>{_provenance_html(info, res)}'
            f'<h3>Loss curves</h3><div class="charts">{"".join(charts) or "<em>no log</em>"}</div>'
            f'<h3>Metrics</h3>{_metrics_table(metrics) if metrics else "<p><em>not evaluated</em></p>"}'
            f'{_frontier_html(run, report_runs)}'
            f'<h3>Samples</h3>{_samples_html(run, res.get("samples"))}</section>')
    return sid, row, body


def _machine() -> str:
    cpu = cpu_model()
    dev = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, {dev}; "
            f"torch {torch.__version__}, python {platform.python_version()}")


def render_report(run_dirs: Sequence[Union[str, Path]], title: str = "gencore report",
                  note: str = "") -> str:
    runs = [Path(r) for r in run_dirs]
    sections = [_run_section(r, runs) for r in runs]
    from . import _backend
    fused = "compiled core in use" if _backend.build_info() else f"references only ({_backend.reason()})"
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
           "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
           "text-align:left}pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap;font-size:12px}"
           ".cfg{color:#666;font-size:12px}.charts svg{margin-right:1em}img{image-rendering:pixelated;width:280px}")
    return ("<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{css}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>{html.escape(time.strftime('%Y-%m-%d %H:%M'))} · "
            f"{html.escape(_machine())} · {html.escape(fused)}</p>"
            + (f"<p>{html.escape(note)}</p>" if note else "")
            + '<section id="summary"><h2>Summary</h2><table><tr><th>recipe</th><th>steps</th>'
              "<th>training time</th><th>final metrics</th></tr>"
            + "".join(s[1] for s in sections) + "</table></section>"
            + "".join(s[2] for s in sections) + "</body></html>\n")


def write_report(run_dirs: Sequence[Union[str, Path]], path: Union[str, Path], **kw) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic.write_text(path, render_report(run_dirs, **kw))
    return path
