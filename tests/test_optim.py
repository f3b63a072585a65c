"""gencore.train.Muon: Newton-Schulz orthogonalisation, the Muon and AdamW steps, a toy problem,
exact resume from its state_dict, bad arguments; native_bf16 / resolve_precision."""
import copy

import pytest
import torch

from gencore.train import Muon, native_bf16, orthogonalize, resolve_precision


@pytest.mark.parametrize("shape", [(16, 16), (12, 40), (40, 12), (3, 10, 24)])
def test_orthogonalize_sets_singular_values_near_one(shape):
    """g = U diag(s) V^T with s spread over two decades (a gradient's condition): the result
    keeps U and V and maps every s near 1."""
    g = torch.Generator().manual_seed(0)
    *batch, m, n = shape
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=torch.float64))[0]
    s = torch.logspace(0, -2, k, dtype=torch.float64) * 7.0
    g = u @ torch.diag_embed(s.expand(*batch, k)) @ v.mT
    o = orthogonalize(g, dtype=torch.float64)
    assert o.shape == (*batch, m, n) and o.dtype == torch.float64
    # The quintic's band: every singular value lands in about [0.7, 1.2] after 5 steps.
    sv = torch.linalg.svdvals(o)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv
    # ... with the singular vectors of g: U^T o V is diagonal.
    core = u.mT @ o @ v
    off = core - torch.diag_embed(torch.diagonal(core, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-6
    # One iteration is not enough to lift the smallest (0.07 before normalisation).
    assert torch.linalg.svdvals(orthogonalize(g, steps=1, dtype=torch.float64)).min() < 0.6
    # The default runs in bfloat16: the same map to within bf16's rounding.
    fast = orthogonalize(g)
    assert fast.dtype == torch.float64
    assert (fast - o).norm() < 0.05 * o.norm()


def test_orthogonalize_batched_equals_one_by_one():
    g = torch.randn(4, 12, 20)
    batched = orthogonalize(g)
    for i in range(4):
        torch.testing.assert_close(batched[i], orthogonalize(g[i]), atol=1e-6, rtol=1e-5)


def test_muon_step_matches_its_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8, 24))
    w0 = w.detach().clone()
    opt = Muon([{"params": [w], "muon": True}], lr=0.1, momentum=0.9, weight_decay=0.5,
               ns_dtype=torch.float32)
    grads = [torch.randn(8, 24) for _ in range(2)]
    buf = torch.zeros(8, 24)
    want = w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = 0.9 * buf + g
        want = want * (1 - 0.1 * 0.5) - 0.1 * 0.2 * 24 ** 0.5 * orthogonalize(g + 0.9 * buf,
                                                                             dtype=torch.float32)
    torch.testing.assert_close(w.detach(), want, atol=1e-6, rtol=1e-5)
    # The update's RMS is 0.2 * lr (RMS-matched to AdamW), whatever the gradient's scale.
    w.grad = 1000 * torch.randn(8, 24)
    opt.param_groups[0]["weight_decay"] = 0.0
    before = w.detach().clone()
    opt.step()
    rms = (w.detach() - before).pow(2).mean().sqrt()
    assert 0.7 * 0.02 < rms < 1.2 * 0.02


def test_non_muon_groups_are_adamw():
    """Groups with muon=False follow torch.optim.AdamW step for step (decoupled decay, bias
    correction per parameter)."""
    torch.manual_seed(1)
    a = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(7))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours = Muon([{"params": a}], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    ref = torch.optim.AdamW(b, lr=0.01, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
    for step in range(5):
        grads = [torch.randn_like(p) for p in a]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        if step == 1:  # a parameter without a gradient is skipped (its step count too)
            a[1].grad = b[1].grad = None
        ours.step()
        ref.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


def test_trains_a_toy_regression():
    """Fits y = x W* with a two-layer linear model (Muon) and a bias (AdamW): the loss falls by
    orders of magnitude."""
    g = torch.Generator().manual_seed(2)
    w_true = torch.randn(16, 16, generator=g) / 4
    x = torch.randn(256, 16, generator=g)
    y = x @ w_true + 0.5
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32, bias=False), torch.nn.Linear(32, 16))
    opt = Muon([{"params": [model[0].weight, model[1].weight], "muon": True},
                {"params": [model[1].bias]}], lr=0.05)
    first = None
    for step in range(300):
        for group in opt.param_groups:  # linear decay, as the recipes schedule it
            group["lr"] = 0.05 * (1 - step / 300)
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 1e-3 * first, (first, float(loss.detach()))


def test_state_dict_resume_is_exact():
    torch.manual_seed(4)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Linear(10, 6))
    def make(m):
        return Muon([{"params": [m[0].weight, m[1].weight], "muon": True},
                     {"params": [m[0].bias, m[1].bias], "weight_decay": 0.0}], lr=0.02,
                    weight_decay=0.1)
    x = torch.randn(20, 6)
    def train(m, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    full = copy.deepcopy(model)
    opt_full = make(full)
    train(full, opt_full, 6)
    opt = make(model)
    train(model, opt, 3)
    state = copy.deepcopy((model.state_dict(), opt.state_dict()))
    resumed = copy.deepcopy(model)
    resumed.load_state_dict(state[0])
    opt_resumed = make(resumed)
    opt_resumed.load_state_dict(state[1])
    train(resumed, opt_resumed, 3)
    for (name, p), q in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


def test_bad_arguments():
    w = torch.nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="lr must be > 0"):
        Muon([w], lr=0.0)
    with pytest.raises(ValueError, match="momentum and betas"):
        Muon([w], momentum=1.0)
    with pytest.raises(ValueError, match="ns_steps"):
        Muon([w], ns_steps=0)
    with pytest.raises(ValueError, match="only 2-D parameters"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}])


def test_ns_dtype_follows_the_device():
    """Newton-Schulz runs in bf16 where the device has native bf16, else in float32: both give
    the same update to within bf16's rounding."""
    g = torch.randn(16, 40, generator=torch.Generator().manual_seed(5))
    updates = {}
    for dtype in (torch.float32, torch.bfloat16, None):
        w = torch.nn.Parameter(torch.zeros(16, 40))
        w.grad = g.clone()
        Muon([{"params": [w], "muon": True}], lr=1.0, ns_dtype=dtype).step()
        updates[dtype] = w.detach().clone()
    auto = torch.bfloat16 if native_bf16("cpu") else torch.float32
    assert torch.equal(updates[None], updates[auto])
    diff = updates[torch.bfloat16] - updates[torch.float32]
    assert 0 < diff.norm() < 0.05 * updates[torch.float32].norm()


def test_resolve_precision():
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if native_bf16("cpu") else "fp32")
    assert resolve_precision("auto", "meta") == "fp32"
    if torch.cuda.is_available():
        assert resolve_precision("auto", "cuda") == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
