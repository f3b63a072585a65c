"""The one-import swap for scripts that call torch directly (README, "Transformers models").

tests/_nanogpt_style.py is written against torch (`from torch.nn.functional import
scaled_dot_product_attention`, `... import gumbel_softmax`); here it is loaded again with those
lines importing from gencore.ops instead, nothing else changed.
"""
import pathlib
import types

import pytest
import torch

import gencore.ops

SOURCE = pathlib.Path(__file__).with_name("_nanogpt_style.py").read_text()
TORCH_SDPA = "from torch.nn.functional import scaled_dot_product_attention\n"
TORCH_GUMBEL = "from torch.nn.functional import gumbel_softmax\n"


def _load(sdpa=False, gumbel=False):
    src = SOURCE
    if sdpa:
        src = src.replace(TORCH_SDPA, "from gencore.ops import scaled_dot_product_attention\n")
    if gumbel:
        src = src.replace(TORCH_GUMBEL, "from gencore.ops import gumbel_softmax\n")
    mod = types.ModuleType(f"nanogpt_style_{int(sdpa)}{int(gumbel)}")
    exec(compile(src, "_nanogpt_style.py", "exec"), mod.__dict__)
    return mod


needs_sdpa = pytest.mark.skipif(
    not hasattr(gencore.ops, "scaled_dot_product_attention"),
    reason="gencore.ops.scaled_dot_product_attention (torch's signature) arrives with issue 20")


def _train(model, steps=10, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x = torch.randint(0, 64, (4, 32), generator=g)
        _, loss = model(x[:, :-1].contiguous(), x[:, 1:].contiguous())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


def test_source_imports_what_the_swap_replaces():
    assert TORCH_SDPA in SOURCE and TORCH_GUMBEL in SOURCE


@needs_sdpa
def test_attention_swap_trains_like_torch():
    torch.manual_seed(0)
    ref = _load().TinyGPT()
    ours = _load(sdpa=True).TinyGPT()
    ours.load_state_dict(ref.state_dict())
    a, b = _train(ref), _train(ours)
    assert (a - b).abs().max().item() < 2e-4, (a, b)


@needs_sdpa
def test_attention_swap_dropout_repeats_under_a_seed():
    torch.manual_seed(0)
    model = _load(sdpa=True).TinyGPT(dropout=0.1)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    first = _train(model, steps=3, seed=5)
    model.load_state_dict(init)
    assert torch.equal(first, _train(model, steps=3, seed=5))


def test_gumbel_swap():
    """gencore.ops.gumbel_softmax under F.gumbel_softmax's keywords: one-hot samples,
    straight-through gradients, repeatable under torch.manual_seed, generator= on top."""
    torch.manual_seed(0)
    mod = _load(gumbel=True)
    model = mod.TinyGPT()
    idx = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(2))
    torch.manual_seed(7)
    embeds, y = model.relaxed_continuation(idx)
    assert torch.equal(y.sum(-1), torch.ones(3)) and set(y.unique().tolist()) <= {0.0, 1.0}
    _, loss = model(embeds=embeds[:, :-1], targets=torch.cat([idx[:, 1:], y.argmax(-1, keepdim=True)], 1))
    loss.backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
    torch.manual_seed(7)
    assert torch.equal(model.relaxed_continuation(idx)[1], y)          # same seed, same samples
    logits = torch.randn(5, 10)
    a = mod.gumbel_softmax(logits, tau=0.7, hard=False, eps=1e-10, dim=-1,
                           generator=torch.Generator().manual_seed(3))
    b = mod.gumbel_softmax(logits, tau=0.7, hard=False, eps=1e-10, dim=-1,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.allclose(a.sum(-1), torch.ones(5))
    with pytest.raises(TypeError, match="eps= by name"):
        mod.gumbel_softmax(logits, 0.7, False, 1e-10)                    # F's positional eps
