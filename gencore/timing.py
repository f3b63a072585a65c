"""One timing harness for every comparison gencore makes (records, `gencore bench --record`,
first-use calibration, the pytest-benchmark suites through benchmarks/conftest.py's `compare`, the
GPU scripts, bench_distributed, baseline_nanogpt): round-robin medians.

Each repetition calls every implementation once, in an order shuffled anew for each repetition,
so load from other processes, frequency changes and cache state hit all of them alike (and no
implementation always runs right after the same other one); calls under 100 us are timed a batch
at a time. The median and interquartile range of each implementation's samples are reported.
On CUDA each sample is timed with CUDA events on the current stream (no host sync inside the
timed region except the one that reads the events after it).
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable, Dict

import torch


def _timer(device_type: str) -> Callable[[Callable[[], Any], int], float]:
    """timed(fn, n): seconds for n back-to-back calls of fn."""
    if device_type == "cuda":
        def timed(fn, n):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(n):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3
        return timed

    def timed(fn, n):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return time.perf_counter() - t0
    return timed


def round_robin(fns: Dict[str, Callable[[], Any]], device_type: str = "cpu", *,
                min_time: float = 0.3, min_reps: int = 5, max_reps: int = 2000,
                warmup: int = 2, sample_time: float = 100e-6) -> Dict[str, dict]:
    """{name: {"median", "iqr", "reps", "calls_per_rep", "samples"}} in seconds per call of each
    fn ("samples": one per repetition, in the order taken).

    A repetition times every fn once, in an order shuffled anew for each (a fixed cyclic order
    would always run a fn right after the same other one).
    Calls faster than `sample_time` are timed `calls_per_rep` at a time (the same count for every
    fn), so that a microsecond call's sample is not the timer's and the scheduler's noise.
    Repetitions: enough for about `min_time` seconds of the slowest implementation, within
    [min_reps, max_reps]."""
    timed = _timer(device_type)
    names = list(fns)
    first = {}
    for name in names:
        for _ in range(warmup):
            fns[name]()
        first[name] = timed(fns[name], 1)
    calls = max(1, min(1000, int(sample_time / max(min(first.values()), 1e-9))))
    reps = int(min(max_reps, max(min_reps, min_time / max(max(first.values()) * calls, 1e-9))))
    samples = {name: [] for name in names}
    order = random.Random(0)
    for _ in range(reps):
        order.shuffle(names)
        for name in names:
            samples[name].append(timed(fns[name], calls) / calls)
    out = {}
    for name, xs in samples.items():
        q = statistics.quantiles(xs, n=4) if len(xs) >= 2 else [xs[0]] * 3
        out[name] = {"median": statistics.median(xs), "iqr": q[2] - q[0], "reps": len(xs),
                     "calls_per_rep": calls, "samples": xs}
    return out
