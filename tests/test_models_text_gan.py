"""Tests of the RelGAN family: oracle LSTM, text generator, CNN discriminator, temperature
schedules, TextGANTask and the textgan-oracle recipe."""
import itertools
import math
import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("GENCORE_REQUIRE_C", "1")
torch.set_num_threads(1)

from gencore.models import CNNDiscriminator, OracleLSTM, TemperatureSchedule, TextGenerator  # noqa: E402
from gencore.models.text_gan import SCHEDULES, sample_categorical  # noqa: E402
from gencore.recipes.textgan import RECIPES  # noqa: E402
from _recipe_run import train_recipe_briefly  # noqa: E402
from gencore.train.tasks import TextGANTask  # noqa: E402

V, L = 40, 6  # a small vocabulary and length keep the tests fast


def small_task(impl="auto", loss="rsgan", d_steps=1, seed=0, total=10, mle=5):
    oracle = OracleLSTM(V, 8, 8, L, seed=3)
    torch.manual_seed(seed)
    gen = TextGenerator(V, 8, 8, L, impl=impl)
    disc = CNNDiscriminator(V, L, 16, (2, 3), 8, dropout=0.0)
    return TextGANTask(oracle, gen, disc, total_steps=total, mle_steps=mle, loss=loss,
                       beta_max=10.0, d_steps=d_steps, impl=impl, eval_samples=64,
                       test_data=oracle.sample(32, torch.Generator().manual_seed(1)))


def bare_step(task):
    """optimizer_step without a Trainer: zero_grad, backward, step; records the gradients."""
    opts = task.configure_optimizers()
    grads = {}

    def optimizer_step(name, loss):
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        grads[name] = {id(p): (p.grad.clone() if p.grad is not None else None)
                       for g in opts[name].param_groups for p in g["params"]}
        opts[name].step()
    return optimizer_step, grads


# -- oracle -----------------------------------------------------------------------------------

def test_oracle_is_deterministic_from_its_seed():
    a, b, c = OracleLSTM(50, 8, 8, 5, seed=7), OracleLSTM(50, 8, 8, 5, seed=7), OracleLSTM(50, 8, 8, 5, seed=8)
    for pa, pb, pc in zip(a.parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb) and not torch.equal(pa, pc)
        assert not pa.requires_grad
    x = a.sample(16, torch.Generator().manual_seed(0))
    assert x.shape == (16, 5) and x.dtype == torch.int64 and 0 <= x.min() and x.max() < 50
    assert torch.equal(x, b.sample(16, torch.Generator().manual_seed(0)))
    # all weights N(0, 1): the big output layer's empirical std is close to 1
    assert abs(float(a.out.weight.std()) - 1) < 0.15


def _hand_nll(oracle, seq):
    """-log p(seq) / len: the LSTM equations written out (gate order i, f, g, o as in nn.LSTM)."""
    W_ih, W_hh = oracle.lstm.weight_ih_l0.double(), oracle.lstm.weight_hh_l0.double()
    b = (oracle.lstm.bias_ih_l0 + oracle.lstm.bias_hh_l0).double()
    H = oracle.hidden_dim
    h, c, prev, total = torch.zeros(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64), \
        oracle.start_token, 0.0
    for tok in seq:
        z = W_ih @ oracle.embedding.weight[prev].double() + W_hh @ h + b
        i, f, g, o = torch.sigmoid(z[:H]), torch.sigmoid(z[H:2 * H]), torch.tanh(z[2 * H:3 * H]), \
            torch.sigmoid(z[3 * H:])
        c = f * c + i * g
        h = o * torch.tanh(c)
        logits = oracle.out.weight.double() @ h + oracle.out.bias.double()
        total -= float(torch.log_softmax(logits, 0)[tok])
        prev = tok
    return total / len(seq)


def test_oracle_nll_matches_hand_computation_and_normalizes():
    oracle = OracleLSTM(5, 3, 4, 3, seed=1)
    seqs = torch.tensor(list(itertools.product(range(5), repeat=3)))
    nll = oracle.nll(seqs).double()
    for k in (0, 17, 124):
        assert nll[k].item() == pytest.approx(_hand_nll(oracle, seqs[k].tolist()), abs=1e-4)
    # per-token convention: the probabilities of all 5^3 sequences, exp(-3 * nll), sum to 1
    assert float(torch.exp(-3 * nll).sum()) == pytest.approx(1.0, abs=1e-4)
    # entropy(): Monte-Carlo estimate of the exact per-token entropy
    p = torch.exp(-3 * nll)
    exact = float(-(p * p.log()).sum()) / 3
    assert oracle.entropy(20_000) == pytest.approx(exact, abs=0.03)


def test_sample_categorical_follows_softmax():
    logits = torch.tensor([[0.0, 1.0, -2.0, 2.0, -50.0]]).repeat(40_000, 1)
    x = sample_categorical(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(x, minlength=5).double() / x.numel()
    assert torch.allclose(freq, F.softmax(logits[0].double(), 0), atol=0.01)
    assert freq[4] == 0


# -- generator --------------------------------------------------------------------------------

def test_generator_shapes_dtypes_and_seeded_sampling():
    gen = TextGenerator(V, 8, 8, L)
    x = gen.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, L) and x.dtype == torch.int64
    assert torch.equal(x, gen.sample(5, torch.Generator().manual_seed(0)))
    assert gen(x).shape == (5, L, V) and gen.nll(x).shape == (5,)
    soft, hard = gen.gumbel_sample(5, 0.5, torch.Generator().manual_seed(2))
    assert soft.shape == (5, L, V) and soft.dtype == torch.float32 and hard.shape == (5, L)
    assert torch.allclose(soft.sum(-1), torch.ones(5, L), atol=1e-5)
    assert torch.equal(soft.argmax(-1), hard)
    soft2, hard2 = gen.gumbel_sample(5, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(soft, soft2) and torch.equal(hard, hard2)


def test_mle_overfits_a_handful_of_sequences():
    torch.manual_seed(0)
    gen = TextGenerator(V, 16, 32, L)
    data = torch.randint(V, (4, L))
    opt = torch.optim.Adam(gen.parameters(), 1e-2)
    first = float(gen.mle_loss(data).detach())
    for _ in range(80):
        opt.zero_grad()
        loss = gen.mle_loss(data)
        loss.backward()
        opt.step()
    assert first > 3.0 and float(loss.detach()) < 0.5 * first - 1.0, (first, float(loss.detach()))


def test_mle_gradients_reach_every_generator_parameter():
    gen = TextGenerator(V, 8, 8, L)
    gen.mle_loss(torch.randint(V, (4, L))).backward()
    for name, p in gen.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("loss", ["rsgan", "bce", "hinge", "wasserstein", "ragan"])
def test_generator_gets_gradients_through_gumbel_softmax(loss):
    task = small_task(loss=loss)
    optimizer_step, grads = bare_step(task)
    task.adversarial_step(OracleLSTM(V, 8, 8, L, seed=3).sample(8), optimizer_step)
    for name, p in task.G.named_parameters():
        g = grads["g"][id(p)]
        assert g is not None and g.abs().sum() > 0, f"{name} got no gradient from the D loss"
    for name, p in task.D.named_parameters():
        if name == "head.bias" and loss != "bce":
            continue  # rsgan/ragan/wasserstein (and hinge inside its margin) see real - fake only
        g = grads["d"][id(p)]
        assert g is not None and g.abs().sum() > 0, name
    assert all(p.requires_grad for p in task.D.parameters())  # unfrozen after the G step


# -- discriminator ----------------------------------------------------------------------------

def test_discriminator_token_ids_equal_one_hots():
    disc = CNNDiscriminator(V, L, 16, (2, 3, 4), 8).eval()
    x = torch.randint(V, (6, L))
    out = disc(x)
    assert out.shape == (6,)
    assert torch.allclose(out, disc(F.one_hot(x, V).float()), atol=1e-5)


def test_discriminator_multiple_representations():
    """num_rep slices of the embedding, each judged separately by the shared convolutions: one
    logit per sequence and slice; a slice's logit depends on its own embedding columns only."""
    torch.manual_seed(0)
    disc = CNNDiscriminator(V, L, 12, (2, 3), 8, dropout=0.0, num_rep=4)
    x = torch.randint(V, (5, L))
    out = disc(x)
    assert out.shape == (5, 4)
    assert torch.allclose(out, disc(F.one_hot(x, V).float()), atol=1e-5)
    with torch.no_grad():
        disc.embedding[:, 3:6] += 1.0  # slice 1 of 4 (3 columns each)
    moved = (disc(x) - out).abs().amax(0)
    assert moved[1] > 1e-3 and moved[[0, 2, 3]].max() == 0
    # every slice equals the single-representation network run on that slice alone
    single = CNNDiscriminator(V, L, 3, (2, 3), 8, dropout=0.0)
    single.load_state_dict({**{k: v for k, v in disc.state_dict().items() if k != "embedding"},
                            "embedding": disc.embedding.detach()[:, 6:9]})
    assert torch.allclose(single(x), disc(x)[:, 2], atol=1e-6)
    disc(F.one_hot(x, V).float().requires_grad_()).sum().backward()
    for name, p in disc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_discriminator_learns_to_separate():
    torch.manual_seed(0)
    oracle = OracleLSTM(V, 8, 8, L, seed=3)  # entropy ~3.2 nats/token vs 3.7 for uniform tokens
    disc = CNNDiscriminator(V, L, 16, (2, 3), 16)
    opt = torch.optim.Adam(disc.parameters(), 1e-2)
    g = torch.Generator().manual_seed(0)
    test_real, test_fake = oracle.sample(400, g), torch.randint(V, (400, L), generator=g)

    def accuracy():
        disc.eval()
        with torch.no_grad():
            acc = ((disc(test_real) > 0).float().mean() + (disc(test_fake) < 0).float().mean()) / 2
        disc.train()
        return float(acc)

    before = accuracy()
    for _ in range(60):
        real, fake = oracle.sample(32, g), torch.randint(V, (32, L), generator=g)
        loss = F.binary_cross_entropy_with_logits(disc(real), torch.ones(32)) + \
            F.binary_cross_entropy_with_logits(disc(fake), torch.zeros(32))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < 0.6 and after > 0.72, (before, after)


# -- schedules --------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", SCHEDULES)
def test_temperature_schedules(kind):
    s = TemperatureSchedule(100.0, kind, horizon=50)
    betas = [s.beta_at(i) for i in range(0, 60)]
    assert betas[0] == pytest.approx(100.0 if kind == "no" else 1.0)
    assert betas[50] == pytest.approx(100.0) and betas[59] == pytest.approx(100.0)
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))
    if kind != "no":
        assert betas[10] < betas[40] < 100.0
    for _ in range(20):
        s.step()
    assert s.beta == betas[20] and s.tau == pytest.approx(1 / betas[20])
    t = TemperatureSchedule(100.0, kind, horizon=50)
    t.load_state_dict(s.state_dict())
    assert t.beta == s.beta


def test_lin_and_exp_values():
    assert TemperatureSchedule(9.0, "lin", 4).beta_at(2) == pytest.approx(5.0)
    assert TemperatureSchedule(9.0, "exp", 4).beta_at(2) == pytest.approx(3.0)


# -- fused == reference -----------------------------------------------------------------------

def test_fused_equals_reference():
    out = {}
    for impl in ("fused", "reference"):
        task = small_task(impl=impl)
        gen_rng = torch.Generator().manual_seed(5)
        soft, hard = task.G.gumbel_sample(8, 0.3, gen_rng)
        optimizer_step, grads = bare_step(task)
        torch.manual_seed(11)
        losses = task.adversarial_step(OracleLSTM(V, 8, 8, L, seed=3).sample(8), optimizer_step)
        out[impl] = (soft, hard, losses, [p.detach().clone() for p in task.G.parameters()])
    (sf, hf, lf, pf), (sr, hr, lr, pr) = out["fused"], out["reference"]
    assert torch.equal(hf, hr)
    assert torch.allclose(sf, sr, atol=1e-5)
    for k in lf:
        assert float(lf[k]) == pytest.approx(float(lr[k]), rel=1e-4, abs=1e-5), k
    for a, b in zip(pf, pr):
        assert torch.allclose(a, b, atol=1e-5)


# -- bad arguments ----------------------------------------------------------------------------

def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="vocab_size"):
        OracleLSTM(0)
    with pytest.raises(ValueError, match="seed"):
        OracleLSTM(seed=-1)
    with pytest.raises(ValueError, match="impl"):
        TextGenerator(impl="cuda")
    with pytest.raises(ValueError, match="start_token"):
        TextGenerator(10, start_token=10)
    with pytest.raises(ValueError, match="filter_widths"):
        CNNDiscriminator(10, 4, filter_widths=(5,))
    with pytest.raises(ValueError, match="dropout"):
        CNNDiscriminator(10, 4, filter_widths=(2,), dropout=1.0)
    with pytest.raises(ValueError, match="multiple of num_rep"):
        CNNDiscriminator(10, 4, 6, filter_widths=(2,), num_rep=4)
    with pytest.raises(ValueError, match="num_rep"):
        CNNDiscriminator(10, 4, filter_widths=(2,), num_rep=0)
    with pytest.raises(ValueError, match="one-hot"):
        CNNDiscriminator(10, 4, filter_widths=(2,))(torch.zeros(2, 4, 9))
    with pytest.raises(ValueError, match="schedule"):
        TemperatureSchedule(10.0, "cosine", 5)
    with pytest.raises(ValueError, match="beta_max"):
        TemperatureSchedule(0.5, "lin", 5)
    with pytest.raises(ValueError, match="horizon"):
        TemperatureSchedule(5.0, "lin", 0)
    with pytest.raises(ValueError, match="loss"):
        small_task(loss="lsgan")
    with pytest.raises(ValueError, match="mle_steps"):
        small_task(total=5, mle=6)
    with pytest.raises(ValueError, match="d_steps"):
        small_task(d_steps=0)
    with pytest.raises(ValueError, match="share"):
        TextGANTask(OracleLSTM(V, 8, 8, L), TextGenerator(V + 1, 8, 8, L),
                    CNNDiscriminator(V, L), 10, 5)


# -- task and recipe --------------------------------------------------------------------------

TINY = {"steps": 6, "mle_steps": 3, "vocab_size": 40, "seq_len": 6, "batch_size": 8,
        "disc_embed": 8, "disc_rep": 4, "disc_filters": 4, "eval_samples": 32, "frontier_samples": 16,
        "d_steps": 2}


def _run_recipe(out_dir, steps, resume=False, overrides=TINY):
    (recipe,) = RECIPES
    plan, trainer = train_recipe_briefly(recipe, overrides, out_dir, stop_after=steps,
                                         resume=resume, ckpt_every=4)
    return plan.task, trainer


def test_recipe_smoke_and_exact_resume(tmp_path):
    (recipe,) = RECIPES
    assert recipe.name == "textgan-oracle"
    from gencore import _settings
    specs = _settings.specs(recipe.settings)
    for key in ("steps", "seed", "batch_size", "mle_steps", "loss", "temperature", "beta_max"):
        assert key in specs
    assert set(specs["loss"].choices) == {"bce", "hinge", "wasserstein", "rsgan", "ragan"}
    task, _ = _run_recipe(tmp_path / "a", 6)
    assert task.phase == "adversarial" and task.temperature.position == 3
    metrics = task.evaluate()
    assert set(metrics) == {"nll_oracle", "nll_gen", "nll_div", "nll_oracle_floor", "frontier",
                            "frontier_mle"}
    assert all(math.isfinite(v) and v > 0 for v in metrics.values() if not isinstance(v, list))
    text = task.generate(4)
    lines = text.split("\n")
    assert len(lines) == 4 and all(len(line.split()) == 6 for line in lines)
    # 4 steps, checkpoint, then a fresh process-like rebuild resumes to 6: same weights
    _run_recipe(tmp_path / "b", 4)
    resumed, _ = _run_recipe(tmp_path / "b", 6, resume=True)
    assert resumed.temperature.position == 3 and resumed.phase == "adversarial"
    for name in ("G", "G_mle"):  # G_mle: copied at step 3, so in the step-4 checkpoint
        for (n, p), q in zip(getattr(task, name).named_parameters(),
                             getattr(resumed, name).parameters()):
            assert torch.equal(p, q), f"{name}.{n}"
    # a checkpoint before the copy (step 2): the resumed run copies G at step 3 itself
    _run_recipe(tmp_path / "c", 2)
    early, _ = _run_recipe(tmp_path / "c", 6, resume=True)
    for p, q in zip(task.G_mle.parameters(), early.G_mle.parameters()):
        assert torch.equal(p, q)


def test_frontier_over_temperatures():
    """metrics["frontier"]: one point per temperature, drawn and scored at that temperature; at
    T = 1 the scalar metrics themselves; hotter sampling is more diverse."""
    task = small_task(total=6, mle=6)
    assert task.G_mle is None  # MLE only: no baseline to keep
    m = task.evaluate()
    f = m["frontier"]
    assert [p["temperature"] for p in f] == [0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5]
    assert all(math.isfinite(p[k]) for p in f for k in ("nll_oracle", "nll_div"))
    one = f[3]
    assert (one["nll_oracle"], one["nll_div"]) == (m["nll_oracle"], m["nll_div"])
    divs = [p["nll_div"] for p in f]
    assert divs == sorted(divs), divs  # an untrained G is near uniform: entropy rises with T
    # G.nll at a temperature is the NLL under softmax(logits / T)
    x = task.G.sample(4, torch.Generator().manual_seed(0), temperature=0.5)
    want = -torch.log_softmax(task.G(x) / 0.5, -1).gather(-1, x[..., None])[..., 0].mean(1)
    torch.testing.assert_close(task.G.nll(x, 0.5), want)
    with pytest.raises(ValueError, match="temperature"):
        task.G.sample(2, temperature=0.0)
    task.frontier_samples = 16  # fewer samples per frontier point: the T = 1 scalars keep theirs
    assert task.evaluate()["nll_oracle"] == m["nll_oracle"]


def test_frontier_mle_is_the_mle_only_run(tmp_path):
    """The baseline the adversarial run keeps (G_mle, from step mle_steps on) is the MLE-only
    run with the same updates, bit for bit, and so is its frontier."""
    adv, _ = _run_recipe(tmp_path / "adv", 6)
    mle, _ = _run_recipe(tmp_path / "mle", 6, overrides={**TINY, "mle_steps": 6})
    assert mle.G_mle is None
    for (n, p), q in zip(adv.G_mle.named_parameters(), mle.G.parameters()):
        assert torch.equal(p, q), n
    assert adv.evaluate()["frontier_mle"] == mle.evaluate()["frontier"]
