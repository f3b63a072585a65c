"""Embedded datasets, tokenizers and resumable batch streams."""
import json

import numpy as np
import pytest
import torch

from gencore import data
from gencore.data import (ByteTokenizer, CharTokenizer, ImageBatches, LMBatches, LMEvalBatches,
                          SampledDataset, tokenizer_from_state)

TEXT = "Hello, wörld! ∑ tabs\tand\nnewlines — 🙂"


@pytest.fixture(scope="module")
def code():
    return data.stdlib_code(max_bytes=600_000)


@pytest.fixture(scope="module")
def english():
    return data.english_text()


def test_char_tokenizer_round_trip_and_state():
    tok = CharTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert tok.decode(torch.tensor(ids)) == TEXT
    state = json.loads(json.dumps(tok.state_dict()))  # plain JSON types
    tok2 = tokenizer_from_state(state)
    assert tok2.encode(TEXT) == ids and tok2.vocab_size == tok.vocab_size
    with pytest.raises(ValueError, match="outside the tokenizer's alphabet"):
        tok.encode("xyz")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert max(ids) < 256 and tok.decode(ids) == TEXT
    assert tok.encode_tensor(TEXT).tolist() == ids
    assert tokenizer_from_state(tok.state_dict()).decode(ids) == TEXT
    assert tok.decode([0xC3]) == "\ufffd"  # broken UTF-8 from a model: replaced, not a crash
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_state({"kind": "bpe"})


def test_tokenizers_round_trip_on_embedded_text(code, english):
    for d in (code, english):
        tok = d.tokenizer("char")
        assert tok.decode(tok.encode(d.val)) == d.val
        b = d.tokenizer("byte")
        assert b.decode(b.encode(d.val[:5000])) == d.val[:5000]


def test_code_split_fixed_disjoint_by_module(code):
    again = data.stdlib_code(max_bytes=600_000)
    assert again.train == code.train and again.val == code.val
    assert set(code.train_units).isdisjoint(code.val_units)
    assert code.train_units and code.val_units
    assert len(code.train) + len(code.val) <= 600_000 + 10_000
    # every file of a held-out module is on the validation side
    for mod in code.val_units:
        assert f"# file: {mod}" in code.val and f"# file: {mod}/" not in code.train
        assert f"# file: {mod}.py" not in code.train
    other = data.stdlib_code(max_bytes=600_000, seed=1)
    assert other.val_units != code.val_units


def test_english_split_fixed_disjoint(english):
    again = data.english_text()
    assert (again.train, again.val) == (english.train, english.val)
    assert set(english.train_units).isdisjoint(english.val_units)
    assert 0.05 < len(english.val) / (len(english.train) + len(english.val)) < 0.2


def test_digits_split():
    d = data.digits()
    assert d.train.shape == (1438, 1, 8, 8) and d.val.shape == (359, 1, 8, 8)
    assert d.train.dtype == torch.float32 and 0 <= d.train.min() and d.train.max() == 1
    d2 = data.digits()
    assert torch.equal(d.train, d2.train) and torch.equal(d.val_labels, d2.val_labels)
    # disjoint: no val image equals a train image at the same (index-free) content check
    tr = {tuple(x.flatten().tolist()) for x in d.train}
    assert sum(tuple(x.flatten().tolist()) in tr for x in d.val) < 5  # sklearn has few duplicates


def test_text_file_and_image_folder(tmp_path):
    p = tmp_path / "mine.txt"
    p.write_text("abcdefghij" * 10)
    d = data.text_file(p, val_fraction=0.1)
    assert d.train + d.val == "abcdefghij" * 10 and len(d.val) == 10
    with pytest.raises(FileNotFoundError):
        data.text_file(tmp_path / "none.txt")
    folder = tmp_path / "imgs"
    folder.mkdir()
    np.save(folder / "a.npy", np.full((8, 8), 255, np.uint8))
    np.save(folder / "b.npy", np.zeros((9, 8, 8), np.float32))  # a stack of 9
    imgs = data.image_folder(folder, val_fraction=0.2)
    assert imgs.train.shape[1:] == (1, 8, 8) and imgs.train.shape[0] + imgs.val.shape[0] == 10
    np.save(folder / "c.npy", np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="differ in shape"):
        data.image_folder(folder)
    (folder / "c.npy").unlink()
    (folder / "d.png").write_bytes(b"not really")
    try:
        import PIL  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="Pillow"):
            data.image_folder(folder)


def test_lm_batches_deterministic_and_resumable():
    tokens = torch.arange(1000) % 97
    a = LMBatches(tokens, block_size=16, batch_size=4, seed=3)
    x, y = next(a)
    assert x.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])
    for _ in range(3):
        next(a)
    state = a.state_dict()
    rest = [next(a) for _ in range(5)]
    b = LMBatches(tokens, block_size=16, batch_size=4, seed=3)
    assert torch.equal(next(b)[0], x)
    b.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    for (x1, y1), (x2, y2) in zip(rest, [next(b) for _ in range(5)]):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def _roundtrip(obj):
    import io
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_sharding_partitions_global_batch():
    tokens = torch.arange(5000) % 251
    full = LMBatches(tokens, 8, 6, seed=1)
    shards = []
    for r in range(3):
        s = LMBatches(tokens, 8, 6, seed=1)
        s.set_shard(r, 3)
        shards.append(s)
    for _ in range(3):
        gx, _ = next(full)
        assert torch.equal(torch.cat([next(s)[0] for s in shards]), gx)
    with pytest.raises(ValueError, match="not divisible"):
        LMBatches(tokens, 8, 5).set_shard(0, 2)


def test_eval_batches_fixed():
    tokens = torch.arange(3000) % 50
    ev = LMEvalBatches(tokens, 16, 4)
    a, b = list(ev), list(ev)
    assert len(a) == len(ev) == (2999 // 16) // 4
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    evr = LMEvalBatches(tokens, 16, 4, max_batches=3)
    assert len(list(evr)) == 3


def test_image_batches_epochs_and_resume():
    imgs = torch.arange(10).float().reshape(10, 1, 1, 1)
    b = ImageBatches(imgs, 3, seed=0, labels=torch.arange(10))
    seen = [next(b) for _ in range(3)]  # one epoch of 3 full batches (1 dropped)
    ids = torch.cat([l for _, l in seen])
    assert len(set(ids.tolist())) == 9
    state = b.state_dict()
    rest = [next(b)[1] for _ in range(5)]
    c = ImageBatches(imgs, 3, seed=0, labels=torch.arange(10))
    c.load_state_dict(state)
    assert all(torch.equal(p, next(c)[1]) for p in rest)
    assert state["epoch"] == 0 and b.epoch >= 1


def test_sampled_dataset_hook():
    def sampler(n, g):
        return torch.randint(0, 5, (n, 7), generator=g)
    ds = SampledDataset(sampler)
    assert torch.equal(ds.fixed(4, seed=2), ds.fixed(4, seed=2))
    s = ds.batches(4, seed=0)
    next(s)
    st = s.state_dict()
    x = next(s)
    t = ds.batches(4, seed=0)
    t.load_state_dict(st)
    assert torch.equal(next(t), x)
