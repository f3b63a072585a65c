"""gencore.models.GPT: shapes, gradients, causality, KV-cache generation, sampling, impls,
a tiny overfit, bad arguments; LanguageModelTask; the gpt-text / gpt-code recipes."""
import math

import pytest
import torch

from gencore.models import GPT, GPTConfig

from _helpers import need_fused


def tiny(**kw):
    cfg = dict(vocab_size=23, block_size=16, n_layer=2, n_head=4, n_embd=32)
    cfg.update(kw)
    torch.manual_seed(cfg.pop("seed", 0))
    return GPT(GPTConfig(**cfg))


VARIANTS = {
    "learned-pos": dict(),
    "gqa-rotary": dict(n_kv_head=2, rotary=True),
    "mqa-bias-untied": dict(n_kv_head=1, bias=True, tie_weights=False),
    # The options the field adopted after GPT-2 (what the gpt-text recipe picks from).
    "rms-qknorm-swiglu-capped": dict(rotary=True, norm="rmsnorm", qk_norm=True, mlp="swiglu",
                                     logit_softcap=5.0, tie_weights=False),
    "relu2-rmsnorm": dict(mlp="relu2", norm="rmsnorm", n_kv_head=2),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_shapes_dtypes_and_loss(variant):
    m = tiny(**VARIANTS[variant])
    idx = torch.randint(0, 23, (3, 16))
    logits, loss = m(idx)
    assert logits.shape == (3, 16, 23) and logits.dtype == torch.float32 and loss is None
    logits, loss = m(idx, torch.randint(0, 23, (3, 16)))
    assert loss.shape == () and loss.dtype == torch.float32
    # Fresh GPT-2 init: near-uniform predictions, loss close to log(vocab).
    assert abs(float(loss.detach()) - math.log(23)) < 0.3
    logits1, _ = m(idx[:, :5])  # shorter sequences are fine
    assert logits1.shape == (3, 5, 23)


def test_weight_tying_and_num_params():
    tied, untied = tiny(), tiny(tie_weights=False)
    assert tied.head.weight is tied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 23 * 32
    assert tied.num_params(exclude_position_embedding=True) == tied.num_params() - 16 * 32
    assert tiny(rotary=True).pos_emb is None


def test_rmsnorm_matches_its_formula():
    m = tiny(norm="rmsnorm")
    norms = [m.ln_f] + [n for b in m.blocks for n in (b.ln_attn, b.ln_mlp)]
    assert all(isinstance(n, torch.nn.RMSNorm) for n in norms)
    norm = m.blocks[0].ln_attn
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 32))
    x = torch.randn(3, 5, 32, dtype=torch.float64) + 4.0  # a mean RMSNorm must not remove
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps) * norm.weight.double()
    torch.testing.assert_close(norm.double()(x), want)
    assert m.num_params() == tiny().num_params()  # no biases either way (bias=False)


@pytest.mark.parametrize("kind", ["gelu", "relu2", "swiglu"])
def test_mlp_kinds(kind):
    m = tiny(mlp=kind)
    mlp = m.blocks[0].mlp
    hidden = 4 * 32 if kind != "swiglu" else 86  # ceil(8/3 * 32): the params of the 4x MLP
    assert m.config.hidden == hidden and mlp.fc.weight.shape == (hidden, 32)
    assert mlp.proj.weight.shape == (32, hidden)
    assert (mlp.gate is None) == (kind != "swiglu")
    n_mlp = sum(p.numel() for p in mlp.parameters())
    assert abs(n_mlp - 2 * 32 * 128) <= 0.01 * 2 * 32 * 128
    x = torch.randn(2, 7, 32)
    h = mlp.fc(x)
    act = {"gelu": lambda: torch.nn.functional.gelu(h),
           "relu2": lambda: torch.relu(h) ** 2,
           "swiglu": lambda: torch.nn.functional.silu(h) * mlp.gate(x)}[kind]()
    torch.testing.assert_close(mlp(x), mlp.proj(act))
    assert tiny(mlp=kind, mlp_hidden=40).blocks[0].mlp.fc.weight.shape == (40, 32)


def test_logit_softcap_bounds_the_logits():
    capped, plain = tiny(logit_softcap=2.0), tiny()
    capped.load_state_dict(plain.state_dict())
    with torch.no_grad():
        plain.head.weight.mul_(20)  # the tied embedding too: large logits
        capped.head.weight.mul_(20)
    idx = torch.randint(0, 23, (2, 9))
    raw, _ = plain(idx)
    got, _ = capped(idx)
    assert raw.abs().max() > 4 and got.abs().max() <= 2.0
    torch.testing.assert_close(got, 2.0 * torch.tanh(raw / 2.0))
    tokens, logits = capped.generate(idx[:, :3], 4, temperature=0, return_logits=True)
    assert logits.abs().max() <= 2.0


def test_zero_init_proj_starts_every_block_as_the_identity():
    m = tiny(zero_init_proj=True, rotary=True)
    for b in m.blocks:
        assert not b.attn.out.weight.any() and not b.mlp.proj.weight.any()
        assert b.mlp.fc.weight.std() > 0.01
    idx = torch.randint(0, 23, (2, 9))
    logits, loss = m(idx, idx)
    torch.testing.assert_close(logits, m.head(m.ln_f(m.tok_emb(idx))))
    loss.backward()  # the projections still learn (their input is not zero)
    assert all(b.attn.out.weight.grad.abs().sum() > 0 for b in m.blocks)


def test_hidden_matrices_are_the_block_weights():
    for kw, per_block in ((dict(), 4), (dict(mlp="swiglu", tie_weights=False, qk_norm=True), 5)):
        m = tiny(**kw)
        mats = m.hidden_matrices()
        assert len(mats) == per_block * 2 and all(p.dim() == 2 for p in mats)
        ids = {id(p) for p in mats}
        assert id(m.tok_emb.weight) not in ids and id(m.head.weight) not in ids


def test_residual_projections_are_scaled():
    m = tiny(n_layer=8, n_embd=128, n_head=4).requires_grad_(False)
    std_out = torch.cat([b.attn.out.weight.flatten() for b in m.blocks]).std()
    std_fc = torch.cat([b.mlp.fc.weight.flatten() for b in m.blocks]).std()
    assert abs(float(std_fc) - 0.02) < 0.001
    assert abs(float(std_out) - 0.02 / math.sqrt(16)) < 0.0005


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_gradients_reach_every_parameter(variant):
    m = tiny(dropout=0.1, **VARIANTS[variant])
    idx = torch.randint(0, 23, (2, 16))
    _, loss = m(idx, idx.roll(-1, 1))
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_causal(variant):
    """Changing a token changes no logit before it."""
    m = tiny(**VARIANTS[variant]).eval()
    idx = torch.randint(0, 23, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 23
    a, _ = m(idx)
    b, _ = m(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_forward_with_cache_matches_full(variant):
    m = tiny(**VARIANTS[variant]).eval()
    idx = torch.randint(0, 23, (2, 14))
    full, _ = m(idx)
    cache = m.new_cache()
    parts = [m(idx[:, :5], cache=cache)[0], m(idx[:, 5:9], cache=cache)[0]]
    parts += [m(idx[:, t:t + 1], cache=cache)[0] for t in range(9, 14)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="longer than block_size"):
        m(idx[:, :3], cache=cache)  # 14 cached + 3 > 16


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_matches_uncached(variant, temperature):
    """Same logits and tokens with and without the KV cache, including past block_size (16):
    3 prompt tokens + 30 new ones cross the crop-and-refill point."""
    m = tiny(**VARIANTS[variant])
    prompt = torch.randint(0, 23, (2, 3))
    runs = [m.generate(prompt, 30, temperature=temperature, top_k=10, use_cache=c,
                       generator=torch.Generator().manual_seed(5), return_logits=True)
            for c in (True, False)]
    (tok_c, log_c), (tok_u, log_u) = runs
    assert tok_c.shape == (2, 33) and log_c.shape == (2, 30, 23)
    torch.testing.assert_close(log_c, log_u, atol=1e-4, rtol=1e-4)
    assert torch.equal(tok_c, tok_u)
    assert torch.equal(tok_c[:, :3], prompt)
    # The logits of the last token are those of a plain forward over the last block_size tokens.
    last, _ = m.eval()(tok_c[:, -17:-1])
    torch.testing.assert_close(log_c[:, -1], last[:, -1], atol=1e-4, rtol=1e-4)


def test_greedy_is_argmax_and_top_k_1_is_greedy():
    m = tiny()
    prompt = torch.randint(0, 23, (2, 4))
    greedy, logits = m.generate(prompt, 8, temperature=0, return_logits=True)
    assert torch.equal(greedy[:, 4:], logits.argmax(-1))
    top1 = m.generate(prompt, 8, temperature=1.5, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(top1, greedy)


def test_seeded_sampling_repeats_and_leaves_global_rng_alone():
    m = tiny()
    prompt = torch.zeros(2, 1, dtype=torch.long)
    state = torch.get_rng_state()
    a = m.generate(prompt, 40, generator=torch.Generator().manual_seed(3))
    b = m.generate(prompt, 40, generator=torch.Generator().manual_seed(3))
    c = m.generate(prompt, 40, generator=torch.Generator().manual_seed(4))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(9)
    d = m.generate(prompt, 40)
    torch.manual_seed(9)
    assert torch.equal(d, m.generate(prompt, 40))


def test_batched_prompts_are_independent():
    m = tiny(n_kv_head=2, rotary=True)
    prompts = torch.randint(0, 23, (3, 5))
    batched = m.generate(prompts, 20, temperature=0)
    for i in range(3):
        torch.testing.assert_close(m.generate(prompts[i:i + 1], 20, temperature=0), batched[i:i + 1])


def test_generate_restores_training_mode():
    m = tiny(dropout=0.2).train()
    m.generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert m.training
    m.eval().generate(torch.zeros(1, 1, dtype=torch.long), 3)
    assert not m.training


def test_generated_tensors_are_ordinary_tensors():
    # generate decodes under inference_mode; what it returns must still train (e.g. self-training
    # on samples) and take in-place ops
    m = tiny()
    seq, logits = m.generate(torch.zeros(2, 1, dtype=torch.long), 6, return_logits=True)
    assert not seq.is_inference() and not logits.is_inference()
    seq[:, 0] = 1
    _, loss = m(seq[:, :-1], seq[:, 1:])
    loss.backward()
    assert m.tok_emb.weight.grad is not None


def test_top_k_top_p_semantics():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    keep = lambda f: torch.isfinite(f).squeeze(0).tolist()  # noqa: E731
    assert keep(GPT.filter_logits(logits, top_k=2)) == [False, True, False, True]
    assert keep(GPT.filter_logits(logits, top_k=10)) == [True] * 4
    # Nucleus: 0.5 + 0.3 = 0.8 reaches 0.75; 0.5 alone does not.
    assert keep(GPT.filter_logits(logits, top_p=0.75)) == [False, True, False, True]
    assert keep(GPT.filter_logits(logits, top_p=0.4)) == [False, True, False, False]
    assert keep(GPT.filter_logits(logits, top_p=0.9)) == [False, True, True, True]
    assert keep(GPT.filter_logits(logits, top_p=1.0)) == [True] * 4
    assert keep(GPT.filter_logits(logits, top_k=3, top_p=0.75)) == [False, True, False, True]
    # Sampling only ever draws from the kept set.
    m = tiny()
    out = m.generate(torch.zeros(64, 1, dtype=torch.long), 1, top_k=3,
                     generator=torch.Generator().manual_seed(0), return_logits=True)
    tokens, first = out[0][:, 1], out[1][:, 0]
    allowed = first.topk(3, dim=-1).indices
    assert (allowed == tokens[:, None]).any(-1).all()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_fused_reference_sdpa_agree(variant):
    need_fused("attention", "cpu")
    models = {impl: tiny(impl=impl, **VARIANTS[variant]) for impl in ("fused", "reference", "sdpa")}
    idx = torch.randint(0, 23, (3, 16))
    out = {}
    for impl, m in models.items():
        logits, loss = m(idx, idx.roll(-1, 1))
        loss.backward()
        out[impl] = logits, {n: p.grad for n, p in m.named_parameters()}
    for impl in ("reference", "sdpa"):
        torch.testing.assert_close(out[impl][0], out["fused"][0], atol=1e-5, rtol=1e-5)
        for n, g in out["fused"][1].items():
            torch.testing.assert_close(out[impl][1][n], g, atol=1e-5, rtol=1e-4, msg=n)
    tokens = {impl: m.generate(idx[:, :4], 20, temperature=0) for impl, m in models.items()}
    assert torch.equal(tokens["sdpa"], tokens["fused"]) and torch.equal(tokens["reference"], tokens["fused"])


@pytest.mark.parametrize("variant", ["learned-pos", "gqa-rotary", "rms-qknorm-swiglu-capped"])
def test_tiny_overfit(variant):
    """A few dozen steps on four sequences: the loss must fall from ~log(23) = 3.1 to near 0."""
    m = tiny(**VARIANTS[variant])
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 23, (4, 17), generator=g)
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(60):
        _, loss = m(x, y)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 2.5 and float(loss.detach()) < 0.3, (first, float(loss.detach()))


def test_bad_config():
    base = dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
    bad = [
        (dict(vocab_size=0), "vocab_size must be a positive integer"),
        (dict(block_size=2.0), "block_size must be a positive integer"),
        (dict(n_embd=10, n_head=4), "multiple of n_head"),
        (dict(n_head=4, n_kv_head=3), "multiple of n_kv_head"),
        (dict(n_embd=6, n_head=2, rotary=True), "even head size"),
        (dict(dropout=1.0), "dropout must be in"),
        (dict(bias="no"), "bias must be True or False"),
        (dict(impl="flash"), "impl must be one of"),
        (dict(norm="batchnorm"), "norm must be one of"),
        (dict(mlp="relu"), "mlp must be one of"),
        (dict(mlp_hidden=0), "mlp_hidden must be a positive integer"),
        (dict(logit_softcap=0.0), "logit_softcap must be None or a number > 0"),
        (dict(logit_softcap=float("inf")), "logit_softcap must be None or a number > 0"),
        (dict(qk_norm=1), "qk_norm must be True or False"),
        (dict(zero_init_proj="yes"), "zero_init_proj must be True or False"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            GPTConfig(**{**base, **kw})
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT(base)


def test_bad_inputs():
    m = tiny()
    with pytest.raises(ValueError, match="batch, seq"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer token ids"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"outside \[0, 23\)"):
        m(torch.tensor([[1, 23]]))
    with pytest.raises(ValueError, match="longer than block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have"):
        m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="one KVCache per layer"):
        m(torch.zeros(1, 4, dtype=torch.long), cache=[])


def test_bad_generate_arguments():
    m = tiny()
    p = torch.zeros(1, 2, dtype=torch.long)
    bad = [
        (dict(top_p=0.0), "top_p must be None or in"),
        (dict(top_p=1.5), "top_p must be None or in"),
        (dict(top_k=0), "top_k must be None or an integer >= 1"),
        (dict(top_k=2.5), "top_k must be None or an integer >= 1"),
        (dict(temperature=-0.1), "temperature must be a finite number >= 0"),
        (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            m.generate(p, 3, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        m.generate(p, -1)
    with pytest.raises(ValueError, match="at least one token"):
        m.generate(torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="outside"):
        m.generate(torch.tensor([[-1]]), 3)
    assert m.generate(p, 0).shape == (1, 2)


# ---------------------------------------------------------------- LanguageModelTask and recipes

def test_lm_task_optimizer_groups_and_generate():
    from gencore.data import CharTokenizer
    from gencore.train.tasks import LanguageModelTask
    tok = CharTokenizer("abcdefgh\n ")
    m = tiny(vocab_size=tok.vocab_size, bias=True)
    task = LanguageModelTask(m, tok, val_text="abc defgh\nhgf edcba\n" * 10, eval_batch_size=4,
                             sample_tokens=12)
    (opt,) = task.configure_optimizers().values()
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params()
    state = torch.get_rng_state()
    text = task.generate(3)
    assert torch.equal(torch.get_rng_state(), state) and text == task.generate(3)
    assert len(text.split("\n\n")) >= 3
    assert task.generate(1, prompt="ab").startswith("ab")
    metrics = task.evaluate()
    assert metrics["eval_tokens"] == 4 * 16 * (len(task.val_text) // 16 // 4)
    assert math.isclose(metrics["bpc"], metrics["loss"] / math.log(2))
    assert math.isclose(metrics["perplexity"], math.exp(metrics["loss"]))


def test_lm_task_muon_groups():
    from gencore.data import CharTokenizer
    from gencore.train import Muon
    from gencore.train.tasks import LanguageModelTask
    tok = CharTokenizer("abcdefgh\n ")
    m = tiny(vocab_size=tok.vocab_size, tie_weights=False, mlp="swiglu")
    (opt,) = LanguageModelTask(m, tok, optimizer="muon", lr=2e-3).configure_optimizers().values()
    assert isinstance(opt, Muon)
    muon, adam_2d, adam_1d = opt.param_groups
    assert muon["muon"] and not adam_2d["muon"] and not adam_1d["muon"]
    assert {id(p) for p in muon["params"]} == {id(p) for p in m.hidden_matrices()}
    assert {id(p) for p in adam_2d["params"]} == {id(m.tok_emb.weight), id(m.head.weight),
                                                  id(m.pos_emb.weight)}
    assert adam_1d["weight_decay"] == 0.0 and all(p.dim() == 1 for p in adam_1d["params"])
    assert all(g["lr"] == 2e-3 for g in opt.param_groups)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == m.num_params()
    with pytest.raises(ValueError, match="optimizer must be one of"):
        LanguageModelTask(m, tok, optimizer="sgd")
    other = torch.nn.Linear(2, 2)
    other.config = m.config  # a language model without hidden_matrices()
    with pytest.raises(TypeError, match="hidden_matrices"):
        LanguageModelTask(other, tok, optimizer="muon")


@pytest.mark.parametrize("name,extra", [("gpt-text", {}), ("gpt-code", {"tokenizer": "byte", "rotary": True})])
def test_recipe_smoke(tmp_path, name, extra):
    from gencore.recipes import build_run
    from gencore.recipes.gpt import RECIPES
    from gencore.recipes import resolve_settings
    recipe = {r.name: r for r in RECIPES}[name]
    settings = resolve_settings(recipe, {**extra, "steps": 4, "batch_size": 4, "n_layer": 1,
                                         "n_embd": 32, "block_size": 16, "val_batches": 2,
                                         "eval_batches": 2, "sample_tokens": 16})
    assert settings.model.n_layer == 1 and settings.trainer.precision == "auto"
    plan, trainer = build_run(recipe, settings, out_dir=str(tmp_path), progress="none")
    summary = trainer.fit()
    assert summary["step"] == 4 and math.isfinite(summary["val"]["val_loss"])
    metrics = plan.task.evaluate()
    assert all(math.isfinite(v) for v in metrics.values())
    assert 0 < metrics["loss"] < 1.5 * math.log(plan.task.model.config.vocab_size)
    text = plan.task.generate(4)
    assert isinstance(text, str) and len(text) >= 4 * 4
    assert list((tmp_path / "checkpoints").glob("*.pt"))


@pytest.mark.parametrize("optimizer", ["muon", "muon_torch"])
def test_recipe_resume_is_exact(tmp_path, optimizer):
    """gpt-text stopped after 3 of 6 steps and resumed from its checkpoint ends with the weights
    of an uninterrupted run (optimizer state, data stream and RNG all restored); also with
    torch's Muon + fused AdamW, two optimizers stepped after the one backward."""
    from gencore.recipes import build_run, resolve_settings
    from gencore.recipes.gpt import RECIPES
    recipe = {r.name: r for r in RECIPES}["gpt-text"]
    config = resolve_settings(recipe, {
        "steps": 6, "batch_size": 4, "n_layer": 1, "n_embd": 32, "block_size": 16,
        "val_batches": 1, "eval_batches": 1, "sample_tokens": 8, "dropout": 0.1, "warmup_steps": 2,
        "optimizer": optimizer})

    def trainer(out, **kw):
        plan, t = build_run(recipe, config, out_dir=str(out), progress="none", ckpt_every=3, **kw)
        return t, plan.task

    full, full_task = trainer(tmp_path / "full")
    full.fit()
    part, _ = trainer(tmp_path / "part")
    part.fit(stop_after=3)
    resumed, resumed_task = trainer(tmp_path / "part", resume=True)
    resumed.fit()
    assert resumed.step == 6
    for (name, a), b in zip(full_task.model.state_dict().items(), resumed_task.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_torch_muon_skips_a_nonfinite_step_on_both_optimizers():
    """optimizer=muon_torch: a NaN loss skips the step of torch's Muon and of AdamW alike (read on
    the host: torch's Muon has no found_inf), and training goes on."""
    from gencore.recipes import build_run, get_recipe, resolve_settings
    recipe = get_recipe("gpt-text")
    settings = resolve_settings(recipe, {
        "optimizer": "muon_torch", "steps": 4, "batch_size": 4, "n_layer": 1, "n_embd": 32,
        "block_size": 16, "precision": "fp32", "val_every": "none", "sample_every": "none",
        "log_every": 2})
    plan, t = build_run(recipe, settings, "cpu", log=lambda m: None, out_dir=None, progress="none")
    t.setup()
    before = {k: v.clone() for k, v in t.modules["model"].state_dict().items()}
    step_fn = plan.task.training_step
    plan.task.training_step = lambda b, step: (
        {"loss": step_fn(b, step)["loss"] * float("nan")} if step == 0 else step_fn(b, step))
    t.fit(stop_after=1)
    assert t.nonfinite_skips == 1
    for k, v in t.modules["model"].state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not t.optimizers["muon"].state  # skipped on the host: never stepped
    assert all(float(st["step"]) == 0 for st in t.optimizers["adamw"].state.values())  # found_inf
    res = t.fit()
    assert res["step"] == 4 and all(torch.isfinite(p).all() for p in t.modules["model"].parameters())
