"""A mini-CLIP: the same ``reference_torch.clip.CLIP`` with few layers and a small width,
trained contrastively from scratch on ``shapes`` images and captions generated from what
each image shows, with BPE merges learned from those captions. It stands in for OpenAI's
weights offline, so that zero-shot classification and prompting can be studied here.

    model, tokenizer, info = mini_clip(cache_dir, MINI_CLIP["default"])   # trains once, then reads

A caption names the shape (the label) and what the image's mask tells: the shape's size
and colour (the mean colour under the mask, by the nearest of 12 colour names), the
background's colour and where the shape sits, in one of several templates ("a photo of
a small red star on a blue background", "a green ring at the top left", ...). Every
step draws one of each image's captions. The loss is CLIP's: cross-entropy of the
image-to-text and text-to-image similarities, each image's own caption the target.

The checkpoint (weights, merges, settings; read with weights_only) is written atomically
to ``cache_dir/mini_clip_<key>.pt``, the key a hash of the settings, so every driver that
asks for the same settings reads the same file, whichever runs first.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minidl.data import images_to_float, make_shapes

from .checkpoint import load_checkpoint, save_checkpoint
from .clip import CLIP, build_model, class_features, preprocess
from .clip_tokenizer import CLIPTokenizer, learn_merges
from .train import Callback, Trainer, seed_everything, warmup_cosine

__all__ = ["MINI_CLIP", "mini_clip", "captions", "COLOURS"]

# The settings of each profile's mini-CLIP. Measured (seed 0, one thread on a busy 2-core machine):
# "default" reaches 28.8 % zero-shot accuracy on 1,000 held-out images (chance 10 %) after 307 s of
# CPU time; "quick" (a few seconds) stays near chance (10-12 %): the contrastive loss sits at
# ln(batch) for the first few hundred steps, and "quick" ends there. It tests the plumbing only.
MINI_CLIP = {
    "quick": dict(images=1000, epochs=3, width=64, vision_layers=2, text_layers=1, patch_size=8, merges=150,
                  batch_size=32, lr=1e-3, context_length=24, seed=0),
    "default": dict(images=20000, epochs=12, width=64, vision_layers=2, text_layers=1, patch_size=8, merges=300,
                    batch_size=128, lr=1e-3, context_length=24, seed=0),
}
COLOURS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.65, 0.2), "blue": (0.1, 0.2, 0.85), "yellow": (0.9, 0.85, 0.1),
           "orange": (0.95, 0.55, 0.1), "purple": (0.55, 0.2, 0.7), "pink": (0.95, 0.55, 0.75),
           "cyan": (0.1, 0.8, 0.85), "brown": (0.5, 0.3, 0.15), "white": (0.93, 0.93, 0.93),
           "black": (0.07, 0.07, 0.07), "grey": (0.5, 0.5, 0.5)}
TEMPLATES = ("a photo of a {size} {colour} {shape} on a {background} background", "a {colour} {shape} {place}",
             "this is a photo of a {shape}", "a photo of a {shape}", "a {size} {shape} {place}",
             "this is a photo of a {colour} {shape} on a {background} background", "a {shape}")
DATA_SEED = 10_000  # the pretraining images are drawn from their own seed: none is in a run's data


def colour_names(rgb):
    """The nearest of ``COLOURS`` to each (N, 3) colour in [0, 1]."""
    palette = np.array(list(COLOURS.values()))
    names = np.array(list(COLOURS))
    return names[((rgb[:, None] - palette[None]) ** 2).sum(-1).argmin(1)]


def captions(images, mask, labels, classes, rng, per_image=4):
    """``per_image`` captions of each image (N lists of strings), from its label and mask."""
    inside = mask[:, None].astype(np.float32)
    area = inside.sum((1, 2, 3))
    shape_colour = colour_names((images * inside).sum((2, 3)) / np.maximum(area, 1)[:, None])
    background = colour_names((images * (1 - inside)).sum((2, 3)) / np.maximum(inside[0].size - area, 1)[:, None])
    size = np.where(area < np.median(area), "small", "large")
    ys, xs = np.mgrid[0:mask.shape[1], 0:mask.shape[2]] / np.array(mask.shape[1:]).reshape(2, 1, 1)
    centre_y = (mask * ys).sum((1, 2)) / np.maximum(area, 1)
    centre_x = (mask * xs).sum((1, 2)) / np.maximum(area, 1)
    rows, columns = np.array(["top", "middle", "bottom"]), np.array(["left", "centre", "right"])
    place = [f"at the {r} {c}" if (r, c) != ("middle", "centre") else "in the centre" for r, c in
             zip(rows[np.clip((centre_y * 3).astype(int), 0, 2)], columns[np.clip((centre_x * 3).astype(int), 0, 2)])]
    chosen = rng.integers(0, len(TEMPLATES), (len(labels), per_image))
    return [[TEMPLATES[t].format(shape=classes[labels[i]], colour=shape_colour[i], size=size[i],
                                 background=background[i], place=place[i]) for t in chosen[i]]
            for i in range(len(labels))]


def contrastive_step(model, batch):
    """CLIP's symmetric cross-entropy on a batch of images and one random caption of each."""
    images, tokens = batch
    tokens = tokens[torch.arange(len(tokens)), torch.randint(0, tokens.shape[1], (len(tokens),))]
    logits_per_image, logits_per_text = model(images, tokens.to(images.device))
    target = torch.arange(len(images), device=images.device)
    loss = (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_text, target)) / 2
    return loss, {"accuracy": (logits_per_image.argmax(1) == target).float().mean()}


class ClampLogitScale(Callback):
    """OpenAI's clamp of the learned temperature: logit_scale.exp() at most 100."""

    def on_batch_end(self, trainer, logs):
        with torch.no_grad():
            trainer.model.logit_scale.clamp_(0, np.log(100))


def _key(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def mini_clip(cache_dir, settings, device="cpu", log=print):
    """(model, tokenizer, info) of the mini-CLIP of ``settings``: read from its cache file when
    there, else trained and cached. ``info``: the settings, the file, the training time and
    the zero-shot accuracy on 1,000 held-out images."""
    path = Path(cache_dir) / f"mini_clip_{_key(settings)}.pt"
    if path.is_file():
        saved = load_checkpoint(path)
        if saved.get("settings") != settings:
            raise SystemExit(f"{path}: its settings differ from the ones asked for; delete the file to retrain")
        model = build_model(saved["model"]).to(device)
        tokenizer = CLIPTokenizer([tuple(m.split(" ")) for m in saved["merges"]])
        return model, tokenizer, {**saved["info"], "file": str(path), "cached": True}
    s = settings
    log(f"training a mini-CLIP ({s['images']:,} shapes images, {s['epochs']} epochs) into {path}")
    start, cpu_start = time.perf_counter(), time.process_time()
    x, y, mask, classes = make_shapes(s["images"] + 1000, size=32, seed=DATA_SEED + s["seed"])
    x, rng = images_to_float(x), np.random.default_rng(s["seed"])
    text = captions(x, mask, y, classes, rng)
    tokenizer = CLIPTokenizer(learn_merges([c for per_image in text for c in per_image], s["merges"]))
    tokens = torch.stack([tokenizer.tokenize(t, s["context_length"], truncate=True) for t in text[:s["images"]]])
    seed_everything(s["seed"])
    model = CLIP(embed_dim=s["width"], image_resolution=32, vision_layers=s["vision_layers"], vision_width=s["width"],
                 vision_patch_size=s["patch_size"], context_length=s["context_length"],
                 vocab_size=tokenizer.vocab_size, transformer_width=s["width"],
                 transformer_heads=s["width"] // 64, transformer_layers=s["text_layers"])
    images = preprocess(torch.from_numpy(x), 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[:s["images"]], tokens),
                                         batch_size=s["batch_size"], shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=0.1)
    steps = s["epochs"] * len(loader)
    trainer = Trainer(model, optimizer, training_step=contrastive_step, device=device, progress=False,
                      scheduler=warmup_cosine(optimizer, steps, steps // 10), callbacks=[ClampLogitScale()],
                      seed=s["seed"])
    history = trainer.fit(loader, s["epochs"])
    model.eval()
    with torch.no_grad():
        weights = class_features(model, tokenizer, classes, ["a photo of a {}"])
        held_out = images[s["images"]:].to(device)
        predicted = model.logits(model.encode_image(held_out), weights).argmax(1).cpu().numpy()
    info = {"settings": s, "train_seconds": time.perf_counter() - start,
            "train_cpu_seconds": time.process_time() - cpu_start, "final_loss": history[-1]["loss"],
            "held_out_zero_shot_accuracy": float((predicted == y[s["images"]:]).mean()),
            "vocab_size": tokenizer.vocab_size, "parameters": sum(p.numel() for p in model.parameters())}
    save_checkpoint({"model": model.state_dict(), "merges": [" ".join(m) for m in tokenizer.merges],
                     "settings": s, "info": info}, path)
    log(f"mini-CLIP trained in {info['train_seconds']:.0f} s: zero-shot accuracy on 1,000 held-out images "
        f"{info['held_out_zero_shot_accuracy']:.1%}")
    return model, tokenizer, {**info, "file": str(path), "cached": False}
