"""KTH SimCLR practical / ITU week 4, task 6 (optional): SimCLR with linear evaluation.

An encoder and a two-layer projection head are pre-trained without labels on NT-Xent
(``reference_torch.ssl``): two augmented views of every image, each view's partner to
be found among the 2N - 1 other views of the batch. A k-NN monitor follows the
representation (the encoder's output, before the head) during pre-training. Then the
encoder is frozen and a linear probe (logistic regression) is fitted on its features
with 1 %, 10 % and 100 % of the training labels, against the same probe on a randomly
initialised frozen encoder and the same network trained from scratch on those labels.

Offline the default is ``digits`` (28 px, grey repeated to RGB, no flips). ``shapes`` is
there too, but a few CPU minutes of SimCLR learn its backgrounds, which the two views of
an image share, and its probe stays near the random encoder's (see DATASETS).
"""
from __future__ import annotations

import copy

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from reference_torch import augment as A
from reference_torch import ssl
from reference_torch.train import seed_everything

from . import plots
from .runner import binomial_se, comma_list, fraction, positive_float, positive_int

NAME = "simclr"
COURSE = "KTH DL + ITU advanced ML"
TASK = "SimCLR practical + week 4, task 6"
SUMMARY = ("SimCLR: NT-Xent pre-training, the similarity matrix before/after, linear probe vs "
           "random encoder vs supervised from scratch at 1/10/100 % labels")
STATEMENT = """
Implement SimCLR: two random views of every image (random resized crop, horizontal flip,
colour jitter, grayscale, blur for large images), an encoder (ResNet-18 with the CIFAR
stem) with a two-layer projection head, and the NT-Xent loss with temperature. Show how
similarity and contrast are enforced: the cosine-similarity matrix of a batch's 2N views
before and after training, with the positive pairs marked, beside each view's softmax
over its candidates. Evaluate the representation with a linear probe on the frozen
features at several label budgets, against a randomly initialised encoder and a network
trained from scratch with the same labels. (Offline the kit uses ``digits`` at 28 px and a small CNN.)
"""
# digits first. A shapes class is its outline (colour, size, angle are random), so colour jitter
# keeps the label; yet a few CPU minutes of SimCLR learn the background (the two views of an image
# share its stripes and blotches, a shortcut to the positive) and the probe stayed at the random
# encoder's ~15-20 % (measured: 2,000-4,000 images, 2-6 epochs, T 0.2-0.5, crop 0.08-0.4; again with
# 3,200 images, crop 0.2, T 0.2, with and without rotations up to 180 deg: validation k-NN 12-15 %
# after 6 epochs, 50 CPU s).
DATASETS = ("digits", "shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True

PROFILES = {
    "default": {"epochs": 13, "batch_size": 128, "lr": 1e-3, "optimizer": "adam", "weight_decay": 1e-4,
                "temperature": 0.5, "encoder": "small", "widths": (16, 32, 64), "crop_scale": 0.5,
                "budgets": (0.01, 0.1, 1.0), "supervised_steps": 150, "shapes_images": 4000, "test_size": None},
    "quick": {"epochs": 4, "budgets": (0.01, 1.0), "supervised_steps": 60, "shapes_images": 1000},
    "full": {"epochs": 60, "shapes_images": 10000},
}
# The course's setting on CIFAR-10: Adam lr 5e-4, weight decay 1e-4, temperature 0.07, batch 256.
DATASET_SETTINGS = {"shapes": {"crop_scale": 0.2, "temperature": 0.2},
                    "cifar10": {"epochs": 100, "batch_size": 256, "lr": 5e-4, "temperature": 0.07,
                                "encoder": "resnet18", "crop_scale": 0.08, "supervised_steps": 5000}}
SHOWN = 6  # images in the similarity figure: 2 x 6 views
KNN_BANK = 2000  # at most this many labelled training images are the k-NN monitor's neighbours
# The default fits 90 CPU s on one thread (83 s measured under load; 15 epochs and 300 supervised
# steps took 119 s).


def add_arguments(parser):
    parser.add_argument("--optimizer", choices=("adam", "sgd"), help="adam, or sgd with momentum 0.9")
    parser.add_argument("--weight-decay", type=positive_float, help="weight decay of pre-training")
    parser.add_argument("--temperature", type=positive_float, help="NT-Xent temperature")
    parser.add_argument("--encoder", choices=("small", "resnet18"), help="small CNN or ResNet-18 (CIFAR stem)")
    parser.add_argument("--crop-scale", type=fraction, help="smallest area fraction of the random resized crop")
    parser.add_argument("--budgets", type=comma_list(fraction), help="label budgets, fractions of the labels")
    parser.add_argument("--supervised-steps", type=positive_int,
                        help="optimiser steps of the supervised-from-scratch baseline, at every label budget")


def check(config):
    if not 0 < config.crop_scale <= 1 or any(b <= 0 for b in config.budgets):
        return f"--crop-scale and --budgets must be in (0, 1], got {config.crop_scale} and {config.budgets}"


def encoder_for(config):
    if config.encoder == "resnet18":
        return ssl.resnet18_encoder(), 512
    return ssl.small_encoder(tuple(config.widths)), config.widths[-1]


def optimizer_for(config, params):
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


@torch.no_grad()
def similarity(model, views, temperature):
    """(cosine matrix, softmax rows) of the 2 x SHOWN views, in eval mode."""
    model.eval()
    z1, z2 = model(views.to(next(model.parameters()).device)).float().cpu().chunk(2)
    return [m.numpy() for m in ssl.similarity_matrix(z1, z2, temperature)]


def contrast(cosine):
    """Mean cosine of the positive pairs minus that of the other pairs (the diagonal left out)."""
    n = len(cosine) // 2
    positive = np.roll(np.eye(2 * n, dtype=bool), n, axis=1)
    negative = ~positive & ~np.eye(2 * n, dtype=bool)
    return float(cosine[positive].mean() - cosine[negative].mean())


def plot_similarity(before, after, temperature):
    n = len(before[0]) // 2
    fig, axes = plt.subplots(2, 2, figsize=(10, 9))
    labels = [f"{i}a" for i in range(n)] + [f"{i}b" for i in range(n)]
    positives = [(i, (i + n) % (2 * n)) for i in range(2 * n)]
    for row, (when, (cosine, softmax)) in enumerate((("before", before), ("after", after))):
        plots.heatmap(cosine, f"Cosine similarity, {when} training", "view", "view", ax=axes[row, 0],
                      x_labels=labels, y_labels=labels, colorbar="cosine similarity", signed=True)
        plots.heatmap(softmax, f"Softmax over candidates (T = {temperature:g}), {when}", "candidate view",
                      "anchor view", ax=axes[row, 1], x_labels=labels, y_labels=labels, colorbar="probability",
                      signed=False)
        for ax in axes[row]:
            ax.scatter(*zip(*[(j, i) for i, j in positives]), marker="s", s=90, facecolors="none",
                       edgecolors="red", linewidths=1.5, label="positive pair")
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def budget_subset(y, fraction_, classes, seed):
    """Indices of ``fraction_`` of the labels, balanced per class (at least one each)."""
    if fraction_ >= 1:
        return np.arange(len(y))
    per_class = max(1, round(fraction_ * len(y) / classes))
    return ssl.balanced_labelled_subset(y, per_class, seed)[0]


def train_from_scratch(ctx, x, y, test, normalize, classes, label):
    """The same encoder + a linear layer, trained with labels alone (translation, and flip
    where a mirrored image keeps its class)."""
    c = ctx.config
    seed_everything(ctx.seed)
    encoder, dim = encoder_for(c)
    model = nn.Sequential(encoder, nn.Linear(dim, classes))
    augment = ssl.weak_augment(x.shape[-1], normalize, flip=ctx.dataset != "digits")
    trainer = ctx.trainer(label, model, torch.optim.Adam(model.parameters(), lr=c.lr),
                          training_step=ssl.supervised_step(augment))
    loader = ctx.loader(x, y, shuffle=True, batch_size=min(c.batch_size, len(y)))
    ctx.fit(trainer, loader, -(-c.supervised_steps // len(loader)))  # the same steps at every budget
    return trainer.evaluate(ctx.loader(*test, batch_size=500, transform=normalize))["accuracy"]


def run(ctx):
    c = ctx.config
    options = {"shapes": {"n": c.shapes_images}, "digits": {"size": 28}}.get(ctx.dataset, {})
    splits = ctx.load_dataset(**options)
    classes, names = len(splits.classes), [str(k) for k in splits.classes]
    # Grey images as RGB, so that the colour transforms apply (brightness and contrast act on grey too).
    channels = 3 // splits.train.x.shape[1]
    x, y = torch.from_numpy(splits.train.x).repeat(1, channels, 1, 1), torch.from_numpy(splits.train.y)
    tx = torch.from_numpy(splits.test.x[:c.test_size]).repeat(1, channels, 1, 1)
    ty = torch.from_numpy(splits.test.y[:c.test_size])
    normalize, size = A.Normalize(list(splits.mean) * channels, list(splits.std) * channels), x.shape[-1]
    flip = ctx.dataset != "digits"  # a mirrored 2 is no 2
    augment = ssl.simclr_augment(size, crop_scale=(c.crop_scale, 1.0), normalize=normalize, flip=flip)

    seed_everything(ctx.seed)
    encoder, dim = encoder_for(c)
    model = ssl.SimCLR(encoder, dim, projection_dim=min(128, dim))  # no wider than the features
    random_encoder = copy.deepcopy(model.encoder)
    shown = ssl.simclr_augment(size, crop_scale=(c.crop_scale, 1.0), normalize=normalize, seed=ctx.seed, flip=flip)
    views = shown(x[:SHOWN].repeat(2, 1, 1, 1))  # rows i and SHOWN + i: two views of image i
    before = similarity(model, views, c.temperature)

    step = ssl.simclr_step(augment, c.temperature)
    vx = torch.from_numpy(splits.val.x[:c.test_size]).repeat(1, channels, 1, 1)
    val = (normalize(vx), torch.from_numpy(splits.val.y[:len(vx)]))
    bank = min(KNN_BANK, len(x))  # the k-NN monitor's labelled neighbours
    monitor = ssl.KNNMonitor((normalize(x[:bank]), y[:bank]), val, classes)
    trainer = ctx.trainer("pretrain", model, optimizer_for(c, model.parameters()), training_step=step,
                          callbacks=[monitor])
    history = ctx.fit(trainer, ctx.loader(x, y, shuffle=True, drop_last=len(x) > c.batch_size))
    after = similarity(trainer.model, views, c.temperature)
    ctx.save_figure(plot_similarity(before, after, c.temperature), "similarity_matrix",
                    f"Two views (a, b) of {SHOWN} training images: their projections' cosine similarities (left) "
                    f"and each anchor view's NT-Xent softmax over the other {2 * SHOWN - 1} views (right), before "
                    "(top) and after (bottom) pre-training. Red squares mark each view's positive partner.")
    ctx.save_figure(plots.training_curves({"SimCLR": history}, metrics=("loss", "top1", "knn_accuracy"),
                                          units={"top1": "positive ranked first (fraction)",
                                                 "knn_accuracy": "k-NN accuracy (%)"},
                                          titles={"loss": "NT-Xent loss", "top1": "Top-1 of the positive",
                                                  "knn_accuracy": "k-NN monitor (k = 20)"}, chance=1 / classes),
                    "pretraining", f"Pre-training: NT-Xent loss, how often a view's partner is the most similar of "
                    f"the 2N - 1 candidates (batch {c.batch_size}) on the training views, and the k-NN accuracy of the "
                    f"encoder's features on the validation images ({bank:,} labelled training images as neighbours).")

    features = {"SimCLR encoder": trainer.model.encoder, "random encoder": random_encoder}
    feats = {k: (ssl.extract_features(e, x, transform=normalize), ssl.extract_features(e, tx, transform=normalize))
             for k, e in features.items()}
    rows = []
    for budget in c.budgets:
        keep = budget_subset(splits.train.y, budget, classes, ctx.seed)
        row = {"budget": budget, "labels": len(keep)}
        for key, (f, g) in feats.items():
            row[key.split()[0].lower()] = ssl.linear_probe(f[keep], y[keep], g, ty, classes)["accuracy"]
        row["supervised"] = train_from_scratch(ctx, x[keep], y[keep], (tx, ty), normalize, classes,
                                               f"supervised_{budget:g}")
        rows.append(row)
        ctx.log(f"{budget:.0%} labels ({len(keep)}): probe {row['simclr']:.1%}, random {row['random']:.1%}, "
                f"scratch {row['supervised']:.1%}")
    series = {"linear probe, SimCLR encoder": "simclr", "linear probe, random encoder": "random",
              "supervised from scratch": "supervised"}
    fig = plots.line_plot({name: ([100 * r["budget"] for r in rows], [100 * r[k] for r in rows])
                           for name, k in series.items()}, f"Accuracy vs label budget ({ctx.dataset})",
                          "labelled training images (% of the training set)", "test accuracy (%)",
                          chance=100 / classes, logx=True, unit=" %")
    ctx.save_figure(fig, "label_budget", "Test accuracy with a share of the training labels: a linear probe on "
                    "the frozen SimCLR encoder, the same probe on a randomly initialised encoder, and the network "
                    f"trained from scratch on those labels ({len(ty):,} test images).")
    ctx.table("label_budget", rows, f"Test accuracy per label budget (SimCLR pre-trained {c.epochs} epochs, "
              f"{c.optimizer} lr {c.lr:g}, temperature {c.temperature:g}, batch {c.batch_size}).",
              columns={"budget": ("labels (%)", "{:.0%}"), "labels": "labelled images",
                       "simclr": ("SimCLR probe", "{:.1%}"), "random": ("random-encoder probe", "{:.1%}"),
                       "supervised": ("from scratch", "{:.1%}")})
    sample = slice(0, min(600, len(ty)))
    ctx.save_figure(plots.tsne_scatter(feats["SimCLR encoder"][1][sample].numpy(), ty[sample].numpy(), names,
                                       f"t-SNE of the SimCLR encoder's test features ({ctx.dataset})",
                                       seed=ctx.seed),
                    "tsne", "t-SNE of the frozen SimCLR features of test images, coloured by their (unseen) class.")
    full, fewest = rows[-1], rows[0]
    noise = binomial_se(fewest["random"], len(ty)) * 2 ** 0.5  # of a difference on this test set
    ctx.note(f"After {c.epochs} epochs of SimCLR the linear probe with {fewest['budget']:.0%} of the labels "
             f"({fewest['labels']}) reaches {fewest['simclr']:.1%} test accuracy, against {fewest['random']:.1%} on "
             f"a random frozen encoder ({100 * (fewest['simclr'] - fewest['random']):+.1f} points; one standard "
             f"error of the difference on {len(ty)} test images: {100 * noise:.1f}) and {fewest['supervised']:.1%} "
             f"from scratch; with {full['budget']:.0%}: {full['simclr']:.1%}, {full['random']:.1%} and "
             f"{full['supervised']:.1%}. The validation k-NN monitor went from {history[0]['val_knn_accuracy']:.1%} "
             f"to {history[-1]['val_knn_accuracy']:.1%}.")
    ctx.headline(f"linear probe, SimCLR encoder, {fewest['budget']:.0%} of the labels", fewest["simclr"],
                 fewest["random"], "the same probe on a random frozen encoder", noise=noise)
    gaps = {f"positive_minus_negative_cosine_{when}": contrast(cosine) for when, (cosine, _) in
            (("before", before), ("after", after))}
    return {**gaps, "dataset": ctx.dataset, "epochs": c.epochs, "temperature": c.temperature, "optimizer": c.optimizer,
            "lr": c.lr, "batch_size": c.batch_size, "encoder": c.encoder, "budgets": rows,
            "linear_probe_accuracy": full["simclr"], "random_encoder_accuracy": full["random"],
            "supervised_accuracy": full["supervised"], "difference_noise": noise, "test_images": len(ty),
            "shown_images": SHOWN, "other_views": 2 * SHOWN - 1, "knn_bank_images": bank,
            "val_knn_accuracy_first_epoch": history[0]["val_knn_accuracy"], "val_knn_accuracy": history[-1]["val_knn_accuracy"],
            "final_loss": history[-1]["loss"], "final_top1": history[-1]["top1"]}
