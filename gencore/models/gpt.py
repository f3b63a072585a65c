"""GPT: a decoder-only transformer language model (GPT-2 layout) on gencore.nn.MultiHeadAttention.

    cfg = GPTConfig(vocab_size=100, block_size=64, n_layer=4, n_head=4, n_embd=128)
    model = GPT(cfg)
    logits, loss = model(idx, targets)           # idx, targets (B, T) int64, T <= block_size
    out = model.generate(prompt, 200, temperature=0.8, top_k=20)   # (B, T + 200)

Pre-norm blocks (x + attn(norm(x)), x + mlp(norm(x))), a final norm and a linear head tied to
the token embedding. Positions are learned embeddings, or rotary embeddings inside attention
(`rotary=True`). Grouped-query attention with `n_kv_head < n_head`. `impl` picks the attention
kernel: gencore's fused op ("auto" / "fused"), its PyTorch reference ("reference"), or PyTorch's
`F.scaled_dot_product_attention` ("sdpa").

The defaults are GPT-2's (as nanoGPT has them). Options from what came after it, each one
GPTConfig field: RMSNorm instead of LayerNorm (`norm`), RMS-normalised queries and keys
(`qk_norm`), a ReLU-squared or SwiGLU MLP (`mlp`, width `mlp_hidden`), an untied head
(`tie_weights=False`), tanh soft-capping of the logits (`logit_softcap`), residual output
projections initialised at zero (`zero_init_proj`). The gpt-text recipe says which it uses and
benchmarks/RESULTS.md what each one is worth.

Generation keeps a KV cache per layer, so each new token costs one token's forward pass instead of
the whole sequence's; its logits equal those of the uncached path. The model only ever sees the
last `block_size` tokens: once the sequence is longer, each step crops the context to the last
`block_size` tokens and refills the cache from them (positions restart at 0, exactly what the
uncached path computes), so past `block_size` tokens a step costs a full-window forward pass.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .._settings import setting
from ..nn.attention import IMPLS, KVCache, MultiHeadAttention
from ._checks import positive_int

__all__ = ["GPTConfig", "GPT"]

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")


@dataclass
class GPTConfig:
    """The model's settings (each a typed field with its help: the gpt recipes take them as they
    are, `gencore train gpt-text --help` lists them). `None` for n_kv_head and mlp_hidden means
    "the usual": n_head, and 4 n_embd (8/3 n_embd for swiglu); `kv_heads` and `hidden` give the
    numbers."""
    vocab_size: Optional[int] = setting(None, "tokens in the vocabulary (from the tokenizer)",
                                        run=True)
    block_size: int = setting(64, "longest context the model sees")
    n_layer: int = setting(4, "transformer blocks")
    n_head: int = setting(4, "attention heads")
    n_kv_head: Optional[int] = setting(None, "key/value heads (grouped-query attention); none: n_head")
    n_embd: int = setting(128, "model width")
    dropout: float = setting(0.0, "dropout on attention probabilities, block outputs and "
                                  "embeddings (nanoGPT's)")
    bias: bool = setting(False, "biases in the linear layers and LayerNorms")
    rotary: bool = setting(False, "rotary position embeddings; false: learned absolute positions")
    tie_weights: bool = setting(True, "the LM head shares the token embedding matrix")
    impl: str = setting("auto", "attention kernel (sdpa: PyTorch's)", choices=IMPLS)
    norm: str = setting("layernorm", "rmsnorm: no mean subtraction, no bias", choices=NORMS)
    qk_norm: bool = setting(False, "RMSNorm on each head's queries and keys")
    mlp: str = setting("gelu", "relu2: ReLU squared; swiglu: gated, 3 matrices", choices=MLPS)
    mlp_hidden: Optional[int] = setting(None, "MLP width; none: 4 n_embd, or 8/3 n_embd for swiglu")
    logit_softcap: Optional[float] = setting(None, "logits -> c tanh(logits / c); none: off")
    zero_init_proj: bool = setting(False, "residual output projections start at zero "
                                          "(blocks start as the identity)")

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def hidden(self) -> int:  # swiglu's third matrix: 2/3 of the width keeps the params
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        return 4 * self.n_embd if self.mlp != "swiglu" else -(-8 * self.n_embd // 3)

    def __post_init__(self) -> None:
        if self.vocab_size is not None:
            positive_int(self.vocab_size, "vocab_size", "GPTConfig")
        for name in ("block_size", "n_layer", "n_head", "n_embd"):
            positive_int(getattr(self, name), name, "GPTConfig")
        for name in ("n_kv_head", "mlp_hidden"):
            if getattr(self, name) is not None:
                positive_int(getattr(self, name), name, "GPTConfig")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd ({self.n_embd}) must be a multiple of n_head "
                             f"({self.n_head})")
        if self.n_head % self.kv_heads:
            raise ValueError(f"GPTConfig: n_head ({self.n_head}) must be a multiple of n_kv_head "
                             f"({self.kv_heads})")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"GPTConfig: rotary embeddings need an even head size, got "
                             f"n_embd / n_head = {self.n_embd // self.n_head}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        for name, valid in (("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in valid:
                raise ValueError(f"GPTConfig.{name} must be one of {list(valid)}, "
                                 f"got {getattr(self, name)!r}")
        cap = self.logit_softcap
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                                or not cap > 0 or not math.isfinite(cap)):
            raise ValueError(f"GPTConfig.logit_softcap must be None or a number > 0, got {cap!r}")
        for name in ("bias", "rotary", "tie_weights", "qk_norm", "zero_init_proj"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        if self.impl not in IMPLS:
            raise ValueError(f"GPTConfig.impl must be one of {list(IMPLS)}, got {self.impl!r}")


def make_norm(cfg: GPTConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


class MLP(nn.Module):
    """fc -> activation -> proj; swiglu: proj(silu(fc(x)) * gate(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        self.fc = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias)
        self.gate = nn.Linear(cfg.n_embd, cfg.hidden, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.proj = nn.Linear(cfg.hidden, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "gelu":
            h = F.gelu(h)
        elif self.kind == "relu2":
            h = F.relu(h).square()
        else:
            h = F.silu(h) * self.gate(x)
        return self.dropout(self.proj(h))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_attn = make_norm(cfg)
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.kv_heads, rotary=cfg.rotary,
                                       dropout=cfg.dropout, attn_dropout=cfg.dropout,
                                       bias=cfg.bias, impl=cfg.impl,
                                       qk_norm=cfg.qk_norm)
        self.ln_mlp = make_norm(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cache=cache)
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise TypeError(f"GPT takes a GPTConfig, got {type(cfg).__name__}")
        if cfg.vocab_size is None:
            raise ValueError("GPT: GPTConfig.vocab_size is not set (the tokenizer's vocab_size)")
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos_emb = None if cfg.rotary else nn.Embedding(cfg.block_size, cfg.n_embd)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = make_norm(cfg)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.head.weight = self.tok_emb.weight
        self._init_weights()

    def _init_weights(self) -> None:
        # GPT-2: N(0, 0.02) everywhere, zero biases, and the projections that add into the
        # residual stream scaled by 1/sqrt(2 * n_layer) so its variance does not grow with depth.
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        # zero_init_proj: every block starts as the identity (modded-nanoGPT's choice).
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for b in self.blocks:
            for w in (b.attn.out.weight, b.mlp.proj.weight):
                if self.config.zero_init_proj:
                    nn.init.zeros_(w)
                else:
                    nn.init.normal_(w, mean=0.0, std=std)

    def num_params(self, exclude_position_embedding: bool = False) -> int:
        """Number of parameters (a tied head counted once, as `parameters()` yields it)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_position_embedding and self.pos_emb is not None:
            n -= self.pos_emb.weight.numel()
        return n

    def hidden_matrices(self) -> List[nn.Parameter]:
        """The 2-D weights inside the blocks (not the embeddings, not the head): what a
        matrix-aware optimizer such as gencore.train.Muon updates."""
        return [p for b in self.blocks for p in b.parameters() if p.dim() == 2]

    def new_cache(self) -> List[KVCache]:
        """An empty KV cache for `forward(..., cache=)`: one KVCache per layer."""
        return [b.attn.new_cache() for b in self.blocks]

    def _check_idx(self, idx: torch.Tensor, what: str = "idx") -> None:
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"GPT: {what} must be a (batch, seq) tensor of token ids, got {got}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(f"GPT: {what} must hold integer token ids, got {idx.dtype}")
        if idx.shape[1] < 1:
            raise ValueError(f"GPT: {what} must hold at least one token per sequence")
        if idx.numel():
            # Checked on the device (no host read in the training step): on CUDA a failure
            # surfaces as a device-side assert at the next sync; on the CPU it raises here.
            msg = f"GPT: {what} holds token ids outside [0, {self.config.vocab_size})"
            try:
                torch._assert_async(((idx >= 0) & (idx < self.config.vocab_size)).all(), msg)
            except RuntimeError:
                raise ValueError(msg) from None

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                cache: Optional[List[KVCache]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """idx (B, T) int64 -> (logits (B, T, vocab), mean cross-entropy over targets or None).

        targets: (B, T) next-token ids; -100 marks positions to leave out of the loss.
        cache: from `new_cache()`, updated in place: idx continues the cached tokens (its positions
            start at the cache's length). The cached length plus T must fit in block_size.
        """
        self._check_idx(idx)
        T = idx.shape[1]
        if cache is not None and len(cache) != len(self.blocks):
            raise ValueError(f"GPT: cache must hold one KVCache per layer ({len(self.blocks)}), "
                             f"got {len(cache)}; make one with model.new_cache()")
        start = cache[0].length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"GPT: sequence length {start + T} (cached {start} + new {T}) is longer "
                             f"than block_size {self.config.block_size}")
        logits = self._logits(idx, cache)
        if targets is None:
            return logits, None
        if targets.shape != idx.shape:
            raise ValueError(f"GPT: targets must have idx's shape {tuple(idx.shape)}, got "
                             f"{tuple(targets.shape)}")
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    def _logits(self, idx: torch.Tensor, cache: Optional[List[KVCache]] = None,
                last_only: bool = False) -> torch.Tensor:
        """The forward pass without the argument checks (generate checks its prompt once)."""
        start = cache[0].length if cache is not None else 0
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + idx.shape[1], device=idx.device))
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if cache is None else cache[i])
        logits = self.head(self.ln_f(x[:, -1:] if last_only else x))
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    # ------------------------------------------------------------------ generation
    @staticmethod
    def _check_sampling(max_new_tokens, temperature, top_k, top_p) -> None:
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"GPT.generate: max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"GPT.generate: temperature must be a finite number >= 0 (0 = greedy), "
                             f"got {temperature!r}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"GPT.generate: top_k must be None or an integer >= 1, got {top_k!r}")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
            raise ValueError(f"GPT.generate: top_p must be None or in (0, 1], got {top_p!r}")

    @staticmethod
    def filter_logits(logits: torch.Tensor, top_k: Optional[int] = None,
                      top_p: Optional[float] = None) -> torch.Tensor:
        """Sets to -inf the logits (..., V) outside the top_k most likely tokens and outside the
        nucleus: the smallest set of most likely tokens whose probability reaches top_p (the most
        likely token always stays)."""
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if top_p is not None and top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # Drop a token when the tokens more likely than it already reach top_p.
            drop_sorted = (probs.cumsum(-1) - probs) >= top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return logits

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, use_cache: bool = True,
                 return_logits: bool = False):
        """Appends `max_new_tokens` sampled tokens to each prompt of `idx` (B, T), T >= 1.

        temperature: divides the logits; 0 picks the most likely token (greedy, no randomness).
        top_k / top_p: sample only among the k most likely tokens / the nucleus of mass top_p.
        generator: a torch.Generator on the model's device, for sampling that repeats without
            touching the global RNG.
        use_cache: incremental decoding with a KV cache (same logits as without, much faster).
        return_logits: also return the (B, max_new_tokens, vocab) logits each token was drawn from
            (before temperature and filtering).
        Returns (B, T + max_new_tokens) token ids (and the logits). Runs in eval mode; the mode
        the model was in is restored afterwards.
        """
        self._check_idx(idx, "prompt")
        self._check_sampling(max_new_tokens, temperature, top_k, top_p)
        was_training = self.training
        self.eval()
        try:
            # inference_mode skips the autograd dispatch layer entirely (no_grad still passes
            # through it), which is most of a token's cost at batch 1; the results are cloned out
            # below so callers get ordinary tensors.
            with torch.inference_mode():
                seq, all_logits = self._decode(idx.long(), max_new_tokens, temperature, top_k,
                                               top_p, generator, use_cache, return_logits)
            seq = seq.clone()
            all_logits = [t.clone() for t in all_logits]
        finally:
            self.train(was_training)
        if return_logits:
            V = self.config.vocab_size
            stacked = torch.stack(all_logits, 1) if all_logits else seq.new_zeros(seq.shape[0], 0, V).float()
            return seq, stacked
        return seq

    def _decode(self, seq, max_new_tokens, temperature, top_k, top_p, generator, use_cache,
                return_logits):
        """generate's sampling loop (arguments already checked)."""
        block = self.config.block_size
        all_logits = []
        cache = None
        for _ in range(max_new_tokens):
            window = seq[:, -block:]
            if not use_cache:
                logits = self._logits(window, last_only=True)
            elif cache is None or cache[0].length + 1 > block:
                # First step, or the context would outgrow the window: refill from the
                # last block_size tokens (what the uncached path sees).
                cache = self.new_cache()
                logits = self._logits(window, cache, last_only=True)
            else:
                logits = self._logits(seq[:, -1:], cache, last_only=True)
            logits = logits[:, -1].float()
            if return_logits:
                all_logits.append(logits)
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                probs = torch.softmax(self.filter_logits(logits / temperature, top_k, top_p), -1)
                nxt = torch.multinomial(probs, 1, generator=generator)
            seq = torch.cat([seq, nxt], dim=1)
        return seq, all_logits
