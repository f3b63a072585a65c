"""impl="auto"'s fast path for plain attention calls (gencore/ops/_attention.py, with its memo in
csrc/attention_fast_path.cpp, or the Python twin where no _C is built): it must give SDPA's
results, take only calls whose semantics are SDPA's, and leave everything else to the checked path."""
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from _helpers import OpsRun, auto_picks
from gencore import _backend
from gencore.ops import attention, auto

attention_mod = sys.modules["gencore.ops._attention"]


@pytest.fixture(params=["compiled", "python"])
def fast(request, monkeypatch):
    """The memo under test, wired in as the fast path (auto sends every case to SDPA)."""
    if request.param == "compiled":
        if _backend.load() is None:
            pytest.skip(f"no compiled core: {_backend.reason()}")
        memo = attention_mod._CompiledFastPath(_backend.load())
    else:
        memo = attention_mod._PythonFastPath()
    auto_picks(monkeypatch, lambda op, case: False)
    memo.clear()
    monkeypatch.setattr(attention_mod, "_FAST", memo)
    monkeypatch.setattr(attention_mod, "_fast_path", memo.call)
    yield memo
    memo.clear()


def _qkv(B=2, H=3, Sq=1, Sk=19, D=8, grad=False):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, H, s, D, generator=g).requires_grad_(grad) for s in (Sq, Sk, Sk)]


@pytest.mark.parametrize("causal,Sq", [(True, 1), (False, 1), (True, 19), (False, 7)])
def test_the_fast_path_gives_sdpas_result(fast, causal, Sq):
    q, k, v = _qkv(Sq=Sq)
    assert fast.call(q, k, v, causal) is None  # nothing known of this shape yet
    gold = F.scaled_dot_product_attention(q, k, v, is_causal=causal and Sq > 1)
    for _ in range(2):  # the first call asks auto, the second reads the memo
        with OpsRun() as ops:
            out = attention(q, k, v, causal=causal)
        torch.testing.assert_close(out, gold, rtol=0, atol=0)
        assert not ops.ran("gencore.attention"), ops.names
    assert torch.is_tensor(fast.call(q, k, v, causal))


def test_training_through_the_fast_path_gives_sdpas_gradients(fast):
    q, k, v = _qkv(Sq=19, grad=True)
    grads = []
    for fn in (lambda: attention(q, k, v, causal=True), lambda: attention(q, k, v, causal=True),
               lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)):
        out = fn()
        grads.append(torch.autograd.grad(out, (q, k, v), torch.ones_like(out)))
    for got in grads[:2]:
        for a, b in zip(got, grads[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # A training call and a no-grad call of one shape are different cases.
    with torch.no_grad():
        assert fast.call(q, k, v, True) is None


def test_auto_forgets_the_memo_with_its_decisions(fast, monkeypatch):
    q, k, v = _qkv()
    attention(q, k, v, causal=True)
    assert fast.call(q, k, v, True) is not None
    auto.clear()
    if isinstance(fast, attention_mod._CompiledFastPath):  # the registered memo
        assert fast.call(q, k, v, True) is None
    # The fused pick after the clear: the next call takes the checked path to gencore's kernel.
    if _backend.has_kernel("attention", "cpu"):
        auto_picks(monkeypatch, lambda op, case: True)
        fast.clear()
        with OpsRun() as ops:
            attention(q, k, v, causal=True)
        assert ops.ran("gencore.attention"), ops.names
        assert fast.call(q, k, v, True) is False


@pytest.mark.parametrize("bad,message", [
    (lambda q, k, v: (q, k, v[:, :, :3]), "k and v must have the same heads and length"),
    (lambda q, k, v: (q, k, v[:, :2]), "k and v must have the same heads and length"),
    (lambda q, k, v: (q, k, v.double()), "must share one dtype"),
    (lambda q, k, v: (q[..., :4], k, v), "head dim"),
])
def test_a_call_sdpa_would_not_check_gets_gencores_error(fast, bad, message):
    """SDPA on the CPU runs a v with fewer keys than k; the fast path must not hand it such a
    call, even for a shape whose verdict it holds."""
    q, k, v = _qkv()
    attention(q, k, v, causal=True)
    with pytest.raises((ValueError, TypeError), match=message):
        attention(*bad(q, k, v), causal=True)


class _Logged(torch.Tensor):
    seen: list = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen.append(getattr(func, "__name__", str(func)))
        return super().__torch_function__(func, types, args, kwargs or {})


class _Mode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_subclasses_and_torch_function_modes_see_the_call(fast):
    q, k, v = _qkv()
    gold = F.scaled_dot_product_attention(q, k, v)
    attention(q, k, v, causal=True)  # the verdict for this shape is known
    _Logged.seen.clear()
    out = attention(q.as_subclass(_Logged), k.as_subclass(_Logged), v.as_subclass(_Logged), causal=True)
    assert "scaled_dot_product_attention" in _Logged.seen
    torch.testing.assert_close(out.as_subclass(torch.Tensor), gold)
    with _Mode() as mode:
        out = attention(q, k, v, causal=True)
    assert "scaled_dot_product_attention" in mode.seen
    torch.testing.assert_close(out, gold)


def test_causal_must_be_a_bool_for_the_fast_path(fast):
    q, k, v = _qkv(Sq=19)
    gold = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention(q, k, v, causal=1), gold)
    assert fast.call(q, k, v, 1) is False
