"""The tensor-core CUDA attention kernels (csrc/cuda/attention_mma_kernels.cu), run on the CPU.

tests/cuda_emulator/ compiles the unchanged kernel source with g++ against a CPU emulation of the
sm_80 primitives (mma.sync m16n8k16, ldmatrix, cp.async, warp shuffles, barriers) that follows the
PTX fragment layouts, starts shared memory and the outputs as NaN, and checks addresses, alignment,
divergence and ldmatrix bank conflicts. Every case runs in both schedules ("wait": cp.async copies
land at their wait_group, threads in random order; "ahead": copies land at issue, one warp runs
ahead to each barrier); small cases that reach every path run under AddressSanitizer +
UndefinedBehaviorSanitizer too. Forward and
backward are held to the rule of the GPU tests: error vs the float64 reference <= 2x the error of
the reference run in the inputs' own precision (gencore.tolerance). The planted-bug tests show that
each of the three catches a bug of its class. This is what checks the kernels' index math, masking
and synchronisation where there is no GPU; the GPU tests (test_attention.py, device "cuda") check
the hardware.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from gencore.ops.reference import attention_reference
from gencore.ops.reference.attention import window_bounds
from gencore.ops.rng import philox_seed_offset

import _emulator
from _emulator import ATTENTION as PLAIN, ATTENTION_ASAN as ASAN, PLANT_OOB, PLANT_RACE, PLANT_WINDOW
from test_attention import assert_within_2x, make, run, ref

pytestmark = _emulator.needs_toolkit


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """The emulator builds (_emulator.ALL_BUILDS), compiled once per session, in parallel."""
    return _emulator.build_all(tmp_path_factory.mktemp("emu"))


@dataclass(frozen=True)
class Driver:
    exe: Path
    schedule: str
    sanitized: bool

    def run(self, workdir, seed=1, check=True):
        return _emulator.run(self.exe, workdir, self.schedule, seed, self.sanitized, check)


# Every case runs in both schedules on the plain build; the sanitized build (several times slower)
# runs test_sanitized's small cases, which still reach every code path.
FAST = [("plain", "wait"), ("plain", "ahead")]


def variants(cases):
    """pytest params: every case in both schedules on the plain build."""
    out = []
    for case in cases:
        case = case if isinstance(case, tuple) else (case,)
        for v in FAST:
            out.append(pytest.param(v, *case, id="-".join([*v, *(str(x).replace("torch.", "") for x in case)])))
    return out


@pytest.fixture
def driver(request, builds):
    build, schedule = request.param
    return Driver(builds[ASAN if build == "asan" else PLAIN], schedule, build == "asan")


def _raw(t):
    return t.detach().cpu().contiguous().view(torch.int16).numpy().tobytes()


def _buffer_and_strides(t):
    """The storage that t views (as a flat tensor) and t's (batch, head, seq) strides, offset
    folded into the buffer's start."""
    flat = torch.as_strided(t, (t.untyped_storage().nbytes() // t.element_size() - t.storage_offset(),), (1,))
    return flat, t.stride()[:3]


def emulate(driver, tmp_path, q, k, v, dout, causal=False, key_padding_mask=None, scale=None, emu_seed=1, *,
            window=None, softcap=None, document_ids=None, attn_mask=None, dropout_p=0.0, seed=None,
            grad_lse=None, sinks=None, seed_on_device=False):
    """(out, lse, dq, dk, dv) of the mma kernels on the emulator, and its statistics. The keyword
    features as test_attention's `ref` takes them (dropout's keep-mask from `seed`); emu_seed
    seeds the emulator's thread orders."""
    B, H, Sq, D = q.shape
    Hkv, Sk = k.shape[1], k.shape[2]
    scale = D ** -0.5 if scale is None else scale
    strides, counts = [], []
    for name, t in (("q", q), ("k", k), ("v", v), ("dout", dout)):
        assert t.stride(-1) == 1
        flat, st = _buffer_and_strides(t)
        (tmp_path / f"{name}.bin").write_bytes(_raw(flat))
        strides += list(st)
        counts.append(flat.numel())
    if key_padding_mask is not None:
        (tmp_path / "mask.bin").write_bytes(key_padding_mask.to(torch.uint8).numpy().tobytes())
    dtype = {torch.bfloat16: "bf16", torch.float16: "fp16"}[q.dtype]
    fields = [B, H, Hkv, Sq, Sk, D, dtype, int(causal), int(key_padding_mask is not None), repr(float(scale))]
    left, right = window_bounds(window)
    am_B = am_H = 1
    if document_ids is not None:
        (tmp_path / "docs.bin").write_bytes(document_ids.to(torch.int64).contiguous().numpy().tobytes())
    if attn_mask is not None:
        am_B, am_H = attn_mask.shape[:2]
        (tmp_path / "am.bin").write_bytes(attn_mask.to(torch.uint8).contiguous().numpy().tobytes())
    rng = [0, 0]
    if dropout_p > 0:
        rng = [int(x) for x in philox_seed_offset(torch.Generator().manual_seed(seed))]
    features = [left, right, repr(float(softcap or 0.0)), int(document_ids is not None), int(attn_mask is not None),
                am_B, am_H, repr(float(dropout_p)), *rng, int(grad_lse is not None), int(sinks is not None),
                int(seed_on_device)]
    if sinks is not None:
        (tmp_path / "sinks.bin").write_bytes(sinks.float().contiguous().numpy().tobytes())
    if grad_lse is not None:
        (tmp_path / "grad_lse.bin").write_bytes(grad_lse.float().contiguous().numpy().tobytes())
    (tmp_path / "params.txt").write_text(" ".join(map(str, fields + strides + counts + features)))
    res = driver.run(tmp_path, emu_seed)
    stats = json.loads(res.stdout.strip().splitlines()[-1])

    def read(name, shape, dt):
        data = torch.frombuffer(bytearray((tmp_path / f"{name}.bin").read_bytes()), dtype=dt)
        return data.view(q.dtype if dt == torch.int16 else dt).reshape(shape)

    out = read("out", (B, H, Sq, D), torch.int16)
    lse = read("lse", (B, H, Sq), torch.float32)
    dq = read("dq", (B, H, Sq, D), torch.int16)
    dk = read("dk", (B, Hkv, Sk, D), torch.int16)
    dv = read("dv", (B, Hkv, Sk, D), torch.int16)
    return (out, lse, dq, dk, dv), stats


def check(driver, tmp_path, q, k, v, dout, **kw):
    """Flash rule on out, dq, dk, dv; lse vs the float64 reference; no ldmatrix bank conflicts."""
    (out, lse, dq, dk, dv), stats = emulate(driver, tmp_path, q, k, v, dout, **kw)
    exact = run(ref, *(t.double() for t in (q, k, v, dout)), **kw)
    assert_within_2x(exact, run(ref, q, k, v, dout, **kw), (out, dq, dk, dv), (q, k, v, dout), "ref", **kw)
    scale = kw.get("scale")
    features = {f: kw[f] for f in ("window", "softcap", "document_ids", "attn_mask") if f in kw}
    _, r_lse = attention_reference(q.double(), k.double(), v.double(), kw.get("causal", False),
                                   kw.get("key_padding_mask"), q.shape[-1] ** -0.5 if scale is None else scale,
                                   **features)
    seen = torch.isfinite(r_lse)
    assert torch.equal(torch.isneginf(lse), ~seen), "lse must be -inf exactly for rows that see no key"
    torch.testing.assert_close(lse[seen].double(), r_lse[seen], atol=2e-3, rtol=1e-3)
    assert stats["max_ldmatrix_ways"] == 1, f"ldmatrix bank conflicts: {stats}"
    return out, dq, dk, dv


DTYPES = [torch.bfloat16, torch.float16]


@pytest.mark.parametrize("driver,dtype,D,causal", variants(
    [(dt, D, c) for dt in DTYPES for D in (64, 96, 128) for c in (False, True)]), indirect=["driver"])
def test_head_dims(driver, tmp_path, dtype, D, causal):
    # 130 queries: two query tiles, the second nearly empty; 150 keys: a partial third key tile.
    q, k, v, dout = make(1, 2, 2, 130, 150, D, dtype, "cpu", seed=D)
    check(driver, tmp_path, q, k, v, dout, causal=causal)


@pytest.mark.parametrize("driver,Sq,Sk", variants([(1, 1), (3, 77), (127, 3), (200, 64), (64, 200), (129, 129)]),
                         indirect=["driver"])
def test_lengths_causal_bottom_right(driver, tmp_path, Sq, Sk):
    """Odd lengths, S_q != S_k both ways: causal aligned bottom-right, rows that see no key."""
    q, k, v, dout = make(1, 2, 1, Sq, Sk, 64, torch.bfloat16, "cpu", seed=Sq + Sk)
    check(driver, tmp_path, q, k, v, dout, causal=True)


@pytest.mark.parametrize("driver,causal,D,dtype", variants([(False, 64, torch.bfloat16), (True, 64, torch.bfloat16),
                                                            (True, 128, torch.float16)]), indirect=["driver"])
def test_gqa_and_padding(driver, tmp_path, causal, D, dtype):
    q, k, v, dout = make(2, 6, 2, 70, 140, D, dtype, "cpu", seed=7)
    mask = torch.rand(2, 140, generator=torch.Generator().manual_seed(8)) < 0.3
    mask[1, :] = True  # batch 1: every key padded, rows give zeros and lse -inf
    out, dq, dk, dv = check(driver, tmp_path, q, k, v, dout, causal=causal, key_padding_mask=mask)
    assert (out[1] == 0).all() and (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
    assert (dk[0][:, mask[0]] == 0).all() and (dv[0][:, mask[0]] == 0).all()


@pytest.mark.parametrize("driver", [pytest.param(v, id="-".join(v)) for v in FAST], indirect=True)
def test_non_contiguous_and_scale(driver, tmp_path):
    """q, k, v as views of one fused projection (B, S, 3, H, D); dout transposed; a custom scale."""
    B, S, H, D = 2, 100, 2, 96
    qkv = torch.randn(B, S, 3, H, D, generator=torch.Generator().manual_seed(3)).to(torch.float16)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    dout = torch.randn(B, S, H, D, generator=torch.Generator().manual_seed(4)).to(torch.float16).transpose(1, 2)
    assert not q.is_contiguous() and not dout.is_contiguous()
    check(driver, tmp_path, q, k, v, dout, causal=True, scale=0.05)


def test_deterministic(builds, tmp_path):
    """Two runs (both schedules, different block and thread orders) give identical bits."""
    q, k, v, dout = make(1, 4, 2, 90, 90, 64, torch.bfloat16, "cpu", seed=5)
    a, _ = emulate(Driver(builds[PLAIN], "wait", False), tmp_path, q, k, v, dout, causal=True, emu_seed=1)
    b, _ = emulate(Driver(builds[PLAIN], "ahead", False), tmp_path, q, k, v, dout, causal=True, emu_seed=2)
    for x, y in zip(a, b):
        assert torch.equal(x.view(torch.int16) if x.dtype != torch.float32 else x,
                           y.view(torch.int16) if y.dtype != torch.float32 else y)


@pytest.mark.parametrize("driver,scale", variants([-0.3, 0.0]), indirect=["driver"])
def test_negative_and_zero_scale(driver, tmp_path, scale):
    """Masking happens after scaling, so a negative scale cannot turn a masked -inf into +inf."""
    q, k, v, dout = make(1, 2, 1, 40, 70, 64, torch.float16, "cpu", seed=9)
    mask = torch.rand(1, 70, generator=torch.Generator().manual_seed(10)) < 0.3
    check(driver, tmp_path, q, k, v, dout, causal=True, key_padding_mask=mask, scale=scale)


@pytest.mark.parametrize("D,dtype,Sq,Sk,causal,masked,strided", [
    (64, torch.bfloat16, 70, 150, True, True, False),    # partial key tiles, padding, rows without keys
    (64, torch.float16, 150, 40, False, False, False),    # a partial query tile, S_q > S_k
    (96, torch.float16, 50, 50, True, False, True),       # views of a fused QKV projection
    (128, torch.bfloat16, 20, 130, True, True, False),    # D = 128's V from shared memory
])
def test_sanitized(builds, tmp_path, D, dtype, Sq, Sk, causal, masked, strided):
    """Under AddressSanitizer + UndefinedBehaviorSanitizer ("ahead" schedule): no read or write out
    of bounds, no undefined behaviour, and the flash rule still holds."""
    driver = Driver(builds[ASAN], "ahead", True)
    if strided:
        qkv = torch.randn(1, Sq, 3, 2, D, generator=torch.Generator().manual_seed(D)).to(dtype)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        dout = torch.randn(1, 2, Sq, D, generator=torch.Generator().manual_seed(D + 1)).to(dtype)
    else:
        q, k, v, dout = make(1, 2, 1, Sq, Sk, D, dtype, "cpu", seed=D + Sq)
    mask = None
    if masked:
        mask = torch.rand(1, k.shape[2], generator=torch.Generator().manual_seed(Sk)) < 0.3
    check(driver, tmp_path, q, k, v, dout, causal=causal, key_padding_mask=mask)


# -- the emulator catches bugs: one planted per class (GENCORE_PLANT_BUG in attention_mma_kernels.cu)

def test_asan_catches_out_of_bounds_read(builds, tmp_path):
    """Reading delta at i <= S_q (one element past each row) changes no output: P is 0 there, so
    the plain emulator passes; the sanitized build reports the read past the buffer's end."""
    q, k, v, dout = make(1, 2, 1, 70, 90, 64, torch.bfloat16, "cpu", seed=61)
    with pytest.raises(AssertionError, match="heap-buffer-overflow"):
        emulate(Driver(builds[PLANT_OOB], "wait", True), tmp_path, q, k, v, dout, causal=True)


def test_ahead_schedule_catches_missing_barrier(builds, tmp_path):
    """The forward's prefetch of key tile t + 1 moved above the barrier that frees its stage: with
    copies landing at wait_group the overwritten stage is never read early and the "wait" schedule
    passes; with copies landing at issue and a warp running ahead, the others read the next tile's
    keys in place of the current one's."""
    q, k, v, dout = make(1, 2, 2, 130, 200, 64, torch.bfloat16, "cpu", seed=62)  # 4 key tiles
    buggy = builds[PLANT_RACE]
    check(Driver(buggy, "wait", False), tmp_path, q, k, v, dout)
    with pytest.raises(AssertionError, match="fused err"):
        check(Driver(buggy, "ahead", False), tmp_path, q, k, v, dout)


# -- the keyword features: window, softcap, document_ids, attn_mask, dropout -------------------------

# Document ids from per-batch lengths and random bool masks: test_attention_features's.
from test_attention_features import docs as _docs, random_mask as _mask  # noqa: E402


def _block_mask(shape, seed):
    """attn_mask with an all-False quarter (whole tiles skipped) and a row that sees nothing."""
    m = _mask(shape, 0.6, seed)
    Sq, Sk = shape[2:]
    m[..., : Sq // 2, Sk // 2:] = False
    m[..., 3, :] = False
    return m


# name -> ((B, H, H_kv, S_q, S_k, D), dtype, keyword arguments): odd lengths, S_q != S_k both ways,
# every head dim, rows that see no key, tiles that the features empty (skipped).
FEATURE_CASES = {
    "window sliding causal": ((1, 2, 1, 200, 300, 64), torch.bfloat16, dict(causal=True, window=(70, 0))),
    "window two-sided empty rows": ((1, 2, 2, 150, 130, 96), torch.float16, dict(window=(5, 3))),
    "window right 0 (causal)": ((1, 2, 1, 130, 150, 128), torch.bfloat16, dict(window=(None, 0))),
    "window diagonal": ((1, 2, 1, 100, 100, 96), torch.float16, dict(causal=True, window=(0, 0))),
    "softcap causal": ((1, 2, 1, 130, 150, 64), torch.bfloat16, dict(causal=True, softcap=5.0)),
    "softcap window": ((1, 2, 1, 150, 130, 128), torch.float16, dict(softcap=2.0, window=(40, 40))),
    "documents causal": ((2, 2, 1, 300, 300, 64), torch.bfloat16,
                         dict(causal=True, document_ids=_docs(2, 300, [[100, 130], [5, 250]]))),
    "documents recurring": ((2, 2, 1, 150, 150, 64), torch.float16,
                            dict(document_ids=torch.randint(0, 4, (2, 150), generator=torch.Generator().manual_seed(1)))),
    "documents window gqa": ((2, 4, 2, 150, 150, 64), torch.bfloat16,
                             dict(causal=True, window=(30, None), document_ids=_docs(2, 150, [[70], [20, 64]]))),
    "mask per head": ((2, 2, 1, 200, 270, 64), torch.bfloat16, dict(attn_mask=_block_mask((1, 2, 200, 270), 2))),
    "mask per batch gqa": ((2, 4, 2, 150, 130, 64), torch.float16,
                           dict(causal=True, attn_mask=_block_mask((2, 1, 150, 130), 3))),
    "dropout causal": ((1, 2, 1, 130, 150, 64), torch.bfloat16, dict(causal=True, dropout_p=0.3, seed=5)),
    "dropout padding": ((2, 2, 1, 100, 170, 96), torch.float16,
                        dict(dropout_p=0.5, seed=6, key_padding_mask=_mask((2, 170), 0.3, 4))),
    "all": ((2, 4, 2, 130, 130, 64), torch.bfloat16,
            dict(causal=True, window=(48, -1), softcap=5.0, document_ids=_docs(2, 130, [[60], [20, 80]]),
                 key_padding_mask=_mask((2, 130), 0.2, 8), attn_mask=_mask((2, 4, 130, 130), 0.9, 9),
                 dropout_p=0.1, seed=12)),
}


@pytest.mark.parametrize("driver,name", variants(list(FEATURE_CASES)), indirect=["driver"])
def test_features(driver, tmp_path, name):
    """Each feature forward and backward within 2x the reference's own error; rows that see no key
    give zeros (and zero dq)."""
    shape, dtype, kw = FEATURE_CASES[name]
    q, k, v, dout = make(*shape, dtype, "cpu", seed=sum(shape))
    out, dq, dk, dv = check(driver, tmp_path, q, k, v, dout, **kw)
    feats = {f: kw[f] for f in ("causal", "key_padding_mask", "window", "document_ids", "attn_mask") if f in kw}
    from gencore.ops.reference.attention import visible_keys
    seen = visible_keys(shape[0], shape[3], shape[4], "cpu", **feats).any(-1)  # (B, 1 or H, S_q)
    seen = seen.expand(shape[0], shape[1], shape[3])
    assert (out[~seen] == 0).all() and (dq[~seen] == 0).all()


@pytest.mark.parametrize("driver,D,Sq,causal", variants([(64, 130, False), (128, 70, True)]), indirect=["driver"])
def test_dropout_mask_exact(driver, tmp_path, D, Sq, causal):
    """With v = I (S_k = D) the output is P keep / (1 - p): it is zero exactly where the
    reference's Philox keep-mask drops (or the key is not visible), bit for bit the same mask."""
    from gencore.ops.reference.attention import dropout_keep, visible_keys
    p, seed = 0.4, 21
    q, k, _, dout = make(1, 2, 1, Sq, D, D, torch.bfloat16, "cpu", seed=D)
    v = torch.eye(D, dtype=torch.bfloat16).expand(1, 1, D, D).contiguous()
    (out, *_), _ = emulate(driver, tmp_path, q, k, v, dout, causal=causal, dropout_p=p, seed=seed)
    so = philox_seed_offset(torch.Generator().manual_seed(seed))
    keep = dropout_keep(so[0], so[1], (1, 2, Sq, D), p, "cpu")
    visible = visible_keys(1, Sq, D, "cpu", causal).expand(1, 2, Sq, D)
    assert torch.equal(out != 0, keep & visible)
    assert 0.5 < (keep & visible).sum() / visible.sum() < 0.7


@pytest.mark.parametrize("name,shape,dtype,kw", [
    ("window softcap dropout", (1, 2, 1, 70, 150, 64), torch.float16,
     dict(causal=True, window=(40, 0), softcap=3.0, dropout_p=0.2, seed=3)),
    ("documents recurring mask", (1, 2, 2, 80, 80, 128), torch.bfloat16,
     dict(document_ids=torch.randint(0, 3, (1, 80), generator=torch.Generator().manual_seed(2)),
          attn_mask=_block_mask((1, 2, 80, 80), 5))),
    ("all", (2, 2, 1, 70, 70, 96), torch.bfloat16,
     dict(causal=True, window=(30, 10), softcap=4.0, document_ids=_docs(2, 70, [[30], [10, 40]]),
          key_padding_mask=_mask((2, 70), 0.2, 6), attn_mask=_mask((1, 1, 70, 70), 0.8, 7), dropout_p=0.25, seed=8)),
])
def test_features_sanitized(builds, tmp_path, name, shape, dtype, kw):
    """The features under AddressSanitizer + UndefinedBehaviorSanitizer ("ahead" schedule): the
    document ids, attn_mask and tile-info reads stay in bounds; the flash rule holds."""
    q, k, v, dout = make(*shape, dtype, "cpu", seed=sum(shape))
    check(Driver(builds[ASAN], "ahead", True), tmp_path, q, k, v, dout, **kw)


def test_planted_window_bound_fails(builds, tmp_path):
    """GENCORE_PLANT_BUG=3 moves the window's lower bound one key up (lo = i + offset - left + 1):
    the flash rule catches it."""
    q, k, v, dout = make(1, 2, 1, 130, 150, 64, torch.bfloat16, "cpu", seed=63)
    with pytest.raises(AssertionError, match="fused err"):
        check(Driver(builds[PLANT_WINDOW], "wait", False), tmp_path, q, k, v, dout, causal=True, window=(40, 0))


@pytest.mark.parametrize("driver,causal,dtype", variants([(False, torch.bfloat16), (True, torch.float16)]),
                         indirect=["driver"])
def test_grad_lse(driver, tmp_path, causal, dtype):
    """The lse's gradient (d lse / d s = P) enters the backward through delta: dq, dk, dv of the
    loss sum(out * dout) + sum(lse * grad_lse) within 2x the reference's own error."""
    import math
    from gencore.tolerance import attention_l1, within_2x
    from test_attention import probs
    q, k, v, dout = make(2, 4, 2, 130, 150, 64, dtype, "cpu", seed=21)
    glse = torch.randn(2, 4, 130, generator=torch.Generator().manual_seed(22))
    (out, lse, dq, dk, dv), _ = emulate(driver, tmp_path, q, k, v, dout, causal=causal, grad_lse=glse)

    def grads(q, k, v, dout):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        o, l = attention_reference(*leaves, causal)
        loss = (o.double() * dout.double()).sum() + (torch.where(torch.isfinite(l), l, 0).double() * glse.double()).sum()
        return (o.detach(), *torch.autograd.grad(loss, leaves))

    exact = grads(*(t.double() for t in (q, k, v, dout)))
    base = grads(q, k, v, dout)
    qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
    l1 = attention_l1(qd, kd, vd, dd.abs() + glse.double().abs()[..., None], probs(qd, kd, causal=causal),
                      1 / math.sqrt(64))
    for name, e, b, f in zip(("out", "dq", "dk", "dv"), exact, base, (out, dq, dk, dv)):
        verdict = within_2x(e, b, f, l1[name])
        assert verdict.passed, f"{name}: err {verdict.error:.3g} > tol {verdict.tolerance:.3g}"


@pytest.mark.parametrize("driver,causal,dtype", variants([(False, torch.float16), (True, torch.bfloat16)]),
                         indirect=["driver"])
def test_sinks(driver, tmp_path, causal, dtype):
    """Attention sinks: the forward's epilogue adds each head's sink to the softmax sum; the
    backward recomputes P from that lse. out, dq, dk, dv within 2x the reference's own error, lse
    the reference's (the sink counted in it), rows that see no key: out 0, lse = the sink."""
    import math
    from gencore.tolerance import attention_l1, within_2x
    from test_attention import probs
    q, k, v, dout = make(2, 4, 2, 130, 150, 64, dtype, "cpu", seed=23)
    sinks = torch.tensor([0.5, -1.0, 2.0, float("-inf")])
    mask = torch.zeros(2, 150, dtype=torch.bool)
    mask[1] = True  # batch 1 sees no key
    (out, lse, dq, dk, dv), _ = emulate(driver, tmp_path, q, k, v, dout, causal=causal, sinks=sinks,
                                        key_padding_mask=mask)

    def grads(q, k, v, dout):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        o, l = attention_reference(*leaves, causal, mask, sinks=sinks)
        return (o.detach(), *torch.autograd.grad(o, leaves, dout)), l.detach()

    exact, r_lse = grads(*(t.double() for t in (q, k, v, dout)))
    base, _ = grads(q, k, v, dout)
    qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
    l1 = attention_l1(qd, kd, vd, dd, probs(qd, kd, causal=causal, key_padding_mask=mask), 1 / math.sqrt(64))
    for name, e, b, f in zip(("out", "dq", "dk", "dv"), exact, base, (out, dq, dk, dv)):
        verdict = within_2x(e, b, f, l1[name])
        assert verdict.passed, f"{name}: err {verdict.error:.3g} > tol {verdict.tolerance:.3g}"
    seen = torch.isfinite(r_lse)
    assert torch.equal(torch.isfinite(lse), seen)
    torch.testing.assert_close(lse[seen].double(), r_lse[seen], atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(lse[1, :3], sinks[:3, None].expand(3, 130))
    assert (out[1] == 0).all()


@pytest.mark.parametrize("driver,causal", variants([False, True]), indirect=["driver"])
def test_dropout_key_from_device_memory(driver, tmp_path, causal):
    """The dropout key read from device memory (CUDA-graph replays, gencore/ops/rng.py) gives the
    mask the key passed by value gives, bit for bit."""
    q, k, v, dout = make(1, 2, 1, 130, 150, 64, torch.bfloat16, "cpu", seed=31)
    kw = dict(causal=causal, dropout_p=0.3, seed=9)
    by_value, _ = emulate(driver, tmp_path, q, k, v, dout, **kw)
    by_pointer, _ = emulate(driver, tmp_path, q, k, v, dout, seed_on_device=True, **kw)
    for a, b in zip(by_value, by_pointer):
        assert torch.equal(a, b)
