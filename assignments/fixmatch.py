"""KTH FixMatch practical: semi-supervised learning with a few labels per class.

A labelled subset balanced per class (a seeded choice, so --resume rebuilds it) and the
rest of the training set unlabelled. FixMatch (``reference_torch.ssl``) trains on the
labelled batch's weak views and on the unlabelled batch: the weak view's confident
prediction (top probability >= tau) is the hard pseudo-label that the strong view
(RandAugment + Cutout) must predict; one forward pass for all of it. The labelled-only
baseline trains the same network on the same labelled images for the same steps with
weak augmentation. The EMA of the weights is evaluated, as in the paper.

Offline the default is ``digits`` (28 px, grey repeated to RGB, no flips) with one label
per class; on ``shapes`` a CPU budget leaves too few confident pseudo-labels (see DATASETS).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch import augment as A
from reference_torch import ssl
from reference_torch.models import wrn28_2
from reference_torch.train import classification_step, seed_everything, warmup_cosine
from reference_torch.twins import SmallCNN

from . import plots
from .runner import binomial_se, comma_list, fraction, positive_float, positive_int

NAME = "fixmatch"
COURSE = "KTH DL"
TASK = "FixMatch practical"
SUMMARY = ("FixMatch with a few labels per class against a labelled-only baseline: accuracy, mask rate "
           "and pseudo-label accuracy over training, a sweep of the threshold tau")
STATEMENT = """
Implement FixMatch: with a few labelled images per class and many unlabelled ones,
train on the labelled images with cross-entropy and on the unlabelled ones by
predicting, for a strongly augmented view (RandAugment, Cutout), the hard pseudo-label
of a weakly augmented view (flip, translation) where its confidence is at least tau.
Compare with a network trained on the labelled images alone, with the same network and
budget. Follow the mask rate (share of unlabelled images above tau) and the accuracy of
the pseudo-labels during training, and sweep tau. (Offline the kit uses ``digits`` with
one label per class and a small CNN in place of CIFAR-10 and WRN-28-2.)
"""
# digits first: on shapes, a few hundred CPU steps leave the network too unsure for any
# pseudo-label (measured: 50 labels per class, 4,000 images, 100 steps: 0.1 % of the
# unlabelled images above tau 0.8), so FixMatch cannot show what it does there.
DATASETS = ("digits", "shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True

# The paper: tau 0.95, lambda_u 1, mu 7, batch 64, SGD Nesterov 0.9, lr 0.03 with cosine decay,
# weight decay 5e-4, EMA 0.999, WRN-28-2, 2^20 steps. A few hundred steps on a CPU need a
# lower threshold (few confident predictions at 0.95 this early), a faster EMA and a smaller mu.
# Within 90 CPU s on one thread: 240 steps, mu 1, one more tau (300 steps, mu 3 and taus 0.5, 0.8,
# 0.95 took 276 CPU s under load: about 1.3 ms per image of a step).
PROFILES = {
    "default": {"epochs": 6, "steps_per_epoch": 40, "batch_size": 32, "lr": 0.03, "mu": 1, "tau": 0.8,
                "lambda_u": 1.0, "weight_decay": 5e-4, "ema": 0.99, "per_class": 1, "taus": (0.95,),
                "network": "small", "shapes_images": 4000, "test_size": None},
    "quick": {"epochs": 4, "steps_per_epoch": 20, "mu": 2, "ema": 0.95, "taus": ()},
    "full": {"epochs": 40, "steps_per_epoch": 50, "mu": 3, "shapes_images": 10000, "taus": (0.5, 0.7, 0.9, 0.95)},
}
DATASET_SETTINGS = {"shapes": {"per_class": 50},
                    "cifar10": {"epochs": 100, "steps_per_epoch": 1024, "batch_size": 64, "mu": 7, "tau": 0.95,
                                "ema": 0.999, "per_class": 25, "network": "wrn28_2", "taus": (0.8,)}}


def add_arguments(parser):
    parser.add_argument("--steps-per-epoch", type=positive_int, help="optimiser steps per epoch")
    parser.add_argument("--mu", type=positive_int, help="unlabelled images per labelled image in a batch")
    parser.add_argument("--tau", type=fraction, help="confidence threshold of the pseudo-labels")
    parser.add_argument("--lambda-u", type=positive_float, help="weight of the unlabelled loss")
    parser.add_argument("--weight-decay", type=positive_float, help="SGD weight decay")
    parser.add_argument("--ema", type=fraction, help="EMA decay of the evaluated weights")
    parser.add_argument("--per-class", type=positive_int, help="labelled images per class")
    parser.add_argument("--taus", type=comma_list(fraction), help="further thresholds to sweep")
    parser.add_argument("--network", choices=("small", "wrn28_2"), help="small CNN or WRN-28-2")


def check(config):
    if config.ema >= 1:
        return f"--ema must be below 1, got {config.ema}"


def network(config, classes, size):
    seed_everything(0)  # every run starts from the same weights
    if config.network == "wrn28_2":
        return wrn28_2(classes)
    return SmallCNN((3, size, size), classes, widths=(16, 32, 64, 64), batch_norm=True)


def train(ctx, label, step, labelled, unlabelled, test, normalize, classes):
    """One run of ``step`` for the run's steps; returns (history, final test accuracy of the EMA)."""
    c = ctx.config
    model = network(c, classes, next(iter(test))[0].shape[-1])
    optimizer = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=0.9, nesterov=True,
                                weight_decay=c.weight_decay)
    trainer = ctx.trainer(label, model, optimizer, training_step=step, ema=c.ema,
                          eval_step=lambda m, b: classification_step(m, (normalize(b[0]), b[1])),
                          scheduler=warmup_cosine(optimizer, c.epochs * c.steps_per_epoch))
    history = ctx.fit(trainer, labelled, val_loader=test, extra_loaders=unlabelled)
    ctx.log(f"{label}: test accuracy {history[-1]['val_accuracy']:.1%} after {trainer.step} steps")
    return history, history[-1]["val_accuracy"]


def plot_views(x, weak, strong):
    images = torch.cat([x, weak(x), strong(x)]).numpy()
    return plots.image_grid(images, "Unlabelled images and their weak and strong views", columns=len(x),
                            row_labels=["original", "weak", "strong"])


def plot_training(histories, steps_per_epoch, tau):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    steps = lambda h: [steps_per_epoch * r["epoch"] for r in h]  # noqa: E731
    plots.line_plot({k: (steps(h), [100 * r["val_accuracy"] for r in h]) for k, h in histories.items()},
                    "Test accuracy (EMA weights)", "optimiser step", "test accuracy (%)", ax=axes[0])
    fix = histories["FixMatch"]
    plots.line_plot({f"mask rate (confidence >= {tau:g})": (steps(fix), [100 * r["mask_rate"] for r in fix]),
                     "pseudo-label accuracy, confident images":
                         (steps(fix), [100 * r["confident_correct"] / max(r["mask_rate"], 1e-12) for r in fix]),
                     "pseudo-label accuracy, all images": (steps(fix), [100 * r["pseudo_accuracy"] for r in fix])},
                    "FixMatch's pseudo-labels (epoch means)", "optimiser step", "% of unlabelled images",
                    ax=axes[1])
    fig.tight_layout()
    return fig


def run(ctx):
    c = ctx.config
    options = {"shapes": {"n": c.shapes_images}, "digits": {"size": 28}}.get(ctx.dataset, {})
    splits = ctx.load_dataset(**options)
    classes = len(splits.classes)
    # Grey images as RGB, so that RandAugment's colour operations apply.
    channels = 3 // splits.train.x.shape[1]
    x, y = torch.from_numpy(splits.train.x).repeat(1, channels, 1, 1), torch.from_numpy(splits.train.y)
    try:
        labelled_idx, unlabelled_idx = ssl.balanced_labelled_subset(splits.train.y, c.per_class, ctx.seed)
    except ValueError as error:
        raise SystemExit(f"{NAME}: --per-class {c.per_class} is too many for {ctx.dataset} ({error})") from None
    # The labelled images repeated to fill an epoch: each epoch is a reshuffle of them.
    repeat = np.tile(labelled_idx, -(-c.steps_per_epoch * c.batch_size // len(labelled_idx)))
    repeat = repeat[:c.steps_per_epoch * c.batch_size]
    labelled = ctx.loader(x[repeat], y[repeat], shuffle=True, drop_last=True)
    # The unlabelled loader keeps the true labels only to score the pseudo-labels.
    unlabelled = [ctx.loader(x[unlabelled_idx], y[unlabelled_idx], shuffle=True, drop_last=True,
                             batch_size=c.mu * c.batch_size)]
    tx = torch.from_numpy(splits.test.x[:c.test_size]).repeat(1, channels, 1, 1)
    test = ctx.loader(tx, splits.test.y[:c.test_size], batch_size=500)
    normalize = A.Normalize(list(splits.mean) * channels, list(splits.std) * channels)
    size, flip = x.shape[-1], ctx.dataset != "digits"  # a mirrored 2 is no 2
    weak, strong = ssl.weak_augment(size, normalize, flip=flip), ssl.strong_augment(size, normalize, flip=flip)

    shown = x[unlabelled_idx[:8]]
    pad = next(t.padding for t in weak.transforms if isinstance(t, A.RandomCrop))  # the weak view's translation
    ctx.save_figure(plot_views(shown, ssl.weak_augment(size, seed=ctx.seed, flip=flip),
                               ssl.strong_augment(size, seed=ctx.seed, flip=flip)),
                    "views", f"Eight unlabelled training images (top), their weak views ({'flip, ' if flip else ''}"
                    f"translation up to {pad} of {size} pixels) and their strong views (the same, then two "
                    "RandAugment operations and Cutout).")
    args = (labelled, unlabelled, test, normalize, classes)
    base_history, base = train(ctx, "labelled_only", ssl.supervised_step(weak), labelled, [], test,
                               normalize, classes)
    runs = {c.tau: train(ctx, f"fixmatch_tau{c.tau:g}", ssl.fixmatch_step(weak, strong, c.tau, c.lambda_u), *args)}
    for tau in (t for t in c.taus if t != c.tau):
        runs[tau] = train(ctx, f"fixmatch_tau{tau:g}", ssl.fixmatch_step(weak, strong, tau, c.lambda_u), *args)
    history, accuracy = runs[c.tau]
    ctx.save_figure(plot_training({"labelled only": base_history, "FixMatch": history}, c.steps_per_epoch, c.tau),
                    "training", f"Left: test accuracy of the EMA weights of FixMatch (tau {c.tau:g}) and of the "
                    f"labelled-only baseline ({c.per_class} labelled per class, the same network and steps). Right: "
                    "share of the unlabelled images whose weak view reaches tau, and how many of the pseudo-labels "
                    "are right (true labels used for this plot only).")
    sweep = [{"tau": tau, "test_accuracy": acc, "mask_rate": h[-1]["mask_rate"],
              "pseudo_accuracy": h[-1]["confident_correct"] / max(h[-1]["mask_rate"], 1e-12)}
             for tau, (h, acc) in sorted(runs.items())]
    values = {f"tau {r['tau']:g}": {"test accuracy": 100 * r["test_accuracy"],
                                    "mask rate, last epoch": 100 * r["mask_rate"]} for r in sweep}
    ctx.save_figure(plots.bar_chart(values, f"FixMatch's threshold tau ({ctx.dataset}, {c.per_class} labelled "
                                    "per class)", "test accuracy / unlabelled images above tau (%)",
                                    xlabel="confidence threshold", chance=100 / classes, unit=" %", ylim=(0, 105),
                                    baseline=("labelled only, test accuracy", 100 * base)),
                    "tau_sweep", "Test accuracy and final mask rate of FixMatch for each threshold tau, the same "
                    "labels, network and steps; the dashed line is the labelled-only baseline.")
    ctx.table("tau_sweep", sweep, f"FixMatch per threshold ({c.epochs * c.steps_per_epoch} steps, batch "
              f"{c.batch_size} labelled + {c.mu * c.batch_size} unlabelled, {len(labelled_idx)} labels).",
              columns={"tau": "tau", "test_accuracy": ("test acc (%)", "{:.1%}"),
                       "mask_rate": ("mask rate, last epoch", "{:.1%}"),
                       "pseudo_accuracy": ("confident pseudo-labels right", "{:.1%}")})
    ctx.note(f"With {c.per_class} label(s) per class ({len(labelled_idx)} of {len(x):,} training images), FixMatch "
             f"(tau {c.tau:g}) reaches {accuracy:.1%} test accuracy after {c.epochs * c.steps_per_epoch} steps, the "
             f"labelled-only baseline {base:.1%}; at the end {history[-1]['mask_rate']:.0%} of the unlabelled images "
             f"passed tau and {sweep[[r['tau'] for r in sweep].index(c.tau)]['pseudo_accuracy']:.0%} of those "
             "pseudo-labels were right.")
    noise = binomial_se(base, len(tx)) * 2 ** 0.5  # of a difference on this test set
    ctx.headline(f"test accuracy, FixMatch (tau {c.tau:g}, {len(labelled_idx)} labels)", accuracy, base,
                 "labelled-only baseline (same labels, network, steps)", noise=noise)
    return {"dataset": ctx.dataset, "labels": len(labelled_idx), "per_class": c.per_class, "train_images": len(x),
            "image_size": size, "weak_translation_pixels": pad, "steps": c.epochs * c.steps_per_epoch, "tau": c.tau,
            "fixmatch_accuracy": accuracy, "labelled_only_accuracy": base, "difference_noise": noise,
            "mask_rate": history[-1]["mask_rate"], "tau_sweep": sweep, "labelled_indices": labelled_idx[:20].tolist()}
