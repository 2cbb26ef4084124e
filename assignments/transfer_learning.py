"""UvA DL1 assignment 2 part 1 / ITU week 4, task 4: transfer learning.

``--weights`` (a torchvision ResNet-18 file) with ``--dataset cifar100`` is the course's
experiment, on its schedule. Without weights a small CNN is pretrained offline on the first
half of the dataset's classes and transferred to the other half with ``--per-class``
labelled images per class: the class-split setting of Yosinski et al. (2014), "How
transferable are features in deep neural networks?" (a minute on two CPU cores for shapes).
"""
from __future__ import annotations

import copy
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reference_torch import augment as A
from reference_torch.checkpoint import load_checkpoint
from reference_torch.models import load_torchvision_weights, resnet18
from reference_torch.train import Checkpoint, seed_everything, warmup_cosine
from reference_torch.twins import SmallCNN

from . import plots
from .augmentation import EpochTimer  # epoch times in the history, which --resume keeps
from .runner import binomial_se, comma_list, positive_float, positive_int

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
THREADS = "small"  # the offline CNNs: on two busy cores one thread took 88 s, two 359 s
TORCH = True

STRATEGIES = {  # name -> (description for tables and notes, short label for bar charts)
    "head": ("last layer only", "last layer only"),  # a linear probe; the frozen layers in eval mode
    "finetune": ("full fine-tune", "full fine-tune"),
    "finetune_head10": ("full fine-tune, 10x lr for the last layer", "fine-tune,\n10x lr last layer"),
    "scratch": ("from scratch (random weights)", "from scratch"),
}
# On the embedded datasets a smaller batch gives the few labelled images more steps per
# epoch, so 8 epochs at a tuned rate do what 30 would at batch 128. The default aims at 90
# CPU seconds on one thread: 4 pretraining epochs, 12 tuning runs, 4 with augmentation.
PROFILES = {
    "default": {"epochs": 8, "batch_size": 32, "lr": 3e-3, "finetune_lr": 1e-3, "lr_factors": (1 / 3, 1, 3),
                "strategies": tuple(STRATEGIES), "noise_std": (0.1, 0.5), "weights": None, "image_size": None,
                "per_class": 50, "pretrain_epochs": 4, "source_per_class": None, "widths": (16, 32, 64),
                "shapes_images": 10000, "val_size": 250, "test_size": None},
    "quick": {"epochs": 6, "lr": 1e-3, "finetune_lr": 3e-4, "lr_factors": (1, 3), "per_class": 10, "pretrain_epochs": 3, "source_per_class": 200,
              "shapes_images": 1500,
              "val_size": 200, "test_size": 300},
    "full": {"epochs": 30, "pretrain_epochs": 15, "source_per_class": None, "val_size": None},
}
DATASET_SETTINGS = {"digits": {"per_class": 10, "pretrain_epochs": 6, "widths": (16, 32)},
                    **dict.fromkeys(("cifar10", "cifar100"), {"epochs": 30, "batch_size": 128, "per_class": None, "lr": 1e-3,
                                                              "finetune_lr": 3e-4, "pretrain_epochs": 15,
                                                              "widths": (32, 64, 128),
                                                              "source_per_class": None, "val_size": None})}
# Each strategy's learning rate (--lr for the last layer alone and for scratch, --finetune-lr
# for the pretrained layers of the fine-tuning strategies) is tuned over lr_factors times it,
# on the validation images, without augmentation; the augmented run uses the rate chosen.
# Label-preserving augmentation of images in [0, 1]: a mirrored 2 is no 2, a mirrored shape is.
# Unseeded: it draws from torch's global generator, which the Trainer's checkpoints hold,
# so --resume continues with the same augmented images.
AUGMENT = {"digits": A.Compose([A.RandomCrop(padding=3, padding_mode="constant")]),
           "default": A.Compose([A.RandomCrop(padding=4), A.RandomHorizontalFlip()])}


def add_arguments(parser):  # and --lr: of the last layer alone, and of the network from scratch
    parser.add_argument("--weights", metavar="PATH", help="ImageNet ResNet-18 weights in torchvision's format, e.g. "
                        "https://download.pytorch.org/models/resnet18-f37072fd.pth (None: pretrain offline)")
    parser.add_argument("--per-class", type=positive_int, help="labelled target images per class (None: all)")
    parser.add_argument("--image-size", type=positive_int, help="resize to this size (None: 224 with --weights)")
    parser.add_argument("--strategies", type=comma_list(str, STRATEGIES), help="strategies to compare")
    parser.add_argument("--finetune-lr", type=positive_float, help="Adam learning rate of the pretrained layers")
    parser.add_argument("--lr-factors", type=comma_list(positive_float), metavar="FACTORS",
                        help="the learning rates tried per strategy: these multiples of --lr or --finetune-lr "
                             "(1: no tuning)")
    parser.add_argument("--noise-std", type=comma_list(positive_float),
                        help="test-noise standard deviations, in normalised units (the course uses 0.1)")


def check(config):
    if config.weights and not Path(config.weights).is_file():
        return f"--weights {config.weights}: no weight file there"


class Prepared(nn.Module):
    """``head(body(x))`` after the course's preprocessing, on the device: resize (e.g. 32 -> 224
    for ImageNet weights), normalise, grey -> RGB for an RGB network, and while ``noise`` is a
    (std, generator) pair, gaussian test noise (the course's ``AddGaussianNoise``)."""

    def __init__(self, net, mean, std, size=None, channels=None):
        super().__init__()
        if isinstance(getattr(net, "fc", None), nn.Linear):  # a ResNet: its last layer is fc
            self.head, net.fc, self.body = net.fc, nn.Identity(), net
        else:  # a SmallCNN
            self.body, self.head = net.body, net.head
        self.size, self.channels, self.noise = size, channels, None
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels is not None and x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)  # grey images for an RGB network
        if self.noise is not None:  # drawn on the CPU from a seeded generator: the same noise on any device
            x = x + self.noise[0] * torch.randn(x.shape, generator=self.noise[1]).to(x)
        return self.head(self.body(x))

    def train(self, mode=True):
        super().train(mode)
        if not any(p.requires_grad for p in self.body.parameters()):
            self.body.eval()  # frozen: its batch norm keeps (and uses) the pretrained statistics
        return self


def configure(model, strategy, lr, finetune_lr):
    """Freeze what ``strategy`` keeps fixed; the optimiser's parameter groups: the
    pretrained layers' unless frozen, then the new last layer's."""
    model.body.requires_grad_(strategy != "head")
    body_lr, head_lr = {"head": (0, lr), "finetune": (finetune_lr, finetune_lr),
                        "finetune_head10": (finetune_lr, 10 * finetune_lr), "scratch": (lr, lr)}[strategy]
    parts = ((model.body, body_lr), (model.head, head_lr))
    return [{"params": list(part.parameters()), "lr": rate} for part, rate in parts if rate]


def class_part(split, classes, per_class=None, rng=None, size=None):
    """``(x, y)`` of ``classes`` (a range; labels from 0): at most ``per_class`` of each (drawn by ``rng``),
    at most ``size`` in all."""
    picked = [np.flatnonzero(split.y == c) for c in classes]
    if per_class is not None:
        picked = [rng.choice(i, per_class, replace=False) if len(i) > per_class else i for i in picked]
    idx = np.sort(np.concatenate(picked))[:size]
    return split.x[idx], (split.y[idx] - classes.start).astype(np.int64)


def pretrain(ctx, model, source, metrics):
    """Train the offline network on the source classes (Adam, cosine schedule, augmentation)."""
    c, optimizer = ctx.config, torch.optim.Adam(model.parameters(), lr=2e-3)
    train = ctx.loader(*source["train"], shuffle=True, transform=AUGMENT.get(ctx.dataset, AUGMENT["default"]))
    trainer = ctx.trainer("pretrain", model, optimizer, callbacks=[EpochTimer()],
                          scheduler=warmup_cosine(optimizer, c.pretrain_epochs * len(train)))
    history = ctx.fit(trainer, train, c.pretrain_epochs, val_loader=ctx.loader(*source["val"], batch_size=256))
    metrics.update(pretrained_on=f"{ctx.dataset} classes {', '.join(metrics['source_classes'])}",
                   pretrain_val_accuracy=history[-1]["val_accuracy"], pretrain_train_images=len(source["train"][1]),
                   pretrain_cpu_seconds=sum(h["cpu_seconds"] for h in history))
    ctx.note(f"No --weights given, so a small CNN pretrained here on {metrics['pretrained_on']} "
             f"({len(source['train'][1]):,} images, {c.pretrain_epochs} epochs, {history[-1]['val_accuracy']:.1%} "
             f"validation accuracy) is transferred, with {c.per_class or 'all'} labelled images per class of the "
             "others. The course's experiment, from ImageNet weights: --weights FILE --dataset cifar100.")


def tuned_rate(strategy):
    """The setting a strategy's tuning varies: the fine-tuning strategies' backbone rate, else --lr."""
    return "finetune_lr" if strategy.startswith("finetune") else "lr"


def train_strategy(ctx, model, strategy, augment, data, seed, rate):
    """Train one strategy with its tuned setting at ``rate``, restore its best validation
    checkpoint and test that."""
    c = ctx.config
    key = strategy + ("_aug" if augment else f"_lr{rate:.2g}")
    lr, finetune_lr = (c.lr, rate) if tuned_rate(strategy) == "finetune_lr" else (rate, c.finetune_lr)
    model.head = nn.Linear(model.head.in_features, data["num_classes"])  # the course's init: N(0, 0.01), bias 0
    nn.init.normal_(model.head.weight, mean=0.0, std=0.01)
    nn.init.zeros_(model.head.bias)
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    groups = configure(model, strategy, lr, finetune_lr)
    best = Checkpoint(ctx.out / "checkpoints" / key / "best.pt", monitor="val_accuracy", mode="max")
    trainer = ctx.trainer(key, model, torch.optim.Adam(groups), callbacks=[EpochTimer(), best])
    augmentation = AUGMENT.get(ctx.dataset, AUGMENT["default"]) if augment else None
    history = ctx.fit(trainer, ctx.loader(*data["train"], shuffle=True, transform=augmentation),
                      val_loader=ctx.loader(*data["val"], batch_size=256))
    model.load_state_dict(load_checkpoint(best.path)["model"])
    test, noisy = ctx.loader(*data["test"], batch_size=256), {}
    for i, std in enumerate(c.noise_std):
        model.noise = (std, torch.Generator().manual_seed(seed + 1000 + i))
        noisy[std] = trainer.evaluate(test)["accuracy"]
    model.noise = None
    change = max(float((v - before[k].to(v)).abs().max()) for k, v in model.body.state_dict().items()
                 if v.is_floating_point())  # of any pretrained weight or batch-norm statistic
    cpu = [h["cpu_seconds"] for h in history]
    return {"key": key, "strategy": strategy, "augmentation": augment, "description": STRATEGIES[strategy][0],
            "label": STRATEGIES[strategy][0] + (" + augmentation" if augment else ""),
            "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
            "lr_backbone": groups[0]["lr"] if len(groups) > 1 else None, "lr_head": groups[-1]["lr"],
            "val_accuracy": [h["val_accuracy"] for h in history], "best_epoch": best.best_epoch,
            "best_val_accuracy": best.best, "test_accuracy": trainer.evaluate(test)["accuracy"],
            "noisy_test_accuracy": noisy,
            # CPU time, not wall time (other work on the machine inflates that), and the median
            # epoch: the first epochs of a process pay for warm-up (allocations, kernel choice)
            "cpu_seconds_per_epoch": float(np.median(cpu)), "backbone_max_change": change}


def run(ctx):
    c = ctx.config
    if c.weights:  # the pretrained network first: a wrong weight file fails before any data loads
        imagenet = load_torchvision_weights(resnet18(num_classes=1000), c.weights)
    size = c.image_size or (224 if c.weights else None)
    splits = ctx.load_dataset(**{"shapes": {"n": c.shapes_images}, "digits": {"size": 28}}.get(ctx.dataset, {}))
    half = 0 if c.weights else len(splits.classes) // 2  # with ImageNet weights every class is a target
    source, target, rng = range(half), range(half, len(splits.classes)), ctx.rng(1)
    data = {"num_classes": len(target), "train": class_part(splits.train, target, c.per_class, rng),
            "val": class_part(splits.val, target, size=c.val_size),
            "test": class_part(splits.test, target, size=c.test_size)}
    metrics = {"dataset": ctx.dataset, "image_size": size or int(splits.in_shape[-1]),
               "target_classes": [str(splits.classes[i]) for i in target],
               "source_classes": [str(splits.classes[i]) for i in source],
               **{f"target_{part}_images": len(data[part][1]) for part in ("train", "val", "test")},
               "per_class": c.per_class, "noise_std": c.noise_std, "strategies": c.strategies,
               "epochs": c.epochs, "batch_size": c.batch_size}

    def prepared(net=None):  # the network to transfer; by default new random weights (what "scratch" trains)
        net = net or (resnet18(num_classes=1000) if c.weights
                      else SmallCNN(splits.in_shape, half, c.widths, batch_norm=True))
        return Prepared(net, splits.mean, splits.std, size, channels=3 if c.weights else None)

    seed_everything(ctx.seed)
    if c.weights:
        pretrained = prepared(imagenet)
        metrics["pretrained_on"] = f"ImageNet ({c.weights})"
        ctx.note(f"Pretrained weights: {c.weights} (ImageNet ResNet-18), images resized to {size}x{size} pixels.")
    else:
        pretrained = prepared()
        pretrain(ctx, pretrained, {"train": class_part(splits.train, source, c.source_per_class, rng),
                                   "val": class_part(splits.val, source)}, metrics)
    runs, tuning = metrics["runs"], metrics["tuning"] = {}, {}
    grid = [(s, f * getattr(c, tuned_rate(s))) for s in c.strategies for f in c.lr_factors]
    for strategy, rate in ctx.progress(grid, "learning rates"):  # without augmentation
        i = c.strategies.index(strategy)
        seed_everything(ctx.seed + i)  # the same new last layer whatever ran before: only the rate differs
        model = prepared() if strategy == "scratch" else copy.deepcopy(pretrained)
        tuning.setdefault(strategy, []).append(train_strategy(ctx, model, strategy, False, data, ctx.seed + i, rate))
    for i, strategy in enumerate(ctx.progress(c.strategies, "with augmentation")):
        runs[strategy] = max(tuning[strategy], key=lambda r: r["best_val_accuracy"])  # chosen on validation
        rate = runs[strategy]["lr_backbone" if tuned_rate(strategy) == "finetune_lr" else "lr_head"]
        seed_everything(ctx.seed + len(c.strategies) + i)
        model = prepared() if strategy == "scratch" else copy.deepcopy(pretrained)
        runs[strategy + "_aug"] = train_strategy(ctx, model, strategy, True, data, ctx.seed + len(c.strategies) + i,
                                                 rate)
    runs.update({k: runs.pop(k) for k in [s + a for a in ("", "_aug") for s in c.strategies]})  # table order
    metrics["tuned_lr"] = {s: runs[s]["lr_backbone" if tuned_rate(s) == "finetune_lr" else "lr_head"]
                           for s in c.strategies}
    summarise(ctx, runs, metrics)
    return metrics


def plot_tuning(ctx, tuning, title):
    """Best validation accuracy against the tuned learning rate, per strategy; and its table."""
    series = {STRATEGIES[s][0] + (" (pretrained-layer lr)" if tuned_rate(s) == "finetune_lr" else ""):
              ([r["lr_backbone" if tuned_rate(s) == "finetune_lr" else "lr_head"] for r in rows],
               [100 * r["best_val_accuracy"] for r in rows]) for s, rows in tuning.items()}
    fig = plots.line_plot(series, f"Learning-rate tuning on validation data, no augmentation ({title})",
                          "learning rate (log scale)", "best validation accuracy (%)", logx=True, figsize=(8, 4.4))
    ctx.save_figure(fig, "lr_tuning", "Best validation accuracy of each strategy at each learning rate tried "
                    "(the last layer's for 'last layer only' and 'from scratch', the pretrained layers' for the "
                    "fine-tuning strategies); the highest point of each line is the rate used.")
    ctx.table("tuning", [{"strategy": STRATEGIES[s][0], "lr_backbone": r["lr_backbone"], "lr_head": r["lr_head"],
                          "best_val_accuracy": r["best_val_accuracy"], "test_accuracy": r["test_accuracy"],
                          "chosen": "yes" if r is max(rows, key=lambda q: q["best_val_accuracy"]) else ""}
                         for s, rows in tuning.items() for r in rows],
              "Every learning rate tried, without augmentation; the rate with the best validation accuracy is "
              "chosen (test accuracy shown for reference only, it played no part in the choice).",
              columns={"strategy": "strategy", "lr_backbone": ("lr, pretrained layers (blank: frozen)", "{:.2g}"),
                       "lr_head": ("lr, last layer", "{:.2g}"), "best_val_accuracy": ("best val (%)", "{:.1%}"),
                       "test_accuracy": ("test (%)", "{:.1%}"), "chosen": "chosen"})


def summarise(ctx, runs, metrics):
    """The figures, the table and the answers, in sentences computed from the numbers."""
    c, num_classes, half = ctx.config, len(metrics["target_classes"]), len(metrics["source_classes"])
    title = (f"ImageNet ResNet-18 -> {ctx.dataset}" if c.weights else f"{ctx.dataset}: {half} classes -> "
             f"{num_classes} new classes, {metrics['target_train_images']:,} labelled images")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, augment in zip(axes, (False, True)):
        shown = [r for r in runs.values() if r["augmentation"] == augment]
        ax.axhline(100 / num_classes, color="0.5", ls=":", lw=1, label=f"chance ({100 / num_classes:.0f} %)")
        plots.line_plot({f"{r['description']}, lr {r['lr_backbone'] or r['lr_head']:.2g} "
                         f"(best {100 * r['best_val_accuracy']:.1f} %)":
                         (range(1, len(r["val_accuracy"]) + 1), [100 * v for v in r["val_accuracy"]]) for r in shown},
                        ("with" if augment else "without") + " augmentation", "epoch", "validation accuracy (%)", ax=ax)
        for i, r in enumerate(shown):  # the checkpoint kept: a ring around its point
            ax.plot(r["best_epoch"], 100 * r["best_val_accuracy"], "o", ms=10, mfc="none", mew=1.8, color=f"C{i}")
        ax.set_ylim(0, 100)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: the curves fill the axes
    fig.suptitle(f"Validation accuracy per epoch ({title}); rings: the checkpoint kept and tested")
    fig.tight_layout()
    ctx.save_figure(fig, "validation_curves", "Validation accuracy per epoch of every strategy, without (left) "
                    "and with (right) augmentation; the ring marks the epoch whose checkpoint is kept and tested.")
    plot_tuning(ctx, metrics["tuning"], title)
    values = {STRATEGIES[r["strategy"]][1] + ("\n+ augmentation" if r["augmentation"] else ""): {
        "clean": 100 * r["test_accuracy"], **{f"gaussian noise, std {s:g}": 100 * r["noisy_test_accuracy"][s]
                                              for s in c.noise_std}} for r in runs.values()}
    fig = plots.bar_chart(values, f"Test accuracy of each strategy's best checkpoint ({title})", "test accuracy (%)",
                          fmt="{:.0f}", chance=100 / num_classes, xlabel="strategy", ylim=(0, 100),
                          colors=[plt.cm.Blues(0.85 - 0.5 * i / len(c.noise_std)) for i in range(len(c.noise_std) + 1)],
                          figsize=(max(8.0, 1.3 * len(runs) + 2), 4.8))
    fig.axes[0].axvline(len(runs) / 2 - 0.5, color="0.3", lw=0.8)  # without | with augmentation
    ctx.save_figure(fig, "test_accuracy", "Test accuracy of each strategy's best checkpoint on clean test images "
                    "and with gaussian noise added after normalisation (std in units of the dataset's std; the "
                    "course uses 0.1).")
    noise = {f"noise_{i}": (f"test noise {s:g} (%)", "{:.1%}") for i, s in enumerate(c.noise_std)}
    columns = {"description": "strategy", "augmentation": "augmentation",
               "trainable_parameters": ("trainable parameters", "{:,}"),
               "lr_backbone": ("lr, pretrained layers (blank: frozen)", "{:.2g}"),
               "lr_head": ("lr, last layer", "{:.2g}"),
               "best_epoch": "best epoch", "best_val_accuracy": ("best val (%)", "{:.1%}"),
               "test_accuracy": ("test clean (%)", "{:.1%}"), **noise,
               "cpu_seconds_per_epoch": ("CPU s per epoch (median)", "{:.2f}"),
               "backbone_max_change": ("max |backbone change|", "{:.2g}")}
    ctx.table("strategies", [{**{k: r.get(k) for k in columns}, **dict(zip(noise, r["noisy_test_accuracy"].values())),
                              "augmentation": "yes" if r["augmentation"] else "no"} for r in runs.values()],
              f"Every strategy trained {c.epochs} epochs with Adam (batch {c.batch_size}) at the learning rate "
              "its tuning chose on validation data; scores of the checkpoint with the best validation accuracy. "
              "Time: CPU seconds of one epoch (training and validation), the median over the epochs. The last "
              "column is the largest change of any pretrained weight or batch-norm statistic: 0 when only the "
              "last layer trains.", columns=columns)
    test = {key: r["test_accuracy"] for key, r in runs.items()}
    n_test = metrics["target_test_images"]
    se = {key: binomial_se(acc, n_test) for key, acc in test.items()}
    best = max(runs.values(), key=lambda r: r["best_val_accuracy"])
    metrics.update(best_strategy=best["label"], best_test_accuracy=best["test_accuracy"])
    ctx.note("Learning rates chosen on validation accuracy (" + ", ".join(
        f"{STRATEGIES[s][0]} {metrics['tuned_lr'][s]:.2g}" for s in c.strategies)
        + f"), from {len(c.lr_factors)} rates per strategy; see the tuning table.")
    ctx.note(f"Best validation accuracy: {best['label']} ({best['best_val_accuracy']:.1%}; test "
             f"{best['test_accuracy']:.1%} ± {binomial_se(best['test_accuracy'], n_test):.1%}, one binomial standard "
             f"error on {n_test:,} test images).")
    if "finetune" in runs and "finetune_head10" in runs:
        ctx.note(f"Full fine-tuning reaches {test['finetune']:.1%} test accuracy with one learning rate and "
                 f"{test['finetune_head10']:.1%} when the new last layer learns 10 times faster.")
    pretrained = [key for key, r in runs.items() if r["strategy"] != "scratch"]
    if "scratch" in runs and pretrained:
        top = max(pretrained, key=lambda key: runs[key]["best_val_accuracy"])  # chosen on validation, not test
        noise = float(np.hypot(se[top], se["scratch"]))
        verdict = ctx.headline(f"test accuracy, {runs[top]['label']}", test[top], test["scratch"],
                               "from scratch (tuned lr)", noise=noise)
        ctx.note(f"From random weights the same network reaches {test['scratch']:.1%}, the pretrained strategy "
                 f"best on validation ({runs[top]['label']}) {test[top]:.1%}: "
                 f"{100 * (test[top] - test['scratch']):+.1f} points, standard error of the difference "
                 f"{100 * noise:.1f} points ({verdict}).")
    ctx.note("Augmentation changes the clean test accuracy by (percentage points): " + ", ".join(
        f"{runs[s]['description']} {100 * (test[s + '_aug'] - test[s]):+.1f}" for s in c.strategies)
        + f". With {n_test:,} test images one standard error of such a difference is about "
        f"{100 * np.sqrt(2) * max(se.values()):.1f} points; changes within twice that are noise.")
    for std in c.noise_std:
        change = [100 * (r["noisy_test_accuracy"][std] - r["test_accuracy"]) for r in runs.values()]
        ctx.note(f"Gaussian test noise of std {std:g} changes the test accuracy by {np.mean(change):+.1f} points "
                 f"on average over the {len(runs)} models (from {min(change):+.1f} to {max(change):+.1f}).")
