"""impl="auto": the table in gencore/ops/auto.py decides, and auto computes what fused computes."""
import importlib

import pytest
import torch

from _helpers import ALL_DEVICES, need_fused
from gencore import bench_cases, records
from gencore.ops import attention, auto, gan_loss, gumbel_softmax
from gencore.ops.reference import attention_reference

# The module (gencore.ops.attention the name is the function).
attention_mod = importlib.import_module("gencore.ops.attention")

OPS = {"attention", "gan_loss", "gumbel_softmax"}


MACHINES = ("cpu-avx2", "cpu-avx512", "cpu-default", "cuda-sm80", "cuda-sm90")


def test_table_is_well_formed():
    keys = [(r.op, r.machine, r.case) for r in auto.RULES]
    assert len(keys) == len(set(keys)), "a (op, machine, case) row appears twice"
    for r in auto.RULES:
        assert r.op in OPS and r.machine in MACHINES and r.pick in (auto.FUSED, auto.BUILTIN)
        assert r.cases or r.note, f"{r}: a row without records says why"
        device = r.machine.split("-")[0]
        # A row cites every bench case of its op, device and auto case: none left out.
        ids = {c.id for c in bench_cases.cases(device) if c.op == r.op and c.auto_case == r.case}
        if r.cases:
            assert set(r.cases) == ids, f"{r.op} {r.machine} {r.case!r}: cites {set(r.cases) ^ ids} wrongly"
    for machine in {r.machine for r in auto.RULES}:
        for op in OPS:
            assert (op, machine, "*") in keys, f"no catch-all row for {op} on {machine}"


def test_fused_rows_rest_on_records():
    """Each FUSED row: records of every case it cites, fused at least as fast as the alternative
    (within records.NOISE), and measured on the kernel sources as they are now."""
    assert records.table_problems(auto.RULES, records.REPO_DIR, bench_cases.ALTERNATIVE) == []


def test_record_check_fails_on_a_slower_fused_record(tmp_path):
    rule = next(r for r in auto.RULES if r.pick == auto.FUSED)
    recs = records.load(rule.machine, records.REPO_DIR)
    for r in recs:
        if r["op"] == rule.op and r["case"] == rule.cases[0] and r["impl"] == "fused":
            r["median_s"] *= 1000  # far slower than any alternative
    records.save(recs, rule.machine, tmp_path)
    problems = records.table_problems(auto.RULES, tmp_path, bench_cases.ALTERNATIVE)
    assert any("slower than" in p and rule.cases[0] in p for p in problems), problems
    # ... on stale sources, and on a fused row that cites nothing.
    for r in recs:
        r["sources"] = "0" * 16
    records.save(recs, rule.machine, tmp_path)
    assert any("older than the kernel sources" in p for p in
               records.table_problems(auto.RULES, tmp_path, bench_cases.ALTERNATIVE))
    bare = [rule._replace(cases=())]
    assert "cites no record" in records.table_problems(bare, tmp_path, bench_cases.ALTERNATIVE)[0]


def test_local_records_take_precedence(tmp_path, monkeypatch):
    rule = auto.rule("attention", auto.machine("cpu"), "float32 decode")
    if rule is None:
        pytest.skip(f"no decode row for {auto.machine('cpu')}")
    flipped = auto.BUILTIN if rule.pick == auto.FUSED else auto.FUSED
    fused_time = 1.0 if flipped == auto.FUSED else 3.0
    rows = [{"op": "attention", "case": c, "impl": impl, "median_s": t}
            for c in rule.cases for impl, t in (("fused", fused_time), ("sdpa", 2.0))]
    records.save(rows, rule.machine, tmp_path)
    monkeypatch.setenv("GENCORE_RECORDS_DIR", str(tmp_path))
    monkeypatch.setattr(auto, "_PICKS", {})
    assert auto.pick("attention", "cpu", "float32 decode") == flipped
    assert auto.pick("attention", "cpu", "float32 causal") == auto.rule(
        "attention", auto.machine("cpu"), "float32 causal").pick  # rows it does not time keep theirs


def test_pick_falls_back_to_catch_all_and_builtin():
    assert auto.pick("attention", "cpu", "no such case") == auto.pick("attention", "cpu", "*")
    assert auto.pick("attention", "mps") == auto.BUILTIN  # a device with no rows
    assert auto.rule("attention", "cpu-unknown") is None  # a class with no rows: the built-in


def test_gan_loss_fast_path_follows_auto(monkeypatch):
    """gan_loss's fast path (the kernel first, checks after) is taken for impl="auto" only where
    auto picked the kernel."""
    gan_mod = importlib.import_module("gencore.ops.gan_loss")
    monkeypatch.setattr(gan_mod, "_fused_ok", set())
    monkeypatch.setattr(auto, "_PICKS", {("gan_loss", "cpu", "*"): auto.BUILTIN})
    calls = []
    real = gan_mod.gan_loss_reference
    monkeypatch.setattr(gan_mod, "gan_loss_reference", lambda *a: calls.append(1) or real(*a))
    r, f = torch.randn(5), torch.randn(5)
    gan_loss(r, f, "bce", "discriminator", impl="fused")  # the kernel ran for "fused"...
    gan_loss(r, f, "bce", "discriminator")                # ...auto still runs the built-ins
    assert calls == [1]


def test_resolve_names_the_valid_impls():
    with pytest.raises(ValueError, match="'auto', 'fused', 'reference', got 'sdpa'"):
        auto.resolve("gumbel_softmax", "sdpa", "cpu")
    with pytest.raises(ValueError, match="'auto', 'fused', 'reference', 'sdpa', got 'flash'"):
        auto.resolve("attention", "flash", "cpu", builtin_name="sdpa")
    assert auto.resolve("attention", "sdpa", "cpu", builtin_name="sdpa") == auto.BUILTIN
    assert auto.resolve("attention", "reference", "cpu") == auto.REFERENCE


def _qkv(device, dtype, B=2, H=4, Hkv=2, Sq=37, Sk=37, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g).to(device=device, dtype=dtype)
    return make(B, H, Sq, D), make(B, Hkv, Sk, D), make(B, Hkv, Sk, D)


ATTENTION_CASES = [  # (dtype, causal, masked, Sq): one call per row kind of the table
    (torch.float32, True, False, 37),   # float32 causal
    (torch.float32, False, False, 3),   # float32 decode
    (torch.float32, False, False, 37),  # *: non-causal
    (torch.float32, True, True, 37),    # float32 causal+padding
    (torch.float32, False, True, 37),   # *: padding, not causal
    (torch.float32, True, True, 3),     # *: padded decoding
    (torch.bfloat16, True, False, 37),  # bfloat16 causal
    (torch.bfloat16, False, False, 3),  # bfloat16 decode (no row: *)
    (torch.float16, True, False, 37),   # *: other dtype
]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype,causal,masked,Sq", ATTENTION_CASES)
def test_attention_auto_follows_the_table(device, dtype, causal, masked, Sq, monkeypatch):
    q, k, v = _qkv(device, dtype, Sq=Sq, Sk=37)
    mask = None
    if masked:
        mask = torch.zeros(2, 37, dtype=torch.bool, device=device)
        mask[0, 30:] = True
    case = attention_mod._auto_case(q, k, causal, mask)
    want = auto.pick("attention", q.device.type, case)
    if want == auto.FUSED:
        need_fused("attention", device)
    calls = []
    real_sdpa = attention_mod.attention_sdpa
    monkeypatch.setattr(attention_mod, "attention_sdpa", lambda *a, **kw: calls.append(1) or real_sdpa(*a, **kw))
    out = attention(q, k, v, causal=causal, key_padding_mask=mask)
    assert bool(calls) == (want == auto.BUILTIN), (case, want)
    gold = attention_reference(q.double(), k.double(), v.double(), causal, mask,
                               q.shape[-1] ** -0.5)[0]
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


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_gumbel_and_gan_loss_auto_equal_fused(device):
    for op in ("gumbel_softmax", "gan_loss"):
        if auto.pick(op, torch.device(device).type) == auto.FUSED:
            need_fused(op, device)
    x = torch.randn(8, 33, device=device)
    a = gumbel_softmax(x, tau=0.7, generator=torch.Generator().manual_seed(3))
    b = gumbel_softmax(x, tau=0.7, generator=torch.Generator().manual_seed(3), impl="fused")
    assert torch.equal(a, b)
    r, f = torch.randn(17, device=device), torch.randn(9, device=device)
    assert torch.equal(gan_loss(r, f, "ragan", "discriminator"),
                       gan_loss(r, f, "ragan", "discriminator", impl="fused"))


def test_info_prints_the_table():
    import subprocess, sys
    out = subprocess.run([sys.executable, "-m", "gencore", "info"], capture_output=True, text=True,
                         timeout=300).stdout
    for r in auto.RULES:
        if r.machine == auto.machine("cpu"):
            assert f"{r.op:<15} {r.machine:<11} {r.case:<16}" in out, out
