"""benchmarks/gpu/session.sh, the script a session with the lent GPU runs in one device call: its
step limits fit the budget (a device command may run 600 s), and its flow prints one summary line
per step as each finishes (a dry run, every command replaced by `true`)."""
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu" / "session.sh"


def steps():
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"^step (\w+) (\d+) ", SCRIPT.read_text(), re.M)]


def test_step_limits_fit_the_budget():
    budget = int(re.search(r"^BUDGET=(\d+)$", SCRIPT.read_text(), re.M).group(1))
    assert budget <= 540
    assert len(steps()) == 9 and sum(limit for _, limit in steps()) <= budget, steps()


def test_dry_run_prints_a_summary_line_per_step(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env=dict(os.environ, OUT=str(tmp_path), GENCORE_SESSION_DRY="1"))
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    done = [l.split()[1] for l in lines if l.startswith("SUMMARY ")]
    names = [name for name, _ in steps()]
    assert done == names + names  # as each step finishes, then all again at the end
    # Each step's line comes right after its own output, before the next step starts.
    first = [i for i, l in enumerate(lines) if l.startswith("SUMMARY ")][:len(names)]
    starts = [i for i, l in enumerate(lines) if l.startswith("=== ") and "limit" in l]
    assert all(s < f for s, f in zip(starts, first)) and all(f < s for f, s in zip(first, starts[1:]))
    assert (tmp_path / "summary.txt").read_text().count("rc=0") == len(names)
