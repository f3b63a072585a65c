"""Character- and byte-level tokenizers that round-trip exactly.

Both keep their whole state in plain Python types (`state_dict()` -> dict of str/int/list), so a
tokenizer can live inside a checkpoint loaded with `torch.load(weights_only=True)` or in a JSON
file next to a run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, List, Sequence, Union

import torch

__all__ = ["CharTokenizer", "ByteTokenizer", "tokenizer_from_state", "load_tokenizer"]

Ids = Union[Sequence[int], torch.Tensor]


def _as_list(ids: Ids) -> List[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode takes a 1-D sequence of ids, got shape {tuple(ids.shape)}")
        return ids.tolist()
    return list(ids)


class CharTokenizer:
    """One id per Unicode character of a fixed alphabet (sorted, so the ids do not depend on the
    order the text was seen in). `encode` rejects characters outside the alphabet with the
    offending characters named: a tokenizer that silently drops text cannot round-trip."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer alphabet entries must be single characters")
        if not chars:
            raise ValueError("CharTokenizer needs a non-empty alphabet")
        self.chars: List[str] = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, *texts: str) -> "CharTokenizer":
        alphabet = set()
        for t in texts:
            alphabet.update(t)
        return cls(alphabet)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> List[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            missing = sorted(set(text) - set(self.stoi))
            raise ValueError(
                f"text has {len(missing)} character(s) outside the tokenizer's alphabet of "
                f"{self.vocab_size}: {missing[:10]!r}{' ...' if len(missing) > 10 else ''}"
            ) from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: Ids) -> str:
        ids = _as_list(ids)
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"ids out of range [0, {n}): {bad[:10]}")
        return "".join(self.chars[i] for i in ids)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_state_dict(cls, state: dict) -> "CharTokenizer":
        return cls(list(state["chars"]))


class ByteTokenizer:
    """UTF-8 bytes, vocabulary 256: any text round-trips, no alphabet to store. `decode` of a
    sequence that is not valid UTF-8 (a model can emit one) replaces the broken bytes with U+FFFD
    by default; pass `errors="strict"` to get an error instead."""

    kind = "byte"
    vocab_size = 256

    def encode(self, text: str) -> List[int]:
        return list(text.encode("utf-8"))

    def encode_tensor(self, text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids: Ids, errors: str = "replace") -> str:
        ids = _as_list(ids)
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"byte ids out of range [0, 256): {bad[:10]}")
        return bytes(ids).decode("utf-8", errors=errors)

    def state_dict(self) -> dict:
        return {"kind": self.kind}

    @classmethod
    def from_state_dict(cls, state: dict) -> "ByteTokenizer":
        return cls()


_KINDS = {"char": CharTokenizer, "byte": ByteTokenizer}


def tokenizer_from_state(state: dict):
    """Rebuilds a tokenizer from its `state_dict()` (as stored in a checkpoint or JSON file)."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; valid kinds: {sorted(_KINDS)}")
    return _KINDS[kind].from_state_dict(state)


def save_tokenizer(tok, path: Union[str, Path]) -> None:
    Path(path).write_text(json.dumps(tok.state_dict(), ensure_ascii=True))


def load_tokenizer(path: Union[str, Path]):
    return tokenizer_from_state(json.loads(Path(path).read_text()))
