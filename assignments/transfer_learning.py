"""UvA DL1 assignment 2 part 1 / ITU week 4, task 4: transfer learning.

``--weights`` (a torchvision ResNet-18 file) with ``--dataset cifar100`` is the course's experiment,
on its schedule. Without weights a small CNN is pretrained offline on the first half of the
dataset's classes (once per setting: cached in ``runs/.cache``) and transferred to the other half
with ``--per-class`` labelled images per class: the class-split setting of Yosinski et al. (2014),
"How transferable are features in deep neural networks?"."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch import augment as A
from reference_torch.checkpoint import cached, load_checkpoint
from reference_torch.models import load_torchvision_weights, resnet18
from reference_torch.train import Checkpoint, seed_everything, tune_lr, warmup_cosine
from reference_torch.transfer import Prepared, class_split, configure, new_head, noisy_accuracy
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

STRATEGIES = {  # name -> (description for tables and notes, short label for bar charts, the setting tuned)
    "head": ("last layer only", "last layer only", "lr"),  # a linear probe; the frozen layers in eval mode
    "finetune": ("full fine-tune", "full fine-tune", "finetune_lr"),
    "finetune_head10": ("full fine-tune, 10x lr for the last layer", "fine-tune,\n10x lr last layer", "finetune_lr"),
    "scratch": ("from scratch (random weights)", "from scratch", "scratch_lr"),
}
# On the embedded datasets a smaller batch gives the few labelled images more steps per
# epoch, so 8 epochs at a tuned rate do what 30 would at batch 128. The default fits 90 CPU
# seconds on one thread: shapes drawn at 24x24 pixels cost half of 32x32, which pays for 8
# pretraining epochs instead of 4 (see the README for the measurements).
PROFILES = {
    "default": {"epochs": 8, "batch_size": 32, "lr": 1e-2, "finetune_lr": 1e-3, "scratch_lr": 1e-3,
                "lr_factors": (1 / 3, 1, 3), "strategies": tuple(STRATEGIES), "noise_std": (0.1, 0.5),
                "weights": None, "image_size": None, "per_class": 50, "pretrain_epochs": 8, "pretrain_lr": 2e-3,
                "source_per_class": None, "widths": (16, 32, 64), "shapes_images": 10000, "shapes_size": 24,
                "val_size": 250, "test_size": None},
    "quick": {"epochs": 6, "lr": 1e-3, "finetune_lr": 3e-4, "scratch_lr": 1e-3, "lr_factors": (1, 3), "per_class": 10,
              "pretrain_epochs": 3, "source_per_class": 200, "shapes_images": 1500, "val_size": 200,
              "test_size": 300},
    "full": {"epochs": 30, "pretrain_epochs": 15, "source_per_class": None, "val_size": None, "shapes_size": 32},
}
DATASET_SETTINGS = {"digits": {"per_class": 10, "pretrain_epochs": 6, "widths": (16, 32)}, **dict.fromkeys(
    ("cifar10", "cifar100"), {"epochs": 30, "batch_size": 128, "per_class": None, "lr": 1e-3, "finetune_lr": 3e-4,
                              "scratch_lr": 1e-3, "pretrain_epochs": 15, "widths": (32, 64, 128),
                              "source_per_class": None, "val_size": None})}
# Label-preserving augmentation of images in [0, 1]: a mirrored 2 is no 2, a mirrored shape is. Drawn from
# torch's global generator, which the Trainer's checkpoints hold: --resume continues with the same images.
AUGMENT = {"digits": A.Compose([A.RandomCrop(padding=3, padding_mode="constant")]), **dict.fromkeys(
    ("shapes", "cifar10", "cifar100"), A.Compose([A.RandomCrop(padding=4), A.RandomHorizontalFlip()]))}


def add_arguments(parser):  # and --lr: of the last layer alone
    parser.add_argument("--weights", metavar="PATH", help="ImageNet ResNet-18 weights in torchvision's format, "
                        "e.g. https://download.pytorch.org/models/resnet18-f37072fd.pth (None: pretrain offline)")
    parser.add_argument("--per-class", type=positive_int, help="labelled target images per class (None: all)")
    parser.add_argument("--image-size", type=positive_int, help="resize to this size (None: 224 with --weights)")
    parser.add_argument("--strategies", type=comma_list(str, STRATEGIES), help="strategies to compare")
    parser.add_argument("--finetune-lr", type=positive_float, help="Adam learning rate of the pretrained layers")
    parser.add_argument("--scratch-lr", type=positive_float, help="Adam learning rate of the network from scratch")
    parser.add_argument("--lr-factors", type=comma_list(positive_float), metavar="FACTORS",
                        help="the learning rates tried per strategy, on validation data: these multiples of "
                             "--lr, --finetune-lr or --scratch-lr (1: no tuning)")
    parser.add_argument("--noise-std", type=comma_list(positive_float),
                        help="test-noise standard deviations, in normalised units (the course uses 0.1)")


def check(config):
    if config.weights and not Path(config.weights).is_file():
        return f"--weights {config.weights}: no weight file there"


def pretrain(ctx, model, source, recipe):
    """Train the offline network on the source classes (Adam, cosine schedule, augmentation),
    once per ``recipe``: later runs read its weights and history from the cache."""
    c = ctx.config

    def build():  # under the cache's lock
        optimizer = torch.optim.Adam(model.parameters(), lr=c.pretrain_lr)
        train = ctx.loader(*source["train"], shuffle=True, transform=AUGMENT[ctx.dataset])
        trainer = ctx.trainer("pretrain", model, optimizer, callbacks=[EpochTimer()],
                              scheduler=warmup_cosine(optimizer, c.pretrain_epochs * len(train)))
        history = ctx.fit(trainer, train, c.pretrain_epochs, val_loader=ctx.loader(*source["val"], batch_size=256))
        return {"model": model.state_dict(), "history": history}

    folder = os.environ.get("MINIDL_MODEL_CACHE") or ctx.out.parent / ".cache"
    # Raise the version when pretrain changes the weights it returns, so that older cached
    # networks are not taken for new ones.
    state, path, reused = cached(folder, f"{NAME}-{ctx.dataset}", {"version": 1, **recipe}, build, log=ctx.log)
    if reused:
        model.load_state_dict(state["model"])
        ctx.history("pretrain", state["history"])
    return state["history"], f"read from {path} (pretrained by an earlier run)" if reused else "pretrained in this run"


def train_strategy(ctx, model, strategy, augment, data, rate):
    """Train one strategy with its tuned setting at ``rate``; its best validation checkpoint."""
    c = ctx.config
    key = strategy + ("_aug" if augment else f"_lr{rate:.2g}")
    new_head(model, len(data["classes"]))
    before = {k: v.clone() for k, v in model.body.state_dict().items()}
    finetuning = STRATEGIES[strategy][2] == "finetune_lr"  # rate: the pretrained layers'; else the one rate
    groups = configure(model, strategy, *((c.lr, rate) if finetuning else (rate, c.finetune_lr)))
    best = Checkpoint(ctx.out / "checkpoints" / key / "best.pt", monitor="val_accuracy", mode="max")
    trainer = ctx.trainer(key, model, torch.optim.Adam(groups), callbacks=[EpochTimer(), best])
    train = ctx.loader(*data["train"], shuffle=True, transform=AUGMENT[ctx.dataset] if augment else None)
    history = ctx.fit(trainer, train, val_loader=ctx.loader(*data["val"], batch_size=256))
    model.load_state_dict(load_checkpoint(best.path)["model"])
    change = max(float((v - before[k].to(v)).abs().max()) for k, v in model.body.state_dict().items()
                 if v.is_floating_point())  # of any pretrained weight or batch-norm statistic
    return {"key": key, "strategy": strategy, "augmentation": augment, "description": STRATEGIES[strategy][0],
            "label": STRATEGIES[strategy][0] + (" + augmentation" if augment else ""),
            "trainable_parameters": sum(p.numel() for g in groups for p in g["params"]),
            "lr_backbone": groups[0]["lr"] if len(groups) > 1 else None, "lr_head": groups[-1]["lr"], "lr": rate,
            "val_accuracy": [h["val_accuracy"] for h in history], "best_epoch": best.best_epoch,
            "best_val_accuracy": best.best, "backbone_max_change": change,  # CPU time of the median epoch: the
            "cpu_seconds_per_epoch": float(np.median([h["cpu_seconds"] for h in history]))}  # first pay for warm-up


def tested(ctx, pretrained, result, data, seed):
    """``result`` with the test accuracy of its best checkpoint (in a copy of ``pretrained``
    with a new last layer, the architecture of every strategy), clean and under each test noise."""
    model = copy.deepcopy(pretrained)
    new_head(model, len(data["classes"]))
    model.load_state_dict(load_checkpoint(ctx.out / "checkpoints" / result["key"] / "best.pt")["model"])
    clean, *noisy = noisy_accuracy(model.to(ctx.device), ctx.loader(*data["test"], batch_size=256),
                                   (0, *ctx.config.noise_std), seed + 999)
    return {**result, "test_accuracy": clean, "test_se": binomial_se(clean, len(data["test"][1])),
            "noisy_test_accuracy": dict(zip(ctx.config.noise_std, noisy))}


def run(ctx):
    c = ctx.config
    if c.weights:  # the pretrained network first: a wrong weight file fails before any data loads
        imagenet = load_torchvision_weights(resnet18(num_classes=1000), c.weights)
    size = c.image_size or (224 if c.weights else None)
    options = {"shapes": {"n": c.shapes_images, "size": c.shapes_size}, "digits": {"size": 28}}
    splits = ctx.load_dataset(**options.get(ctx.dataset, {}))
    half = 0 if c.weights else len(splits.classes) // 2  # with ImageNet weights every class is a target
    source, target, rng = range(half), range(half, len(splits.classes)), ctx.rng(1)
    data = {"classes": target, "train": class_split(splits.train, target, c.per_class, rng),
            "val": class_split(splits.val, target, size=c.val_size),
            "test": class_split(splits.test, target, size=c.test_size)}
    metrics = {"dataset": ctx.dataset, "image_size": size or int(splits.in_shape[-1]), "per_class": c.per_class,
               **{f"{name}_classes": [str(splits.classes[i]) for i in part] for name, part in (("target", target),
                                                                                              ("source", source))},
               **{f"target_{part}_images": len(data[part][1]) for part in ("train", "val", "test")},
               "noise_std": c.noise_std, "strategies": c.strategies, "epochs": c.epochs, "batch_size": c.batch_size}

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
        pretrained, source = prepared(), {"train": class_split(splits.train, source, c.source_per_class, ctx.rng(2)),
                                          "val": class_split(splits.val, source)}
        recipe = {"data": splits.options, "seed": ctx.seed, "classes": metrics["source_classes"], "widths": c.widths,
                  "source_per_class": c.source_per_class, "images": len(source["train"][1]), "lr": c.pretrain_lr,
                  "epochs": c.pretrain_epochs, "batch_size": c.batch_size, "device": ctx.device.type, "amp": c.amp}
        history, origin = pretrain(ctx, pretrained, source, recipe)
        metrics.update(pretrained_on=f"{ctx.dataset} classes {', '.join(metrics['source_classes'])}",
                       pretrain_val_accuracy=history[-1]["val_accuracy"], pretrain_train_images=recipe["images"],
                       pretrain_cpu_seconds=sum(h["cpu_seconds"] for h in history), pretrained=origin)
        ctx.note(f"No --weights given, so a small CNN pretrained on {metrics['pretrained_on']} ({recipe['images']:,} "
                 f"images, {c.pretrain_epochs} epochs, {history[-1]['val_accuracy']:.1%} validation accuracy; "
                 f"{origin}) is transferred, with {c.per_class or 'all'} labelled images per class of the others. "
                 "The course's experiment, from ImageNet weights: --weights FILE --dataset cifar100.")
    # Each strategy's rate (--lr, --finetune-lr or --scratch-lr) is tuned over lr_factors times it
    # on the validation images, without augmentation; the augmented run uses the rate chosen.
    runs, tuning = {}, {}
    for i, strategy in enumerate(ctx.progress(c.strategies, "strategies")):
        def train_at(rate, augment=False, seed=ctx.seed + i):  # the same new last layer at every rate
            seed_everything(seed)
            model = prepared() if strategy == "scratch" else copy.deepcopy(pretrained)
            return train_strategy(ctx, model, strategy, augment, data, rate)

        chosen, tuning[strategy] = tune_lr(train_at, [f * getattr(c, STRATEGIES[strategy][2]) for f in c.lr_factors])
        seed = ctx.seed + len(c.strategies) + i
        runs[strategy] = tested(ctx, pretrained, chosen, data, ctx.seed + i)  # only the chosen rate is tested
        runs[strategy + "_aug"] = tested(ctx, pretrained, train_at(chosen["lr"], True, seed), data, seed)
    runs = {k: runs[k] for k in [s + a for a in ("", "_aug") for s in c.strategies]}  # table order
    metrics.update(runs=runs, tuning=tuning, tuned_lr={s: runs[s]["lr"] for s in c.strategies})
    summarise(ctx, runs, metrics)
    return metrics


def summarise(ctx, runs, metrics):
    """The figures, the tables and the answers, in sentences computed from the numbers."""
    c, n_classes, tuning = ctx.config, len(metrics["target_classes"]), metrics["tuning"]
    title = (f"ImageNet ResNet-18 -> {ctx.dataset}" if c.weights else f"{ctx.dataset}: {len(metrics['source_classes'])}"
             f" classes -> {n_classes} new classes, {metrics['target_train_images']:,} labelled images")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4), sharey=True)
    for ax, augment in zip(axes, (False, True)):
        shown = [r for r in runs.values() if r["augmentation"] == augment]
        plots.line_plot({f"{r['description']}, lr {r['lr']:.2g} (best {100 * r['best_val_accuracy']:.1f} %)":
                         (range(1, len(r["val_accuracy"]) + 1), [100 * v for v in r["val_accuracy"]]) for r in shown},
                        ("with" if augment else "without") + " augmentation", "epoch", "validation accuracy (%)", ax=ax,
                        chance=round(100 / n_classes), unit=" %")
        for i, r in enumerate(shown):  # the checkpoint kept: a ring around its point
            ax.plot(r["best_epoch"], 100 * r["best_val_accuracy"], "o", ms=10, mfc="none", mew=1.8, color=f"C{i}")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: the curves fill the axes
    fig.suptitle(f"Validation accuracy per epoch ({title}); rings: the checkpoint kept and tested")
    fig.tight_layout()
    ctx.save_figure(fig, "validation_curves", "Validation accuracy per epoch of every strategy, without (left) "
                    "and with (right) augmentation, at its tuned learning rate (the legend's lr: the pretrained "
                    "layers' for fine-tuning); the ring marks the epoch whose checkpoint is kept and tested.")
    lrs = {"lr_backbone": ("lr, pretrained layers (blank: frozen)", "{:.2g}"), "lr_head": ("lr, last layer", "{:.2g}")}
    ctx.table("tuning", [{"strategy": STRATEGIES[s][0], **{k: r[k] for k in (*lrs, "best_val_accuracy")}, "chosen":
                          "yes" if r["key"] == runs[s]["key"] else ""} for s, rows in tuning.items() for r in rows],
              "Learning-rate tuning: every rate tried, without augmentation; the best on validation is chosen (a "
              "chosen rate at the end of its range means a wider range might do better), and only it is tested.",
              columns={"strategy": "strategy", **lrs, "best_val_accuracy": ("best val (%)", "{:.1%}"),
                       "chosen": "chosen"})
    values = {STRATEGIES[r["strategy"]][1] + ("\n+ augmentation" if r["augmentation"] else ""): {
        "clean": 100 * r["test_accuracy"], **{f"gaussian noise, std {s:g}": 100 * r["noisy_test_accuracy"][s]
                                              for s in c.noise_std}} for r in runs.values()}
    fig = plots.bar_chart(values, f"Test accuracy of each strategy's best checkpoint ({title})", "test accuracy (%)",
                          fmt="{:.0f}", chance=100 / n_classes, unit=" %", xlabel="strategy", ylim=(0, 100),
                          colors=[plt.cm.Blues(0.85 - 0.5 * i / len(c.noise_std)) for i in range(len(c.noise_std) + 1)],
                          figsize=(max(8.0, 1.3 * len(runs) + 2), 4.8))
    fig.axes[0].axvline(len(runs) / 2 - 0.5, color="0.3", lw=0.8)  # without | with augmentation
    ctx.save_figure(fig, "test_accuracy", "Test accuracy of each strategy's best checkpoint on clean test images "
                    "and with gaussian noise added after normalisation (std in units of the dataset's std; the "
                    "course uses 0.1).")
    noise = {f"noise_{i}": (f"test noise {s:g} (%)", "{:.1%}") for i, s in enumerate(c.noise_std)}
    columns = {"description": "strategy", "augmentation": "augmentation",
               "trainable_parameters": ("trainable parameters", "{:,}"), **lrs, "best_epoch": "best epoch",
               "best_val_accuracy": ("best val (%)", "{:.1%}"), "test_accuracy": ("test clean (%)", "{:.1%}"),
               "test_se": ("± s.e. (%)", "{:.1%}"), **noise, "cpu_seconds_per_epoch": ("CPU s per epoch", "{:.2f}"),
               "backbone_max_change": ("max |backbone change|", "{:.2g}")}
    ctx.table("strategies", [{**{k: r.get(k) for k in columns}, **dict(zip(noise, r["noisy_test_accuracy"].values())),
                              "augmentation": "yes" if r["augmentation"] else "no"} for r in runs.values()],
              f"Every strategy trained {c.epochs} epochs with Adam (batch {c.batch_size}) at the learning rate its "
              "tuning chose; scores of the checkpoint with the best validation accuracy, ± one binomial standard "
              "error. CPU s per epoch: training and validation, the median epoch. The last column is the largest "
              "change of any pretrained weight or batch-norm statistic: 0 when only the last layer trains.",
              columns=columns)
    test, se = {k: r["test_accuracy"] for k, r in runs.items()}, {k: r["test_se"] for k, r in runs.items()}
    best = max(runs.values(), key=lambda r: r["best_val_accuracy"])
    changes = {"augmentation": {s: test[s + "_aug"] - test[s] for s in c.strategies},  # what the notes quote
               "augmentation_se": float(np.sqrt(2) * max(se.values())), "noise": {std: float(np.mean([
                   r["noisy_test_accuracy"][std] - r["test_accuracy"] for r in runs.values()])) for std in c.noise_std}}
    metrics.update(best_strategy=best["label"], best_test_accuracy=best["test_accuracy"], changes=changes)
    ctx.note(f"Learning rates chosen on validation accuracy, from {len(c.lr_factors)} per strategy: " + ", ".join(
        f"{STRATEGIES[s][0]} {runs[s]['lr']:.2g}" for s in c.strategies) + f". Best on validation: {best['label']} "
        f"(test {best['test_accuracy']:.1%} ± {best['test_se']:.1%}, one binomial standard error).")
    top = max((k for k, r in runs.items() if r["strategy"] != "scratch"), default=None,
              key=lambda k: runs[k]["best_val_accuracy"])  # the pretrained strategy best on validation, not test
    if "scratch" in runs and top:
        noise = float(np.hypot(se[top], se["scratch"]))
        verdict = ctx.headline(f"test accuracy, {runs[top]['label']}", test[top], test["scratch"],
                               "from scratch (tuned lr)", noise=noise)
        ctx.note(f"From random weights the same network reaches {test['scratch']:.1%}, the pretrained strategy best "
                 f"on validation ({runs[top]['label']}) {test[top]:.1%}: {100 * (test[top] - test['scratch']):+.1f} "
                 f"points, standard error of the difference {100 * noise:.1f} points ({verdict}).")
    ctx.note("Augmentation changes the clean test accuracy by (percentage points): " + ", ".join(
        f"{STRATEGIES[s][0]} {100 * d:+.1f}" for s, d in changes["augmentation"].items()) + "; one standard error "
        f"of such a difference is about {100 * changes['augmentation_se']:.1f} points: changes within twice that are "
        "noise. Gaussian test noise changes it by (points, on average over the models; per model in the table): "
        + ", ".join(f"{100 * d:+.1f} at std {std:g}" for std, d in changes["noise"].items()) + ".")
