"""torch.compile(fullgraph=True) over every op: no graph break, the eager results and gradients, and
no recompilation when the same shapes come back with new values (torch._dynamo's counters)."""
import pytest
import torch

from gencore.ops import attention, gan_loss, gumbel_softmax, varlen_attn

from _helpers import need_fused


def _compile_counts(fn, make_args, calls=3):
    """Runs the compiled fn and fn on `calls` fresh argument sets: ([(args, compiled result, eager
    result)], graphs compiled, recompile reasons)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=False)
    pairs = []
    for i in range(calls):
        args = make_args(i)
        torch.manual_seed(i)  # dropout's and Gumbel's seeds come from torch's default generator
        got = compiled(*args)
        torch.manual_seed(i)
        pairs.append((args, got, fn(*args)))
    return pairs, counters["stats"]["unique_graphs"], dict(counters["recompiles"])


def _leaves(*shapes, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_(True) for s in shapes]


OPS = {
    "attention dropout lse sinks": (
        lambda q, k, v, s: (lambda o, l: o.sum() + l.sum())(*attention(
            q, k, v, causal=True, dropout_p=0.2, sinks=s, return_lse=True, impl="fused")),
        lambda i: _leaves((2, 4, 24, 16), (2, 2, 24, 16), (2, 2, 24, 16), (4,), seed=i)),
    "varlen": (
        lambda q, k, v, cu: varlen_attn(q, k, v, cu, cu, 20, 20, window_size=(-1, 0), enable_gqa=True,
                                        impl="fused").sum(),
        lambda i: _leaves((40, 4, 16), (40, 2, 16), (40, 2, 16), seed=i)
        + [torch.tensor([0, 20 - i, 31, 40], dtype=torch.int32)]),
    "gumbel_softmax": (
        lambda x: (gumbel_softmax(x, tau=0.7, hard=True, impl="fused") * torch.arange(10.0)).sum(),
        lambda i: _leaves((8, 10), seed=i)),
    "gan_loss": (
        lambda r, f: gan_loss(r, f, "hinge", "discriminator", impl="fused"),
        lambda i: _leaves((64,), (64,), seed=i)),
}


@pytest.mark.parametrize("name", list(OPS))
def test_fullgraph_no_recompile(name):
    op = {"attention dropout lse sinks": "attention", "varlen": "attention"}.get(name, name)
    need_fused(op, "cpu")
    fn, make_args = OPS[name]
    pairs, graphs, recompiles = _compile_counts(fn, make_args)
    assert graphs == 1 and not recompiles, f"{name}: {graphs} graphs for one shape, recompiles {recompiles}"
    for args, got, want in pairs:
        torch.testing.assert_close(got, want)
        leaves = [a for a in args if a.requires_grad]
        for a, b in zip(torch.autograd.grad(got, leaves), torch.autograd.grad(want, leaves)):
            torch.testing.assert_close(a, b)
