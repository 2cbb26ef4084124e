"""ITU week 4, task 5: data augmentation.

A small training set (1,000 ``shapes`` images by default, which the CNN fits almost
perfectly while staying near 30 % test accuracy) is grown 2, 4 and 8 times by adding
randomly augmented copies of every image, once, before training
(``reference_torch.augment`` on whole batches; the growth pipeline is random crop +
horizontal flip + colour jitter). Every setting trains the same CNN for
the same number of epochs with the runner's Trainer, so a k times larger
set also means k times more optimisation steps and time. To tell the augmentation's
share from the extra steps, each growth factor is also run with k plain *repeats* of
the original images (the same number of steps, no new images). An ablation then grows
the set 4 times with each of six transformations alone, with none (repeats), with the
growth pipeline and with all six together.
"""
from __future__ import annotations

import argparse
import time

import matplotlib.pyplot as plt
import numpy as np
import torch

import minidl.data
from reference_torch import augment as A
from reference_torch.train import Callback, seed_everything
from reference_torch.twins import SmallCNN

from . import plots
from .runner import positive_int

NAME = "augmentation"
COURSE = "ITU advanced ML"
TASK = "week 4, task 5"
SUMMARY = ("grow a small training set 2/4/8x by augmentation: accuracy and time per factor, "
           "and which transformations help (ablation)")
STATEMENT = """
Use data augmentation to enlarge a small training set 2, 4 and 8 times: add randomly
transformed copies of the training images (crops, flips, rotations, colour changes,
blur, cutout). Train the same network on each enlarged set and report the test
accuracy and the training time for every factor. Which transformations help, and
which do not? Compare each transformation on its own with no augmentation and with
all transformations together. (Offline the kit uses 1,000 images of ``shapes``, ten
procedural shapes on cluttered backgrounds, in place of CIFAR-10.)
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"  # on two busy cores the 1x setting took 1.7 s on one torch thread, 8 to 65 s on two
TORCH = True

# name -> (label, factory). Each works on (B, 3, H, W) batches in [0, 1].
TRANSFORMS = {
    "crop": ("random crop (pad 4)", lambda: A.RandomCrop(padding=4)),
    "flip": ("horizontal flip", lambda: A.RandomHorizontalFlip()),
    "rotate": ("rotation (up to 30 deg)", lambda: A.RandAugment(1, magnitude=1.0, ops=["rotate"])),
    "colour": ("colour jitter", lambda: A.ColorJitter(0.4, 0.4, 0.4, 0.5)),
    "blur": ("gaussian blur", lambda: A.GaussianBlur(3, sigma=(0.1, 1.5), p=0.5)),
    "cutout": ("cutout (40 % square)", lambda: A.Cutout(0.4)),
}
# The pipeline that grows the set: CIFAR's standard crop and flip, plus colour jitter
# (in ``shapes`` the colours are random, so they carry no label). Chosen beforehand,
# not after the ablation.
GROWTH = ("crop", "flip", "colour")
PROFILES = {
    "default": {"epochs": 10, "batch_size": 32, "lr": 2e-3, "train_size": 1000, "factors": (1, 2, 4, 8),
                "ablation_factor": 4, "transforms": tuple(TRANSFORMS), "ablation": True, "shapes_images": 5000,
                "test_size": None},
    "quick": {"epochs": 4, "train_size": 300, "factors": (1, 2), "ablation_factor": 2,
              "transforms": ("crop", "colour"), "shapes_images": 1500, "test_size": 600},
}
DATASET_SETTINGS = {"cifar10": {"train_size": 5000, "epochs": 6}}
CLASSES = 10  # in both datasets
# Narrow first layers: twice as fast as (16, 32, 64, 64) on a CPU, for the default profile's 14
# networks (measured on shapes, 500 originals grown 8x, 5 epochs: 48 % against 58 % test accuracy).
WIDTHS = (8, 16, 32, 64)
# A transformation counts as helpful when it beats plain repeats by more than this many
# test-accuracy points: one seed's runs differ by a few points anyway.
CLEAR_GAIN_POINTS = 3


def add_arguments(parser):
    parser.add_argument("--train-size", type=positive_int, help="original training images (one per class at least)")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction,
                        help="the per-transformation ablation (on unless --no-ablation)")


def check(config):
    if config.train_size < CLASSES:
        return f"--train-size must be at least {CLASSES} (one image per class), got {config.train_size}"


class EpochTimer(Callback):
    """Adds each epoch's wall and CPU seconds (all threads) to its row of the history, which
    the checkpoints hold: a run resumed with --resume still reports what its epochs took."""

    def on_train_begin(self, trainer):
        self.start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, trainer, metrics):
        now = (time.perf_counter(), time.process_time())
        metrics["seconds"], metrics["cpu_seconds"] = now[0] - self.start[0], now[1] - self.start[1]
        self.start = now


def compose(names, seed):
    """One augmentation pipeline of the named transformations, with its own seeded generator."""
    return A.Compose([TRANSFORMS[n][1]() for n in names], seed=seed)


def grow(x, y, factor, names, seed, chunk=1024):
    """The originals plus ``factor - 1`` copies of them: augmented by ``names`` (all of
    them, in that order), or plain repeats when ``names`` is empty. Returns
    ``(x, y, seconds spent augmenting)``."""
    start = time.perf_counter()
    pipeline = compose(names, seed) if names else None
    copies = [x]
    for _ in range(factor - 1):
        if pipeline is None:
            copies.append(x)
        else:  # in chunks: a bounded amount of temporary memory for large sets
            copies.append(torch.cat([pipeline(x[i:i + chunk]) for i in range(0, len(x), chunk)]))
    return torch.cat(copies), y.repeat(factor), time.perf_counter() - start


def train_grown(ctx, label, x, y, factor, names, test, normalize):
    """Grow ``(x, y)`` ``factor`` times by ``names`` and train the CNN on it for the run's
    epochs (checkpointed under ``label``, so --resume continues it); returns the results."""
    gx, gy, made = grow(x, y, factor, names, seed=ctx.seed + 17 * factor)
    seed_everything(ctx.seed)  # every setting starts from the same weights
    model = SmallCNN(tuple(x.shape[1:]), num_classes=CLASSES, widths=WIDTHS, batch_norm=True)
    trainer = ctx.trainer(label, model, torch.optim.Adam(model.parameters(), lr=ctx.config.lr),
                          callbacks=[EpochTimer()])
    history = ctx.fit(trainer, ctx.loader(gx, gy, shuffle=True, transform=normalize))
    result = {"factor": factor, "transforms": list(names), "images": len(gy), "steps": trainer.step,
              "train_accuracy": history[-1]["accuracy"],
              "test_accuracy": trainer.evaluate(ctx.loader(*test, batch_size=500, transform=normalize))["accuracy"],
              "train_seconds": sum(h["seconds"] for h in history),
              "train_cpu_seconds": sum(h["cpu_seconds"] for h in history), "augment_seconds": made}
    ctx.log(f"{label} ({len(gy):,} images, {trainer.step} steps): train {result['train_accuracy']:.1%}, "
            f"test {result['test_accuracy']:.1%}, {result['train_seconds']:.1f} s + {made:.2f} s augmenting")
    return result


def combo_label(names):
    return " + ".join(names) if names else "none"


def plot_samples(x, labels, classes, names, growth, seed, dataset, columns=6):
    """Rows: no augmentation, each transformation alone, the growth pipeline, all
    together; columns: images, titled with their class."""
    rows = [("original", [])] + [(TRANSFORMS[n][0], [n]) for n in names] + [(combo_label(growth), list(growth))]
    if list(growth) != list(names):  # (the quick profile's growth pipeline is all of them)
        rows.append((f"all {len(names)} together", list(names)))
    images = torch.cat([compose(which, seed + r)(x[:columns]) if which else x[:columns]
                        for r, (_, which) in enumerate(rows)])
    captions = [classes[int(k)] for k in labels[:columns]] + [None] * (len(images) - columns)
    return plots.image_grid(images.numpy(), f"Augmented copies of {columns} training images ({dataset}, "
                            f"{x.shape[2]}x{x.shape[3]} px)", captions=captions, columns=columns,
                            row_labels=[label for label, _ in rows], size=1.35)


def plot_accuracy(factors, aug, rep, base, dataset, epochs):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, title in zip(axes, ("test_accuracy", "train_accuracy"), ("test", "training, last epoch")):
        ax.axhline(100 / CLASSES, color="0.5", ls=":", lw=1, label=f"chance ({100 / CLASSES:.0f} %)")
        series = {"grown by augmented copies": aug, "originals repeated (same steps, no new images)": rep}
        plots.line_plot({name: (factors, [100 * runs[k][key] for k in factors]) for name, runs in series.items()},
                        f"Accuracy, {title}", "growth factor (training images)", "accuracy (%)", ax=ax)
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [f"{k}x\n({k * base:,})" for k in factors])
        ax.minorticks_off()
        ax.set_ylim(0, 104)
    fig.suptitle(f"Accuracy vs training-set growth ({dataset}, {base:,} originals, {epochs} epochs)")
    fig.tight_layout()
    return fig


def plot_time(factors, aug, rep, base, dataset):
    values = {f"{k}x ({k * base:,})": {"training, augmented set": aug[k]["train_seconds"],
                                       "making the augmented copies": aug[k]["augment_seconds"],
                                       "training, repeated originals": rep[k]["train_seconds"]} for k in factors}
    return plots.bar_chart(values, f"Wall time vs training-set growth ({dataset})", "wall time (s)",
                           xlabel="growth factor (training images)", colors=["tab:blue", "tab:orange", "tab:gray"])


def plot_ablation(rows, dataset, factor):
    values = {r["label"].replace(" (", "\n("): {"test": 100 * r["test_accuracy"],
                                                "training (last epoch)": 100 * r["train_accuracy"]} for r in rows}
    return plots.bar_chart(values, f"Which transformation helps? Training set grown {factor}x ({dataset})",
                           "accuracy (%)", xlabel="transformations that made the copies", chance=100 / CLASSES,
                           baseline=("test accuracy without augmentation", 100 * rows[0]["test_accuracy"]),
                           colors=["tab:blue", "0.75"], ylim=(0, 105))


def run(ctx):
    c = ctx.config
    splits = ctx.load_dataset(**({"n": c.shapes_images} if ctx.dataset == "shapes" else {}))
    classes = [str(name) for name in splits.classes]
    if c.train_size > len(splits.train):
        raise SystemExit(f"{NAME}: --train-size {c.train_size} is more than the {len(splits.train):,} "
                         "training images")
    _, keep = minidl.data.stratified_split(splits.train.y, c.train_size, seed=ctx.seed)
    x, y = torch.from_numpy(splits.train.x[keep]), torch.from_numpy(splits.train.y[keep])
    # No model selection here, so validation and test images together score every run.
    tx = np.concatenate([splits.val.x, splits.test.x])[:c.test_size]
    ty = np.concatenate([splits.val.y, splits.test.y])[:c.test_size]
    test, normalize = (torch.from_numpy(tx), torch.from_numpy(ty)), A.Normalize(splits.mean, splits.std)
    names, factors, base = list(c.transforms), list(c.factors), c.train_size
    growth = [n for n in GROWTH if n in names]
    metrics = {"dataset": ctx.dataset, "train_size": base, "test_size": len(ty), "epochs": c.epochs,
               "factors": factors, "transforms": names, "growth_transforms": growth,
               "model": {"widths": list(WIDTHS), "lr": c.lr, "batch_size": c.batch_size}}

    ctx.save_figure(plot_samples(x, y, classes, names, growth, ctx.seed, ctx.dataset), "augmented_samples",
                    "Each row applies one transformation to the same training images; the last rows apply "
                    f"the growth pipeline ({combo_label(growth)}) and all {len(names)} transformations in turn. "
                    "These are the kinds of copies added to the training set.")

    def one(factor, which, label):
        return train_grown(ctx, f"{label}_{factor}x", x, y, factor, which, test, normalize)

    # growth: augmented copies against plain repeats, the same epochs; 1x, the originals alone, is both
    aug = {k: one(k, growth if k > 1 else [], "augmented") for k in ctx.progress(factors, "augmented copies")}
    rep = {k: aug[k] if k == 1 else one(k, [], "repeated") for k in ctx.progress(factors, "repeats")}
    metrics["growth"] = {"augmented": aug, "repeated": rep}

    ctx.save_figure(plot_accuracy(factors, aug, rep, base, ctx.dataset, c.epochs), "accuracy_vs_growth",
                    f"Test accuracy (left) and final training accuracy (right) after {c.epochs} epochs over the "
                    f"grown set. Blue: the originals plus augmented copies ({combo_label(growth)}); orange: the "
                    "originals repeated as often, the same number of steps without new images.")
    ctx.save_figure(plot_time(factors, aug, rep, base, ctx.dataset), "time_vs_growth",
                    "Wall time per growth factor: training grows linearly with the number of images "
                    "(fixed epochs); making the augmented copies costs little in comparison.")
    rows = [{**res, "growth": k, "copies": "originals only" if k == 1 else kind} for k in factors
            for kind, res in (("augmented", aug[k]), ("repeated", rep[k])) if k > 1 or kind == "augmented"]
    columns = {"growth": ("growth", "{}x"), "copies": "copies", "images": ("images", "{:,}"), "steps": "steps",
               "train_accuracy": ("train acc (%)", "{:.1%}"), "test_accuracy": ("test acc (%)", "{:.1%}"),
               "train_seconds": ("training (s)", "{:.1f}"), "train_cpu_seconds": ("training CPU (s)", "{:.1f}"),
               "augment_seconds": ("augmenting (s)", "{:.2f}")}
    ctx.table("growth", [{k: row[k] for k in columns} for row in rows],
              f"Every setting trains the same CNN (widths {WIDTHS}, batch norm, Adam {c.lr:g}, batch {c.batch_size}) "
              f"for {c.epochs} epochs over its training set; test accuracy on {len(ty):,} held-out images. Wall time "
              "depends on what else runs on the machine; CPU time (all threads) less so.", columns=columns)
    top, best_k = factors[-1], max(factors, key=lambda k: aug[k]["test_accuracy"])
    ctx.note(f"With {base:,} original images the CNN reaches {aug[1]['test_accuracy']:.1%} test accuracy "
             f"(training accuracy {aug[1]['train_accuracy']:.0%}). Grown {top}x by augmentation: "
             f"{aug[top]['test_accuracy']:.1%}, against {rep[top]['test_accuracy']:.1%} for the originals repeated "
             f"{top} times (the same {aug[top]['steps']} steps), a difference of "
             f"{100 * (aug[top]['test_accuracy'] - rep[top]['test_accuracy']):+.1f} points; the best factor is "
             f"{best_k}x. Training took {aug[1]['train_seconds']:.1f} s at 1x and {aug[top]['train_seconds']:.1f} s "
             f"at {top}x (the same epochs over {top} times the images); making the augmented copies took "
             f"{aug[top]['augment_seconds']:.2f} s.")
    metrics.update(test_accuracy={str(k): aug[k]["test_accuracy"] for k in factors},
                   repeated_test_accuracy={str(k): rep[k]["test_accuracy"] for k in factors},
                   train_seconds={str(k): aug[k]["train_seconds"] for k in factors}, best_factor=best_k)
    if c.ablation:
        ablation(ctx, one, aug, rep, names, growth, metrics)
    return metrics


def ablation(ctx, one, aug, rep, names, growth, metrics):
    """Each transformation alone, none, the growth pipeline and all together, at one factor."""
    k = ctx.config.ablation_factor
    rows = [{"label": "none (repeats)", "transform": "none", **rep[k]}]
    for name in ctx.progress(names, "ablation"):
        rows.append({"label": TRANSFORMS[name][0], "transform": name, **one(k, [name], name)})
    rows.append({"label": combo_label(growth), "transform": "+".join(growth), **aug[k]})
    every = aug[k] if growth == names else one(k, names, "all")  # the same pipeline: no rerun
    rows.append({"label": f"all {len(names)} together", "transform": "all", **every})
    metrics["ablation"] = rows
    ctx.save_figure(plot_ablation(rows, ctx.dataset, k), "ablation",
                    f"Test accuracy (blue) and final training accuracy (grey) with the training set grown {k}x by "
                    f"no transformation (plain repeats), by each one alone, by the growth pipeline "
                    f"({combo_label(growth)}) and by all {len(names)} together. A transformation helps when its "
                    "blue bar rises above the dashed line.")
    none = rows[0]["test_accuracy"]
    ctx.table("ablation", [{"augmentation": r["label"], "train_accuracy": r["train_accuracy"],
                            "test_accuracy": r["test_accuracy"], "gain": r["test_accuracy"] - none} for r in rows],
              f"The training set grown {k}x ({k * metrics['train_size']:,} images, {ctx.config.epochs} epochs) "
              "by each transformation.",
              columns={"augmentation": "augmentation", "train_accuracy": ("train acc (%)", "{:.1%}"),
                       "test_accuracy": ("test acc (%)", "{:.1%}"), "gain": ("test acc vs none", "{:+.1%}")})
    singles = sorted(rows[1:-2], key=lambda r: -r["test_accuracy"])
    helped = [r for r in singles if 100 * (r["test_accuracy"] - none) > CLEAR_GAIN_POINTS]
    ctx.note(f"Ablation at {k}x: " + ", ".join(f"{r['label']} {100 * (r['test_accuracy'] - none):+.1f}"
                                             for r in singles)
             + f" points against no augmentation ({none:.1%}); {combo_label(growth)} "
             f"{100 * (rows[-2]['test_accuracy'] - none):+.1f}, all {len(names)} together "
             f"{100 * (rows[-1]['test_accuracy'] - none):+.1f}. "
             + (f"Clearly helpful here (more than {CLEAR_GAIN_POINTS} points): "
                f"{', '.join(r['label'] for r in helped)}." if helped else
                f"None of them helped by more than {CLEAR_GAIN_POINTS} points at this budget.")
             + " Single runs: differences of a few points are within the noise of one seed.")
    metrics.update(ablation_factor=k, best_transform=singles[0]["transform"],
                   helpful_transforms=[r["transform"] for r in helped])
