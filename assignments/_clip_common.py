"""What the three CLIP drivers share (clip_zeroshot, visual_prompting, deep_prompting): the
model and tokenizer, the data with its class names, and scoring a classifier.

With ``--weights`` the model is OpenAI's CLIP from a state-dict file and its tokenizer reads
OpenAI's merge file (``--vocab``, or found in an installed clip / open_clip package).
Without, it is the mini-CLIP of ``reference_torch.mini_clip``, trained once and cached in
``<runs>/mini_clip/`` beside the run folders (``runs/`` or the ``--out`` of a ``--default``
run), under a name made from its settings: the first driver that needs it trains it, the
others (and later runs) read it, in any order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reference_torch.clip import class_features, load_clip
from reference_torch.clip_tokenizer import CLIPTokenizer
from reference_torch.mini_clip import COLOURS, MINI_CLIP, mini_clip, shape_colours
from reference_torch.train import warmup_cosine

from .runner import binomial_se, positive_float, positive_int

COURSE_TEMPLATE = "This is a photo of a {}"
CLEAN_SHAPES = ("On this profile the mini-CLIP learned, and this run uses, the clean variant of shapes: one "
                "large, upright, centred shape, lighter than its plain dark background, without clutter (the "
                "cluttered images take the mini-CLIP minutes to learn; see reference_torch.mini_clip).")
REAL_WEIGHTS = ("To use OpenAI's weights: --weights PATH (a state dict of one of their vision-transformer CLIPs, as "
                "ViT-B-32.state_dict.pt) --vocab bpe_simple_vocab_16e6.txt.gz --dataset cifar10 (or cifar100).")


def add_arguments(parser):
    parser.add_argument("--weights", metavar="PATH", help="OpenAI CLIP weights as a state dict, e.g. of ViT-B/32 "
                        "(None: the mini-CLIP trained here on shapes)")
    parser.add_argument("--vocab", metavar="PATH", help="OpenAI's bpe_simple_vocab_16e6.txt.gz, with --weights "
                        "(None: found in an installed clip or open_clip package)")
    parser.add_argument("--test-size", type=positive_int, help="test images scored (None: the whole test set)")
    parser.add_argument("--shapes-images", type=positive_int, help="shapes images generated (80/10/10 split)")
    parser.add_argument("--test-noise", type=positive_float, help="std of the gaussian test noise, after "
                        "CLIP's normalisation (the course's --test_noise)")


def check(config):
    """``needs_weights``: the name of a real dataset (its DATASET_SETTINGS), where the mini-CLIP knows nothing."""
    if config.weights and not Path(config.weights).is_file():
        return f"--weights {config.weights}: no weight file there"
    if config.vocab and not Path(config.vocab).is_file():
        return f"--vocab {config.vocab}: no merge file there (OpenAI's bpe_simple_vocab_16e6.txt.gz)"
    if config.needs_weights and not config.weights:
        return (f"--dataset {config.needs_weights} needs OpenAI's weights (--weights PATH): the offline "
                "mini-CLIP knows only shapes")


def load_model(ctx):
    """(clip, tokenizer, description) on the run's device, CLIP frozen."""
    c = ctx.config
    if c.weights:
        try:
            model, tokenizer = load_clip(c.weights), CLIPTokenizer.from_file(c.vocab)
        except (OSError, ValueError, RuntimeError) as error:
            raise SystemExit(f"--weights {c.weights}: {error}".splitlines()[0]) from None
        description = f"OpenAI CLIP from {c.weights}"
    else:
        settings = mini_clip_settings(ctx)
        model, tokenizer, info = mini_clip(ctx.out.parent / "mini_clip", settings, ctx.device, ctx.log)
        trained = "read from its cache" if info["cached"] else f"trained here in {info['train_cpu_seconds']:.0f} CPU s"
        clean = not settings.get("clutter", True)
        description = (f"mini-CLIP ({info['parameters']:,} parameters, {settings['images']:,} "
                       f"{'clean ' if clean else ''}shapes images with "
                       f"generated captions, {settings['epochs']} epochs, {trained}; zero-shot accuracy "
                       f"{info['held_out_zero_shot_accuracy']:.1%} on {info['held_out_images']:,} held-out images: "
                       f"{info['file']})")
        ctx.note(f"No --weights: the model is a {description}; chance is 10%. {REAL_WEIGHTS}")
        if clean:
            ctx.note(CLEAN_SHAPES)
    return model.to(ctx.device).eval().requires_grad_(False), tokenizer, description


def mini_clip_settings(ctx):
    """The settings of the profile's mini-CLIP: "quick"'s learns clean shapes (``clutter=False``)."""
    return MINI_CLIP["quick" if ctx.quick else "default"]


def load_model_and_data(ctx):
    """(CLIP, its tokenizer, a description of it, the data splits, the class names)."""
    return (*load_model(ctx), *load_data(ctx))


def accuracy_columns(config, first):
    """The table columns of a prompt or method (``first``: its key) and its test accuracies."""
    return {first: first, "trainable_parameters": ("trainable parameters", "{:,}"),
            "test": ("test (%)", "{:.1%}"), "clean_test": ("test, unshifted images (%)", "{:.1%}"),
            "noisy_test": (f"test, noise std {config.test_noise:g} (%)", "{:.1%}")}


def load_data(ctx):
    """(splits, class names as words), the test split cut to --test-size. The shapes are drawn as
    the profile's mini-CLIP learned them: clean ones (no clutter) on the quick profile."""
    c = ctx.config
    clutter = mini_clip_settings(ctx).get("clutter", True)
    splits = ctx.load_dataset(**({"n": c.shapes_images, "clutter": clutter} if ctx.dataset == "shapes" else {}))
    if c.test_size:
        splits.test = splits.test.subset(np.arange(min(c.test_size, len(splits.test))))
    return splits, [str(name).replace("_", " ") for name in splits.classes]


def text_features(ctx, clip, tokenizer, classes, templates):
    return class_features(clip, tokenizer, classes, templates).to(ctx.device)


@torch.no_grad()
def logits_of(ctx, model, x, batch_size=256):
    """The model's logits (N, classes) of images ``x`` (N, 3, H, W) in [0, 1], on the CPU."""
    model.eval()
    return torch.cat([model(ctx.to_device(x[i:i + batch_size])).float().cpu() for i in range(0, len(x), batch_size)])


def accuracy(logits, y, k=1):
    """Top-k accuracy: the share of images whose class is among the k largest logits."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices.numpy()
    return float((top == np.asarray(y)[:, None]).any(1).mean())


def difference_noise(accuracy, count):
    """One standard error of the difference of two accuracies on ``count`` test images."""
    return binomial_se(accuracy, count) * 2 ** 0.5


def parameter_counts(model):
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters()) - trainable


SHIFTS = {"none": "the images as they are", "invert": "colours inverted (1 - x)",
          "dark": "darkened to a third with a blue cast"}


def shifted(x, shift):
    """The images ``x`` (N, 3, H, W) in [0, 1] under one of ``SHIFTS``."""
    if shift == "invert":
        return 1.0 - x
    if shift == "dark":
        return x * np.array([0.3, 0.3, 0.5], np.float32).reshape(1, 3, 1, 1) + np.float32(0.1)
    return x


def scores(ctx, model, x, x_unshifted, y):
    """Accuracy on the test images ``x``, on the same images unshifted, and on ``x`` under noise."""
    result = {"test": accuracy(logits_of(ctx, model, x), y), "clean_test": accuracy(logits_of(ctx, model, x_unshifted), y)}
    model.noise = (ctx.config.test_noise, torch.Generator().manual_seed(ctx.seed))
    result["noisy_test"] = accuracy(logits_of(ctx, model, x), y)
    model.noise = None
    return result


def train_prompt(ctx, model, data, label, lr=None):
    """Train the prompts of ``model`` (a PromptCLIP) on data["train"]: SGD with momentum 0.9 and
    no weight decay (the course's), or Adam, at ``lr`` (default --lr); warm-up then cosine.
    Returns the history."""
    c, lr = ctx.config, lr or ctx.config.lr
    parameters = list(model.prompts().parameters())
    optimizer = (torch.optim.SGD(parameters, lr=lr, momentum=0.9, weight_decay=0.0) if c.optimizer == "sgd"
                 else torch.optim.Adam(parameters, lr=lr))
    train = ctx.loader(*data["train"], shuffle=True)
    steps = c.epochs * len(train)
    trainer = ctx.trainer(label, model, optimizer,
                          scheduler=warmup_cosine(optimizer, steps, min(c.warmup, steps // 10)))
    return ctx.fit(trainer, train, val_loader=ctx.loader(*data["val"], batch_size=256))


def cross_dataset(ctx, splits, classes):
    """The course's cross-dataset evaluation: two datasets' classes in one classifier, CIFAR-10's
    then CIFAR-100's (110-way), each test image's target in its own dataset's range. Returns
    (the class names together, [(dataset, test images, targets among them), ...]), or None when
    the other dataset's files are not here. Offline the second "dataset" is the shapes test
    images (unshifted) labelled by their shape's colour, the 12 colour words of the mini-CLIP's
    captions: 10 + 12 = 22 classes."""
    from minidl.data import DatasetNotFoundError, load_dataset
    own = (ctx.dataset, splits.test.x, splits.test.y, classes)
    if ctx.dataset == "shapes":
        names = list(COLOURS)
        colours = shape_colours(splits.test.x, splits.test.mask)
        parts = [own, ("shape_colours", splits.test.x, np.array([names.index(c) for c in colours]), names)]
    else:
        other_name = "cifar100" if ctx.dataset == "cifar10" else "cifar10"
        try:
            other = load_dataset(other_name, data_dir=ctx.data_dir, seed=ctx.seed, download=False)
        except DatasetNotFoundError:
            return None
        test = other.test.subset(np.arange(min(ctx.config.test_size or len(other.test), len(other.test))))
        parts = [own, (other_name, test.x, test.y, [str(n).replace("_", " ") for n in other.classes])]
        parts.sort(key=lambda part: part[0])  # cifar10 first
    together, offset, sets = [], 0, []
    for name, x, y, names in parts:
        sets.append((name, x, np.asarray(y) + offset))
        together += names
        offset += len(names)
    return together, sets
