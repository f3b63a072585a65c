"""gencore.ops.gan_loss (fused) against its reference, autograd, torch.library, bad input."""
import itertools

import pytest
import torch

from _helpers import ALL_DEVICES, need_fused
from gencore.nn import GANLoss
from gencore.ops import gan_loss
from gencore.ops.reference import gan_loss_reference
from gencore.ops.reference.gan_loss import FAKE_ONLY, KINDS, REDUCTIONS, ROLES

CASES = [(k, r, red) for k, r, red in itertools.product(KINDS, ROLES, REDUCTIONS)
         if not (k == "ragan" and red == "none")]


def _shapes(kind, reduction):
    """Real and fake shapes: different sizes where the kind allows it."""
    if kind == "rsgan" or reduction == "none":
        return (4, 1, 5, 7), (4, 1, 5, 7)
    return (67,), (4, 1, 3, 5)


def _run(fn, real, fake, upstream=None):
    real = None if real is None else real.detach().clone().requires_grad_(True)
    fake = fake.detach().clone().requires_grad_(True)
    loss = fn(real, fake)
    g = torch.ones_like(loss) if upstream is None else upstream
    loss.backward(g)
    return loss.detach(), None if real is None else real.grad, fake.grad


def _inputs(kind, reduction, device, dtype=torch.float32, scale=3.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    rs, fs = _shapes(kind, reduction)
    real = (torch.randn(rs, generator=gen) * scale).to(device=device, dtype=dtype)
    fake = (torch.randn(fs, generator=gen) * scale).to(device=device, dtype=dtype)
    return real, fake


def _assert_same(a, b, **tol):
    if a is None or b is None:
        assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        return
    torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role,reduction", CASES)
def test_matches_reference(kind, role, reduction, device):
    need_fused("gan_loss", device)
    real, fake = _inputs(kind, reduction, device)
    upstream = None
    if reduction == "none":
        upstream = torch.randn(fake.shape, generator=torch.Generator().manual_seed(1)).to(device)
    got = _run(lambda r, f: gan_loss(r, f, kind, role, reduction, impl="fused"), real, fake, upstream)
    want = _run(lambda r, f: gan_loss_reference(r, f, kind, role, reduction), real, fake, upstream)
    for g, w in zip(got, want):
        _assert_same(g, w, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind", ["bce", "hinge", "wasserstein"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_generator_without_real(kind, reduction, device):
    need_fused("gan_loss", device)
    fake = torch.randn(3, 1, 4, 4, device=device, requires_grad=True)
    loss = gan_loss(None, fake, kind, "generator", reduction, impl="fused")
    want = gan_loss_reference(None, fake, kind, "generator", reduction)
    torch.testing.assert_close(loss, want)
    (g,) = torch.autograd.grad(loss.sum(), fake)
    (w,) = torch.autograd.grad(want.sum(), fake)
    torch.testing.assert_close(g, w)
    # With real logits given, the loss ignores them and they get no gradient.
    real = torch.randn(9, device=device, requires_grad=True)
    loss2 = gan_loss(real, fake, kind, "generator", reduction, impl="fused")
    torch.testing.assert_close(loss2, loss)
    loss2.sum().backward()
    assert real.grad is None or real.grad.abs().max() == 0


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,role,reduction", [c for c in CASES if c[2] != "sum"])
def test_half_types(kind, role, reduction, dtype, device):
    need_fused("gan_loss", device)
    real, fake = _inputs(kind, reduction, device, dtype=dtype)
    got = _run(lambda r, f: gan_loss(r, f, kind, role, reduction, impl="fused"), real, fake)
    # Same rounded inputs, float32 math in the reference; outputs rounded to dtype once.
    want = _run(lambda r, f: gan_loss_reference(r.float(), f.float(), kind, role, reduction), real, fake)
    for g, w in zip(got, want):
        if g is None or w is None:
            continue
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w.to(dtype).float(), rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role,reduction", CASES)
def test_gradcheck_fp64(kind, role, reduction, device):
    need_fused("gan_loss", device)
    real, fake = _inputs(kind, reduction, device, dtype=torch.float64, seed=3)
    real.requires_grad_(True)
    fake.requires_grad_(True)
    if kind == "hinge":  # keep clear of the kinks at +-1
        with torch.no_grad():
            real += 0.05 * torch.sign(real - 1).where(torch.abs(real - 1) < 0.05, 0)
            fake += 0.05 * torch.sign(fake + 1).where(torch.abs(fake + 1) < 0.05, 0)
    fn = lambda r, f: gan_loss(r, f, kind, role, reduction, impl="fused")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (real, fake), eps=1e-6, atol=1e-7)


OPCHECK_CASES = [("bce", "discriminator", "mean"), ("hinge", "discriminator", "none"),
                 ("wasserstein", "generator", "sum"), ("rsgan", "generator", "mean"),
                 ("ragan", "discriminator", "sum"), ("ragan", "generator", "mean")]


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role,reduction", OPCHECK_CASES)
def test_opcheck(kind, role, reduction, device):
    need_fused("gan_loss", device)
    from gencore.ops._gan_loss import _KIND, _REDUCTION, _ROLE
    real, fake = _inputs(kind, reduction, device)
    real.requires_grad_(True)
    fake.requires_grad_(True)
    torch.library.opcheck(torch.ops.gencore.gan_loss.default,
                          (real, fake, _KIND[kind], _ROLE[role], _REDUCTION[reduction]))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_opcheck_fake_only(device):
    need_fused("gan_loss", device)
    fake = torch.randn(6, 1, 3, 3, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.gencore.gan_loss.default, (None, fake, 0, 1, 1))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torch_compile_fullgraph(device):
    need_fused("gan_loss", device)
    crit = GANLoss("ragan")

    def step(real, fake):
        return crit.discriminator(real, fake) + gan_loss(None, fake, "hinge", "generator")

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    real, fake = _inputs("ragan", "mean", device)
    got = _run(compiled, real, fake)
    want = _run(lambda r, f: crit.discriminator(r, f) + gan_loss_reference(None, f, "hinge", "generator"),
                real, fake)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role,reduction", [c for c in CASES if c[2] != "none"])
def test_extreme_logits(kind, role, reduction, device):
    need_fused("gan_loss", device)
    real = torch.tensor([1e4, -1e4, 50.0, -50.0, 0.0, 1e4], device=device)
    fake = torch.tensor([-1e4, 1e4, -50.0, 50.0, 0.0, 1e4], device=device)
    got = _run(lambda r, f: gan_loss(r, f, kind, role, reduction, impl="fused"), real, fake)
    want = _run(lambda r, f: gan_loss_reference(r.double(), f.double(), kind, role, reduction), real, fake)
    for g, w in zip(got, want):
        if g is None:
            continue
        assert torch.isfinite(g).all(), (g, w)
        torch.testing.assert_close(g, w.float(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_shape_errors(device):
    need_fused("gan_loss", device)
    r, f = torch.randn(8, device=device), torch.randn(6, device=device)
    with pytest.raises(ValueError, match="rsgan.*shapes must match"):
        gan_loss(r, f, "rsgan", "discriminator")
    with pytest.raises(ValueError, match="shapes must match"):
        gan_loss(r, f, "bce", "discriminator", "none")
    with pytest.raises(ValueError, match="not defined for kind 'ragan'"):
        gan_loss(r, r, "ragan", "discriminator", "none")
    # Different sizes are fine where the kind reduces each side on its own.
    for kind in ("bce", "hinge", "wasserstein", "ragan"):
        torch.testing.assert_close(gan_loss(r, f, kind, "discriminator"),
                                   gan_loss_reference(r, f, kind, "discriminator"))
    # The kernel checks too (clear errors from C++ when the op is called directly).
    with pytest.raises(RuntimeError, match="shapes must match"):
        torch.ops.gencore.gan_loss(r, f, 3, 0, 1)
    with pytest.raises(RuntimeError, match="needs real_logits"):
        torch.ops.gencore.gan_loss(None, f, 3, 1, 1)
    with pytest.raises(RuntimeError, match="unknown kind"):
        torch.ops.gencore.gan_loss(r, f, 7, 0, 1)
    with pytest.raises(RuntimeError, match="unknown reduction"):
        torch.ops.gencore.gan_loss(r, f, 0, 0, 5)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role", list(itertools.product(KINDS, ROLES)))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_inputs(kind, role, reduction, device):
    """Empty logits follow torch: a mean over nothing is NaN, a sum over nothing is 0."""
    need_fused("gan_loss", device)
    real = torch.empty(0, device=device)
    fake = torch.empty(0, 1, 4, 4, device=device)
    if kind == "rsgan":
        real = torch.empty(0, 1, 4, 4, device=device)
    got = _run(lambda r, f: gan_loss(r, f, kind, role, reduction, impl="fused"), real, fake)
    want = _run(lambda r, f: gan_loss_reference(r, f, kind, role, reduction), real, fake)
    torch.testing.assert_close(got[0], want[0], equal_nan=True)
    assert got[0].isnan().item() == (reduction == "mean")
    assert got[2].shape == fake.shape


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role", list(itertools.product(KINDS, ROLES)))
def test_nan_inputs_give_nan_loss(kind, role, device):
    """Documented behaviour: NaN logits are not an error; they make the loss NaN."""
    need_fused("gan_loss", device)
    real = torch.randn(10, device=device)
    fake = torch.randn(10, device=device)
    fake[3] = float("nan")
    if (kind, role) not in FAKE_ONLY:
        real[5] = float("nan")
    loss = gan_loss(real, fake, kind, role, impl="fused")
    assert loss.isnan().item()
    assert gan_loss_reference(real, fake, kind, role).isnan().item()


@pytest.mark.parametrize("kind,role", list(itertools.product(KINDS, ROLES)))
def test_deterministic_any_thread_count(kind, role):
    """CPU: bit-identical loss and gradients run after run, with 1 thread or several."""
    need_fused("gan_loss", "cpu")
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(300_001, generator=gen) * 4
    fake = torch.randn(300_001 if kind == "rsgan" else 250_007, generator=gen) * 4
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, max(2, old), max(2, old)):
            torch.set_num_threads(threads)
            outs.append(torch.ops.gencore.gan_loss(real, fake, KINDS.index(kind), ROLES.index(role), 1))
    finally:
        torch.set_num_threads(old)
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            assert torch.equal(a, b)
    want = gan_loss_reference(real.double(), fake.double(), kind, role)
    torch.testing.assert_close(outs[0][0].double(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("kind,role", list(itertools.product(KINDS, ROLES)))
def test_deterministic_cuda(kind, role):
    need_fused("gan_loss", "cuda")
    gen = torch.Generator().manual_seed(0)
    real = (torch.randn(3_000_001, generator=gen) * 4).cuda()
    fake = (torch.randn(3_000_001 if kind == "rsgan" else 2_500_007, generator=gen) * 4).cuda()
    outs = [torch.ops.gencore.gan_loss(real, fake, KINDS.index(kind), ROLES.index(role), 1)
            for _ in range(3)]
    for o in outs[1:]:
        for a, b in zip(o, outs[0]):
            assert torch.equal(a, b)
    cpu = torch.ops.gencore.gan_loss(real.cpu(), fake.cpu(), KINDS.index(kind), ROLES.index(role), 1)
    torch.testing.assert_close(outs[0][0].cpu(), cpu[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", ALL_DEVICES)
@pytest.mark.parametrize("kind,role,reduction", [("bce", "discriminator", "mean"),
                                                 ("hinge", "discriminator", "none"),
                                                 ("rsgan", "generator", "sum"),
                                                 ("ragan", "discriminator", "mean")])
def test_non_contiguous(kind, role, reduction, device):
    need_fused("gan_loss", device)
    base_r = torch.randn(6, 1, 10, 8, device=device)
    base_f = torch.randn(6, 1, 8, 10, device=device)
    real = base_r[:, :, ::2, :]              # strided
    fake = base_f[:, :, :, ::2].transpose(2, 3)  # transposed, same shape as real
    assert not real.is_contiguous() and not fake.is_contiguous()
    got = _run(lambda r, f: gan_loss(r, f, kind, role, reduction, impl="fused"), real, fake)
    want = _run(lambda r, f: gan_loss_reference(r, f, kind, role, reduction), real, fake)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_bad_dtype_and_device(device):
    need_fused("gan_loss", device)
    f = torch.randn(4, device=device)
    with pytest.raises(TypeError, match="float32, float64, bfloat16 or float16"):
        gan_loss(torch.ones(4, dtype=torch.int64, device=device), f, "bce", "discriminator")
    with pytest.raises(TypeError, match="same dtype"):
        gan_loss(f.double(), f, "bce", "discriminator")
    with pytest.raises(ValueError, match="same device"):
        gan_loss(torch.randn(4, device="meta"), f, "bce", "discriminator")
    with pytest.raises(ValueError, match="needs real_logits"):
        gan_loss(None, f, "ragan", "generator")
    with pytest.raises(TypeError, match="torch.Tensor"):
        gan_loss([1.0], f, "bce", "discriminator")
    with pytest.raises(ValueError, match="kind must be one of"):
        gan_loss(f, f, "lsgan", "discriminator")
    with pytest.raises(ValueError, match="role must be one of"):
        gan_loss(f, f, "bce", "critic")
    with pytest.raises(ValueError, match="reduction must be one of"):
        gan_loss(f, f, "bce", "discriminator", "max")
    with pytest.raises(ValueError, match="impl must be"):
        gan_loss(f, f, "bce", "discriminator", impl="fast")
    with pytest.raises(RuntimeError, match="float32, float64, bfloat16 or float16"):
        torch.ops.gencore.gan_loss(None, torch.ones(4, dtype=torch.int32, device=device), 0, 1, 1)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_double_backward_raises(device):
    need_fused("gan_loss", device)
    real = torch.randn(5, device=device, requires_grad=True)
    fake = torch.randn(5, device=device, requires_grad=True)
    loss = gan_loss(real, fake, "bce", "discriminator", impl="fused")
    gr, gf = torch.autograd.grad(loss, (real, fake), create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        (gr.sum() + gf.sum()).backward()


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_module_and_generator_gradient_flow(device):
    need_fused("gan_loss", device)
    crit = GANLoss("bce")
    real = torch.randn(8, device=device, requires_grad=True)
    fake = torch.randn(8, device=device, requires_grad=True)
    torch.testing.assert_close(crit.discriminator(real, fake),
                               gan_loss_reference(real, fake, "bce", "discriminator"))
    crit.generator(None, fake).backward()
    assert real.grad is None and fake.grad is not None
    assert "kind='bce'" in repr(crit)
    with pytest.raises(ValueError):
        GANLoss("nope")


def test_reference_impl_matches_fused_path_selection():
    real, fake = torch.randn(7), torch.randn(5)
    torch.testing.assert_close(gan_loss(real, fake, "hinge", "discriminator", impl="reference"),
                               gan_loss_reference(real, fake, "hinge", "discriminator"))


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_retain_graph_and_inplace_grad_edits(device):
    """The backward may hand out the saved gradients themselves (incoming gradient 1): a retained
    graph must still give the same gradients after the first ones were edited in place."""
    need_fused("gan_loss", device)
    real = torch.randn(33, device=device, requires_grad=True)
    fake = torch.randn(21, device=device, requires_grad=True)
    loss = gan_loss(real, fake, "bce", "discriminator", impl="fused")
    loss.backward(retain_graph=True)
    first_r, first_f = real.grad.clone(), fake.grad.clone()
    real.grad.mul_(0).add_(7)
    fake.grad = None
    loss.backward(retain_graph=True)
    torch.testing.assert_close(real.grad, first_r + 7)
    torch.testing.assert_close(fake.grad, first_f)
    (2 * loss).backward()
    torch.testing.assert_close(fake.grad, 3 * first_f)


def test_torch_compile_inductor_cpu():
    need_fused("gan_loss", "cpu")
    fn = torch.compile(lambda r, f: gan_loss(r, f, "hinge", "discriminator") * 2, fullgraph=True)
    real, fake = _inputs("hinge", "mean", "cpu")
    got = _run(fn, real, fake)
    want = _run(lambda r, f: gan_loss_reference(r, f, "hinge", "discriminator") * 2, real, fake)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=2e-5, atol=1e-6)
