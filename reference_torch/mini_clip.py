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
image-to-text and text-to-image similarities, each image's own caption the target; a
caption that is the same text as another image's in the batch is a target too, not a
negative (three templates name only the shape: "a photo of a star" comes up in every batch).

The checkpoint (weights, merges, training info; read with weights_only) is kept by
``checkpoint.cached`` in ``cache_dir/mini_clip-<hash of the settings>.pt``, so every
driver that asks for the same settings reads the same file, whichever runs first.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from minidl.data import images_to_float, make_shapes

from .checkpoint import cached
from .clip import CLIP, build_model, class_features, preprocess
from .clip_tokenizer import CLIPTokenizer, learn_merges
from .train import Callback, Trainer, seed_everything, warmup_cosine

__all__ = ["MINI_CLIP", "mini_clip", "train_mini_clip", "captions", "shape_colours", "COLOURS"]

# The settings of each profile's mini-CLIP. Measured (seed 0, one thread on a busy 2-core machine):
# "default" reached 29.7 % zero-shot accuracy on 1,000 held-out images (chance 10 %) after 236 s of
# CPU time. "quick" learns the easy variant of shapes (clutter=False: one large, upright, centred,
# light shape on a plain dark background) and reached 90.7 % on 1,000 held-out clean images after
# 7-11 CPU s (2,000 images, 3 epochs; seeds 1 and 3: 85.9 % and 86.5 %); the quick profiles of the
# drivers use those clean images too. With 1,500 images it is less sure to leave the plateau of the
# loss in time: 83.4 %, 28.4 % and 94.3 % for seeds 0, 1 and 2.
# On the cluttered images the same quick settings stayed at chance: the contrastive loss sits at
# ln(batch) for the first few hundred steps, and "quick" ends there.
# Why the cluttered images are slow: the image encoder is what is slow to learn. Trained on the shape
# labels alone (a linear head on its output, cross-entropy, 10,000 images), this ViT (patch 8, width 64,
# 2 layers) reaches 18 % on held-out shapes after 3 epochs (21 CPU s) and 27 % after 10 (71 CPU s);
# patch 4, 16 pixels with patch 4, patch 16, width 128, 4 layers, lr 3e-3, batch 32, a whitened patch
# embedding and sine-cosine positions all gave 14-20 % after 2-3 epochs. A small CNN is no faster at
# first (18 % after one epoch, 23 CPU s). Captions naming only the shape stalled the contrastive loss
# at ln(batch) for 2 epochs, where the captions below (colour, size, place) let it fall.
# What made the clean variant fast: upright shapes (supervised on 2,000 clean images, this ViT reaches
# 62 % after 5 epochs, 9 CPU s; with random rotations 26 % after 4 epochs on 4,000, 13 CPU s); and the
# shape lighter than its background in every channel: with random colours (lighter or darker) the
# contrastive training on 2,000 upright shapes still gave chance after 8 epochs (21 CPU s), the text
# features of the ten class prompts collapsing onto one another (cosine 1.0 within 40 steps, seen
# with a starting logit scale of 8) while the colour words were learned.
MINI_CLIP = {
    "quick": dict(images=2000, epochs=3, width=64, vision_layers=2, text_layers=1, patch_size=8, resolution=32,
                  merges=150, batch_size=32, lr=1e-3, warmup=0.1, logit_scale=14.29, context_length=24, seed=0,
                  clutter=False),
    "default": dict(images=20000, epochs=12, width=64, vision_layers=2, text_layers=1, patch_size=8, resolution=32,
                    merges=300, batch_size=128, lr=1e-3, warmup=0.1, logit_scale=14.29, context_length=24, seed=0),
}
COLOURS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.65, 0.2), "blue": (0.1, 0.2, 0.85), "yellow": (0.9, 0.85, 0.1),
           "orange": (0.95, 0.55, 0.1), "purple": (0.55, 0.2, 0.7), "pink": (0.95, 0.55, 0.75),
           "cyan": (0.1, 0.8, 0.85), "brown": (0.5, 0.3, 0.15), "white": (0.93, 0.93, 0.93),
           "black": (0.07, 0.07, 0.07), "grey": (0.5, 0.5, 0.5)}
TEMPLATES = ("a photo of a {size} {colour} {shape} on a {background} background", "a {colour} {shape} {place}",
             "this is a photo of a {shape}", "a photo of a {shape}", "a {size} {shape} {place}",
             "this is a photo of a {colour} {shape} on a {background} background", "a {shape}")
DATA_SEED = 10_000  # the pretraining images are drawn from their own seed: none is in a run's data
HELD_OUT = 1000  # images drawn after the training ones, for the zero-shot accuracy the mini-CLIP reports


def colour_names(rgb):
    """The nearest of ``COLOURS`` to each (N, 3) colour in [0, 1]."""
    palette = np.array(list(COLOURS.values()))
    names = np.array(list(COLOURS))
    return names[((rgb[:, None] - palette[None]) ** 2).sum(-1).argmin(1)]


def shape_colours(images, mask):
    """The colour name of each image's shape: the nearest of ``COLOURS`` to its mean under the mask."""
    inside = mask[:, None].astype(np.float32)
    return colour_names((images * inside).sum((2, 3)) / np.maximum(inside.sum((1, 2, 3)), 1)[:, None])


def captions(images, mask, labels, classes, rng, per_image=4):
    """``per_image`` captions of each image (N lists of strings), from its label and mask."""
    inside = mask[:, None].astype(np.float32)
    area = inside.sum((1, 2, 3))
    shape_colour = shape_colours(images, mask)
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
    """CLIP's symmetric cross-entropy on a batch of images and one random caption of each.
    Captions repeat (there are far fewer distinct captions than images), and an image whose
    caption is the same text as another image's is no negative for it: the target of each
    image is shared equally among all texts equal to its own caption, and so for each text."""
    images, tokens = batch
    tokens = tokens[torch.arange(len(tokens)), torch.randint(0, tokens.shape[1], (len(tokens),))].to(images.device)
    texts, copy = tokens.unique(dim=0, return_inverse=True)  # each distinct caption encoded once
    logits_per_image = model.logits(model.encode_image(images), model.encode_text(texts)[copy])
    logits_per_text = logits_per_image.t()
    same = (copy[:, None] == copy[None]).float()  # symmetric, ones on the diagonal
    target = same / same.sum(1, keepdim=True)
    loss = (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_text, target)) / 2
    hit = same[torch.arange(len(images)), logits_per_image.argmax(1)]  # the closest text is an equal caption
    return loss, {"accuracy": hit.mean()}


class ClampLogitScale(Callback):
    """OpenAI's clamp of the learned temperature: logit_scale.exp() at most 100."""

    def on_batch_end(self, trainer, logs):
        with torch.no_grad():
            trainer.model.logit_scale.clamp_(0, np.log(100))


# Raised whenever the recipe (captions, loss, optimiser) changes, so that a mini-CLIP cached by an
# earlier recipe under the same settings is not read as this one's: it is part of the cache's key.
RECIPE = 2


def mini_clip(cache_dir, settings, device="cpu", log=print):
    """(model, tokenizer, info) of the mini-CLIP of ``settings``: read from its cache file when
    there, else trained and cached (``checkpoint.cached``). ``info``: the settings, the file,
    the training time and the zero-shot accuracy on 1,000 held-out images. Two drivers run
    side by side take turns under a lock on the file: the second waits and reads what the
    first one wrote. A cache file that cannot be read (truncated, tampered) is trained again."""
    def build():
        model, tokenizer, info = train_mini_clip(settings, device, log)
        return {"model": model.state_dict(), "merges": [" ".join(m) for m in tokenizer.merges], "info": info}

    def read(saved):
        model = build_model(saved["model"]).to(device)
        tokenizer = CLIPTokenizer([tuple(m.split(" ")) for m in saved["merges"]])
        if model.vocab_size != tokenizer.vocab_size:
            raise ValueError("its merges do not fit its token embedding")
        return model, tokenizer, saved["info"]

    (model, tokenizer, info), path, reused = cached(cache_dir, "mini_clip", {"recipe": RECIPE, **settings},
                                                    build, read, log)
    return model, tokenizer, {**info, "file": str(path), "cached": reused}


def train_mini_clip(settings, device="cpu", log=print):
    """Train the mini-CLIP of ``settings`` from scratch: (model, tokenizer, info)."""
    s = settings
    log(f"training a mini-CLIP ({s['images']:,} shapes images, {s['epochs']} epochs)")
    start, cpu_start = time.perf_counter(), time.process_time()
    x, y, mask, classes = make_shapes(s["images"] + HELD_OUT, size=32, seed=DATA_SEED + s["seed"],
                                      clutter=s.get("clutter", True))
    x, rng = images_to_float(x), np.random.default_rng(s["seed"])
    text = captions(x[:s["images"]], mask[:s["images"]], y[:s["images"]], classes, rng)
    distinct = sorted({c for per_image in text for c in per_image})  # far fewer than the captions
    tokenizer = CLIPTokenizer(learn_merges([c for per_image in text for c in per_image], s["merges"]))
    ids = dict(zip(distinct, tokenizer.tokenize(distinct, s["context_length"], truncate=True)))
    tokens = torch.stack([torch.stack([ids[c] for c in per_image]) for per_image in text])
    seed_everything(s["seed"])
    model = CLIP(embed_dim=s["width"], image_resolution=s["resolution"], vision_layers=s["vision_layers"],
                 vision_width=s["width"], vision_patch_size=s["patch_size"], context_length=s["context_length"],
                 vocab_size=tokenizer.vocab_size, transformer_width=s["width"],
                 transformer_heads=s["width"] // 64, transformer_layers=s["text_layers"])
    with torch.no_grad():  # the learned temperature's starting value (OpenAI's: 1 / 0.07)
        model.logit_scale.fill_(float(np.log(s["logit_scale"])))
    images = preprocess(torch.from_numpy(x), s["resolution"])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images[:s["images"]], tokens),
                                         batch_size=s["batch_size"], shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=0.1)
    steps = s["epochs"] * len(loader)
    trainer = Trainer(model, optimizer, training_step=contrastive_step, device=device, progress=False,
                      scheduler=warmup_cosine(optimizer, steps, int(s["warmup"] * steps)),
                      callbacks=[ClampLogitScale()], seed=s["seed"])
    history = trainer.fit(loader, s["epochs"])
    accuracy = zero_shot_accuracy(model.eval(), tokenizer, classes, images[s["images"]:], y[s["images"]:])
    info = {"settings": s, "train_seconds": time.perf_counter() - start,
            "train_cpu_seconds": time.process_time() - cpu_start, "final_loss": history[-1]["loss"],
            "held_out_zero_shot_accuracy": accuracy, "held_out_images": HELD_OUT,
            "vocab_size": tokenizer.vocab_size, "parameters": sum(p.numel() for p in model.parameters())}
    log(f"mini-CLIP trained in {info['train_cpu_seconds']:.0f} CPU seconds: zero-shot accuracy on {HELD_OUT:,} "
        f"held-out images {accuracy:.1%}")
    return model, tokenizer, info


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, classes, images, labels, template="a photo of a {}"):
    """The share of ``images`` (preprocessed) whose closest class prompt is their label's."""
    device = model.logit_scale.device
    weights = class_features(model, tokenizer, classes, [template])
    predicted = model.logits(model.encode_image(images.to(device)), weights).argmax(1).cpu().numpy()
    return float((predicted == np.asarray(labels)).mean())
