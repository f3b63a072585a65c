"""The compiled core's loader: fallbacks, staleness, the info command."""
import subprocess
import sys

import pytest
import torch

from gencore import _backend


def run_python(code: str, **env):
    import os
    full_env = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env,
                          timeout=300)


def test_missing_core_falls_back_with_one_warning():
    code = """
import warnings, torch
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    import gencore
    x = torch.randn(4, 7)
    a = gencore.ops.gumbel_softmax(x, generator=torch.Generator().manual_seed(1))
    b = gencore.ops.gumbel_softmax(x, generator=torch.Generator().manual_seed(1), impl="torch")
    gencore.ops.gumbel_softmax(x)
assert torch.equal(a, b)
msgs = [str(w.message) for w in caught if "gencore" in str(w.message)]
assert len(msgs) == 1, msgs
assert "GENCORE_DISABLE_C=1" in msgs[0] and "reference" in msgs[0], msgs
print("ok")
"""
    res = run_python(code, GENCORE_DISABLE_C="1")
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_build_checks():
    info = _backend.build_info()
    if info is None:
        pytest.skip(_backend.reason())
    assert _backend._check(info) is None
    assert "torch 1.0.0" in _backend._check(dict(info, torch_version="1.0.0"))
    if _backend._csrc_hash() is not None:
        assert "stale" in _backend._check(dict(info, source_hash="0" * 16))


def test_info_command():
    res = subprocess.run([sys.executable, "-m", "gencore", "info"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for needle in ("torch", "threads", "gumbel_softmax", "cpu"):
        assert needle in out, out
