"""`gencore check`: passes on this build, fails (naming the op) on a kernel made wrong on purpose,
and refuses to pass when the compiled core is not in use."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from _helpers import need_fused
from gencore import check
from gencore.ops import auto

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gencore_check(*args, code: str = "", **env):
    """`gencore check ARGS` in a child process, after running `code` there (e.g. to override a
    kernel: registrations cannot be undone in this process)."""
    script = textwrap.dedent(code) + "\nimport sys\nfrom gencore import cli\n" \
        f"sys.exit(cli.main(['check', *{list(args)!r}]))\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": ROOT, **env})


def _rows(stdout: str):
    return [line.split() for line in stdout.splitlines() if line.split()[:1] and line.split()[0] in check.OPS]


def test_check_passes_and_prints_the_table():
    for op in check.OPS:
        need_fused(op, "cpu")
    res = gencore_check("--device", "cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    rows = _rows(res.stdout)
    n = sum(len(check.DTYPES) for c in check.CASES)
    assert len(rows) == n and all("pass" in r for r in rows), res.stdout
    assert {r[2] for r in rows} == {"float32", "float64", "bfloat16", "float16"}
    assert f"all {n} checks passed" in res.stdout
    header = res.stdout.splitlines()[1].split()
    assert header[:4] == ["op", "device", "dtype", "case"] and "tolerance" in header and header[-1] == "auto"


# A Gumbel-softmax CPU kernel 1% off (more than a bfloat16 rounding): the reference's soft sample
# scaled by 1.01. Hard one-hots stay right; their straight-through gradient, computed from that
# soft sample, does not.
WRONG_GUMBEL = """
import torch
import gencore
from gencore.ops.reference import gumbel_softmax_reference

def off_by_a_little(logits, seed_offset, tau, hard, dim):
    soft = gumbel_softmax_reference(logits, seed_offset[0], seed_offset[1], tau, False, dim) * 1.01
    if not hard:
        return soft, logits.new_empty((0,))
    return gumbel_softmax_reference(logits, seed_offset[0], seed_offset[1], tau, True, dim), soft

_lib = torch.library.Library("gencore", "IMPL")
_lib.impl("gumbel_softmax", off_by_a_little, "CPU")
"""


def test_check_fails_on_a_wrong_kernel_and_names_it():
    need_fused("gumbel_softmax", "cpu")
    res = gencore_check("--device", "cpu", "--op", "gumbel_softmax", "gan_loss", code=WRONG_GUMBEL)
    assert res.returncode == 1, res.stdout + res.stderr
    rows = _rows(res.stdout)
    gumbel = [r for r in rows if r[0] == "gumbel_softmax"]
    assert gumbel and all("FAIL" in r for r in gumbel), res.stdout
    assert all("pass" in r for r in rows if r[0] == "gan_loss"), res.stdout
    assert "FAILED" in res.stdout and "gumbel_softmax on cpu" in res.stdout.splitlines()[-1]


def test_check_fails_without_the_compiled_core():
    res = gencore_check("--device", "cpu", GENCORE_DISABLE_C="1")
    assert res.returncode == 1
    assert "compiled core is not used (GENCORE_DISABLE_C=1 is set)" in res.stdout


def test_rows_say_what_auto_runs():
    need_fused("attention", "cpu")
    case = next(c for c in check.CASES if c.op == "attention" and c.name == "causal")
    for dtype, row in ((torch.float32, "float32 causal"), (torch.bfloat16, "bfloat16 causal"),
                       (torch.float16, "*")):
        want = "fused" if auto.pick("attention", "cpu", row) == auto.FUSED else "sdpa"
        assert check.check_case(case, torch.device("cpu"), dtype).auto == want, dtype


def test_bad_device_is_an_error(capsys):
    from gencore import cli
    assert cli.main(["check", "--device", "cuda:99"]) == 2
    assert "available devices: auto, cpu" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_check_passes_on_cuda():
    for op in check.OPS:
        need_fused(op, "cuda")
    res = gencore_check("--device", "cuda")
    assert res.returncode == 0, res.stdout + res.stderr
