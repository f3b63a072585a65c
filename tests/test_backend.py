"""The compiled core's loader: fallbacks, staleness, the CPU ISA paths, the info command."""
import os
import subprocess
import sys

import pytest
import torch

import gencore
from gencore import _backend


def run_python(code: str, **env):
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


def need_core():
    if _backend.load() is None:
        pytest.skip(_backend.reason())


def this_cpu_runs(isa: str) -> bool:
    """From /proc/cpuinfo, independently of _C's own detection."""
    flags = {"AVX2": ("avx2", "fma", "f16c"),
             "AVX512": ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq")}
    try:
        words = open("/proc/cpuinfo").read().split()
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    return isa == "DEFAULT" or all(f in words for f in flags[isa])


def test_cpu_paths_are_the_ones_this_cpu_runs():
    """Every ISA is compiled (x86-64), the CPU's are the ones offered, the widest runs."""
    need_core()
    info = _backend.build_info()
    compiled = info["cpu_capabilities"]
    assert compiled[0] == "DEFAULT" and set(compiled) <= {"DEFAULT", "AVX2", "AVX512"}
    supported = _backend.supported_cpu_capabilities()
    assert supported == [isa for isa in compiled if this_cpu_runs(isa)]
    assert info["cpu_capability"] == _backend.cpu_capability()
    if "GENCORE_CPU_CAPABILITY" not in os.environ:
        assert _backend.cpu_capability() == supported[-1]


def test_set_cpu_capability_switches_and_restores():
    need_core()
    start = _backend.cpu_capability()
    for isa in _backend.supported_cpu_capabilities():
        with _backend.cpu_capability_path(isa.lower()):  # any case
            assert _backend.cpu_capability() == isa
            assert _backend.build_info()["cpu_capability"] == isa
            x = torch.randn(3, 70, dtype=torch.float64)
            g = torch.Generator().manual_seed(3)
            fused = gencore.ops.gumbel_softmax(x, generator=g, impl="fused")
            g.manual_seed(3)
            torch.testing.assert_close(fused, gencore.ops.gumbel_softmax(x, generator=g, impl="reference"))
        assert _backend.cpu_capability() == start
    assert _backend.set_cpu_capability("DEFAULT") == start
    assert _backend.set_cpu_capability(start) == "DEFAULT"


def test_set_cpu_capability_refuses_what_this_cpu_cannot_run():
    need_core()
    start = _backend.cpu_capability()
    with pytest.raises(ValueError, match="not an ISA of this build; choose one of DEFAULT"):
        _backend.set_cpu_capability("SSE9")
    for isa in _backend.build_info()["cpu_capabilities"]:
        if not this_cpu_runs(isa):
            with pytest.raises(ValueError, match=f"this CPU cannot run {isa} code; choose one of "):
                _backend.set_cpu_capability(isa)
    assert _backend.cpu_capability() == start


@pytest.mark.parametrize("isa", ["DEFAULT", "AVX2", "AVX512", "avx2", "SSE9", ""])
def test_cpu_capability_variable_at_load(isa):
    """GENCORE_CPU_CAPABILITY picks the path when _C loads; a name the build lacks or the CPU
    cannot run gives one warning that names the choices, and the widest path runs."""
    need_core()
    supported = _backend.supported_cpu_capabilities()
    code = """
import warnings
warnings.simplefilter("always")
with warnings.catch_warnings(record=True) as caught:
    from gencore import _backend
    running = _backend.cpu_capability()
print(running)
for w in caught:
    print("WARNING", w.message)
"""
    res = run_python(code, GENCORE_CPU_CAPABILITY=isa)
    assert res.returncode == 0, res.stderr
    running, *warned = res.stdout.splitlines()
    name = isa.upper()
    if name in supported:
        assert running == name and not warned, res.stdout
    elif not name:
        assert running == supported[-1] and not warned, res.stdout
    else:
        assert running == supported[-1], res.stdout
        assert len(warned) == 1 and f"GENCORE_CPU_CAPABILITY={isa}" in warned[0], res.stdout
        if name in ("DEFAULT", "AVX2", "AVX512"):
            assert "this CPU runs only " + ", ".join(supported) in warned[0]
        else:
            assert "is not an ISA of this build (DEFAULT" in warned[0]


def test_info_command():
    res = subprocess.run([sys.executable, "-m", "gencore", "info"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    for needle in ("torch", "threads", "gumbel_softmax", "cpu"):
        assert needle in out, out
    if _backend.load() is not None:
        isas = ", ".join(_backend.build_info()["cpu_capabilities"])
        assert f"CPU ISAs {isas} (running {_backend.cpu_capability()})" in out, out


def test_gencore_ops_names_functions_and_shadows_no_module():
    """`import gencore.ops.X` and `gencore.ops.X` must not disagree: no public op shares its name
    with a module of gencore.ops (the ops live in private _<op>.py modules)."""
    import importlib.util

    import gencore.ops
    for name in gencore.ops.__all__:
        assert callable(getattr(gencore.ops, name)), name
        assert importlib.util.find_spec(f"gencore.ops.{name}") is None, name
