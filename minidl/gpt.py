"""The small GPT of ``reference_torch.gpt`` in minidl: the same modules under the same
names, so a state dict moves between the engines unchanged, and the attention written
out as batched matrix products, so that the backward pass of a transformer can be
followed in NumPy.

    import torch
    from reference_torch.gpt import GPT as TorchGPT
    import minidl.gpt
    net = TorchGPT(config).double().eval()
    twin = minidl.gpt.GPT(config).double()
    twin.load_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
    twin(ids)        # the torch model's logits, to float64 rounding

The config is the torch model's (``vocab_size``, ``block_size``, ``n_layer``, ``n_head``,
``n_embd``, the dropout probabilities); no key/value cache and no fused attention here.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np

from . import nn
from .nn import functional as F

__all__ = ["GPT", "Block", "CausalSelfAttention"]

MODEL_TYPES = {"gpt-mini": (6, 6, 192), "gpt-micro": (4, 4, 128), "gpt-nano": (3, 3, 48)}


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        # 0 where a position may look (itself and before), -inf after it: added to the scores
        self.mask = np.triu(np.full((config.block_size, config.block_size), -np.inf), k=1)

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.n_head
        qkv = self.c_attn(x)  # (B, T, 3C)
        q, k, v = (qkv[:, :, i * C:(i + 1) * C].reshape(B, T, self.n_head, hs).permute(0, 2, 1, 3)
                   for i in range(3))  # three (B, heads, T, hs)
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs)) + self.mask[:T, :T].astype(x.dtype)
        weights = self.attn_dropout(F.softmax(scores, dim=-1))  # (B, heads, T, T), rows sum to 1
        y = (weights @ v).permute(0, 2, 1, 3).reshape(B, T, C)  # the heads side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """What torch's ``nn.ModuleDict`` holds in the torch model: embeddings, blocks, last norm."""

    def __init__(self, config):
        super().__init__()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)


class GPT(nn.Module):
    """Logits (B, T, vocab) of ids (B, T); with ``targets`` also the mean cross-entropy."""

    def __init__(self, config):
        super().__init__()
        config = SimpleNamespace(**vars(config))  # a copy: the caller's config stays as it was
        if None in (getattr(config, k, None) for k in ("n_layer", "n_head", "n_embd")):  # sizes by name
            config.n_layer, config.n_head, config.n_embd = MODEL_TYPES[config.model_type]
        self.block_size = config.block_size
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def forward(self, idx, targets=None):
        idx = np.asarray(idx.data if hasattr(idx, "data") else idx)
        B, T = idx.shape
        if T > self.block_size:
            raise ValueError(f"GPT: {T} positions, more than block_size {self.block_size}")
        t = self.transformer
        x = t.drop(t.wte(idx) + t.wpe(np.arange(T)))
        for block in t.h:
            x = block(x)
        logits = self.lm_head(t.ln_f(x))
        if targets is None:
            return logits
        targets = np.asarray(targets.data if hasattr(targets, "data") else targets)
        return logits, F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
