"""`gencore check`: passes on this build, fails (naming the op) on a kernel made wrong on purpose,
and refuses to pass when the compiled core is not in use."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from _helpers import WRONG_GUMBEL, need_fused
from gencore import check

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
    assert header[:4] == ["op", "device", "dtype", "case"] and "tolerance" in header and header[-1] == "result"




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
