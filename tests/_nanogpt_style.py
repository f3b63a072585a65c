"""A small model written the way nanoGPT-style scripts are: torch's functions, called directly.

tests/test_drop_in.py loads this file with the two import lines below swapped for gencore's
(`from gencore.ops import ...`), the one-line change the README shows.
"""
import math

import torch
import torch.nn as nn
from torch.nn.functional import scaled_dot_product_attention
from torch.nn.functional import gumbel_softmax


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.dropout = n_head, dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = scaled_dot_product_attention(q, k, v, attn_mask=None,
                                         dropout_p=self.dropout if self.training else 0, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, vocab_size=64, block_size=32, n_layer=2, n_head=4, n_embd=64, dropout=0.0):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList(Block(n_embd, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        for p in self.parameters():
            nn.init.normal_(p, 0.0, 0.02 / math.sqrt(1 if p.dim() > 1 else 4))

    def forward(self, idx=None, targets=None, embeds=None):
        x = self.wte(idx) if embeds is None else embeds                          # (B, T, C)
        x = x + self.wpe(torch.arange(x.shape[1], device=x.device))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else nn.functional.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    def relaxed_continuation(self, idx, tau=0.5, hard=True):
        """A TextGAN-style generator step: a Gumbel-softmax sample of the next token (one-hot,
        straight-through), fed back as a soft embedding (B, T+1, C)."""
        logits, _ = self(idx)
        y = gumbel_softmax(logits[:, -1], tau=tau, hard=hard)                   # (B, V)
        return torch.cat([self.wte(idx), (y @ self.wte.weight)[:, None]], dim=1), y
