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

import _emulator
from _emulator import ATTENTION as PLAIN, ATTENTION_ASAN as ASAN, PLANT_OOB, PLANT_RACE
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


def emulate(driver, tmp_path, q, k, v, dout, causal=False, key_padding_mask=None, scale=None, seed=1):
    """(out, lse, dq, dk, dv) of the mma kernels on the emulator, and its statistics."""
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
    (tmp_path / "params.txt").write_text(" ".join(map(str, fields + strides + counts)))
    res = driver.run(tmp_path, seed)
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
    _, r_lse = attention_reference(q.double(), k.double(), v.double(), kw.get("causal", False),
                                   kw.get("key_padding_mask"), q.shape[-1] ** -0.5 if scale is None else scale)
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
    a, _ = emulate(Driver(builds[PLAIN], "wait", False), tmp_path, q, k, v, dout, causal=True, seed=1)
    b, _ = emulate(Driver(builds[PLAIN], "ahead", False), tmp_path, q, k, v, dout, causal=True, seed=2)
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
