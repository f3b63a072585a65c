"""BLEU / Self-BLEU, Frechet distance, KID, the digit feature net, NLL helpers."""
import logging
import math
import random
import re

import pytest
import torch

from gencore import metrics
from gencore.metrics import BleuReference, bleu, frechet_distance, kid, self_bleu

# NLTK's documented example: sentence_bleu([ref1, ref2, ref3], hyp1) == 0.5045666840058485
HYP = "It is a guide to action which ensures that the military always obeys the commands of the party"
REFS = ["It is a guide to action that ensures that the military will forever heed Party commands",
        "It is the guiding principle which guarantees the military forces always being under the "
        "command of the Party",
        "It is the practical guide for the army always to heed the directions of the party"]


def test_bleu_known_value():
    assert BleuReference(REFS).score(HYP, 4) == pytest.approx(0.5045666840058485, abs=1e-12)


def test_bleu_identical_and_disjoint():
    s = ["the cat sat on the mat today"]
    assert bleu(s, s) == {"bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0, "bleu5": 1.0}
    assert all(v == 0 for v in bleu(["a b c d e"], ["f g h i j"]).values())


def test_bleu_hand_checked_with_smoothing_and_brevity():
    # hyp "a b c d" vs ref "a b c e f": p1 = 3/4, p2 = 2/3, p3 = 1/2, p4 = 0 -> 0.1/1 (method1)
    # brevity: c = 4 < r = 5 -> exp(1 - 5/4)
    ref = BleuReference(["a b c e f"])
    bp = math.exp(1 - 5 / 4)
    assert ref.score("a b c d", 2) == pytest.approx(bp * math.sqrt(3 / 4 * 2 / 3))
    assert ref.score("a b c d", 4) == pytest.approx(bp * (3 / 4 * 2 / 3 * 1 / 2 * 0.1) ** 0.25)
    assert ref.score("a b c d", 4, smooth=False) == 0.0
    # clipping: "the the the" vs "the cat": p1 = 1/3
    assert BleuReference(["the cat"]).score("the the the", 2) == pytest.approx(
        math.sqrt(1 / 3 * 0.1 / 2))


def test_self_bleu_matches_brute_force():
    rng = random.Random(0)
    sents = [[rng.choice("abcdef") for _ in range(rng.randint(3, 9))] for _ in range(30)]
    fast = self_bleu(sents, ns=(2, 3, 4))
    for n in (2, 3, 4):
        slow = sum(BleuReference(sents[:i] + sents[i + 1:], 4).score(s, n)
                   for i, s in enumerate(sents)) / len(sents)
        assert fast[f"self_bleu{n}"] == pytest.approx(slow, abs=1e-12)
    assert self_bleu(["x y z w"] * 3)["self_bleu4"] == 1.0


def _sentences(text, n):
    """The first n sentences of `text` with 5 to 60 words, whitespace-normalised."""
    split = (" ".join(s.split()) for s in re.split(r"(?<=[.!?])\s+", text))
    return [s for s in split if 5 <= len(s.split()) <= 60][:n]


def test_bleu_and_self_bleu_equal_sacrebleu_on_real_text(caplog):
    """gencore's BLEU-n = the mean of sacrebleu's sentence BLEU of each hypothesis against the
    whole reference set (whitespace tokens, 'floor' smoothing 0.1 = NLTK's method1, no effective
    order), on sentences of the embedded English text; Self-BLEU likewise against the others.
    Sentences of 5 words or more: sacrebleu scores a sentence with no n-grams of some order 0."""
    from sacrebleu.metrics import BLEU

    from gencore.data import english_text
    caplog.set_level(logging.ERROR, logger="sacrebleu")  # its advice on effective_order, per call
    data = english_text()
    hyps, refs = _sentences(data.val, 30), _sentences(data.train, 200)
    ours, ours_self = bleu(hyps, refs), self_bleu(hyps)
    for n in (2, 3, 4, 5):
        theirs = BLEU(tokenize="none", smooth_method="floor", smooth_value=0.1, max_ngram_order=n,
                      effective_order=False)
        want = sum(theirs.sentence_score(h, refs).score for h in hyps) / 100 / len(hyps)
        assert 0.05 < want < 0.95 and ours[f"bleu{n}"] == pytest.approx(want, rel=1e-12, abs=0)
        want_self = sum(theirs.sentence_score(h, hyps[:i] + hyps[i + 1:]).score
                        for i, h in enumerate(hyps)) / 100 / len(hyps)
        assert ours_self[f"self_bleu{n}"] == pytest.approx(want_self, rel=1e-12, abs=0)


def test_frechet_identical_and_shifted():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=torch.float64)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    shift = torch.tensor([1.0, -2.0, 0.5, 0, 0, 3.0], dtype=torch.float64)
    assert frechet_distance(x, x + shift) == pytest.approx(float((shift ** 2).sum()), rel=1e-8)
    # scaled: covariances S and 4S: tr S + 4 tr S - 2 tr((4 S^2)^(1/2)) = tr S (non-diagonal S)
    y = torch.randn(2000, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.2, 0.0, 2.0]], dtype=torch.float64)
    tr = float(torch.cov(y.T).trace())
    assert frechet_distance(y, 2 * y) == pytest.approx(tr + float((y.mean(0) ** 2).sum()), rel=1e-9)
    # singular covariances (fewer samples than dims) stay finite and ~0 for identical sets
    z = torch.randn(5, 20, generator=g)
    assert frechet_distance(z, z) == pytest.approx(0.0, abs=1e-6)


def test_kid_sanity():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g)
    b = torch.randn(400, 8, generator=g)
    same = kid(a, b, subsets=20, subset_size=200)
    far = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    assert far["kid"] > 10 * abs(same["kid"]) and far["kid"] > 0
    assert kid(a, b, subsets=5, seed=1) == kid(a, b, subsets=5, seed=1)


def test_digit_feature_net_cached_and_image_metrics(tmp_path):
    t = torch.get_num_threads()
    with torch.no_grad():  # first use inside an evaluation loop: it must still train
        net = metrics.feature_net(tmp_path)
    files = list(tmp_path.glob("digit-features-*.pt"))
    assert len(files) == 1
    saved = torch.load(files[0], weights_only=True)
    assert saved["val_accuracy"] > 0.9
    assert torch.get_num_threads() == t
    from gencore.metrics import digits_features
    digits_features._NETS.clear()
    net2 = metrics.feature_net(tmp_path)  # from the disk cache
    assert all(torch.equal(p, q) for p, q in zip(net.state_dict().values(), net2.state_dict().values()))
    from gencore.data import digits
    d = digits()
    real = metrics.image_metrics(d.train[:359], cache_dir=tmp_path, kid_subsets=10)
    noise = metrics.image_metrics(torch.rand(359, 1, 8, 8), cache_dir=tmp_path, kid_subsets=10)
    assert real["fd_floor"] == noise["fd_floor"] and real["fd_floor"] < real["fd"] * 2
    assert noise["fd"] > 10 * real["fd"] and noise["kid"] > 10 * max(real["kid"], 1e-4)


def test_text_metrics_and_nll_helpers():
    assert metrics.bits_per_token(math.log(2)) == pytest.approx(1.0)
    assert metrics.perplexity(math.log(7)) == pytest.approx(7.0)
    assert metrics.bits_per_char(math.log(2), tokens=120, chars=100) == pytest.approx(1.2)

    class Uniform(torch.nn.Module):
        def __init__(self, v):
            super().__init__()
            self.v = v

        def nll(self, tokens):
            return torch.full(tokens.shape, math.log(self.v))

        def sample(self, n):
            return torch.randint(0, self.v, (n, 5))

    oracle, gen = Uniform(10), Uniform(4)
    real = torch.randint(0, 10, (50, 5))
    assert metrics.nll_oracle(oracle, gen) == pytest.approx(math.log(10))
    assert metrics.nll_gen(gen, real) == pytest.approx(math.log(4))
    assert metrics.nll_div(gen, n=20) == pytest.approx(math.log(4))
    assert metrics.nll_oracle(lambda t: torch.ones(t.shape[0]), real) == 1.0
    v = 5
    logits_fn = lambda x: torch.zeros(*x.shape, v)  # noqa: E731
    batches = [(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))]
    assert metrics.mean_nll(logits_fn, batches) == pytest.approx(math.log(v))


def test_frontier_gap():
    """NLL_oracle(mle) - NLL_oracle(adv) at equal NLL_div, piecewise linear, over the overlap."""
    def curve(*pts):
        return [{"temperature": t, "nll_div": x, "nll_oracle": y} for t, (x, y) in enumerate(pts)]
    mle = curve((6.0, 8.0), (7.0, 9.0), (8.0, 10.0))
    adv = curve((6.5, 8.2), (7.5, 8.6), (9.0, 9.0))  # mle at 6.5: 8.5, at 7.5: 9.5, at 8: 10
    g = metrics.frontier_gap(adv, mle)
    assert (g["lo"], g["hi"]) == (6.5, 8.0)
    assert g["min_gap"] == pytest.approx(0.3) and g["min_at"] == 6.5
    # at 8.0 adv interpolates 8.6 + 0.4 * 0.5 / 1.5
    assert g["max_gap"] == pytest.approx(10.0 - (8.6 + 0.4 / 3)) and g["max_at"] == 8.0
    assert metrics.frontier_gap(mle, mle)["min_gap"] == 0.0
    assert metrics.frontier_gap(curve((1, 1), (2, 2)), mle) is None  # no shared NLL_div
    with pytest.raises(ValueError, match="2 points"):
        metrics.frontier_gap(curve((6.5, 8.0)), mle)
