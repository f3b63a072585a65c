"""The Gumbel-softmax and GAN-loss CUDA kernels (csrc/cuda/gumbel_softmax_kernels.cu,
gan_loss_kernels.cu), run on the CPU emulator through their launchers.

The same emulator as test_attention_emulated.py (tests/cuda_emulator/): every case runs on the plain
build in both schedules ("wait", "ahead": one warp runs ahead to each barrier, so a reused shared
reduction slot without its barrier shows) and under AddressSanitizer + UndefinedBehaviorSanitizer.
The cases are picked to reach every kernel and launcher branch. Hard Gumbel one-hots must equal the
reference bit for bit (same Philox noise); soft samples, gradients and losses follow the 2x rule
(gencore.tolerance) against the float64 reference, with the reference in the inputs' dtype as the
baseline.
"""
import json
import math

import pytest
import torch

from gencore.ops.reference import gan_loss_reference, gumbel_softmax_reference
from gencore.ops.reference.gumbel_softmax import gumbel_noise
from gencore.tolerance import softmax_l1, within_2x

import _emulator
from _emulator import OPS as PLAIN, OPS_ASAN as ASAN

pytestmark = _emulator.needs_toolkit

VARIANTS = [("plain", "wait"), ("plain", "ahead"), ("asan", "ahead")]
NAMES = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16", torch.float16: "fp16"}
SEED, OFFSET = 0x1234_5678_9ABC, 77


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    return _emulator.build_all(tmp_path_factory.mktemp("emu"))


@pytest.fixture(params=VARIANTS, ids=["-".join(v) for v in VARIANTS])
def emulate(request, builds, tmp_path):
    """emulate(params, inputs, outputs): writes the inputs (name -> tensor), runs the driver in this
    variant, returns the outputs (name -> (shape, dtype)) as tensors."""
    build, schedule = request.param

    def go(params, inputs, outputs):
        (tmp_path / "params.txt").write_text(" ".join(map(str, params)))
        for name, t in inputs.items():
            (tmp_path / f"{name}.bin").write_bytes(_raw(t))
        res = _emulator.run(builds[ASAN if build == "asan" else PLAIN], tmp_path, schedule,
                            sanitized=build == "asan")
        json.loads(res.stdout.strip().splitlines()[-1])
        return {name: _read(tmp_path / f"{name}.bin", shape, dtype) for name, (shape, dtype) in outputs.items()}
    return go


def _raw(t):
    t = t.detach().contiguous()
    return (t.view(torch.int16) if t.element_size() == 2 else t).numpy().tobytes()


def _read(path, shape, dtype):
    data = bytearray(path.read_bytes())
    if not data:
        return torch.zeros(shape, dtype=dtype)
    if dtype.itemsize == 2:
        return torch.frombuffer(data, dtype=torch.int16).view(dtype).reshape(shape)
    return torch.frombuffer(data, dtype=dtype).reshape(shape)


# -- Gumbel-softmax -----------------------------------------------------------------------------------

GUMBEL = [  # dtype, shape, dim, hard, misaligned: the kernel each reaches
    (torch.float32, (3, 5000), -1, True, False),     # RowKernel, 256 threads, z partly in shared memory
    (torch.bfloat16, (2, 1501), -1, False, False),   # RowKernel, the second row starts mid-chunk
    (torch.float64, (2, 1030), -1, True, False),     # RowKernel in double
    (torch.float32, (2, 9000), -1, False, False),    # RowKernel, 512 threads; backward, 1024 threads
    (torch.float16, (5, 100), -1, True, False),      # GroupKernel, one warp per row
    (torch.float32, (3, 40, 7), 1, False, False),    # GroupKernel, strided rows
    (torch.bfloat16, (2, 2000), -1, True, True),     # GroupKernel, 256 per row (unaligned), z cached
    (torch.float32, (1, 42000, 2), 1, True, False),  # GroupKernel, 256 per row, z recomputed (too wide)
]


@pytest.mark.parametrize("dtype,shape,dim,hard,misaligned", GUMBEL,
                         ids=[f"{NAMES[c[0]]}-{'x'.join(map(str, c[1]))}-dim{c[2]}{'-hard' if c[3] else ''}"
                              f"{'-misaligned' if c[4] else ''}" for c in GUMBEL])
def test_gumbel_softmax(emulate, dtype, shape, dim, hard, misaligned):
    tau = 0.7
    g = torch.Generator().manual_seed(len(shape) * 1000 + shape[-1])
    x = (torch.randn(shape, generator=g) * 3).to(dtype)
    w = torch.randn(shape, generator=g).to(dtype)  # the upstream gradient
    d = dim % len(shape)
    outer, n, inner = math.prod(shape[:d]), shape[d], math.prod(shape[d + 1:])
    outs = {"out": (shape, dtype), "dx": (shape, dtype)} | ({"soft": (shape, dtype)} if hard else {})
    got = emulate(["gumbel", NAMES[dtype], outer, n, inner, SEED, OFFSET, tau, int(hard), int(misaligned)],
                  {"x": x, "g": w}, outs)
    seed, offset = torch.tensor(SEED), torch.tensor(OFFSET)
    if hard:
        assert torch.equal(got["out"], gumbel_softmax_reference(x, seed, offset, tau, True, dim))
    soft = got["soft" if hard else "out"]
    # The exponent z = (x + g) / tau on the same noise gives the reductions' L1 sizes.
    z = (x.double() + gumbel_noise(shape, seed, offset, "cpu", torch.float64)) / tau
    sizes = softmax_l1(z, dim, w.double(), tau)
    y_gold = gumbel_softmax_reference(x.double(), seed, offset, tau, False, dim)
    y_ref = gumbel_softmax_reference(x, seed, offset, tau, False, dim)
    verdict = within_2x(y_gold, y_ref, soft, sizes["out"])
    assert verdict.passed, f"soft sample: {verdict}"
    # The backward starts from the saved soft sample: the baseline runs its formula on the
    # reference's sample in the accumulation type (as gencore check does).
    acc = torch.float64 if dtype == torch.float64 else torch.float32

    def dlogits(y, w):
        return y * (w - (w * y).sum(dim, keepdim=True)) / tau
    verdict = within_2x(dlogits(y_gold, w.double()), dlogits(y_ref.to(acc), w.to(acc)).to(dtype), got["dx"],
                        sizes["grad"])
    assert verdict.passed, f"dlogits: {verdict}"


# -- GAN losses ---------------------------------------------------------------------------------------

KIND = {"bce": 0, "hinge": 1, "wasserstein": 2, "rsgan": 3, "ragan": 4}
ROLE = {"discriminator": 0, "generator": 1}
REDUCTION = {"none": 0, "mean": 1, "sum": 2}
FAKE_ONLY = {("bce", "generator"), ("hinge", "generator"), ("wasserstein", "generator")}
GAN = [  # kind, role, reduction, dtype, n_real, n_fake (over 16384 per side: one launch per phase)
    ("bce", "discriminator", "mean", torch.float32, 300, 517),
    ("bce", "generator", "sum", torch.bfloat16, 0, 1000),
    ("hinge", "discriminator", "none", torch.float32, 777, 777),
    ("wasserstein", "generator", "mean", torch.float64, 0, 33),
    ("rsgan", "discriminator", "sum", torch.float16, 640, 640),
    ("ragan", "generator", "mean", torch.float32, 1000, 700),
    ("bce", "discriminator", "mean", torch.float32, 20000, 30001),  # multi-block
    ("ragan", "discriminator", "sum", torch.float32, 18000, 17000),  # multi-block, 4 phases
]


def _gan_l1(r, f, reduction):
    """The loss's L1 size: every term T(x) is at most 1 + |x| (softplus, hinge, linear), each side
    weighted as the reduction weighs it (elementwise for none)."""
    sides = [t.double().abs() + 1 for t in (r, f) if t is not None]
    if reduction == "none":
        return sum(sides)
    return sum(s.mean() if reduction == "mean" else s.sum() for s in sides)


@pytest.mark.parametrize("kind,role,reduction,dtype,n_real,n_fake", GAN,
                         ids=[f"{c[0]}-{c[1][0]}-{c[2]}-{NAMES[c[3]]}-{c[4]}x{c[5]}" for c in GAN])
def test_gan_loss(emulate, kind, role, reduction, dtype, n_real, n_fake):
    g = torch.Generator().manual_seed(n_real + n_fake)
    fake = (torch.randn(n_fake, generator=g) * 3).to(dtype)
    real = None if (kind, role) in FAKE_ONLY else (torch.randn(n_real, generator=g) * 3).to(dtype)
    n_loss = n_fake if reduction == "none" else 1
    got = emulate(["gan", NAMES[dtype], KIND[kind], ROLE[role], REDUCTION[reduction], n_real, n_fake],
                  {"fake": fake} | ({"real": real} if real is not None else {}),
                  {"loss": ((n_loss,), dtype), "grad_real": ((n_real,), dtype), "grad_fake": ((n_fake,), dtype)})

    def reference(r, f):
        f = f.detach().requires_grad_()
        r = None if r is None else r.detach().requires_grad_()
        loss = gan_loss_reference(r, f, kind, role, reduction)
        loss.backward(torch.ones_like(loss))
        return loss.detach().reshape(n_loss), (r.grad if r is not None else torch.zeros(0, dtype=f.dtype)), f.grad
    gold = reference(None if real is None else real.double(), fake.double())
    base = reference(real, fake)
    # Gradients: one term's derivative each, plus (ragan) the other side's coupling sum, at most
    # 1/n per element for mean, 1 for sum.
    coupling = (1.0 / max(n_fake, 1) if reduction == "mean" else 1.0) if kind == "ragan" else 0.0
    for name, gd, b, out, l1 in zip(("loss", "grad_real", "grad_fake"), gold, base,
                                    (got["loss"], got["grad_real"], got["grad_fake"]),
                                    (_gan_l1(real, fake, reduction), None, None)):
        l1 = gd.abs() + coupling if l1 is None else l1
        verdict = within_2x(gd, b, out, l1)
        assert verdict.passed, f"{name}: {verdict}"
