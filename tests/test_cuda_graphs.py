"""Graph-safe RNG on CUDA (gencore/ops/rng.py): under CUDA-graph capture the Philox [seed, offset]
is drawn on the device by torch's graph-safe generator, so each replay of a captured graph draws
a fresh dropout mask, and the samples equal the CPU's for the [seed, offset] that replay used.
Needs a GPU: skipped elsewhere."""
import pytest
import torch

from gencore.ops.reference import attention_reference
from gencore.ops.rng import philox_seed_offset

from _helpers import need_fused

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_seed_offset_on_device_only_while_capturing():
    so = philox_seed_offset(None, torch.device("cuda"))
    assert so.device.type == "cpu"  # eager: the host draw, as before
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        dev = philox_seed_offset(None, torch.device("cuda"))
    assert dev.device.type == "cuda" and dev.dtype == torch.int64 and dev.shape == (2,)
    seen = set()
    for _ in range(3):
        g.replay()
        torch.cuda.synchronize()
        seen.add(tuple(dev.tolist()))
    assert len(seen) == 3, seen  # a fresh pair per replay


def test_attention_dropout_capture_and_replay():
    """Each replay: another keep-mask, and out equals the CPU reference run with that replay's
    [seed, offset] (the same Philox bits on every device)."""
    need_fused("attention", "cuda")
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 128, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    static = {}
    # warm up on a side stream, as torch.cuda.graph asks
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        so = torch.tensor([1, 2], dtype=torch.int64)
        torch.ops.gencore.attention(q, k, v, None, True, 0.125, -1, -1, 0.0, None, None, 0.3, so)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static["so"] = philox_seed_offset(None, q.device)
        static["out"] = torch.ops.gencore.attention(q, k, v, None, True, 0.125, -1, -1, 0.0, None, None,
                                                    0.3, static["so"])[0]
    outs = []
    for _ in range(2):
        g.replay()
        torch.cuda.synchronize()
        so = static["so"].cpu()
        want = attention_reference(q.cpu().float(), k.cpu().float(), v.cpu().float(), True, None, 0.125,
                                   dropout_p=0.3, seed_offset=so)[0]
        got = static["out"].cpu().float()
        torch.testing.assert_close(got, want, atol=3e-2, rtol=3e-2)
        outs.append(got.clone())
    assert not torch.equal(outs[0], outs[1])  # fresh noise per replay


def test_attention_function_under_capture():
    """gencore.ops.attention(dropout_p=...) itself draws on the device while capturing."""
    need_fused("attention", "cuda")
    from gencore.ops import attention
    q, k, v = (torch.randn(1, 2, 64, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    attention(q, k, v, causal=True, dropout_p=0.5, impl="fused")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = attention(q, k, v, causal=True, dropout_p=0.5, impl="fused")
    g.replay()
    a = out.clone()
    g.replay()
    assert not torch.equal(a, out)


def test_gumbel_softmax_capture_and_replay():
    """Each replay: fresh Gumbel noise, equal to the reference's for that replay's [seed, offset]."""
    need_fused("gumbel_softmax", "cuda")
    from gencore.ops import gumbel_softmax
    from gencore.ops.reference import gumbel_softmax_reference
    x = torch.randn(64, 100, device="cuda")
    gumbel_softmax(x, tau=0.5, hard=True, impl="fused")
    static = {}
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static["so"] = philox_seed_offset(None, x.device)
        static["y"] = torch.ops.gencore.gumbel_softmax(x, static["so"], 0.5, True, -1)[0]
    outs = []
    for _ in range(2):
        g.replay()
        torch.cuda.synchronize()
        so = static["so"].cpu()
        want = gumbel_softmax_reference(x.cpu(), so[0], so[1], 0.5, True, -1)
        assert torch.equal(static["y"].cpu(), want)  # hard one-hots: exactly the CPU's
        outs.append(static["y"].clone())
    assert not torch.equal(outs[0], outs[1])
