"""gencore.tolerance: the 2x rule's rounding slack scales with the reduction, and still fails errors."""
import math

import torch

from gencore.tolerance import accumulation_eps, attention_l1, within_2x
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
