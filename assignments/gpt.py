"""UvA DL1 assignment 3, part 3: a GPT that predicts the next character, then writes.

The model is ``reference_torch.gpt.GPT`` (minGPT's API). Offline it learns a generated
corpus of sentences about shapes ("two small red circles are on the left.") and sums
("17+25=42"), so that what it writes can be checked: the share of its lines the grammar
accepts, and of its sums the share that are right. ``--dataset shakespeare`` follows
nanoGPT's CPU recipe for tiny Shakespeare; ``--dataset text --text-file PATH`` takes any
UTF-8 file (the course's novels). An epoch here is ``steps_per_epoch`` random blocks of
training text per batch, then an evaluation on fixed validation blocks.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import RandomSampler, Subset

from minidl.data.download import DatasetNotFoundError, Remote, data_root, ensure_file
from reference_torch.gpt import GPT, generation_speed, language_model_step, sample_text
from reference_torch.text import TextDataset, grammar_corpus, grammar_scores, read_text
from reference_torch.train import Callback, seed_everything, warmup_cosine

from . import plots
from .augmentation import EpochTimer
from .runner import binomial_se, comma_list, positive_float, positive_int

NAME = "gpt"
COURSE = "UvA DL1"
TASK = "assignment 3, part 3"
SUMMARY = ("a character-level GPT: next-character loss, samples by temperature and top-k, attention maps, "
           "grammar-checked generation, key/value-cache speed")
STATEMENT = """
Train a GPT (minGPT's architecture: token and position embeddings, blocks of masked
multi-head self-attention and an MLP with pre-layer-norm residuals) to predict the next
character of a text, with AdamW, weight decay on the Linear weights only, and gradient
clipping. Implement the causal self-attention yourself. Report the training and
validation loss, generate text at several temperatures and with top-k sampling, and
show how the model's heads attend on a sample line. How does the temperature change
what the model writes? (Offline the kit uses a generated corpus whose sentences and sums
can be checked, so that generation is scored, not only looked at.)
"""
DATASETS = ("grammar", "shakespeare", "text")
DEFAULT = True
THREADS = "small"  # a 0.8M-parameter model: one thread on two cores
TORCH = True

# The grammar by default with gpt-nano (3 layers, 3 heads, 48 dimensions), within 60 s of one CPU:
# 800 steps, 50 CPU s, validation loss 0.35 and 89 % of its lines accepted at T=1 (seed 0). gpt-micro
# (4 layers, 4 heads, 128 dimensions, the size of nanoGPT's CPU recipe, kept for real text) took
# 106 CPU s for 600 steps (0.36, 91 %), and 64 CPU s for 280 (0.41, 42 %).
PROFILES = {
    "default": {"epochs": 8, "steps_per_epoch": 100, "batch_size": 16, "lr": 1e-2, "min_lr": 2e-4, "warmup": 30,
                "betas": (0.9, 0.95), "weight_decay": 0.1, "grad_clip": 1.0, "model_type": "gpt-nano",
                "block_size": 64, "dropout": 0.0, "attention": "fused", "lines": 20000,
                "max_operand": 9, "eval_blocks": 240, "sample_sequences": 32, "temperatures": (0.5, 0.8, 1.0, 1.5), "top_k": 5,
                "text_file": None, "corpus": "grammar"},
    "quick": {"epochs": 3, "steps_per_epoch": 80, "batch_size": 16, "lr": 1e-2, "warmup": 10, "min_lr": 1e-3,
              "model_type": "gpt-nano", "block_size": 48, "lines": 3000, "eval_blocks": 64, "sample_sequences": 16,
              "temperatures": (0.5, 1.0)},
    # the course's settings: gpt-mini, block 128, AdamW 5e-4, dropout 0.1 (a GPU, or an hour of CPU)
    "full": {"epochs": 20, "steps_per_epoch": 250, "batch_size": 64, "lr": 5e-4, "min_lr": 5e-5, "warmup": 200,
             "model_type": "gpt-mini", "block_size": 128, "dropout": 0.1},
}
# nanoGPT's CPU recipe (README, "I only have a macbook"): 2,000 iterations, lr 1e-3 decayed to 1e-4,
# AdamW betas (0.9, 0.99), validation on 20 batches of 12 blocks; it reports a validation loss of 1.88.
DATASET_SETTINGS = {"grammar": {"corpus": "grammar"},
                    "shakespeare": {"corpus": "shakespeare", "epochs": 8, "steps_per_epoch": 250, "lr": 1e-3,
                                    "min_lr": 1e-4, "warmup": 100, "betas": (0.9, 0.99), "model_type": "gpt-micro",
                                    "batch_size": 12},
                    "text": {"corpus": "text", "epochs": 8, "steps_per_epoch": 250, "lr": 1e-3, "min_lr": 1e-4,
                             "warmup": 100, "model_type": "gpt-micro", "batch_size": 12}}
SHAKESPEARE = Remote("input.txt", ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
                                   "tinyshakespeare/input.txt",), "md5:6fb458f1232090904fb40fe944165e91")


def add_arguments(parser):
    parser.add_argument("--text-file", metavar="PATH", help="a UTF-8 text to learn (with --dataset text)")
    parser.add_argument("--steps-per-epoch", type=positive_int, help="optimiser steps between evaluations")
    parser.add_argument("--model-type", choices=("gpt-nano", "gpt-micro", "gpt-mini"), help="the model's size")
    parser.add_argument("--block-size", type=positive_int, help="characters of context")
    parser.add_argument("--attention", choices=("written", "fused"),
                        help="attention written out or F.scaled_dot_product_attention in training")
    parser.add_argument("--max-operand", type=positive_int, help="the largest number in the corpus's sums")
    parser.add_argument("--temperatures", type=comma_list(positive_float), help="sampling temperatures to compare")
    parser.add_argument("--top-k", type=positive_int, help="top-k of the top-k samples")


def check(config):
    if config.corpus == "text" and not config.text_file:
        return "--dataset text needs --text-file PATH (a UTF-8 text file)"
    if config.text_file:
        if config.corpus != "text":
            return f"--text-file is read with --dataset text, not --dataset {config.corpus}"
        try:
            read_text(config.text_file)
        except SystemExit as error:
            return str(error)
    if config.min_lr > config.lr:
        return f"min_lr {config.min_lr} is above --lr {config.lr}"


def load_text(ctx):
    c = ctx.config
    if c.corpus == "grammar":
        return grammar_corpus(c.lines, seed=ctx.seed, max_operand=c.max_operand)
    if c.corpus == "text":
        return read_text(c.text_file)
    folder = data_root(ctx.data_dir) / "tinyshakespeare"
    try:
        return read_text(ensure_file(SHAKESPEARE, folder))
    except DatasetNotFoundError:
        raise SystemExit(f"tiny Shakespeare is not at {folder / 'input.txt'} and could not be downloaded; put "
                         f"{SHAKESPEARE.urls[0]} there (or give --data-dir, or --dataset text --text-file)") from None


class Samples(Callback):
    """A sample after epochs 1, 2, 4, 8, ... (and the last): what the model writes as it learns."""

    def __init__(self, write, epochs):
        self.write, self.epochs, self.samples = write, epochs, {}

    def on_epoch_end(self, trainer, metrics):
        if trainer.epoch & (trainer.epoch - 1) == 0 or trainer.epoch == self.epochs:
            self.samples[trainer.epoch] = self.write(trainer.model)

    def state_dict(self):
        return {"samples": self.samples}

    def load_state_dict(self, state):
        self.samples = {int(k): v for k, v in state["samples"].items()}


def shown(char):
    return {"\n": "⏎", " ": "␣"}.get(char, char)


def run(ctx):
    c = ctx.config
    text = load_text(ctx)
    data = TextDataset(text, c.block_size)
    train, val = data.split(0.9)
    prompt = "\n" if "\n" in data.stoi else text[0]
    grammar = c.corpus == "grammar"
    seed_everything(ctx.seed)
    config = GPT.get_default_config()
    config.model_type, config.vocab_size, config.block_size = c.model_type, data.get_vocab_size(), c.block_size
    config.embd_pdrop = config.resid_pdrop = config.attn_pdrop = c.dropout
    config.use_flash_attn = c.attention == "fused"
    model = GPT(config).to(ctx.device)
    untrained = sample_text(model, data, prompt, c.sample_sequences, seed=ctx.seed)

    optimizer = model.configure_optimizers(SimpleNamespace(learning_rate=c.lr, betas=c.betas,
                                                           weight_decay=c.weight_decay))
    steps = c.epochs * c.steps_per_epoch
    scheduler = warmup_cosine(optimizer, steps, min(c.warmup, steps), min_lr_ratio=c.min_lr / c.lr)
    samples = Samples(lambda m: sample_text(m, data, prompt, 4, seed=ctx.seed), c.epochs)
    trainer = ctx.trainer("gpt", model, optimizer, training_step=language_model_step,
                          eval_step=language_model_step, scheduler=scheduler,
                          grad_clip=c.grad_clip, callbacks=[samples, EpochTimer()])
    blocks = ctx.loader(train, sampler=RandomSampler(train, replacement=True,
                                                     num_samples=c.steps_per_epoch * c.batch_size))
    starts = np.linspace(0, len(val) - 1, min(c.eval_blocks, len(val))).astype(int).tolist()
    history = ctx.fit(trainer, blocks, val_loader=ctx.loader(Subset(val, starts), batch_size=64))
    model.eval()

    settings = [(t, None) for t in sorted({*c.temperatures, 1.0})] + [(1.0, c.top_k)]  # T=1 is the one scored
    texts = {s: sample_text(model, data, prompt, c.sample_sequences, *s, seed=ctx.seed + 1) for s in settings}
    tokens = c.steps_per_epoch * c.batch_size * c.block_size
    speed = {"cached": generation_speed(model, data.encode(prompt), data.block_size, True),
             "uncached": generation_speed(model, data.encode(prompt), data.block_size, False)}
    last = history[-1]
    metrics = {"dataset": ctx.dataset, "chars": len(text), "vocab_size": data.get_vocab_size(),
               "parameters": sum(p.numel() for p in model.parameters()), "model_type": c.model_type,
               "block_size": c.block_size, "steps": trainer.step, "train_loss": last["loss"],
               "val_loss": last["val_loss"], "val_bits_per_char": last["val_bits_per_char"],
               "uniform_loss": math.log(data.get_vocab_size()),
               "train_tokens_per_cpu_second": tokens * len(history) / sum(h["cpu_seconds"] for h in history),
               "generate_tokens_per_second_cached": speed["cached"][0],
               "generate_tokens_per_second": speed["uncached"][0],
               "generate_tokens_per_cpu_second_cached": speed["cached"][1],
               "generate_tokens_per_cpu_second": speed["uncached"][1],
               "samples": {f"T={t:g}" + (f", top-k {k}" if k else ""): v for (t, k), v in texts.items()},
               "samples_during_training": samples.samples, "torch_threads": torch.get_num_threads()}
    if grammar:
        scores = {s: grammar_scores(v, c.max_operand) for s, v in texts.items()}
        scored, before = scores[(1.0, None)], grammar_scores(untrained, c.max_operand)
        metrics.update(untrained_acceptance=before["acceptance"],
                       acceptance=scored["acceptance"], sum_accuracy=scored["sum_accuracy"],
                       scores={metrics_key(s): {**v, "sum_share": v["sums"] / max(v["lines"], 1)}
                               for s, v in scores.items()})
        noise = (binomial_se(scored["acceptance"], max(scored["lines"], 1)) ** 2
                 + binomial_se(before["acceptance"], max(before["lines"], 1)) ** 2) ** 0.5
        ctx.headline("generated lines the grammar accepts (T = 1)", scored["acceptance"], before["acceptance"],
                     "the untrained model", noise=noise)
    else:
        ctx.headline("validation loss", last["val_loss"], metrics["uniform_loss"], "a uniform guess", unit="nats",
                     higher_is_better=False)
    figures(ctx, model, data, val, history, texts, samples.samples, untrained, metrics)
    return metrics


def metrics_key(setting):
    temperature, top_k = setting
    return f"T={temperature:g}" + (f", top-k {top_k}" if top_k else "")


def first_lines(text, count=10, width=64):
    return "\n".join(line[:width] for line in text.split("\n")[:count])


def figures(ctx, model, data, val, history, texts, during, untrained, metrics):
    c = ctx.config
    name = {"grammar": "the grammar corpus", "shakespeare": "tiny Shakespeare"}.get(ctx.dataset, c.text_file)
    fig = plots.training_curves({"gpt": history}, metrics=("loss", "bits_per_char"),
                                xlabel=f"epoch ({c.steps_per_epoch} steps of {c.batch_size} blocks)",
                                units={"loss": "cross-entropy (nats per character)",
                                       "bits_per_char": "bits per character"},
                                titles={"loss": "Loss", "bits_per_char": "Bits per character"},
                                title=f"{c.model_type} on {name}")
    for ax, level in zip(fig.axes, (metrics["uniform_loss"], metrics["uniform_loss"] / math.log(2))):
        ax.axhline(level, color="0.5", ls=":", lw=1, label=f"uniform over {data.get_vocab_size()} characters")
        ax.legend(fontsize=8)
    ctx.save_figure(fig, "loss", f"Training (solid, the mean over each epoch's batches) and validation (dashed, "
                    f"{min(c.eval_blocks, len(val))} fixed blocks of the last 10 % of the text) loss, in nats and in "
                    "bits per character; dotted: a model that spreads its probability evenly over the characters.")

    panels = {"untrained": first_lines(untrained, 6)}
    panels.update({f"after epoch {e}": first_lines(t, 6) for e, t in sorted(during.items())})
    ctx.save_figure(plots.text_panels(panels, "What the model writes as it learns (T=1, each from a new line)"),
                    "samples_during_training", "Samples of complete lines, before training and after epochs 1, 2, "
                    "4, ... and the last, at temperature 1 with a fixed seed.")
    scores = metrics.get("scores", {})
    panels = {metrics_key(s) + (f": {scores[metrics_key(s)]['acceptance']:.0%} of lines accepted" if scores else ""):
              first_lines(t) for s, t in texts.items()}
    ctx.save_figure(plots.text_panels(panels, f"Samples after training, by temperature T and top-k ({name})"),
                    "samples", "Samples of the trained model at each temperature, and at T=1 keeping only the "
                    f"{c.top_k} most likely characters (top-k); the first lines of {c.sample_sequences} samples of "
                    f"one block each.")

    line = attention_line(val.text, c.block_size, ctx.dataset == "grammar")
    weights = model.attention_weights(torch.tensor([data.encode(line)], device=ctx.device))[-1][0].cpu().numpy()
    fig = plots.attention_maps(weights, [shown(ch) for ch in line], f"Attention of the last layer (layer "
                               f"{len(model.transformer.h)}) on {line.strip()!r}")
    ctx.save_figure(fig, "attention", "Attention weights of every head of the last layer: row i is the distribution "
                    "of character i over itself and the characters before it (⏎ a new line, ␣ a space); above the "
                    "diagonal is the future, masked to 0.")
    metrics["attention_line"] = line

    if scores:
        bars = {"untrained": {"lines accepted": 100 * metrics["untrained_acceptance"]}}
        bars.update({key: {"lines accepted": 100 * v["acceptance"], "sums right": 100 * v["sum_accuracy"]}
                     for key, v in scores.items()})
        ctx.save_figure(plots.bar_chart(bars, "Generated lines the grammar accepts, and right sums", "share (%)",
                                        fmt="{:.0f}", ylim=(0, 110), xlabel="sampling"), "grammar",
                        "Share of generated lines that are sentences of the grammar with agreement or well-formed "
                        "sums, and of those sums the share whose result is right, per sampling setting; the untrained "
                        "model's lines for comparison.")
        ctx.table("grammar", [{"sampling": k, **{f: v[f] for f in ("lines", "acceptance", "sums", "sum_accuracy")}}
                              for k, v in scores.items()], "Generated lines scored by the grammar.",
                  columns={"sampling": "sampling", "lines": "complete lines", "acceptance": ("accepted", "{:.1%}"),
                           "sums": "sums", "sum_accuracy": ("sums right", "{:.1%}")})
    notes(ctx, metrics)


def attention_line(text, block_size, prefer_sum):
    """A line of ``text`` (with the newline before it) for the attention figure: a sum if asked."""
    lines = text.split("\n")[1:-1]  # whole lines only
    pick = next((l for l in lines if prefer_sum and "=" in l), None) or next(l for l in lines if l.strip())
    return ("\n" + pick)[:block_size]


def notes(ctx, m):
    c = ctx.config
    ctx.note(f"{m['model_type']} ({m['parameters']:,} parameters) trained {m['steps']} steps of {c.batch_size} blocks "
             f"of {c.block_size} characters: validation loss {m['val_loss']:.3f} nats ({m['val_bits_per_char']:.2f} "
             f"bits) per character, against {m['uniform_loss']:.2f} for a uniform guess over {m['vocab_size']} "
             f"characters (training loss {m['train_loss']:.3f}).")
    if "acceptance" in m:
        ctx.note(f"At temperature 1 the grammar accepts {m['acceptance']:.0%} of the generated lines (the untrained "
                 f"model's: {m['untrained_acceptance']:.0%}), and {m['sum_accuracy']:.0%} of the generated sums "
                 "are right: " + ", ".join(f"{k} {v['acceptance']:.0%} accepted" for k, v in m["scores"].items())
                 + ".")
        plain, top = m["scores"]["T=1"], m["scores"][f"T=1, top-k {c.top_k}"]
        ctx.note(f"Sums are {plain['sum_share']:.0%} of the lines at T=1 and {top['sum_share']:.0%} with top-k "
                 f"{c.top_k}: a line starts with one of ten digits or with a word, and top-k keeps only the k "
                 "likeliest next characters.")
    ctx.note(f"Training (its epochs with their evaluations and samples) ran at "
             f"{m['train_tokens_per_cpu_second']:,.0f} characters per CPU second "
             f"({m['torch_threads']} torch thread(s), "
             f"{c.attention} attention); generating one block of {c.block_size} characters ran at "
             f"{m['generate_tokens_per_cpu_second_cached']:,.0f} tokens per CPU second with the key/value cache and "
             f"{m['generate_tokens_per_cpu_second']:,.0f} without it (benchmarks/bench_gpt.py compares longer blocks).")
