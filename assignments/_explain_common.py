"""What the four interpretability drivers share (explanations, model_bias, adversarial,
feature_visualization): the data, a small CNN with its normalisation inside, training
it with ``reference_torch.train.Trainer`` or loading it with ``--checkpoint``, and
picking the images to show. Everything about explaining lives in
``reference_torch.explain``; this module only wires a model to it.

The model is ``Sequential(normalize=Normalize(mean, std), net=SmallCNN(...))``: it takes
images in [0, 1], so attributions, deletion substrates (0 = black), attack budgets and
feature visualisations all live in pixel space.
"""
from __future__ import annotations

import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

import minidl.data
from reference_torch import explain as E
from reference_torch.checkpoint import load_checkpoint, save_checkpoint
from reference_torch.data import make_loader
from reference_torch.explain import Normalize
from reference_torch.train import Trainer, evaluate, seed_everything, warmup_cosine
from reference_torch.twins import SmallCNN

# Per profile: images generated (shapes; None: the whole real dataset), training images
# used, epochs, batch size and peak learning rate (Adam, warm-up then cosine decay).
# Measured on `shapes` (seed 0, chance 10 %): 64 % test accuracy after 4 epochs of 8,000
# images in batches of 32 (59 % in batches of 64), 70-73 % after 6-8 epochs; the quick
# profile reaches about 20 %, still above chance. A driver can ask for more (see
# training_config).
TRAINING = {
    "quick": dict(n=2000, train_images=1600, epochs=2, batch_size=32, lr=3e-3),
    "shapes": dict(n=10000, train_images=8000, epochs=4, batch_size=32, lr=3e-3),
    "cifar10": dict(n=None, train_images=20000, epochs=4, batch_size=64, lr=3e-3),
}
WIDTHS = (16, 32, 64)


def add_model_arguments(parser, checkpoint=True):
    if checkpoint:
        parser.add_argument("--checkpoint", default=None, metavar="PATH",
                            help="a model.pt written by an earlier run of an interpretability driver "
                                 "on the same dataset (default: train a small CNN now)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per profile)")
    parser.add_argument("--train-images", type=int, default=None,
                        help="training images used (default: 8,000 on shapes, 20,000 on CIFAR-10)")


def attribution_profile(ctx, profiles):
    """The driver's profile for this run ("quick" or "full"), with ``--scored-images``
    (the test images the attribution scores average over) applied and checked."""
    profile = dict(profiles["quick" if ctx.quick else "full"])
    scored = ctx.args.scored_images
    if scored is not None:
        if scored < 1:
            raise SystemExit(f"{ctx.name}: --scored-images must be at least 1, got {scored}")
        profile["scored"] = scored
    return profile


def training_config(ctx):
    """The run's training settings: ``TRAINING`` for its profile, then the driver's own
    ``TRAINING`` entries for that profile (a driver module may define one, with only the
    keys it changes), then ``--epochs`` and ``--train-images``."""
    profile = "quick" if ctx.quick else ctx.dataset
    cfg = dict(TRAINING[profile])
    driver_changes = getattr(getattr(ctx, "driver", None), "TRAINING", {})
    cfg.update(driver_changes.get(profile, {}))
    for key in ("epochs", "train_images"):
        value = getattr(ctx.args, key, None)
        if value is not None:
            if value < 1:
                raise SystemExit(f"{ctx.name}: --{key.replace('_', '-')} must be at least 1, got {value}")
            cfg[key] = value
    return cfg


def load_data(ctx, bias=False):
    """``Splits`` of the run's dataset (float images in [0, 1]; ``shapes`` has object masks)."""
    cfg = training_config(ctx)
    options = {"n": cfg["n"]} if ctx.dataset == "shapes" else {}
    return minidl.data.load_dataset(ctx.dataset, data_dir=ctx.data_dir, seed=ctx.seed, bias=bias, **options)


# ------------------------------------------------------------------------ the model
def build_model(in_shape, num_classes, mean, std, widths=WIDTHS):
    """Normalisation + ``reference_torch.twins.SmallCNN`` (conv-BN-ReLU-pool blocks, linear head)."""
    return nn.Sequential(OrderedDict(
        normalize=Normalize(mean, std),
        net=SmallCNN(tuple(in_shape), num_classes=num_classes, widths=tuple(widths), batch_norm=True)))


def layer_names(model):
    """Readable names -> module names: ``conv1`` (the conv's own output), ``block1`` (after
    batch norm and ReLU, before pooling), ... of the SmallCNN inside ``model``."""
    names, block = {}, 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            block += 1
            names[f"conv{block}"] = name
        elif isinstance(module, nn.ReLU) and block:
            names[f"block{block}"] = name
    return names


def _arch(model, splits, widths):
    return {"in_shape": list(splits.in_shape), "num_classes": splits.num_classes, "widths": list(widths),
            "mean": list(model.normalize.mean.flatten().tolist()),
            "std": list(model.normalize.std.flatten().tolist()), "dataset": splits.name,
            "classes": [str(c) for c in splits.classes]}


def train_model(ctx, splits, cfg, label="model"):
    """Train the small CNN on (a stratified subset of) ``splits.train``; returns the model in
    eval mode and a dict: history, seconds, test accuracy."""
    seed_everything(ctx.seed)
    train = splits.train
    if cfg["train_images"] < len(train):
        _, keep = minidl.data.stratified_split(train.y, cfg["train_images"], ctx.seed)
        train = train.subset(keep)
    model = build_model(splits.in_shape, splits.num_classes, splits.mean, splits.std)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    loader = make_loader(train.x, train.y, batch_size=cfg["batch_size"], shuffle=True, seed=ctx.seed)
    total = cfg["epochs"] * len(loader)
    trainer = Trainer(model, optimizer, scheduler=warmup_cosine(optimizer, total, max(1, len(loader) // 2)),
                      seed=ctx.seed, progress=sys.stderr.isatty())
    ctx.log(f"training {label}: {len(train):,} images x {cfg['epochs']} epochs (Adam, lr {cfg['lr']:g}, "
            f"batch {cfg['batch_size']})")
    start = time.perf_counter()
    history = trainer.fit(loader, cfg["epochs"])
    seconds = time.perf_counter() - start
    model.eval()
    return model, {"train_images": len(train), "epochs": cfg["epochs"], "train_seconds": seconds,
                   "train_accuracy": [h["accuracy"] for h in history],
                   "train_loss": [h["loss"] for h in history]}


def test_accuracy(model, split, limit=None):
    x, y = (split.x, split.y) if limit is None else (split.x[:limit], split.y[:limit])
    return evaluate(model, make_loader(x, y, batch_size=500))["accuracy"]


def save_model(model, splits, path):
    save_checkpoint({"model": model.state_dict(), "arch": _arch(model, splits, WIDTHS)}, path)


def load_model(path, splits, option="--checkpoint"):
    """A model saved by ``save_model``; checks that it fits the dataset. ``option`` names
    the command-line option the path came from, for the error messages."""
    if not Path(path).is_file():
        raise SystemExit(f"{option} {path}: no such file; pass the model.pt that an earlier run wrote "
                         "into its output folder (e.g. runs/explanations/model.pt)")
    try:
        state = load_checkpoint(path)
    except Exception as error:  # not a torch file, or one holding arbitrary Python objects
        raise SystemExit(f"{option} {path}: cannot be read as a model.pt ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else ''})") from error
    if not isinstance(state, dict) or "model" not in state or "arch" not in state:
        raise SystemExit(f"{path}: not a model.pt of the interpretability drivers (it needs 'model' and "
                         "'arch' entries); pass a file written by `python -m assignments run explanations`")
    arch = state["arch"]
    if arch.get("dataset") != splits.name:  # shapes and CIFAR-10 images have the same shape
        raise SystemExit(f"{path}: the model was trained on {arch.get('dataset')}, but this run uses "
                         f"{splits.name}; pass --dataset {arch.get('dataset')} or a checkpoint for {splits.name}")
    if list(arch["in_shape"]) != list(splits.in_shape) or arch["num_classes"] != splits.num_classes:
        raise SystemExit(f"{path}: the model was trained on {arch['dataset']} images {arch['in_shape']} with "
                         f"{arch['num_classes']} classes, but this run uses {splits.name} "
                         f"{list(splits.in_shape)} with {splits.num_classes}; pass the matching --dataset")
    model = build_model(arch["in_shape"], arch["num_classes"], arch["mean"], arch["std"], arch["widths"])
    model.load_state_dict(state["model"])
    return model.eval()


def get_model(ctx, splits, label="model", save_as="model.pt"):
    """The run's model: loaded from ``--checkpoint``, else trained (and saved to ``<out>/model.pt``,
    which later runs can pass as ``--checkpoint``). Returns (model, info)."""
    path = getattr(ctx.args, "checkpoint", None)
    if path:
        model = load_model(path, splits)
        info = {"source": f"checkpoint {path}"}
        ctx.log(f"loaded {label} from {path}")
    else:
        model, info = train_model(ctx, splits, training_config(ctx), label)
        info["source"] = "trained in this run"
        if save_as:
            save_model(model, splits, Path(ctx.out) / save_as)
    info["test_accuracy"] = test_accuracy(model, splits.test)
    info["chance"] = 1 / splits.num_classes
    ctx.log(f"{label}: test accuracy {100 * info['test_accuracy']:.1f} % (chance {100 * info['chance']:.0f} %)")
    return model, info


# ------------------------------------------------------------------------ explaining
ATTRIBUTION_METHODS = ("occlusion", "saliency", "gradient x input", "Grad-CAM", "integrated gradients")
# Whether each method's map can be negative (drawn with a diverging colour map): saliency is
# a gradient's magnitude and Grad-CAM ends in a ReLU, the other three are signed.
SIGNED = {"occlusion": True, "saliency": False, "gradient x input": True, "Grad-CAM": False,
          "integrated gradients": True}


def last_block(model):
    """The readable name of the last conv block (``block3`` for three blocks): Grad-CAM's layer."""
    return max((k for k in layer_names(model) if k.startswith("block")), key=lambda k: int(k[5:]))


def attribution_methods(model, height, ig_steps=32):
    """The five methods of the practical, by name, all explaining pixels in [0, 1]:
    occlusion with a black patch a quarter of the image wide (half-overlapping), Grad-CAM at
    the last conv block (after its ReLU, before pooling), integrated gradients from a black
    image in ``ig_steps`` steps."""
    patch = max(2, height // 4)  # 8 px on 32-pixel images: about the size of a small shape
    return {
        "occlusion": E.Occlusion(model, patch=patch, stride=patch // 2, baseline=0.0),
        "saliency": E.Saliency(model),
        "gradient x input": E.InputXGradient(model),
        "Grad-CAM": E.GradCAM(model, layer=layer_names(model)[last_block(model)]),
        "integrated gradients": E.IntegratedGradients(model, n_steps=ig_steps, baseline=0.0),
    }


# ------------------------------------------------------------------------ images
def predictions(model, x, batch_size=500):
    """Predicted class and its probability for float images (N, C, H, W)."""
    with torch.no_grad():
        probs = torch.cat([model(torch.as_tensor(x[i:i + batch_size])).softmax(1)
                           for i in range(0, len(x), batch_size)])
    p, k = probs.max(1)
    return k.numpy(), p.numpy()


def pick_examples(model, split, count, rng, correct=True):
    """Indices of ``count`` test images of different classes (as far as possible), correctly
    classified ones first when ``correct``."""
    pred, _ = predictions(model, split.x[:2000])
    order = rng.permutation(min(len(split.y), 2000))
    if correct:
        order = np.concatenate([order[pred[order] == split.y[order]], order[pred[order] != split.y[order]]])
    picks, seen = [], set()
    for i in order:  # one per class first
        if split.y[i] not in seen:
            picks.append(int(i))
            seen.add(split.y[i])
        if len(picks) == count:
            return np.array(picks)
    rest = [int(i) for i in order if int(i) not in set(picks)]
    return np.array((picks + rest)[:count])


def class_name(splits, k):
    return str(splits.classes[int(k)])
