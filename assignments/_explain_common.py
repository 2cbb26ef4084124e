"""What the four interpretability drivers share (explanations, model_bias, adversarial,
feature_visualization): the data, a small CNN with its normalisation inside, training
it through the runner (``ctx.trainer``, ``ctx.fit``) or loading it with ``--checkpoint``,
and picking the images to show. Everything about explaining lives in
``reference_torch.explain``; this module only wires a model to it.

The model is ``reference_torch.explain.small_cnn``'s (its normalisation inside: it takes
images in [0, 1]). It lives on the run's device, and every batch of images reaches it
through ``ctx.to_device``.

The drivers train the same model, so it is trained once per configuration and cached:
``<cache>/<dataset>-<hash>.pt``, the hash of everything that changes the trained weights
(``training_recipe``), in ``$MINIDL_MODEL_CACHE`` or else ``.cache`` beside the run
folders (``runs/.cache`` for ``runs/<name>``). Two drivers run side by side take turns
under ``minidl.fileio.file_lock``: the second finds the first one's file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch

import minidl.data
from minidl.errors import InputError
from minidl.fileio import file_lock
from reference_torch.checkpoint import load_checkpoint, save_checkpoint
# the model itself, which the drivers and tests also reach here (C.blocks, C.build_model, ...)
from reference_torch.explain.small_cnn import WIDTHS, attribution_methods, blocks, build_model, read_model  # noqa: F401
from reference_torch.train import evaluate, seed_everything, warmup_cosine

from .runner import existing_file, positive_int

# The training settings every driver's PROFILES start from: images generated (shapes
# only), training images used, epochs, batch size and peak learning rate (Adam, warm-up
# then cosine decay). Measured on `shapes` (seed 0, chance 10 %): 64 % test accuracy
# after 4 epochs of 8,000 images in batches of 32 (59 % in batches of 64), 70-73 % after
# 6-8 epochs; the quick settings reach about 20 %, still above chance.
TRAINING = {"shapes_images": 10000, "train_images": 8000, "epochs": 4, "batch_size": 32, "lr": 3e-3}
QUICK_TRAINING = {"shapes_images": 2000, "train_images": 1600, "epochs": 2}
DATASET_SETTINGS = {"cifar10": {"train_images": 20000, "epochs": 4, "batch_size": 64}}
# Part of every cache key: raise it when train_model changes in a way that changes the
# weights it returns, so that older cached models are not mistaken for new ones.
RECIPE_VERSION = 1
CACHE_ENV = "MINIDL_MODEL_CACHE"


def model_file(text):
    """--checkpoint, --models: a model.pt of these drivers (``read_model``), checked before the run starts."""
    existing_file(text)
    try:
        read_model(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


model_file.__name__ = "model file"


def resnet18_weights_file(text):
    """--weights: ImageNet ResNet-18 weights in torchvision's format, checked (readable,
    every key and shape fitting) before the run starts."""
    from reference_torch.models import load_torchvision_weights, resnet18
    existing_file(text)
    try:
        load_torchvision_weights(resnet18(num_classes=1000), text)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


resnet18_weights_file.__name__ = "weights file"


def add_model_arguments(parser, checkpoint=True):
    if checkpoint:
        parser.add_argument("--checkpoint", type=model_file, default=None, metavar="PATH",
                            help="a model.pt written by an earlier run of an interpretability driver on the "
                                 "same dataset, e.g. runs/explanations/model.pt (default: train a small CNN now)")
    parser.add_argument("--train-images", type=positive_int,
                        help="training images used (a stratified subset of the training split)")


def load_data(ctx, bias=False):
    """``Splits`` of the run's dataset (float images in [0, 1]; ``shapes`` has object masks)."""
    options = {"n": ctx.config.shapes_images} if ctx.dataset == "shapes" else {}
    return ctx.load_dataset(bias=bias, **options)


# ------------------------------------------------------------------------ the model
def train_model(ctx, splits, label):
    """Train the small CNN on (a stratified subset of) ``splits.train`` with the run's
    trainer (device, AMP, checkpoints for --resume; its history kept under ``label``).
    Returns the model in eval mode and what the metrics report about its training."""
    cfg = ctx.config
    train = splits.train
    if cfg.train_images < len(train):
        _, keep = minidl.data.stratified_split(train.y, cfg.train_images, ctx.seed)
        train = train.subset(keep)
    seed_everything(ctx.seed)  # the same initial weights for every model of a run
    model = build_model(splits.in_shape, splits.num_classes, splits.mean, splits.std)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loader = ctx.loader(train.x, train.y, shuffle=True)
    schedule = warmup_cosine(optimizer, cfg.epochs * len(loader), max(1, len(loader) // 2))
    trainer = ctx.trainer(label, model, optimizer, scheduler=schedule)
    ctx.log(f"training {label}: {len(train):,} images x {cfg.epochs} epochs (Adam, lr {cfg.lr:g}, "
            f"batch {cfg.batch_size}) on {ctx.device}")
    start = time.perf_counter()
    history = ctx.fit(trainer, loader)
    return model.eval(), {"train_images": len(train), "epochs": cfg.epochs,
                          "train_seconds": time.perf_counter() - start,
                          "final_train_accuracy": history[-1]["accuracy"]}


def test_accuracy(ctx, model, split, limit=None):
    """Accuracy on the first ``limit`` images of ``split`` (all of them by default)."""
    return evaluate(model, ctx.loader(split.x[:limit], split.y[:limit], batch_size=500))["accuracy"]


def save_model(ctx, model, splits, path, **extra):
    """``model`` as a model.pt (weights and 'arch'), with ``extra`` plain-data entries."""
    if ctx.is_main:
        arch = {"in_shape": list(splits.in_shape), "num_classes": splits.num_classes, "widths": list(WIDTHS),
                "mean": model.normalize.mean.flatten().tolist(), "std": model.normalize.std.flatten().tolist(),
                "dataset": splits.name, "classes": [str(c) for c in splits.classes]}
        save_checkpoint({"model": model.state_dict(), "arch": arch, **extra}, path)


def load_model(ctx, path, splits, option="--checkpoint", state=None):
    """A model saved by ``save_model``, on the run's device; checks that it fits the
    dataset. ``option`` names the command-line option the path came from; ``state``:
    the file's contents when already read."""
    try:
        model, arch = read_model(path, state)
    except ValueError as error:
        raise SystemExit(f"{option}: {error}") from None
    if arch.get("dataset") != splits.name:  # shapes and CIFAR-10 images have the same shape
        raise SystemExit(f"{option} {path}: the model was trained on {arch.get('dataset')}, but this run uses "
                         f"{splits.name}; pass --dataset {arch.get('dataset')} or a model for {splits.name}")
    if list(arch["in_shape"]) != list(splits.in_shape) or arch["num_classes"] != splits.num_classes:
        raise SystemExit(f"{option} {path}: the model takes {arch['dataset']} images {arch['in_shape']} with "
                         f"{arch['num_classes']} classes, but this run uses {splits.name} "
                         f"{list(splits.in_shape)} with {splits.num_classes}; pass the matching --dataset")
    return model.to(ctx.device).eval()


# ------------------------------------------------------------------------ the cache
def training_recipe(ctx, splits):
    """Everything that decides the weights ``train_model`` returns, as plain data: the
    dataset and its options, the seed, the training settings, the architecture, the device
    kind and AMP (their arithmetic differs slightly)."""
    cfg = ctx.config
    return {"recipe": RECIPE_VERSION, "dataset": splits.name, "data_options": splits.options,
            "train_size": len(splits.train), "seed": ctx.seed, "widths": list(WIDTHS),
            "train_images": min(cfg.train_images, len(splits.train)), "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "device": ctx.device.type, "amp": cfg.amp}


def cache_file(ctx, recipe):
    """Where the model of ``recipe`` is cached: ``<cache>/<dataset>-<16 hex digits>.pt``."""
    folder = Path(os.environ.get(CACHE_ENV) or ctx.out.parent / ".cache")
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{recipe['dataset']}-{digest}.pt"


def read_cached(ctx, path, splits, recipe, label):
    """The model and its training info from a cache file (its training history kept under
    ``label``), or None, with one line in the log, when the file is damaged or was written
    for another recipe: the caller trains the model again."""
    try:
        state = load_checkpoint(path)
        if not isinstance(state, dict) or state.get("recipe") != recipe:
            raise ValueError("it was written for other settings")
        model = load_model(ctx, path, splits, option="cached model", state=state)
        info, history = dict(state["training"]), list(state["history"])
    except (InputError, SystemExit, KeyError, TypeError, ValueError) as error:
        ctx.log(f"the cached model {path} cannot be used ({str(error).splitlines()[0]}); training it again")
        return None
    ctx.history(label, history)
    return model, info


def cached_model(ctx, splits, label):
    """``train_model``'s model and info, trained only once per ``training_recipe``: read
    from the cache when an earlier run (of any of these drivers) trained it, else trained
    and cached. Under the file's lock, so that a second process waits and then reads it."""
    recipe = training_recipe(ctx, splits)
    path = cache_file(ctx, recipe)
    with file_lock(path):
        found = read_cached(ctx, path, splits, recipe, label) if path.exists() else None
        if found:
            ctx.log(f"{label}: trained by an earlier run with the same settings; read from {path}")
            return found[0], {**found[1], "source": f"cached {path.name} (trained once for these settings)"}
        model, info = train_model(ctx, splits, label)
        save_model(ctx, model, splits, path, recipe=recipe, training=info, history=ctx.histories[label])
    return model, {**info, "source": "trained in this run"}


def data_and_model(ctx):
    """The run's ``Splits`` and its model (loaded from --checkpoint, else trained): (splits, model, info)."""
    splits = load_data(ctx)
    return (splits, *get_model(ctx, splits, path=ctx.config.checkpoint))


def get_model(ctx, splits, label="model", path=None, save_as="model.pt"):
    """The run's model: loaded from ``path`` (--checkpoint), else trained (or read from the
    cache where an earlier run trained it) and saved as ``<out>/<save_as>``, which later
    runs can pass as --checkpoint. Returns (model, info)."""
    if path:
        model, info = load_model(ctx, path, splits), {"source": f"checkpoint {path}"}
        ctx.log(f"loaded {label} from {path}")
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: every rank must train, none may wait on a lock
        model, info = train_model(ctx, splits, label)
        info["source"] = "trained in this run"
    else:
        model, info = cached_model(ctx, splits, label)
    if not path and save_as:
        save_model(ctx, model, splits, ctx.out / save_as)
    info.update(test_accuracy=test_accuracy(ctx, model, splits.test), chance=1 / splits.num_classes)
    ctx.log(f"{label}: test accuracy {100 * info['test_accuracy']:.1f} % (chance {100 * info['chance']:.0f} %)")
    return model, info


def model_metrics(ctx, info):
    """What every driver's metrics.json starts with: the dataset and the model."""
    return {"dataset": ctx.dataset, "model": info, "test_accuracy": info["test_accuracy"], "chance": info["chance"]}


def note_accuracy(ctx, info, what="The CNN"):
    ctx.note(f"{what} reaches {100 * info['test_accuracy']:.1f} % test accuracy (chance "
             f"{100 * info['chance']:.0f} %; {info['source']}).")


# ------------------------------------------------------------------------ explaining
# The five methods of the practical: key -> label in figures and tables
METHODS = {"occlusion": "occlusion", "saliency": "saliency", "input_x_gradient": "gradient x input",
           "gradcam": "Grad-CAM", "integrated_gradients": "integrated gradients"}
# Whether each method's map can be negative (drawn with a diverging colour map): saliency is
# a gradient's magnitude and Grad-CAM ends in a ReLU, the other three are signed.
SIGNED = {"occlusion": True, "saliency": False, "input_x_gradient": True, "gradcam": False,
          "integrated_gradients": True}


# ------------------------------------------------------------------------ images
def predictions(ctx, model, x, batch_size=500):
    """Predicted class and its probability (numpy) for float images (N, C, H, W)."""
    with torch.no_grad():
        probs = torch.cat([model(ctx.to_device(x[i:i + batch_size])).softmax(1)
                           for i in range(0, len(x), batch_size)])
    p, k = probs.max(1)
    return k.cpu().numpy(), p.cpu().numpy()


def pick_examples(ctx, model, split, count, rng, correct=True):
    """Indices of ``count`` test images of different classes (as far as possible), correctly
    classified ones first when ``correct``."""
    pred, _ = predictions(ctx, model, split.x[:2000])
    order = rng.permutation(len(pred))
    if correct:
        right = pred[order] == split.y[order]
        order = [*order[right], *order[~right]]
    picks, seen = [], set()
    for i in order:  # one per class first
        if split.y[i] not in seen:
            picks.append(int(i))
            seen.add(split.y[i])
    rest = [int(i) for i in order if int(i) not in set(picks)]
    return (picks + rest)[:count]


def class_name(splits, k):
    return str(splits.classes[int(k)])


def prediction_labels(ctx, model, splits, pick):
    """'true / pred (p)' row labels for the test images ``pick``."""
    pred, prob = predictions(ctx, model, splits.test.x[pick])
    return [f"true: {class_name(splits, splits.test.y[i])}\npred: {class_name(splits, p)}\n(p = {q:.2f})"
            for i, p, q in zip(pick, pred, prob)]
