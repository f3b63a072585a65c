"""gencore.tolerance: the 2x rule's rounding slack scales with the reduction, and still fails errors."""
import math

import torch

from gencore.ops.reference.gan_loss import loss_terms
from gencore.tolerance import accumulation_eps, attention_l1, loss_l1, within_2x
from test_attention import make, probs, ref, run


def _attention_case(S, D, dtype=torch.float32):
    q, k, v, dout = make(1, 2, 1, S, S, D, dtype, "cpu")
    exact = run(ref, *(t.double() for t in (q, k, v, dout)), causal=True)
    base = run(ref, q, k, v, dout, causal=True)
    qd, kd, vd, dd = (t.double() for t in (q, k, v, dout))
    l1 = attention_l1(qd, kd, vd, dd, probs(qd, kd, causal=True), 1 / math.sqrt(D))
    return exact, base, l1


def test_one_key_residue_passes_and_scales_with_head_dim():
    # One key: the reference's dk is exactly 0; a kernel's rounding residue (1.1e-6 measured on
    # AVX2 at D=256) must pass, and the slack must grow with D.
    exact, base, l1 = _attention_case(1, 256)
    assert exact[2].abs().max() == 0 and base[2].abs().max() == 0
    # The residue's shape: a rounding of dS (one scalar per key here) times q.
    q = make(1, 2, 1, 1, 1, 256, torch.float32, "cpu")[0].double()
    q = q.abs().sum(1, keepdim=True)  # both query heads read the one kv head
    residue = 1.14e-6 * q / q.max()
    assert within_2x(exact[2], base[2], residue.float(), l1["dk"]).passed
    _, _, l1_small = _attention_case(1, 16)
    assert l1["dk"].mean() > 2 * l1_small["dk"].mean()  # ~ sqrt(D): the dots grow as D, scale as 1/sqrt(D)


def test_real_errors_fail():
    exact, base, l1 = _attention_case(37, 64)
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        good = run(ref, *(t for t in make(1, 2, 1, 37, 37, 64, torch.float32, "cpu")), causal=True)[i]
        assert within_2x(exact[i], base[i], good, l1[name]).passed, name
        # An error of 1e-4 (a dropped term, a wrong scale) is far above float32 rounding here.
        assert not within_2x(exact[i], base[i], good + 1e-4, l1[name]).passed, name
    # A NaN never passes.
    bad = base[0].clone()
    bad[0, 0, 0, 0] = float("nan")
    assert not within_2x(exact[0], base[0], bad, l1["out"]).passed


def test_accumulation_eps():
    assert accumulation_eps(torch.bfloat16) == torch.finfo(torch.float32).eps
    assert accumulation_eps(torch.float64) == torch.finfo(torch.float64).eps


def _lanes_mean(t: torch.Tensor, lanes: int) -> torch.Tensor:
    """The fused gan_loss's order for a mean: `lanes` running sums, folded by halves, / n."""
    flat = torch.cat([t.reshape(-1), t.new_zeros(-t.numel() % lanes)]).reshape(-1, lanes)
    acc = t.new_zeros(lanes)
    for row in flat:
        acc = acc + row
    while acc.numel() > 1:
        acc = acc[: acc.numel() // 2] + acc[acc.numel() // 2:]
    return acc[0] / t.numel()


def test_a_cancelling_sum_is_sized_by_its_terms():
    # gencore check's float64 wasserstein generator mean (issue 31): -fake over 60 logits is 0.0311
    # while sum |t| / n is 2.02. Two summation orders of the same terms, 4 lanes (AVX2's kernel;
    # torch's mean lands on the same bits on Zen 4) and 8 (AVX-512's), land 3.1e-17 apart; sized by
    # |loss| the slack allowed 1.4e-17, sized by the terms it passes, and an error of 1e-6
    # relative still fails by orders of magnitude. Pure float64 adds: the same on every ISA.
    fake = (torch.randn((4, 1, 3, 5), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
            * 3).requires_grad_(True)
    four, eight = _lanes_mean(-fake.detach(), 4), _lanes_mean(-fake.detach(), 8)
    assert 0 < (four - eight).abs() < 1e-16
    assert not within_2x(four, four, eight).passed
    l1 = loss_l1(loss_terms(None, fake, "wasserstein", "generator"), [fake], "mean")
    assert l1 > 60 * four.abs()
    assert within_2x(four, four, eight, l1).passed
    assert not within_2x(four, four, eight * (1 + 1e-6), l1).passed


def test_loss_l1_reductions():
    # "none": element by element (|t_r| + |t_f| and their arguments' roundings); "sum" the total;
    # "mean" each side over its own count.
    g = torch.Generator().manual_seed(0)
    r, f = (torch.randn(5, 7, generator=g, dtype=torch.float64).requires_grad_(True) for _ in range(2))
    terms = loss_terms(r, f, "hinge", "discriminator")
    none = loss_l1(terms, [r, f], "none")
    assert none.shape == (5, 7) and (none >= sum(t.detach().abs() for t in terms)).all()
    total = loss_l1(loss_terms(r, f, "hinge", "discriminator"), [r, f], "sum")
    torch.testing.assert_close(total, none.sum())
    mean = loss_l1(loss_terms(r, f, "hinge", "discriminator"), [r, f], "mean")
    torch.testing.assert_close(mean, none.sum() / 35)
