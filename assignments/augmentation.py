"""ITU week 4, task 5: data augmentation.

A small ``shapes`` training set grown by augmented copies (the hand-chosen crop + flip +
colour jitter, RandAugment, TrivialAugment) against plain repeats of the originals at the
same steps, and an ablation of each transformation alone; CPU time after a warm-up.
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
from .runner import beyond_noise, binomial_se, positive_int

NAME = "augmentation"
COURSE = "ITU advanced ML"
TASK = "week 4, task 5"
SUMMARY = ("grow a small training set 2/4/8x by augmentation: accuracy and time per factor, "
           "and which transformations help (ablation)")
STATEMENT = """
Use data augmentation to enlarge a small training set 2, 4 and 8 times: add copies of
the training images transformed at random by hand-chosen transformations (crops, flips,
rotations, colour changes, blur, cutout) and by the automated policies RandAugment and
TrivialAugment. Train the same network on each enlarged set and report the test
accuracy and the training time for every factor. Which transformations help, and which
do not? Compare each transformation on its own with no augmentation and with all
transformations together.
(Offline the kit uses 500 images of ``shapes``, ten procedural shapes on cluttered
backgrounds, in place of CIFAR-10, grown 2 and 4 times; the full profile adds 8.)
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
# The automated policies, from the implementation FixMatch's strong view uses: RandAugment
# as FixMatch runs it (2 of its 14 operations, each at a random magnitude) and TrivialAugment.
AUTOMATED = {
    "randaugment": ("RandAugment (2 ops)", lambda: A.RandAugment(2, magnitude=1.0)),
    "trivialaugment": ("TrivialAugment", lambda: A.TrivialAugment()),
}
# The pipeline that grows the set: CIFAR's standard crop and flip, plus colour jitter
# (in ``shapes`` the colours are random, so they carry no label). Chosen beforehand,
# not after the ablation.
GROWTH = ("crop", "flip", "colour")
# Within 120 CPU seconds on one thread: 39 x 500 images (factors 1, 2, 4: 25; the ablation at
# 2x: 14) for 5 epochs, about 0.8 CPU s per 1,000 images; the full profile: 1,000 images, 10 epochs, up to 8x.
PROFILES = {
    "default": {"epochs": 5, "batch_size": 32, "lr": 2e-3, "train_size": 500, "factors": (1, 2, 4),
                "ablation_factor": 2, "transforms": tuple(TRANSFORMS), "automated": tuple(AUTOMATED),
                "ablation": True, "shapes_images": 5000, "test_size": None},
    "quick": {"epochs": 4, "train_size": 300, "factors": (1, 2), "ablation_factor": 2,
              "transforms": ("crop", "colour"), "shapes_images": 1500, "test_size": 600},
    "full": {"epochs": 10, "train_size": 1000, "factors": (1, 2, 4, 8), "ablation_factor": 4},
}
DATASET_SETTINGS = {"cifar10": {"train_size": 5000, "epochs": 6}}
CLASSES = 10  # in both datasets
# Narrow first layers: twice as fast as (16, 32, 64, 64) on a CPU (measured on shapes, 500
# originals grown 8x, 5 epochs: 48 % against 58 % test accuracy).
WIDTHS = (8, 16, 32, 64)


def add_arguments(parser):
    parser.add_argument("--train-size", type=positive_int, help="original training images (one per class at least)")
    parser.add_argument("--ablation", action=argparse.BooleanOptionalAction,
                        help="the per-transformation ablation (on unless --no-ablation)")


def check(config):
    if config.train_size < CLASSES:
        return f"--train-size must be at least {CLASSES} (one image per class), got {config.train_size}"


class EpochTimer(Callback):
    """Adds each epoch's CPU seconds to its row of the history, which the checkpoints
    hold: a run resumed with --resume still reports what its epochs took."""

    def on_train_begin(self, trainer):
        self.start = time.process_time()

    def on_epoch_end(self, trainer, metrics):
        now = time.process_time()
        metrics["cpu_seconds"], self.start = now - self.start, now


def warm_up(x, y, normalize, steps=5):
    """A few training steps of a throwaway CNN before anything is timed: the first steps
    of a process pay one-off costs (memory, kernel choice) that no setting should carry."""
    model = SmallCNN(tuple(x.shape[1:]), num_classes=CLASSES, widths=WIDTHS, batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters())
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(normalize(x[:32])), y[:32]).backward()
        optimizer.step()


def compose(names, seed):
    """One augmentation pipeline of the named transformations or policies, with its own seeded generator."""
    return A.Compose([{**TRANSFORMS, **AUTOMATED}[n][1]() for n in names], seed=seed)


def grow(x, y, factor, names, seed, chunk=1024):
    """The originals plus ``factor - 1`` copies of them: augmented by ``names`` (all of
    them, in that order), or plain repeats when ``names`` is empty. Returns
    ``(x, y, CPU seconds spent augmenting)``."""
    start = time.process_time()
    pipeline = compose(names, seed) if names else (lambda batch: batch)
    # in chunks: a bounded amount of temporary memory for large sets
    copies = [torch.cat([pipeline(x[i:i + chunk]) for i in range(0, len(x), chunk)]) for _ in range(factor - 1)]
    return torch.cat([x, *copies]), y.repeat(factor), time.process_time() - start


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
              "train_cpu_seconds": sum(h["cpu_seconds"] for h in history), "augment_cpu_seconds": made}
    ctx.log(f"{label} ({len(gy):,} images, {trainer.step} steps): train {result['train_accuracy']:.1%}, "
            f"test {result['test_accuracy']:.1%}, {result['train_cpu_seconds']:.1f} CPU s + {made:.2f} augmenting")
    return result


def plot_samples(x, labels, classes, names, pipelines, seed, dataset, columns=6):
    """Rows: no augmentation, each transformation alone, each pipeline ({label: names}) that is
    not one of them, all together; columns: images, titled with their class."""
    rows = [("original", [])] + [(TRANSFORMS[n][0], [n]) for n in names]
    rows += [(label, p) for label, p in pipelines.items() if len(p) > 1 or p[0] not in names]
    if all(p != names for p in pipelines.values()):  # (the quick profile's growth pipeline is all of them)
        rows.append((f"all {len(names)} together", names))
    images = torch.cat([compose(which, seed + r)(x[:columns]) if which else x[:columns]
                        for r, (_, which) in enumerate(rows)])
    captions = [classes[int(k)] for k in labels[:columns]] + [None] * (len(images) - columns)
    return plots.image_grid(images.numpy(), f"Augmented copies of {columns} training images ({dataset}, "
                            f"{x.shape[2]}x{x.shape[3]} px)", captions=captions, columns=columns,
                            row_labels=[label for label, _ in rows], size=1.35)


ACCURACY_PANELS = (("test_accuracy", "Test", "accuracy (%)"),
                   ("train_accuracy", "Training, last epoch", "accuracy (%)"))
TIME_PANELS = (("train_cpu_seconds", "Training the CNN", "CPU time (s)"),
               ("augment_cpu_seconds", "Making the copies", "CPU time (s)"))


def plot_growth(factors, series, base, panels, title):
    """A panel per ``(key, panel title, y label)`` over the growth factors, a line per
    series (``{legend: {factor: result}}``); accuracies in %, a series without copies
    left out of the time spent making them."""
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4.4))
    for ax, (key, name, ylabel) in zip(axes, panels):
        accuracy = key.endswith("accuracy")
        plots.line_plot({label: (factors, [(100 if accuracy else 1) * runs[k][key] for k in factors])
                         for label, runs in series.items() if accuracy or runs[factors[-1]]["transforms"]
                         or key == "train_cpu_seconds"}, name, "growth factor (training images)", ylabel, ax=ax,
                        chance=100 / CLASSES if accuracy else None, unit=" %")
        ax.set_xscale("log", base=2)
        ax.set_xticks(factors, [f"{k}x\n({k * base:,})" for k in factors])
        ax.minorticks_off()
        ax.set_ylim(0, 104) if accuracy else ax.set_ylim(bottom=0)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_ablation(rows, dataset, factor):
    values = {r["label"].replace(" (", "\n("): {"test": 100 * r["test_accuracy"],
                                                "training (last epoch)": 100 * r["train_accuracy"]} for r in rows}
    return plots.bar_chart(values, f"Which transformation helps? Training set grown {factor}x ({dataset})",
                           "accuracy (%)", xlabel="transformations that made the copies", chance=100 / CLASSES,
                           baseline=("test accuracy without augmentation", 100 * rows[0]["test_accuracy"]),
                           colors=["tab:blue", "0.75"], ylim=(0, 105), unit=" %")


def run(ctx):
    c = ctx.config
    splits = ctx.load_dataset(**({"n": c.shapes_images} if ctx.dataset == "shapes" else {}))
    classes = [str(name) for name in splits.classes]
    if c.train_size > len(splits.train):
        raise SystemExit(f"{NAME}: --train-size {c.train_size} is more than the {len(splits.train):,} training images")
    _, keep = minidl.data.stratified_split(splits.train.y, c.train_size, seed=ctx.seed)
    x, y = torch.from_numpy(splits.train.x[keep]), torch.from_numpy(splits.train.y[keep])
    # No model selection here, so validation and test images together score every run.
    tx = np.concatenate([splits.val.x, splits.test.x])[:c.test_size]
    ty = np.concatenate([splits.val.y, splits.test.y])[:c.test_size]
    test, normalize = (torch.from_numpy(tx), torch.from_numpy(ty)), A.Normalize(splits.mean, splits.std)
    names, factors, base = list(c.transforms), list(c.factors), c.train_size
    growth = [n for n in GROWTH if n in names]
    pipelines = {"augmented": growth, **{a: [a] for a in c.automated}}  # what makes each series' copies
    legend = {"augmented": f"hand-chosen ({' + '.join(growth) or 'none'})", **{a: AUTOMATED[a][0] for a in c.automated},
              "repeated": "originals repeated (no new images)"}
    metrics = {"dataset": ctx.dataset, "train_size": base, "test_size": len(ty), "epochs": c.epochs,
               "factors": factors, "transforms": names, "growth_transforms": growth, "automated": list(c.automated),
               "model": {"widths": list(WIDTHS), "lr": c.lr, "batch_size": c.batch_size}}

    samples = plot_samples(x, y, classes, names, {legend[k]: p for k, p in pipelines.items()}, ctx.seed, ctx.dataset)
    ctx.save_figure(samples, "augmented_samples", "Each row applies one transformation to the same training images, "
                    "the last rows each pipeline and all transformations in turn: the kinds of copies added.")
    warm_up(x, y, normalize)

    def one(factor, which, label):
        return train_grown(ctx, f"{label}_{factor}x", x, y, factor, which, test, normalize)

    # Each pipeline's copies against plain repeats, the same epochs; 1x, the originals alone, starts every series.
    originals = one(1, [], "originals")
    grown = {key: {k: originals if k == 1 else one(k, which, key) for k in ctx.progress(factors, key)}
             for key, which in {**pipelines, "repeated": []}.items()}
    series = {legend[key]: runs for key, runs in grown.items()}
    top, none = factors[-1], grown["repeated"][factors[-1]]["test_accuracy"]
    noise = binomial_se(none, len(ty)) * 2 ** 0.5  # of a difference between two settings
    title = f"vs training-set growth ({ctx.dataset}, {base:,} originals, {c.epochs} epochs)"
    ctx.save_figure(plot_growth(factors, series, base, ACCURACY_PANELS, f"Accuracy {title}"), "accuracy_vs_growth",
                    f"Test accuracy (left) and final training accuracy (right) after {c.epochs} epochs over the "
                    "grown set: the originals plus copies made by each pipeline, and the originals repeated as "
                    f"often (the same number of steps without new images). {len(ty):,} test images: one standard "
                    f"error of a difference between two settings is {100 * noise:.1f} points.")
    ctx.save_figure(plot_growth(factors, series, base, TIME_PANELS, f"CPU time {title}"), "time_vs_growth",
                    "CPU time (one thread, after a warm-up) per growth factor: training on each grown set (left), "
                    "making each pipeline's copies (right).")
    columns = {"growth": ("growth", "{}x"), "copies": "copies", "images": ("images", "{:,}"), "steps": "steps",
               "train_accuracy": ("train acc (%)", "{:.1%}"), "test_accuracy": ("test acc (%)", "{:.1%}"),
               "train_cpu_seconds": ("training CPU (s)", "{:.1f}"),
               "augment_cpu_seconds": ("augmenting CPU (s)", "{:.2f}")}
    rows = [{**originals, "growth": 1, "copies": "originals only"}]
    rows += [{**runs[k], "growth": k, "copies": legend[key]} for k in factors[1:] for key, runs in grown.items()]
    ctx.table("growth", [{k: row[k] for k in columns} for row in rows],
              f"Every setting trains the same CNN (widths {WIDTHS}, batch norm, Adam {c.lr:g}, batch {c.batch_size}) "
              f"for {c.epochs} epochs over its training set; test accuracy on {len(ty):,} held-out images; CPU "
              "seconds on one thread.", columns=columns)
    gains = {key: grown[key][top]["test_accuracy"] - none for key in pipelines}
    best = max(gains, key=gains.get)
    ctx.note(f"With {base:,} original images the CNN reaches {originals['test_accuracy']:.1%} test accuracy "
             f"(training accuracy {originals['train_accuracy']:.0%}). Grown {top}x, against the originals repeated "
             f"{top} times ({none:.1%}, the same {grown['repeated'][top]['steps']} steps): "
             + ", ".join(f"{legend[key]} {100 * gain:+.1f}" for key, gain in gains.items())
             + f" points (one standard error of a difference: {100 * noise:.1f}). Training took "
             f"{originals['train_cpu_seconds']:.1f} CPU s at 1x and {grown['augmented'][top]['train_cpu_seconds']:.1f} "
             f"at {top}x; making the hand-chosen copies {grown['augmented'][top]['augment_cpu_seconds']:.2f} s.")
    ctx.headline(f"test accuracy, grown {top}x by {legend[best]}", grown[best][top]["test_accuracy"], none,
                 f"originals repeated {top}x (same steps)", noise=noise)
    metrics.update(growth=grown, best_pipeline=best, difference_noise=noise, test_accuracy={
        key: {str(k): runs[k]["test_accuracy"] for k in factors} for key, runs in grown.items()})
    if c.ablation:
        ablation(ctx, one, grown, names, pipelines, legend, metrics)
    return metrics


def ablation(ctx, one, grown, names, pipelines, legend, metrics):
    """Each transformation alone, none, each pipeline and all together, at one factor."""
    k = ctx.config.ablation_factor
    rows = [{"label": "none (repeats)", "transform": "none", **grown["repeated"][k]}]
    rows += [{"label": TRANSFORMS[n][0], "transform": n, **one(k, [n], n)} for n in ctx.progress(names, "ablation")]
    rows += [{"label": legend[key], "transform": "+".join(which), **grown[key][k]} for key, which in pipelines.items()]
    every = grown["augmented"][k] if pipelines["augmented"] == names else one(k, names, "all")  # no rerun
    rows.append({"label": f"all {len(names)} together", "transform": "all", **every})
    metrics["ablation"] = rows
    ctx.save_figure(plot_ablation(rows, ctx.dataset, k), "ablation",
                    f"Test (blue) and final training accuracy (grey), the set grown {k}x by plain repeats, each "
                    "transformation alone, each pipeline and all together; one standard error of a difference of "
                    f"test accuracies: {100 * metrics['difference_noise']:.1f} points.")
    none = rows[0]["test_accuracy"]
    ctx.table("ablation", [{"augmentation": r["label"], "train_accuracy": r["train_accuracy"],
                            "test_accuracy": r["test_accuracy"], "gain": r["test_accuracy"] - none} for r in rows],
              f"The training set grown {k}x ({k * metrics['train_size']:,} images, {ctx.config.epochs} epochs) "
              "by each transformation and pipeline.",
              columns={"augmentation": "augmentation", "train_accuracy": ("train acc (%)", "{:.1%}"),
                       "test_accuracy": ("test acc (%)", "{:.1%}"), "gain": ("test acc vs none", "{:+.1%}")})
    singles = sorted(rows[1:1 + len(names)], key=lambda r: -r["test_accuracy"])
    clear, noise = 2 * metrics["difference_noise"], metrics["difference_noise"]
    helped = [r for r in singles if r["test_accuracy"] > none and beyond_noise(r["test_accuracy"] - none, noise)]
    ctx.note(f"Ablation at {k}x, against no augmentation ({none:.1%}): " + ", ".join(
        f"{r['label']} {100 * (r['test_accuracy'] - none):+.1f}" for r in rows[1:]) + " points; beyond two standard "
        f"errors ({100 * clear:.1f} points): {', '.join(r['label'] for r in helped) or 'no single transformation'}.")
    metrics.update(ablation_factor=k, two_standard_errors=clear, best_transform=singles[0]["transform"],
                   helpful_transforms=[r["transform"] for r in helped])
