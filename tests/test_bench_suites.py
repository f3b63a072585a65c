"""The pytest-benchmark suites (benchmarks/bench_*.py) time through gencore.timing.round_robin, the
harness that writes auto's records, and write no records of their own."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _suite(tmp_path, suite, k, *extra):
    env = {**{n: v for n, v in os.environ.items() if n != "GENCORE_BENCH_DEVICE"},
           "PYTHONPATH": str(ROOT), "GENCORE_RECORDS_DIR": str(tmp_path / "records"),
           "GENCORE_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "benchmarks" / suite), "-q",
                          "-p", "no:cacheprovider", "-k", k, *extra],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_a_group_is_timed_round_robin_and_reported_per_implementation(tmp_path):
    """Every implementation of a group gets the same number of repetitions and calls per sample
    (one round robin), the samples pytest-benchmark reports are the harness's, and nothing is
    written to the records or to the source tree."""
    before = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                            capture_output=True, text=True).stdout
    _suite(tmp_path, "bench_gan_loss.py", "bce and discriminator and 4096",
           f"--benchmark-json={tmp_path / 'b.json'}")
    benches = json.loads((tmp_path / "b.json").read_text())["benchmarks"]
    groups = {}
    for b in benches:
        assert b["extra_info"]["harness"] == "gencore.timing.round_robin"
        groups.setdefault(b["group"], {})[b["extra_info"]["impl"]] = b
    assert set(groups) == {"gan_loss bce discriminator 4096 fwd", "gan_loss bce discriminator 4096 fwd+bwd"}
    for group in groups.values():
        assert set(group) == {"fused", "reference", "torch"}
        rounds = {b["stats"]["rounds"] for b in group.values()}
        iterations = {b["stats"]["iterations"] for b in group.values()}
        assert len(rounds) == 1 and len(iterations) == 1, group
        assert next(iter(rounds)) >= 5
        for b in group.values():
            assert 0 < b["stats"]["min"] <= b["stats"]["median"] <= b["stats"]["max"]
    assert not (tmp_path / "records").exists() or not any((tmp_path / "records").iterdir())
    after = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                           capture_output=True, text=True).stdout
    assert after == before


def test_benchmark_disable_runs_each_call_once(tmp_path):
    """--benchmark-disable (a smoke run) calls each implementation once and times nothing; an
    implementation that does not run here is a skip with its reason."""
    out = _suite(tmp_path, "bench_gumbel_softmax.py", "4096x128 and hard and fwd-", "--benchmark-disable",
                 "-rs")
    assert "3 passed, 1 skipped" in out.stdout, out.stdout
    assert "the softmax floor is listed with the soft cases" in out.stdout


@pytest.mark.parametrize("suite", sorted(p.name for p in (ROOT / "benchmarks").glob("bench_*.py")
                                         if "def test_" in p.read_text()))
def test_every_suite_times_through_compare(suite):
    """No suite keeps a timing loop of its own: each test asks `compare` for its time."""
    text = (ROOT / "benchmarks" / suite).read_text()
    assert "benchmark(" not in text and "benchmark.pedantic" not in text
    assert "compare(" in text


def test_a_group_is_timed_once_whichever_of_its_tests_skip(tmp_path):
    """The group's round robin runs once for all its tests, a skipped implementation's test
    included wherever it comes in the order (the fixture, on a suite of its own)."""
    (tmp_path / "conftest.py").write_text((ROOT / "benchmarks" / "conftest.py").read_text())
    made = tmp_path / "made.txt"
    (tmp_path / "bench_toy.py").write_text(f'''
import pytest

def make():
    with open({str(made)!r}, "a") as f:
        f.write("x")
    return {{"a": lambda: sum(range(50)), "b": "b does not run here", "c": lambda: sum(range(60))}}

@pytest.mark.parametrize("impl", ["a", "c", "b"])  # the skipped one last
@pytest.mark.parametrize("group", ["one", "two"])
def test_toy(compare, group, impl):
    compare(group, impl, make, min_time=0.01)
''')
    out = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "bench_toy.py"), "-q",
                          "-p", "no:cacheprovider", "-p", "no:randomly"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "4 passed, 2 skipped" in out.stdout, out.stdout
    assert made.read_text() == "xx"  # once per group
