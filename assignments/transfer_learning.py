"""UvA DL1 assignment 2 part 1 / ITU week 4, task 4: transfer learning.

The course: take an ImageNet ResNet-18, replace its last layer by a fresh one for
CIFAR-100 (weights from N(0, 0.01), bias 0), train only that layer with Adam (lr 1e-3,
batch 128, 30 epochs, images resized to 224 and normalised with the dataset's mean
and std), keep the checkpoint with the best validation accuracy and report its test
accuracy, clean and with gaussian noise (std 0.1, added after normalisation). Then
compare fine-tuning strategies, with and without augmentation.

Here every strategy runs through ``reference_torch.train.Trainer``:

    head             train only the new last layer (a linear probe; the frozen backbone
                     also keeps its batch-norm statistics: it runs in eval mode)
    finetune         train everything with a small learning rate (``--finetune-lr``)
    finetune_head10  the same, but the new layer learns 10 times faster
    scratch          the same network from random weights: what the pretraining buys

With ``--weights`` (a torchvision ResNet-18 file) this is the course's experiment.
Without it the driver pretrains a network itself, offline: on the first half of the
dataset's classes (shapes: circle ... cross), then transfers it to the other half, with
only ``--per-class`` labelled images per class -- the class-split setting of Yosinski
et al. (2014), "How transferable are features in deep neural networks?". Offline, on
the embedded datasets, each strategy trains 15 epochs at batch 32 (about a minute in
all on two CPU cores); with ``--weights`` or on CIFAR the course's 30 epochs at batch 128.
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import minidl.data
from reference_torch import augment as A
from reference_torch.checkpoint import load_checkpoint
from reference_torch.data import make_loader
from reference_torch.models import load_torchvision_weights, resnet18
from reference_torch.train import BestCheckpoint, Trainer, classification_step, evaluate, \
    seed_everything, warmup_cosine
from reference_torch.twins import SmallCNN

from .runner import small_model_threads

NAME = "transfer_learning"
COURSE = "UvA DL1 + ITU advanced ML"
TASK = "assignment 2 part 1 + week 4, task 4"
SUMMARY = ("fine-tune a pretrained network: head only vs full fine-tune (10x head lr) vs "
           "scratch, with/without augmentation, clean and noisy test")
STATEMENT = """
Adapt an ImageNet-pretrained ResNet-18 to CIFAR-100: replace the last layer by a new one
(weights from N(0, 0.01), bias 0) and train only that layer with Adam (learning rate
1e-3, batch 128, 30 epochs, images resized to 224x224 and normalised with the dataset's
mean and standard deviation). Keep the checkpoint with the best validation accuracy and
report its test accuracy, clean and with gaussian noise of standard deviation 0.1 added
to the (normalised) test images. Then compare strategies: training only the last layer,
fine-tuning the whole network, and fine-tuning with a 10 times larger learning rate for
the new layer, each with and without data augmentation. Which strategy works best, what
does augmentation change, and how robust are the models to the noise? (Offline, without
ImageNet weights, the kit pretrains a small network on half of the classes of an
embedded dataset and transfers it to the other half.)
"""
DATASETS = ("shapes", "digits", "cifar10", "cifar100")
DEFAULT = True

STRATEGIES = {  # name -> (description for tables and notes, short label for bar charts)
    "head": ("last layer only", "last layer only"),
    "finetune": ("full fine-tune", "full fine-tune"),
    "finetune_head10": ("full fine-tune, 10x lr for the last layer", "fine-tune,\n10x lr last layer"),
    "scratch": ("from scratch (random weights)", "from scratch"),
}
# The course's schedule, used with --weights and on CIFAR.
COURSE_SCHEDULE = dict(epochs=30, batch_size=128)
# Offline settings per dataset (source = the first half of the classes, target = the
# rest). On the embedded datasets a smaller batch gives the few labelled images more
# steps per epoch, so 15 epochs do what 30 would at batch 128, in half the time.
PROFILES = {
    "shapes": dict(load={"n": 10000}, per_class=50, pretrain_epochs=8, epochs=15, batch_size=32,
                   widths=(16, 32, 64)),
    "digits": dict(load={"size": 28}, per_class=10, pretrain_epochs=6, epochs=15, batch_size=32,
                   widths=(16, 32)),
    "cifar10": dict(load={}, per_class=None, pretrain_epochs=15, **COURSE_SCHEDULE, widths=(32, 64, 128)),
    "cifar100": dict(load={}, per_class=None, pretrain_epochs=15, **COURSE_SCHEDULE, widths=(32, 64, 128)),
}
QUICK = dict(per_class=10, pretrain_epochs=3, epochs=6, source_per_class=200)  # --quick: seconds
# Label-preserving augmentation per dataset, on (B, C, H, W) images in [0, 1]: digits
# must not be flipped (a mirrored 2 is no 2); shapes and photographs may be.
AUGMENT = {
    "digits": lambda: [A.RandomCrop(padding=3, padding_mode="constant")],
    "default": lambda: [A.RandomCrop(padding=4), A.RandomHorizontalFlip()],
}


def add_arguments(parser):
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="ImageNet ResNet-18 weights in torchvision's format (a state_dict saved "
                             "with torch.save, e.g. https://download.pytorch.org/models/"
                             "resnet18-f37072fd.pth); without it a network is pretrained offline")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per strategy (default 30 with --weights or CIFAR, 15 offline)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="labelled target images per class (default: 50 for shapes, 10 for digits, "
                             "all for CIFAR)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize images to this size (default: 224 with --weights, else none)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES),
                        help=f"comma-separated subset of {', '.join(STRATEGIES)}")
    parser.add_argument("--lr", type=float, default=1e-3,
                        help="Adam learning rate for the last layer alone and from scratch (1e-3)")
    parser.add_argument("--finetune-lr", type=float, default=1e-4,
                        help="Adam learning rate of the pretrained layers when fine-tuning (1e-4)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size of every strategy and of the offline pretraining "
                             "(default 128 with --weights or CIFAR, 32 offline)")
    parser.add_argument("--noise-std", default="0.1,0.5",
                        help="test-noise standard deviations, in normalised units (default 0.1,0.5; "
                             "the course uses 0.1)")


# ------------------------------------------------------------------ the model
class Prepared(nn.Module):
    """The preprocessing of the course as part of the model, so it runs on the device:
    resize (bilinear, e.g. 32 -> 224 for ImageNet weights), normalise with the dataset's
    mean and std, grey -> RGB where the network wants colour, and optionally gaussian
    test noise added after normalisation (as the course's ``AddGaussianNoise``).
    Loaders hold raw images in [0, 1]; augmentation happens before this module."""

    def __init__(self, net, mean, std, size=None, channels=None):
        super().__init__()
        self.net, self.size, self.channels = net, size, channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.noise_std, self.noise_generator = 0.0, None

    def forward(self, x):
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)  # grey images for an RGB network
        if self.noise_std:
            noise = torch.randn(x.shape, generator=self.noise_generator).to(x)
            x = x + self.noise_std * noise
        return self.net(x)


@contextmanager
def test_noise(model, std, seed):
    """Evaluate ``model`` (a Prepared) with seeded gaussian noise of ``std`` on its inputs."""
    model.noise_std, model.noise_generator = std, torch.Generator().manual_seed(seed)
    try:
        yield model
    finally:
        model.noise_std, model.noise_generator = 0.0, None


def head_name(net):
    """The attribute holding the last layer: ``fc`` (ResNet) or ``head`` (SmallCNN)."""
    for name in ("fc", "head"):
        if isinstance(getattr(net, name, None), nn.Linear):
            return name
    raise TypeError(f"{type(net).__name__} has no last Linear layer called fc or head")


def reset_head(net, num_classes):
    """A new last layer for ``num_classes``: weights ~ N(0, 0.01), bias 0 (the course's init)."""
    name = head_name(net)
    layer = nn.Linear(getattr(net, name).in_features, num_classes)
    nn.init.normal_(layer.weight, mean=0.0, std=0.01)
    nn.init.zeros_(layer.bias)
    setattr(net, name, layer)
    return net


def backbone_state(net):
    """Copies of every parameter and buffer outside the last layer (to check freezing)."""
    prefix = head_name(net) + "."
    params = {n: p.detach().cpu().clone() for n, p in net.named_parameters() if not n.startswith(prefix)}
    buffers = {n: b.detach().cpu().clone() for n, b in net.named_buffers()
               if not n.startswith(prefix) and b.is_floating_point()}
    return params, buffers


def backbone_change(net, before):
    """Largest absolute change of a backbone parameter and of a backbone buffer since ``before``."""
    params, buffers = backbone_state(net)
    change = lambda new, old: max((float((new[k] - old[k]).abs().max()) for k in new), default=0.0)  # noqa: E731
    return change(params, before[0]), change(buffers, before[1])


def configure(net, strategy, lr, finetune_lr):
    """Freeze what ``strategy`` keeps fixed; return the optimiser's parameter groups."""
    prefix = head_name(net) + "."
    head = [p for n, p in net.named_parameters() if n.startswith(prefix)]
    body = [p for n, p in net.named_parameters() if not n.startswith(prefix)]
    if strategy == "head":
        for p in body:
            p.requires_grad_(False)
        return [{"params": head, "lr": lr}]
    for p in net.parameters():
        p.requires_grad_(True)
    if strategy == "finetune":
        return [{"params": body, "lr": finetune_lr}, {"params": head, "lr": finetune_lr}]
    if strategy == "finetune_head10":
        return [{"params": body, "lr": finetune_lr}, {"params": head, "lr": 10 * finetune_lr}]
    if strategy == "scratch":
        return [{"params": body, "lr": lr}, {"params": head, "lr": lr}]
    raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")


def frozen_backbone_step(model, batch):
    """Training step of the linear probe: the whole model in eval mode, so the frozen
    backbone's batch norm uses (and keeps) its pretrained statistics; the last layer is
    a Linear, which trains the same in either mode."""
    model.eval()
    return classification_step(model, batch)


def build_net(dataset_in_shape, num_classes, widths):
    """The offline network: a small CNN with batch norm (``reference_torch.twins.SmallCNN``)."""
    return SmallCNN(dataset_in_shape, num_classes=num_classes, widths=widths, batch_norm=True)


# ------------------------------------------------------------------- the data
def class_part(split, classes, per_class=None, rng=None):
    """``(x, y)``: the images of ``classes``, labels renumbered 0..len(classes)-1, at most
    ``per_class`` images of each class (a random choice by ``rng``)."""
    picked = []
    for c in classes:
        idx = np.flatnonzero(split.y == c)
        if per_class is not None and len(idx) > per_class:
            idx = rng.choice(idx, per_class, replace=False)
        picked.append(idx)
    idx = np.sort(np.concatenate(picked))
    relabel = np.full(int(split.y.max()) + 1, -1, dtype=np.int64)
    relabel[classes] = np.arange(len(classes))
    return split.x[idx], relabel[split.y[idx]]


# ------------------------------------------------------------------- training
def train_strategy(pretrained, strategy, augment, data, cfg, seed, workdir, progress):
    """Train one strategy from the pretrained network, restore its best validation
    checkpoint and test that; returns a dict of results."""
    seed_everything(seed)
    model = copy.deepcopy(pretrained)
    if strategy == "scratch":
        model.net = cfg["fresh_net"]()
    reset_head(model.net, data["num_classes"])
    before = backbone_state(model.net)
    groups = configure(model.net, strategy, cfg["lr"], cfg["finetune_lr"])
    optimizer = torch.optim.Adam(groups)
    transform = A.Compose(cfg["augment"](), seed=seed) if augment else None
    train = make_loader(*data["train"], batch_size=cfg["batch_size"], shuffle=True, seed=seed,
                        transform=transform)
    val = make_loader(*data["val"], batch_size=256)
    key = f"{strategy}{'_aug' if augment else ''}"
    best = BestCheckpoint(Path(workdir) / f"{key}.pt", monitor="val_accuracy", mode="max")
    start = time.perf_counter()
    trainer = Trainer(model, optimizer, callbacks=[best], seed=seed, progress=progress,
                      training_step=frozen_backbone_step if strategy == "head" else classification_step)
    history = trainer.fit(train, cfg["epochs"], val_loader=val)
    seconds = time.perf_counter() - start
    model.load_state_dict(load_checkpoint(best.path)["model"])
    param_change, buffer_change = backbone_change(model.net, before)

    test = make_loader(*data["test"], batch_size=256)
    clean = evaluate(model, test)["accuracy"]
    noisy = {}
    for i, std in enumerate(cfg["noise"]):
        with test_noise(model, std, seed=seed + 1000 + i):
            noisy[std] = evaluate(model, test)["accuracy"]
    trainable = sum(p.numel() for g in groups for p in g["params"])
    return {
        "strategy": strategy, "augmentation": bool(augment), "description": STRATEGIES[strategy][0],
        "trainable_parameters": int(trainable),
        "lr_backbone": None if strategy == "head" else groups[0]["lr"], "lr_head": groups[-1]["lr"],
        "val_accuracy": [h["val_accuracy"] for h in history],
        "train_accuracy": [h["accuracy"] for h in history],
        "best_epoch": best.best_epoch, "best_val_accuracy": best.best_metric,
        "test_accuracy": clean, "noisy_test_accuracy": noisy, "seconds": seconds,
        "backbone_max_change": param_change, "backbone_buffer_max_change": buffer_change,
    }


def pretrain(ctx, make_net, mean, std, size, data, epochs, batch_size, augment, progress):
    """Train a network from ``make_net()`` on the source classes (Adam 2e-3, cosine
    schedule, augmentation); returns the Prepared model, its history and the seconds it took."""
    seed_everything(ctx.seed)  # the same initial weights whatever ran before
    model = Prepared(make_net(), mean, std, size)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    train = make_loader(*data["train"], batch_size=batch_size, shuffle=True, seed=ctx.seed,
                        transform=A.Compose(augment(), seed=ctx.seed))
    trainer = Trainer(model, optimizer, scheduler=warmup_cosine(optimizer, epochs * len(train)),
                      seed=ctx.seed, progress=progress)
    start = time.perf_counter()
    history = trainer.fit(train, epochs, val_loader=make_loader(*data["val"], batch_size=256))
    return model, history, time.perf_counter() - start


# -------------------------------------------------------------------- figures
COLOURS = {"head": "tab:blue", "finetune": "tab:orange", "finetune_head10": "tab:green",
           "scratch": "tab:gray"}


def label(r):
    return f"{r['description']}{' + augmentation' if r['augmentation'] else ''}"


def plot_curves(results, num_classes, title):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, augment in zip(axes, (False, True)):
        for r in results:
            if r["augmentation"] != augment:
                continue
            acc = 100 * np.asarray(r["val_accuracy"])
            epochs = np.arange(1, len(acc) + 1)
            colour = COLOURS[r["strategy"]]
            ax.plot(epochs, acc, "-", color=colour, lw=1.6,
                    label=f"{r['description']} (best {100 * r['best_val_accuracy']:.1f} %)")
            ax.plot(r["best_epoch"], 100 * r["best_val_accuracy"], "o", color=colour, ms=6)
        ax.axhline(100 / num_classes, color="0.5", ls=":", lw=1, label=f"chance ({100 / num_classes:.0f} %)")
        ax.set(title=("with" if augment else "without") + " augmentation", xlabel="epoch",
               ylabel="validation accuracy (%)", ylim=(0, 100))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(f"Validation accuracy per epoch ({title}); dots: the checkpoint kept and tested")
    fig.tight_layout()
    return fig


def plot_test(results, noise, num_classes, title):
    fig, ax = plt.subplots(figsize=(max(8.0, 1.3 * len(results) + 2), 4.8))
    series = [("clean", lambda r: r["test_accuracy"])] + \
             [(f"gaussian noise, std {s:g}", (lambda s: lambda r: r["noisy_test_accuracy"][s])(s)) for s in noise]
    width = 0.8 / len(series)
    pos = np.arange(len(results))
    for i, (name, get) in enumerate(series):
        values = [100 * get(r) for r in results]
        bars = ax.bar(pos + (i - (len(series) - 1) / 2) * width, values, width, label=name,
                      color=plt.cm.Blues(0.85 - 0.5 * i / max(1, len(series) - 1)), edgecolor="white")
        for b, v in zip(bars, values):
            ax.text(b.get_x() + b.get_width() / 2, v + 0.8, f"{v:.0f}", ha="center", fontsize=7)
    ax.axhline(100 / num_classes, color="0.4", ls=":", lw=1, label=f"chance ({100 / num_classes:.0f} %)")
    # a line between the runs without and with augmentation
    for i in range(1, len(results)):
        if results[i]["augmentation"] != results[i - 1]["augmentation"]:
            ax.axvline(i - 0.5, color="0.3", lw=0.8)
    ax.set_xticks(pos, [STRATEGIES[r["strategy"]][1] + ("\n+ augmentation" if r["augmentation"] else "")
                        for r in results], fontsize=8)
    ax.set(title=f"Test accuracy of each strategy's best checkpoint ({title})",
           xlabel="strategy", ylabel="test accuracy (%)", ylim=(0, 100))
    ax.legend(fontsize=8, ncol=len(series) + 1, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    # The offline networks are small: on two busy cores one torch thread beats two that
    # fight over them (measured here: 88 s against 359 s for this driver). An ImageNet
    # ResNet-18 at 224x224 wants every core (or a GPU).
    if ctx.args.weights:
        return experiment(ctx)
    with small_model_threads(ctx):
        return experiment(ctx)


def parse_options(args):
    """The strategies and noise levels asked for, checked before anything runs."""
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown or not strategies:
        raise SystemExit(f"{NAME}: unknown --strategies {', '.join(unknown) or repr(args.strategies)}; "
                         f"choose from {', '.join(STRATEGIES)}")
    try:
        noise = [float(s) for s in args.noise_std.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"{NAME}: --noise-std {args.noise_std!r} is not a comma-separated list of numbers")
    if not noise or min(noise) <= 0:
        raise SystemExit(f"{NAME}: --noise-std needs positive standard deviations, got {args.noise_std!r}")
    for option in ("epochs", "batch_size", "per_class", "image_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise SystemExit(f"{NAME}: --{option.replace('_', '-')} must be at least 1, got {value}")
    return strategies, noise


def experiment(ctx):
    args = ctx.args
    profile = dict(PROFILES[ctx.dataset])
    if args.weights:  # the course's experiment: its schedule, every class is a target class
        profile.update(COURSE_SCHEDULE)
    if ctx.quick:
        profile.update(QUICK)
        if ctx.dataset == "shapes":
            profile["load"] = {"n": 1500}
    strategies, noise = parse_options(args)
    # per-epoch lines on a terminal, for the long runs (real data) only
    progress = not ctx.quick and sys.stderr.isatty() and (bool(args.weights) or ctx.dataset.startswith("cifar"))
    rng = ctx.rng(1)

    # The pretrained network first: a wrong weight file should fail before any data loads.
    if args.weights:
        pretrained_net = resnet18(num_classes=1000)
        load_torchvision_weights(pretrained_net, args.weights)
        size = args.image_size or 224
    else:
        size = args.image_size
    splits = minidl.data.load_dataset(ctx.dataset, data_dir=ctx.data_dir, seed=ctx.seed, **profile["load"])
    classes = [str(c) for c in splits.classes]
    mean, std = tuple(splits.mean), tuple(splits.std)
    if args.weights:
        source, target = [], list(range(len(classes)))
    else:
        half = len(classes) // 2
        source, target = list(range(half)), list(range(half, len(classes)))
    per_class = args.per_class if args.per_class is not None else profile["per_class"]
    data = {"num_classes": len(target),
            "train": class_part(splits.train, target, per_class, rng),
            "val": class_part(splits.val, target), "test": class_part(splits.test, target)}
    if ctx.quick:  # a smaller validation/test set: seconds, not minutes
        data["val"] = tuple(a[:200] for a in data["val"])
        data["test"] = tuple(a[:300] for a in data["test"])
    cfg = {"lr": args.lr, "finetune_lr": args.finetune_lr,
           "batch_size": args.batch_size or profile["batch_size"], "epochs": args.epochs or profile["epochs"],
           "noise": noise, "augment": AUGMENT.get(ctx.dataset, AUGMENT["default"])}
    metrics = {"dataset": ctx.dataset, "image_size": size or int(splits.in_shape[-1]),
               "target_classes": [classes[c] for c in target], "source_classes": [classes[c] for c in source],
               "target_train_images": len(data["train"][1]), "target_val_images": len(data["val"][1]),
               "target_test_images": len(data["test"][1]), "per_class": per_class,
               "noise_std": noise, "strategies": strategies, "epochs": cfg["epochs"],
               "batch_size": cfg["batch_size"]}

    if args.weights:
        pretrained = Prepared(pretrained_net, mean, std, size, channels=3)
        cfg["fresh_net"] = lambda: resnet18(num_classes=1000)
        metrics["pretrained_on"] = f"ImageNet ({args.weights})"
        ctx.note(f"Pretrained weights: {args.weights} (ImageNet ResNet-18); images resized to "
                 f"{size}x{size} and normalised with the {ctx.dataset} mean and std.")
    else:
        cfg["fresh_net"] = lambda: build_net(splits.in_shape, len(source), profile["widths"])
        source_data = {"train": class_part(splits.train, source, profile.get("source_per_class"), rng),
                       "val": class_part(splits.val, source)}
        pretrained, pre_history, pre_seconds = pretrain(ctx, cfg["fresh_net"], mean, std, size, source_data,
                                                        profile["pretrain_epochs"], cfg["batch_size"],
                                                        cfg["augment"], progress)
        pre_accuracy = pre_history[-1]["val_accuracy"]
        metrics.update(pretrained_on=f"{ctx.dataset} classes {', '.join(metrics['source_classes'])}",
                       pretrain_val_accuracy=pre_accuracy, pretrain_seconds=pre_seconds,
                       pretrain_train_images=len(source_data["train"][1]))
        ctx.note(f"No --weights given, so no ImageNet ResNet-18: this run pretrains a small CNN "
                 f"(widths {profile['widths']}, batch norm) on {ctx.dataset} classes "
                 f"{', '.join(metrics['source_classes'])} ({len(source_data['train'][1]):,} images, "
                 f"{profile['pretrain_epochs']} epochs with augmentation, {100 * pre_accuracy:.1f} % "
                 f"validation accuracy) and transfers it to classes {', '.join(metrics['target_classes'])} "
                 f"with {per_class or 'all'} labelled images per class. For the course's experiment pass "
                 f"--weights resnet18-f37072fd.pth (torchvision's ImageNet file) --dataset cifar100.")

    runs = [(s, a) for a in (False, True) for s in strategies]
    results = []
    with tempfile.TemporaryDirectory(prefix="transfer-") as workdir:
        for i, (strategy, augment) in enumerate(ctx.progress(runs, "strategies")):
            r = train_strategy(pretrained, strategy, augment, data, cfg, ctx.seed + i, workdir, progress)
            results.append(r)
            ctx.log(f"{label(r)}: best val {100 * r['best_val_accuracy']:.1f} % (epoch {r['best_epoch']}), "
                    f"test {100 * r['test_accuracy']:.1f} %, noisy "
                    + ", ".join(f"{100 * v:.1f} %" for v in r["noisy_test_accuracy"].values())
                    + f" ({r['seconds']:.1f} s)")
    metrics["runs"] = {f"{r['strategy']}{'_aug' if r['augmentation'] else ''}": r for r in results}

    title = (f"ImageNet ResNet-18 -> {ctx.dataset}" if args.weights else
             f"{ctx.dataset}: {len(source)} classes -> {len(target)} new classes, "
             f"{metrics['target_train_images']:,} labelled images")
    ctx.save_figure(plot_curves(results, len(target), title), "validation_curves",
                    "Validation accuracy per epoch of every strategy, without (left) and with (right) "
                    "augmentation; the dot marks the epoch whose checkpoint is kept and tested.")
    ctx.save_figure(plot_test(results, noise, len(target), title), "test_accuracy",
                    "Test accuracy of each strategy's best checkpoint on clean test images and with "
                    "gaussian noise added after normalisation (std in units of the dataset's std; "
                    "the course uses 0.1).")
    ctx.table("strategies", [table_row(r) for r in results],
              f"Every strategy trained {cfg['epochs']} epochs with Adam (batch {cfg['batch_size']}); "
              "scores of the checkpoint with the best validation accuracy. The last column is the "
              "largest change of any pretrained weight: 0 when only the last layer trains.")
    add_notes(ctx, results, strategies, metrics)
    return metrics


def table_row(r):
    lr_backbone = "frozen" if r["lr_backbone"] is None else f"{r['lr_backbone']:g}"
    row = {"strategy": r["description"], "augmentation": "yes" if r["augmentation"] else "no",
           "trainable parameters": r["trainable_parameters"],
           "lr (backbone / last layer)": f"{lr_backbone} / {r['lr_head']:g}",
           "best epoch": r["best_epoch"], "best val (%)": round(100 * r["best_val_accuracy"], 1),
           "test clean (%)": round(100 * r["test_accuracy"], 1)}
    for s, v in r["noisy_test_accuracy"].items():
        row[f"test noise {s:g} (%)"] = round(100 * v, 1)
    row["time (s)"] = round(r["seconds"], 1)
    row["max |backbone change|"] = f"{r['backbone_max_change']:.2g}"
    return row


def add_notes(ctx, results, strategies, metrics):
    """What the runs show, in sentences computed from the numbers (no foregone conclusions)."""
    by = {(r["strategy"], r["augmentation"]): r for r in results}
    best = max(results, key=lambda r: r["best_val_accuracy"])
    metrics.update(best_strategy=label(best), best_test_accuracy=best["test_accuracy"])
    if ("head", False) in by:
        h = by[("head", False)]
        noisy = ", ".join(f"{100 * v:.1f} % with noise std {s:g}" for s, v in h["noisy_test_accuracy"].items())
        ctx.note(f"Training only the last layer ({h['trainable_parameters']:,} parameters): "
                 f"{100 * h['test_accuracy']:.1f} % clean test accuracy, {noisy}; largest change of a "
                 f"pretrained weight or batch-norm statistic: "
                 f"{max(h['backbone_max_change'], h['backbone_buffer_max_change']):.1g}.")
    if ("finetune", False) in by and ("finetune_head10", False) in by:
        one, ten = by[("finetune", False)], by[("finetune_head10", False)]
        gain = 100 * (ten["test_accuracy"] - one["test_accuracy"])
        ctx.note(f"Full fine-tuning reaches {100 * one['test_accuracy']:.1f} % with one learning rate "
                 f"({one['lr_head']:g}) and {100 * ten['test_accuracy']:.1f} % when the new last layer learns "
                 f"10 times faster ({ten['lr_head']:g}), {gain:+.1f} points"
                 + (": the randomly initialised layer needs larger steps than the pretrained ones."
                    if gain > 0 else "."))
    if ("scratch", False) in by and len(by) > 1:
        scratch = by[("scratch", False)]
        best_pretrained = max((r for r in results if r["strategy"] != "scratch"),
                              key=lambda r: r["test_accuracy"], default=None)
        if best_pretrained is not None:
            gain = 100 * (best_pretrained["test_accuracy"] - scratch["test_accuracy"])
            ctx.note(f"From random weights the same network reaches {100 * scratch['test_accuracy']:.1f} %, "
                     f"the best pretrained strategy ({label(best_pretrained)}) "
                     f"{100 * best_pretrained['test_accuracy']:.1f} %: pretraining is worth {gain:+.1f} points "
                     f"with {metrics['target_train_images']:,} labelled target images.")
    pairs = [(by[(s, False)], by[(s, True)]) for s in strategies if (s, False) in by and (s, True) in by]
    if pairs:
        gains = ", ".join(f"{a['description']} {100 * (b['test_accuracy'] - a['test_accuracy']):+.1f}"
                          for a, b in pairs)
        ctx.note(f"Augmentation changes the clean test accuracy by (percentage points): {gains}. "
                 f"With {metrics['target_test_images']:,} test images, differences of a few points are noise.")
    ctx.note(f"Best validation accuracy: {label(best)} ({100 * best['best_val_accuracy']:.1f} % "
             f"validation, {100 * best['test_accuracy']:.1f} % test).")
