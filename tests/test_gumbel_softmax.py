"""gencore.ops.gumbel_softmax: fused kernels against the reference, sample for sample."""
import math

import pytest
import torch

import gencore
from gencore.ops import gumbel_softmax
from gencore.ops.reference import gumbel_softmax_reference
from gencore.ops.reference.philox import philox4x32_10, random_bits
from gencore.tolerance import within_2x
from _helpers import ALL_DEVICES, need_fused

LOW = [torch.bfloat16, torch.float16]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def sample(x, impl, seed=0, **kw):
    return gumbel_softmax(x, generator=gen(seed), impl=impl, **kw)


def gold(x, seed=0, tau=1.0, hard=False, dim=-1):
    """The reference in float64 on the same noise: the 'true' value both implementations round."""
    so = torch.randint(0, 1 << 62, (2,), dtype=torch.int64, generator=gen(seed))
    return gumbel_softmax_reference(x.double(), so[0], so[1], tau, hard, dim)


def assert_close_to_gold(fused, ref, g, l1=None):
    """The 2x rule (gencore.tolerance): the fused op's error against the float64 gold is at most
    twice the reference's own error in the same precision, plus one rounding of the reduction."""
    verdict = within_2x(g, ref, fused, l1)
    assert verdict.passed, verdict


# -- the RNG --------------------------------------------------------------------------------------

def test_philox_known_answer():
    # Random123's published known-answer vectors for Philox4x32-10.
    def run(ctr, key):
        c = [torch.tensor([v], dtype=torch.int64) for v in ctr]
        return [int(w) for w in philox4x32_10(c, key)]
    assert run([0, 0, 0, 0], (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert run([0xFFFFFFFF] * 4, (0xFFFFFFFF, 0xFFFFFFFF)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert run([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


def test_random_bits_layout():
    bits = random_bits(10, seed=5, offset=7, device="cpu")
    assert bits.shape == (10,) and bits.min() >= 0 and bits.max() < 2**32
    # Element i is word i % 4 of block i // 4: a longer draw extends a shorter one.
    assert torch.equal(random_bits(13, 5, 7, "cpu")[:10], bits)
    assert not torch.equal(random_bits(10, 5, 8, "cpu"), bits)


# -- fused vs reference ---------------------------------------------------------------------------

SHAPES = [((1,), -1), ((3,), 0), ((1023,), -1), ((4, 5000), -1), ((2, 3, 17), 1), ((5, 7, 3), 0),
          ((2, 50257), -1), ((1, 262144), -1)]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("shape,dim", SHAPES)
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_soft_matches_reference(device, shape, dim, tau):
    need_fused("gumbel_softmax", device)
    x = torch.randn(shape, generator=gen(1)).mul_(3).to(device)
    fused = sample(x, "fused", tau=tau, dim=dim)
    ref = sample(x, "reference", tau=tau, dim=dim)
    assert fused.shape == x.shape and fused.dtype == x.dtype
    assert_close_to_gold(fused, ref, gold(x, tau=tau, dim=dim))
    total = fused.double().sum(dim)
    # float32 accumulation over a row of n terms: error grows like sqrt(n) * eps
    atol = 1e-6 * max(1.0, math.sqrt(shape[dim])) * 10
    torch.testing.assert_close(total, torch.ones_like(total), rtol=0, atol=atol)


@pytest.mark.parametrize("n", list(range(1, 70)) + [100, 127, 129, 255, 257])
def test_every_row_length_draws_the_references_noise(n):
    """Rows of every length, starting at every alignment to Philox's 4-word blocks: the vector
    paths' whole groups, their last partial group and the single words at the ends must hand
    each element its own word (a misplaced word changes a sample by O(1), not by a rounding)."""
    need_fused("gumbel_softmax", "cpu")
    x = torch.randn(5, n, generator=gen(3)).mul_(3)
    fused, ref = sample(x, "fused"), sample(x, "reference")
    assert_close_to_gold(fused, ref, gold(x))
    hard = sample(x, "fused", hard=True).argmax(-1)
    assert torch.equal(hard, sample(x, "reference", hard=True).argmax(-1))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("shape,dim", [((64, 1000), -1), ((3, 257, 5), 1)])
def test_low_precision_matches_reference(device, dtype, shape, dim):
    need_fused("gumbel_softmax", device)
    x = torch.randn(shape, generator=gen(2)).to(device, dtype)
    fused = sample(x, "fused", dim=dim)
    ref = sample(x, "reference", dim=dim)
    assert fused.dtype == dtype
    assert_close_to_gold(fused, ref, gold(x, dim=dim))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,dim", [((1,), 0), ((7, 3), 1), ((300, 1023), -1), ((5, 1001), -1), ((4, 33, 6), 1), ((8, 50257), -1)])
def test_hard_equals_reference_exactly(device, dtype, shape, dim):
    need_fused("gumbel_softmax", device)
    x = torch.randn(shape, generator=gen(3)).to(device, dtype)
    fused = sample(x, "fused", hard=True, dim=dim, tau=0.5)
    ref = sample(x, "reference", hard=True, dim=dim, tau=0.5)
    assert torch.equal(fused, ref)
    assert torch.equal(fused.sum(dim), torch.ones_like(fused.sum(dim)))


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", [((5, 1000), -1), ((3, 40, 7), 1), ((1,), 0)])
def test_gradients_match_reference(device, hard, dtype, shape, dim):
    need_fused("gumbel_softmax", device)
    x = torch.randn(shape, generator=gen(4)).to(device, dtype)
    w = torch.randn(shape, generator=gen(5)).to(device, dtype)  # a non-trivial upstream gradient
    grads = {}
    for impl in ("fused", "reference"):
        xi = x.clone().requires_grad_()
        (sample(xi, impl, hard=hard, dim=dim, tau=0.7).float() * w.float()).sum().backward()
        grads[impl] = xi.grad
    xg = x.double().requires_grad_()
    (gold(xg, hard=hard, dim=dim, tau=0.7) * w.double()).sum().backward()
    assert grads["fused"].dtype == dtype
    # dlogits = y (w - sum(w y)) / tau: its L1 size counts the subtraction as an addition.
    y = gold(x.double(), hard=False, dim=dim, tau=0.7)
    l1 = y * (w.double().abs() + (w.double() * y).abs().sum(dim, keepdim=True)) / 0.7
    assert_close_to_gold(grads["fused"], grads["reference"], xg.grad, l1)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_hard_backward_is_soft_backward(device):
    """Straight-through: the hard sample's gradient is exactly the soft sample's."""
    need_fused("gumbel_softmax", device)
    x = torch.randn(6, 50, generator=gen(6), device="cpu").to(device)
    grads = []
    for hard in (False, True):
        xi = x.clone().requires_grad_()
        y = sample(xi, "fused", hard=hard)
        (y * torch.arange(50.0, device=device)).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_non_contiguous_input(device):
    need_fused("gumbel_softmax", device)
    base = torch.randn(40, 30, generator=gen(7)).to(device)
    for x in (base.t(), base[::2, ::3], base.t()[1:, :]):
        assert not x.is_contiguous()
        # The noise belongs to the logical position, so a contiguous copy gives the same sample.
        torch.testing.assert_close(sample(x, "fused"), sample(x.contiguous(), "fused"), rtol=0, atol=0)
        assert_close_to_gold(sample(x, "fused"), sample(x, "reference"), gold(x))
        assert torch.equal(sample(x, "fused", hard=True), sample(x, "reference", hard=True))


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_gradcheck_float64(impl):
    if impl == "fused":
        need_fused("gumbel_softmax", "cpu")
    for shape, dim in [((3, 5), -1), ((2, 4, 3), 1), ((1,), 0)]:
        x = torch.randn(shape, dtype=torch.float64, generator=gen(8), requires_grad=True)
        fn = lambda t: gumbel_softmax(t, tau=0.8, dim=dim, generator=gen(9), impl=impl)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_hard_double_backward_matches_reference():
    """Second derivatives through the straight-through path, with soft used downstream too."""
    need_fused("gumbel_softmax", "cpu")
    x = torch.randn(4, 6, dtype=torch.float64, generator=gen(10))
    out = []
    for impl in ("fused", "reference"):
        xi = x.clone().requires_grad_()
        y = sample(xi, impl, hard=True)
        (g,) = torch.autograd.grad((y * y.detach().cumsum(-1)).sum(), xi, create_graph=True)
        (h,) = torch.autograd.grad((g**2).sum(), xi)
        out.append((g, h))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


@pytest.mark.parametrize("hard", [False, True])
def test_opcheck(hard):
    need_fused("gumbel_softmax", "cpu")
    so = torch.tensor([123, 4], dtype=torch.int64)
    cases = [
        (torch.randn(4, 10, requires_grad=True), so, 1.0, hard, 1),
        (torch.randn(3, 7, 2, dtype=torch.float64, requires_grad=True), so, 0.5, hard, 1),
        (torch.randn(2, 9).t().requires_grad_(), so, 2.0, hard, 0),
        (torch.randn(5, 6, dtype=torch.bfloat16), so, 1.0, hard, -1),
    ]
    for args in cases:
        torch.library.opcheck(torch.ops.gencore.gumbel_softmax.default, args)
    y = torch.softmax(torch.randn(4, 10), -1)
    torch.library.opcheck(torch.ops.gencore.gumbel_softmax_backward.default, (torch.randn(4, 10), y, 0.5, 1))


def test_torch_compile_fullgraph():
    need_fused("gumbel_softmax", "cpu")
    torch._dynamo.reset()

    @torch.compile(fullgraph=True)
    def step(logits):
        y = gumbel_softmax(logits, tau=0.5, hard=True)
        return (y * torch.arange(logits.shape[-1], dtype=y.dtype)).sum()

    x = torch.randn(8, 13, requires_grad=True)
    loss = step(x)
    loss.backward()
    assert torch.isfinite(loss) and x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_torch_compile_matches_eager():
    """Same seed in, same sample out: compiled code calls the same kernel."""
    need_fused("gumbel_softmax", "cpu")
    torch._dynamo.reset()
    so = torch.tensor([77, 1], dtype=torch.int64)
    fn = torch.compile(lambda t: torch.ops.gencore.gumbel_softmax(t, so, 0.5, True, -1), fullgraph=True)
    x = torch.randn(6, 20)
    for a, b in zip(fn(x), torch.ops.gencore.gumbel_softmax(x, so, 0.5, True, -1)):
        assert torch.equal(a, b)


# -- randomness -----------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_argmax_frequencies_follow_softmax(impl):
    """The Gumbel-max trick: argmax(logits + g) ~ Categorical(softmax(logits)), whatever tau.
    Pearson's chi-square over 200k draws, at a significance level of 1e-4 (fixed seed)."""
    if impl == "fused":
        need_fused("gumbel_softmax", "cpu")
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0])
    p = torch.softmax(logits, 0).double()
    n = 200_000
    for tau in (1.0, 0.25):
        y = gumbel_softmax(logits.expand(n, -1), tau=tau, hard=True, generator=gen(11), impl=impl)
        counts = y.sum(0).double()
        chi2 = ((counts - n * p) ** 2 / (n * p)).sum().item()
        assert chi2 < 25.74, chi2  # chi-square(5 dof) quantile at 1 - 1e-4
    soft = gumbel_softmax(logits.expand(1000, -1), generator=gen(12), impl=impl)
    torch.testing.assert_close(soft.sum(-1), torch.ones(1000))


def test_uniform_noise_statistics():
    """Gumbel(0,1) noise has mean Euler's gamma and variance pi^2/6."""
    from gencore.ops.reference import gumbel_noise
    g = gumbel_noise((400_000,), 17, 0, "cpu", torch.float64)
    assert torch.isfinite(g).all()
    assert abs(g.mean().item() - 0.5772156649) < 0.01
    assert abs(g.var().item() - math.pi**2 / 6) < 0.02


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_seeds(impl):
    if impl == "fused":
        need_fused("gumbel_softmax", "cpu")
    x = torch.randn(16, 100)
    assert torch.equal(sample(x, impl, seed=1), sample(x, impl, seed=1))
    assert not torch.equal(sample(x, impl, seed=1), sample(x, impl, seed=2))
    torch.manual_seed(5)
    a = gumbel_softmax(x, impl=impl)
    b = gumbel_softmax(x, impl=impl)
    torch.manual_seed(5)
    assert torch.equal(gumbel_softmax(x, impl=impl), a)
    assert not torch.equal(a, b)  # the default generator advances


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_same_seed_same_samples_on_cpu_and_cuda():
    need_fused("gumbel_softmax", "cuda")
    x = torch.randn(64, 3000)
    torch.manual_seed(3)
    cpu = gumbel_softmax(x, hard=True)
    torch.manual_seed(3)
    cuda = gumbel_softmax(x.cuda(), hard=True)
    assert torch.equal(cpu, cuda.cpu())
    torch.testing.assert_close(sample(x, "fused"), sample(x.cuda(), "fused").cpu(), rtol=1e-5, atol=1e-6)
    cg = torch.Generator("cuda").manual_seed(4)
    a = gumbel_softmax(x.cuda(), generator=cg)
    b = gumbel_softmax(x.cuda(), generator=cg)
    assert not torch.equal(a, b)


# -- bad input and edge cases ---------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_bad_arguments(impl):
    x = torch.randn(3, 4)
    for tau in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau must be"):
            gumbel_softmax(x, tau=tau, impl=impl)
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        gumbel_softmax(torch.ones(3, 4, dtype=torch.int64), impl=impl)
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        gumbel_softmax(torch.randn(3, 4, dtype=torch.complex64), impl=impl)
    with pytest.raises(IndexError, match="dim 2 is out of range"):
        gumbel_softmax(x, dim=2, impl=impl)
    with pytest.raises(ValueError, match="at least one dimension"):
        gumbel_softmax(torch.tensor(1.0), impl=impl)
    with pytest.raises(ValueError, match="impl must be"):
        gumbel_softmax(x, impl="fast")


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("hard", [False, True])
def test_non_finite_rows_become_nan_rows(impl, hard):
    """Documented: a row with NaN or +inf, or only -inf, comes out all NaN; other rows are normal."""
    if impl == "fused":
        need_fused("gumbel_softmax", "cpu")
    x = torch.randn(5, 40)
    x[1, 7] = float("nan")
    x[2, :] = float("-inf")
    x[3, 3] = float("inf")
    x[4, :20] = float("-inf")  # masked categories are fine
    y = sample(x, impl, hard=hard)
    for r in (1, 2, 3):
        assert torch.isnan(y[r]).all()
    for r in (0, 4):
        assert torch.isfinite(y[r]).all()
        torch.testing.assert_close(y[r].sum(), torch.tensor(1.0))
    assert (y[4, :20] == 0).all()


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_empty(impl):
    if impl == "fused":
        need_fused("gumbel_softmax", "cpu")
    for shape, dim in [((0,), 0), ((0, 5), -1), ((4, 0), -1), ((3, 0, 2), 1)]:
        x = torch.randn(shape, requires_grad=True)
        y = gumbel_softmax(x, dim=dim, impl=impl)
        assert y.shape == x.shape
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_fused_without_kernel_is_a_clear_error(monkeypatch):
    from gencore import _backend
    monkeypatch.setitem(_backend._kernels, ("gumbel_softmax", "cpu"), False)
    with pytest.raises(RuntimeError, match="impl='fused'"):
        gumbel_softmax(torch.randn(2, 3), impl="fused")


# -- the module -----------------------------------------------------------------------------------

def test_module_temperature_and_modes():
    layer = gencore.nn.GumbelSoftmax(tau=2.0, hard=True)
    x = torch.randn(4, 9)
    y = layer(x, generator=gen(0))
    assert torch.equal(y, gumbel_softmax(x, tau=2.0, hard=True, generator=gen(0)))
    layer.tau = 0.1
    assert layer.tau == pytest.approx(0.1) and "tau=0.1" in repr(layer)
    assert layer.state_dict()["_extra_state"] == {"tau": 0.1}  # a float: .half() keeps it exact
    assert layer.half().tau == 0.1 and layer.half().state_dict()["_extra_state"] == {"tau": 0.1}
    old = gencore.nn.GumbelSoftmax()  # a state dict from before: tau as a float64 buffer
    old.load_state_dict({"_tau": torch.tensor(0.25, dtype=torch.float64)})
    assert old.tau == 0.25
    layer.float()
    with pytest.raises(ValueError):
        layer.tau = 0
    layer.eval()
    assert torch.equal(layer(x), torch.nn.functional.one_hot(x.argmax(-1), 9).float())
    soft = gencore.nn.GumbelSoftmax(tau=0.5).eval()
    torch.testing.assert_close(soft(x), torch.softmax(x / 0.5, -1))
