"""impl="auto" (gencore/ops/auto.py): cases named from the call, decided from evidence about this
machine (records, the calibration cache, a first-use calibration), never a kernel that failed
its check. Every test brings its own evidence: the suite never calibrates unless a test asks
(tests/conftest.py sets GENCORE_AUTOTUNE=0 and scratch folders)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from _helpers import ALL_DEVICES, WRONG_GUMBEL, OpsRun, need_fused
from gencore import records
from gencore.ops import attention, auto, calibration, gan_loss, gumbel_softmax
from gencore.ops.reference.attention import attention_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
attention_mod = sys.modules["gencore.ops._attention"]


@pytest.fixture(autouse=True)
def _fresh(monkeypatch, tmp_path):
    """Each test: empty records folders of its own, an empty cache, no decisions in memory."""
    monkeypatch.setenv("GENCORE_RECORDS_DIR", str(tmp_path / "local"))
    monkeypatch.setenv("GENCORE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(records, "PACKAGE_DIR", tmp_path / "project")
    monkeypatch.delenv("GENCORE_PROJECT_RECORDS", raising=False)  # the tests bring their own
    auto.set_autotune(None)
    yield
    auto.set_autotune(None)


def _record(directory, op, case, auto_case, times, device="cpu"):
    """Writes one benchmark's records {impl: seconds} for this machine class."""
    rows = [records.make_record(op, case, impl, {"median": t, "iqr": 0.0, "reps": 5}, device,
                                auto_case=auto_case) for impl, t in times.items()]
    records.save(rows, auto.machine(device), directory)


def _child_env(**extra):
    """A child process that shares this one's calibration cache file: the same torch threads
    (part of the cache key; an earlier test may have changed this process's)."""
    return {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(torch.get_num_threads()), **extra}


def _gumbel_case(x):
    return auto.case_name("gumbel_softmax", logits=x)


def test_case_names():
    q = torch.zeros(2, 4, 16, 8)
    assert auto.case_name("attention", q=q, k=q, causal=True) == "float32 causal fwd 16K-64K"
    assert auto.case_name("attention", q=q.requires_grad_(), k=q, causal=False,
                          key_padding_mask=torch.zeros(2, 16, dtype=torch.bool), window=(4, 0),
                          softcap=2.0) == "float32 full+window+softcap+padding fwd+bwd 16K-64K"
    one = torch.zeros(1, 2, 1, 64, dtype=torch.bfloat16)
    assert auto.case_name("attention", q=one, k=torch.zeros(1, 2, 512, 64), causal=True) == \
        "bfloat16 decode fwd 64K-256K"
    assert auto.case_name("gumbel_softmax", logits=torch.zeros(8, 3, 50)) == "float32 fwd 1K-4K"
    assert auto.case_name("gumbel_softmax", logits=torch.zeros(1280, 5000, requires_grad=True)) == \
        "float32 fwd+bwd 4M-16M"
    assert auto.case_name("gan_loss", fake_logits=torch.zeros(4096)) == "float32 fwd+bwd 4K-16K"
    assert [auto.size_class(n) for n in (0, 1, 3, 4, 4095, 4096, 5000)] == \
        ["1-4", "1-4", "1-4", "4-16", "1K-4K", "4K-16K", "4K-16K"]


def test_records_decide_with_a_margin(tmp_path):
    x = torch.randn(64, 100)
    case = _gumbel_case(x)
    for fused, builtin, want in ((1.0, 2.0, auto.FUSED), (1.0, 1.04, auto.BUILTIN), (2.0, 1.0, auto.BUILTIN)):
        _record(records.local_dir(), "gumbel_softmax", "bench/64x100", case,
                {"fused": fused, "torch": builtin})
        auto.clear()
        d = auto.decide("gumbel_softmax", "cpu", case)
        assert (d["pick"], d["source"]) == (want, "your records"), (fused, builtin)


def test_the_kernel_must_beat_pytorchs_own_call_too():
    """gencore's SDPA route (its checked path) is slower than SDPA called directly, which is what
    auto runs for a plain call: the kernel must beat the faster of the two."""
    q, k = torch.zeros(1, 4, 1, 32), torch.zeros(1, 4, 128, 32)
    case = auto.case_name("attention", q=q, k=k, causal=True)
    for torch_s, want in ((1.0, auto.BUILTIN), (1.2, auto.FUSED)):
        _record(records.local_dir(), "attention", "bench/decode", case, {"fused": 1.0, "sdpa": 1.3, "torch": torch_s})
        auto.clear()
        assert auto.decide("attention", "cpu", case)["pick"] == want, torch_s


def test_user_records_before_project_records_and_stale_ones_ignored(tmp_path):
    x = torch.randn(64, 100)
    case = _gumbel_case(x)
    _record(records.PACKAGE_DIR, "gumbel_softmax", "bench/64x100", case, {"fused": 1.0, "torch": 3.0})
    assert auto.decide("gumbel_softmax", "cpu", case)["source"] == "project records"
    _record(records.local_dir(), "gumbel_softmax", "bench/64x100", case, {"fused": 3.0, "torch": 1.0})
    auto.clear()
    assert auto.decide("gumbel_softmax", "cpu", case)["pick"] == auto.BUILTIN
    # a record of other kernel sources is no evidence
    path = records.local_dir() / f"{auto.machine('cpu')}.json"
    data = json.loads(path.read_text())
    for r in data["records"]:
        r["sources"] = "0123456789abcdef"
    path.write_text(json.dumps(data))
    auto.clear()
    if records.sources_digest("gumbel_softmax", "cpu") is not None:
        assert auto.decide("gumbel_softmax", "cpu", case)["source"] == "project records"


@pytest.mark.parametrize("other", [{"cpu": "Some Other CPU"}, {"threads": 64}])
def test_records_of_another_machine_of_the_class_are_no_evidence(other):
    """Same ISA class, another CPU model or thread count: calibrate there, do not trust these."""
    x = torch.randn(64, 100)
    case = _gumbel_case(x)
    _record(records.PACKAGE_DIR, "gumbel_softmax", "bench/64x100", case, {"fused": 1.0, "torch": 3.0})
    path = records.PACKAGE_DIR / f"{auto.machine('cpu')}.json"
    data = json.loads(path.read_text())
    for r in data["records"]:
        r["machine_info"].update(other)
    path.write_text(json.dumps(data))
    auto.clear()
    assert auto.decide("gumbel_softmax", "cpu", case)["source"] == "none"
    assert records.promise_breaks(auto.machine("cpu"), records.PACKAGE_DIR) == []  # still read there


def test_no_evidence_and_no_calibration_runs_the_builtin():
    auto.set_autotune(False)
    x = torch.randn(256, 300)
    assert auto.choose("gumbel_softmax", "auto", "cpu", logits=x) == auto.BUILTIN
    assert auto.decide("gumbel_softmax", "cpu", _gumbel_case(x))["source"] == "none"
    assert not calibration.cache_dir().exists()  # nothing timed, nothing written


def test_gumbel_auto_without_the_kernel_is_torchs_own():
    """Where auto does not run the kernel, it runs F.gumbel_softmax: the same samples for a seed."""
    auto.set_autotune(False)
    x = torch.randn(8, 3, 50, requires_grad=True)
    for hard in (False, True):
        torch.manual_seed(5)
        a = gumbel_softmax(x, tau=0.5, hard=hard)
        torch.manual_seed(5)
        b = F.gumbel_softmax(x, tau=0.5, hard=hard)
        assert torch.equal(a, b)
    torch.manual_seed(5)
    assert gumbel_softmax(x, impl="torch").shape == x.shape
    g = torch.Generator().manual_seed(1)
    y = gumbel_softmax(x, hard=True, dim=1, generator=g)
    assert torch.equal(y.sum(1), torch.ones(8, 50)) and y.requires_grad


def test_calibration_times_once_and_caches_on_disk():
    need_fused("gumbel_softmax", "cpu")
    auto.set_autotune(True)
    x = torch.randn(512, 1000)
    gumbel_softmax(x)
    d = auto.decide("gumbel_softmax", "cpu", _gumbel_case(x))
    assert d["source"] == "calibrated" and d["fused_s"] > 0 and d["builtin_s"] > 0
    assert d["pick"] == (auto.FUSED if d["fused_s"] * auto.MARGIN <= d["builtin_s"] else auto.BUILTIN)
    assert calibration.check_outcome("gumbel_softmax", "cpu")["passed"]
    data = json.loads(calibration.cache_path("cpu").read_text())
    assert data["key"]["threads"] == torch.get_num_threads() and data["key"]["torch"] == torch.__version__
    assert f"gumbel_softmax/{_gumbel_case(x)}" in data["cases"]
    # another process reads the answer, times nothing
    code = ("import torch, gencore\nfrom gencore.ops import auto, calibration\n"
            "calibration.calibrate = None\n"  # would raise if it ran
            f"x = torch.randn(512, 1000)\nprint(auto.choose('gumbel_softmax', 'auto', 'cpu', logits=x))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=_child_env(GENCORE_AUTOTUNE="1"))
    assert out.stdout.strip() == d["pick"], out.stderr
    # the switch: no calibration of a new case, records and cache only
    auto.set_autotune(False)
    y = torch.randn(3, 7)
    gumbel_softmax(y)
    assert auto.decide("gumbel_softmax", "cpu", _gumbel_case(y))["source"] == "none"


USER = """
import warnings, torch
warnings.simplefilter("always")
from gencore.ops import auto, gumbel_softmax
x = torch.randn(1280, 5000)
with warnings.catch_warnings(record=True) as seen:
    gumbel_softmax(x)
    gumbel_softmax(x)
    gumbel_softmax(torch.randn(64, 4000))
d = auto.decide("gumbel_softmax", "cpu", auto.case_name("gumbel_softmax", logits=x))
print(d["pick"], d["source"], sum("failed its check" in str(w.message) for w in seen))
"""


def test_a_planted_wrong_kernel_is_never_picked(tmp_path):
    need_fused("gumbel_softmax", "cpu")
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(WRONG_GUMBEL)  # planted in the check's child too
    env = _child_env(PYTHONPATH=f"{plant}{os.pathsep}{ROOT}", GENCORE_AUTOTUNE="1")
    first = subprocess.run([sys.executable, "-c", USER], capture_output=True, text=True, timeout=600, env=env)
    assert first.stdout.split() == ["builtin", "check", "failed", "1"], first.stdout + first.stderr
    outcome = calibration.check_outcome("gumbel_softmax", "cpu")
    assert not outcome["passed"] and any("gumbel_softmax" in f and "FAIL" in f for f in outcome["failures"])
    again = subprocess.run([sys.executable, "-c", USER], capture_output=True, text=True, timeout=600, env=env)
    assert again.stdout.split() == ["builtin", "check", "failed", "0"], again.stdout + again.stderr


def test_choose_names_the_valid_impls():
    with pytest.raises(ValueError, match="'auto', 'fused', 'reference', 'torch', got 'sdpa'"):
        auto.choose("gumbel_softmax", "sdpa", "cpu")
    with pytest.raises(ValueError, match="'auto', 'fused', 'reference', 'sdpa', got 'flash'"):
        auto.choose("attention", "flash", "cpu")
    assert auto.choose("attention", "sdpa", "cpu") == auto.BUILTIN
    assert auto.choose("attention", "reference", "cpu") == auto.REFERENCE
    assert auto.choose("gan_loss", "builtin", "cpu") == auto.BUILTIN
    q = torch.zeros(1, 1, 4, 4)
    assert auto.choose("attention", "auto", "mps", q=q, k=q, causal=False) == auto.BUILTIN


def _qkv(device, dtype, B=2, H=4, Hkv=2, Sq=37, Sk=37, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    return make(B, H, Sq, D), make(B, Hkv, Sk, D), make(B, Hkv, Sk, D)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("pick", [auto.FUSED, auto.BUILTIN])
@pytest.mark.parametrize("dtype,causal,masked,Sq", [
    (torch.float32, True, False, 37), (torch.float32, False, False, 3), (torch.float32, True, True, 37),
    (torch.bfloat16, True, False, 37), (torch.bfloat16, False, True, 1)])
def test_attention_runs_what_the_evidence_says(device, pick, dtype, causal, masked, Sq, monkeypatch):
    if device == "cuda" and dtype == torch.float32:
        pytest.skip("the CUDA kernel runs bf16/fp16")
    need_fused("attention", device)
    q, k, v = _qkv(device, dtype, Sq=Sq, Sk=37, D=64 if device == "cuda" else 16)
    mask = None
    if masked:
        mask = torch.zeros(2, 37, dtype=torch.bool, device=device)
        mask[0, 30:] = True
    case = auto.case_name("attention", q=q, k=k, causal=causal, key_padding_mask=mask)
    dev = torch.device(device).type
    times = {"fused": 1.0, "sdpa": 2.0} if pick == auto.FUSED else {"fused": 2.0, "sdpa": 1.0}
    _record(records.local_dir(), "attention", "bench/x", case, times, device=dev)
    with OpsRun() as ops:
        out = attention(q, k, v, causal=causal, key_padding_mask=mask)
    assert ops.ran("gencore.attention") == (pick == auto.FUSED), (case, ops.names)
    assert ops.ran("scaled_dot_product") == (pick == auto.BUILTIN), (case, ops.names)
    gold = attention_reference(q.double(), k.double(), v.double(), causal, mask, q.shape[-1] ** -0.5)[0]
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out.double(), gold, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("causal,masked,Sq", [(True, False, 37), (False, True, 20), (True, True, 5)])
def test_attention_sdpa_matches_fused(device, causal, masked, Sq):
    """The built-in path has gencore's semantics: bottom-right causal, GQA, padding, empty rows."""
    need_fused("attention", device)
    q, k, v = _qkv(device, torch.float32, Sq=Sq, Sk=37)
    mask = None
    if masked:
        mask = torch.zeros(2, 37, dtype=torch.bool, device=device)
        mask[1] = True  # batch 1 sees no key: zeros and zero gradients
        mask[0, :7] = True
    grads = []
    for impl in ("fused", "sdpa"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out = attention(qq, kk, vv, causal=causal, key_padding_mask=mask, scale=0.3, impl=impl)
        out.backward(torch.ones_like(out))
        grads.append((out, qq.grad, kk.grad, vv.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    if masked:
        assert grads[1][0][1].abs().max() == 0 and grads[1][1][1].abs().max() == 0


def test_gan_loss_fast_path_follows_auto():
    """gan_loss's fast path (the kernel first, checks after) is taken only where auto picks the
    kernel; bad input still gets the clear error."""
    need_fused("gan_loss", "cpu")
    r, f = torch.randn(64, requires_grad=True), torch.randn(64, requires_grad=True)
    case = auto.case_name("gan_loss", fake_logits=f)
    for times in ({"fused": 1.0, "builtin": 2.0}, {"fused": 2.0, "builtin": 1.0}):
        _record(records.local_dir(), "gan_loss", "bench/n64", case, times)
        auto.clear()
        want = auto.FUSED if times["fused"] < times["builtin"] else auto.BUILTIN
        assert auto.choose("gan_loss", "auto", "cpu", fake_logits=f) == want
        a = gan_loss(r, f, "ragan", "discriminator")
        b = gan_loss(r, f, "ragan", "discriminator", impl="fused" if want == auto.FUSED else "builtin")
        assert torch.equal(a, b)
        with pytest.raises(TypeError, match="same dtype"):
            gan_loss(r.double(), f, "bce", "discriminator")


def test_the_committed_records_keep_the_promise():
    """DESIGN.md's promise on every current project record: auto at most 5% slower than
    PyTorch's own function, whatever it picked."""
    from pathlib import Path
    directory = Path(ROOT) / "gencore" / "project_records"
    machines = [p.stem for p in directory.glob("*.json")]
    assert machines
    problems = [p for m in machines for p in records.promise_breaks(m, directory)]
    assert problems == [], "\n".join(problems)


def test_the_promise_check_can_fail(tmp_path):
    _record(tmp_path, "gumbel_softmax", "bench/slow", "float32 fwd 1K-4K", {"auto": 1.2, "torch": 1.0})
    assert records.promise_breaks(auto.machine("cpu"), tmp_path)
    _record(tmp_path, "gumbel_softmax", "bench/slow", "float32 fwd 1K-4K", {"auto": 1.04, "torch": 1.0})
    assert not records.promise_breaks(auto.machine("cpu"), tmp_path)


def test_info_says_what_auto_runs_and_why():
    x = torch.randn(64, 100)
    _record(records.local_dir(), "gumbel_softmax", "bench/64x100", _gumbel_case(x), {"fused": 1.0, "torch": 3.0})
    out = subprocess.run([sys.executable, "-m", "gencore", "info"], capture_output=True, text=True,
                         timeout=300, env=_child_env()).stdout
    assert "first-use calibration off" in out, out
    line = next(l for l in out.splitlines() if _gumbel_case(x) in l)
    assert "fused" in line and "3.00x" in line and "your records" in line, out
