"""A GPT in the shape of minGPT (Karpathy), the model of UvA DL1 assignment 3, part 3.

    config = GPT.get_default_config()
    config.model_type = "gpt-nano"          # or None and n_layer / n_head / n_embd
    config.vocab_size, config.block_size = 65, 128
    model = GPT(config)
    logits = model(idx)                     # idx (B, T) token ids -> logits (B, T, vocab)
    logits, loss = model(idx, targets)      # as minGPT: the mean cross-entropy too
    optimizer = model.configure_optimizers(train_config)   # AdamW, decay on Linear weights only
    out = model.generate(idx, 100, temperature=0.8, do_sample=True, top_k=10)

Self-attention is written twice: out in full (scores, causal mask, softmax, dropout,
weighted values: the course's exercise) and through ``F.scaled_dot_product_attention``
(the fused kernel torch picks for the device); ``config.use_flash_attn`` picks one.
Generation keeps every layer's keys and values (``KVCache``), so each new token costs
one position's work instead of the whole context's.

``GPT.from_pretrained(path)`` reads a Hugging Face GPT-2 checkpoint from a local folder
or file; nothing is downloaded.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPT", "Block", "CausalSelfAttention", "KVCache", "MODEL_TYPES", "causal_attention", "causal_mask",
           "nucleus", "language_model_step", "sample_text", "generation_speed"]

# name -> (n_layer, n_head, n_embd): minGPT's table
MODEL_TYPES = {
    "openai-gpt": (12, 12, 768), "gpt2": (12, 12, 768), "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280), "gpt2-xl": (48, 25, 1600), "gopher-44m": (8, 16, 512),
    "gpt-mini": (6, 6, 192), "gpt-micro": (4, 4, 128), "gpt-nano": (3, 3, 48),
}
# Hugging Face's GPT-2 stores these four as Conv1D weights, laid out (in, out): transposed here.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def causal_mask(tq, tk, offset, device):
    """(tq, tk) booleans, True where query i (at position offset + i) may look at key j: j <= offset + i."""
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=offset)


def causal_attention(q, k, v, *, dropout=0.0, fused=False, offset=0, keep_weights=False):
    """Softmax(q kᵀ / √d) v over (B, heads, T, d) tensors, position i of ``q`` (at
    ``offset + i`` in the sequence) seeing keys 0..offset+i. Returns (y, weights), the
    weights (B, heads, Tq, Tk) only from the written-out path with ``keep_weights``."""
    if fused and not keep_weights:
        if q.shape[-2] == 1:  # one new token sees every key (all of them come before it)
            mask = None
        elif offset == 0:  # queries and keys the same positions: the plain causal mask
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True), None
        else:
            mask = causal_mask(q.shape[-2], k.shape[-2], offset, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout), None
    allowed = causal_mask(q.shape[-2], k.shape[-2], offset, q.device)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = F.softmax(scores, dim=-1)
    y = F.dropout(weights, dropout, training=dropout > 0) @ v
    return y, weights.detach() if keep_weights else None


class KVCache:
    """The keys and values of every layer for the positions generated so far."""

    def __init__(self, n_layer):
        self.keys, self.values = [None] * n_layer, [None] * n_layer

    def __len__(self):
        """Positions held."""
        return 0 if self.keys[0] is None else self.keys[0].shape[-2]

    def update(self, layer, k, v):
        """Append this step's keys and values of ``layer``; return all of them."""
        if self.keys[layer] is not None:
            k, v = torch.cat([self.keys[layer], k], dim=-2), torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class CausalSelfAttention(nn.Module):
    """Multi-head masked self-attention with GPT-2's parameter names: one Linear
    ``c_attn`` makes queries, keys and values, ``c_proj`` mixes the heads."""

    def __init__(self, config):
        super().__init__()
        if config.n_embd % config.n_head:
            raise ValueError(f"n_embd ({config.n_embd}) must be a multiple of n_head ({config.n_head})")
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.attn_pdrop = config.attn_pdrop
        self.resid_dropout = nn.Dropout(config.resid_pdrop)
        self.use_flash_attn = config.use_flash_attn
        self.keep_weights, self.weights = False, None  # set keep_weights to look at the attention

    def forward(self, x, cache=None, layer=0):
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, heads, T, head size)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in self.c_attn(x).split(self.n_embd, dim=2))
        offset = 0
        if cache is not None:
            offset = len(cache)
            k, v = cache.update(layer, k, v)
        y, self.weights = causal_attention(q, k, v, dropout=self.attn_pdrop if self.training else 0.0,
                                           fused=self.use_flash_attn, offset=offset,
                                           keep_weights=self.keep_weights)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # the heads side by side again
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward: 4x wider, GELU (GPT-2's tanh form), back."""

    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.act = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x):
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Token and position embeddings, ``n_layer`` Blocks, a last LayerNorm and a Linear
    to the vocabulary (``lm_head``, not tied to the token embedding, as in minGPT)."""

    @staticmethod
    def get_default_config():
        """The settings GPT(config) reads; set vocab_size and block_size, and either
        model_type or all of n_layer, n_head and n_embd."""
        return SimpleNamespace(model_type="gpt-mini", n_layer=None, n_head=None, n_embd=None,
                               vocab_size=None, block_size=None, embd_pdrop=0.1, resid_pdrop=0.1,
                               attn_pdrop=0.1, use_flash_attn=False)

    def __init__(self, config):
        super().__init__()
        config = SimpleNamespace(**{**vars(self.get_default_config()), **vars(config)})
        for name in ("vocab_size", "block_size"):
            if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
                raise ValueError(f"GPT: config.{name} must be a positive int, got {getattr(config, name)!r}")
        sizes = (config.n_layer, config.n_head, config.n_embd)
        if config.model_type is not None:
            if config.model_type not in MODEL_TYPES:
                raise ValueError(f"GPT: unknown model_type {config.model_type!r}; choose one of "
                                 f"{', '.join(MODEL_TYPES)}, or None with n_layer, n_head and n_embd")
            if any(s is not None for s in sizes):
                raise ValueError(f"GPT: give model_type or n_layer/n_head/n_embd, not both (model_type="
                                 f"{config.model_type!r}, n_layer/n_head/n_embd={sizes}); set model_type=None")
            config.n_layer, config.n_head, config.n_embd = MODEL_TYPES[config.model_type]
        elif any(s is None for s in sizes):
            raise ValueError(f"GPT: with model_type=None set n_layer, n_head and n_embd, got {sizes}")
        self.config, self.block_size = config, config.block_size
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.embd_pdrop),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nn.LayerNorm(config.n_embd)))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: residual projections scaled by 1/√(2 n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None, cache=None):
        """Logits (B, T, vocab) of the next token at every position of ``idx`` (B, T);
        with ``targets`` (B, T) also their mean cross-entropy. With a ``cache``, ``idx``
        holds only the new positions, placed after the cached ones."""
        offset = 0 if cache is None else len(cache)
        T = idx.shape[1]
        if offset + T > self.block_size:
            raise ValueError(f"GPT: {offset + T} positions, more than block_size {self.block_size}")
        pos = torch.arange(offset, offset + T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        logits = self.lm_head(self.transformer.ln_f(x))
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    # -------------------------------------------------------------- training
    def configure_optimizers(self, train_config):
        """AdamW (``train_config.learning_rate``, ``betas``, ``weight_decay``), the decay on
        the weights of Linear layers only: biases, LayerNorm and embeddings keep theirs."""
        decay = {f"{mn}.weight" if mn else "weight" for mn, m in self.named_modules()
                 if isinstance(m, nn.Linear)}
        params = dict(self.named_parameters())
        groups = [{"params": [p for n, p in params.items() if n in decay], "weight_decay": train_config.weight_decay},
                  {"params": [p for n, p in params.items() if n not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=train_config.learning_rate, betas=tuple(train_config.betas))

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, do_sample=False, top_k=None, top_p=None,
                 use_cache=True, generator=None):
        """``idx`` (B, T) followed by ``max_new_tokens`` tokens, each the most likely next one
        (greedy) or, with ``do_sample``, drawn from softmax(logits / temperature) restricted
        to the ``top_k`` most likely tokens and/or the smallest set whose probability reaches
        ``top_p`` (nucleus sampling). The context is the last ``block_size`` tokens; the key/value
        cache gives the same tokens as recomputing it (the test checks), and while the sequence
        fits the block each step costs one position. Beyond it the positions of the window shift,
        so the cache is rebuilt each step. Runs in eval mode (no dropout), then restores the mode."""
        if temperature <= 0:
            raise ValueError(f"generate: temperature must be positive, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"generate: top_p must be in (0, 1], got {top_p}")
        was_training, cache = self.training, None
        self.eval()
        for _ in range(max_new_tokens):
            if cache is not None and idx.shape[1] <= self.block_size:
                logits = self(idx[:, len(cache):], cache=cache)  # the cache holds all but the last token
            else:  # the first step, no cache, or a window that has moved on: its positions all change
                cache = KVCache(len(self.transformer.h)) if use_cache else None
                logits = self(idx[:, -self.block_size:], cache=cache)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if top_p is not None:
                logits = nucleus(logits, top_p)
            if do_sample:
                next_id = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            else:
                next_id = logits.argmax(dim=-1, keepdim=True)
            idx = torch.cat([idx, next_id], dim=1)
        self.train(was_training)
        return idx

    @torch.no_grad()
    def attention_weights(self, idx):
        """The attention of every layer on ``idx`` (B, T): a list of (B, heads, T, T)
        tensors, rows the query positions, each row summing to 1 (in eval mode)."""
        was_training = self.training
        self.eval()
        layers = [block.attn for block in self.transformer.h]
        for attn in layers:
            attn.keep_weights = True
        try:
            self(idx)
            return [attn.weights for attn in layers]
        finally:
            for attn in layers:
                attn.keep_weights, attn.weights = False, None
            self.train(was_training)

    # ------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(cls, path, use_flash_attn=True):
        """A GPT-2 from a Hugging Face checkpoint on disk: a folder with ``config.json`` and
        ``pytorch_model.bin`` (read with weights_only) or ``model.safetensors`` (needs the
        safetensors package), or one such weight file. The sizes come from config.json when
        there is one, else from the tensors (with GPT-2's head size of 64). Conv1D weights
        are transposed into Linear's (out, in) layout."""
        path = Path(path)
        folder = path if path.is_dir() else path.parent
        files = [path] if path.is_file() else [folder / n for n in ("model.safetensors", "pytorch_model.bin")]
        weights = next((f for f in files if f.is_file()), None)
        if weights is None:
            raise FileNotFoundError(f"GPT.from_pretrained: no pytorch_model.bin or model.safetensors at {path}; "
                                    "put a Hugging Face GPT-2 checkpoint (config.json and one of those) there")
        state = _read_weights(weights)
        state = {k.removeprefix("transformer."): v for k, v in state.items()}
        if "wte.weight" not in state:
            raise ValueError(f"GPT.from_pretrained: {weights} has no wte.weight; is it a GPT-2 checkpoint?")
        hf = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        n_layer = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("h."))
        vocab_size, n_embd = state["wte.weight"].shape
        config = SimpleNamespace(
            model_type=None, n_layer=hf.get("n_layer", n_layer), n_head=hf.get("n_head", n_embd // 64),
            n_embd=hf.get("n_embd", n_embd), vocab_size=hf.get("vocab_size", vocab_size),
            block_size=hf.get("n_positions", state["wpe.weight"].shape[0]),
            embd_pdrop=hf.get("embd_pdrop", 0.1), resid_pdrop=hf.get("resid_pdrop", 0.1),
            attn_pdrop=hf.get("attn_pdrop", 0.1), use_flash_attn=use_flash_attn)
        model = cls(config)
        ours = model.state_dict()
        loaded = {}
        for key in ours:
            source = key.removeprefix("transformer.")
            if key == "lm_head.weight" and key not in state:
                source = "wte.weight"  # GPT-2 ties the output layer to the token embedding
            if source not in state:
                raise ValueError(f"GPT.from_pretrained: {weights} has no {source!r}")
            value = state[source]
            if source.endswith(CONV1D_WEIGHTS):
                value = value.t()
            if value.shape != ours[key].shape:
                raise ValueError(f"GPT.from_pretrained: {source!r} in {weights} has shape {tuple(value.shape)}, "
                                 f"the config asks for {tuple(ours[key].shape)}")
            loaded[key] = value
        model.load_state_dict(loaded)
        return model


def nucleus(logits, top_p):
    """``logits`` (B, V) with -inf outside the smallest set of most likely tokens whose
    probabilities sum to at least ``top_p``."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    before = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1) - F.softmax(sorted_logits, dim=-1)
    drop = before >= top_p  # the mass before a token already reaches top_p (never the first token)
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def _read_weights(path):
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{path}: reading .safetensors needs the safetensors package "
                              "(pip install safetensors), or use pytorch_model.bin") from None
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a tampered or foreign file: say which and why, in one line
        raise ValueError(f"GPT.from_pretrained: cannot read {path} as a torch weight file "
                         f"({type(error).__name__}: {str(error).splitlines()[0]})") from None


# ------------------------------------------------------- language-model helpers
def language_model_step(model, batch):
    """A Trainer step: the next-token cross-entropy of an (x, y) batch, and the same in bits."""
    _, loss = model(*batch)
    return loss, {"bits_per_char": loss.detach() / math.log(2)}


def sample_text(model, data, prompt, sequences, temperature=1.0, top_k=None, seed=0):
    """``sequences`` samples from ``prompt``, each filling one block, cut after their last
    newline (complete lines only: a sample without one is one unfinished line), as one text.
    ``data`` encodes and decodes (a ``TextDataset``)."""
    start = torch.tensor([data.encode(prompt)] * sequences, device=next(model.parameters()).device)
    out = model.generate(start, data.block_size - start.shape[1], temperature=temperature, do_sample=True,
                         top_k=top_k, generator=torch.Generator(start.device).manual_seed(seed))
    texts = [data.decode(row[start.shape[1]:].tolist()) for row in out]
    return "".join(t[:t.rfind("\n") + 1] if "\n" in t else t + "\n" for t in texts)


def generation_speed(model, prompt_ids, length, use_cache):
    """Tokens per second (of wall time, of process CPU time) generating greedily from
    ``prompt_ids`` to ``length`` tokens, one sequence."""
    start = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    steps = length - start.shape[1]
    wall, cpu = time.perf_counter(), time.process_time()
    model.generate(start, steps, use_cache=use_cache)
    if start.is_cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - wall), steps / max(time.process_time() - cpu, 1e-9)
