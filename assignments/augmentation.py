"""ITU week 4, task 5: data augmentation.

A small training set (1,000 ``shapes`` images by default, which the CNN fits almost
perfectly while staying near 30 % test accuracy) is grown 2, 4 and 8 times by adding
randomly augmented copies of every image, once, before training
(``reference_torch.augment`` on whole batches; the growth pipeline is random crop +
horizontal flip + colour jitter). Every setting trains the same CNN for
the same number of epochs with ``reference_torch.train.Trainer``, so a k times larger
set also means k times more optimisation steps and time. To tell the augmentation's
share from the extra steps, each growth factor is also run with k plain *repeats* of
the original images (the same number of steps, no new images). An ablation then grows
the set 4 times with each of six transformations alone, with none (repeats), with the
growth pipeline and with all six together.
"""
from __future__ import annotations

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

import minidl.data
from reference_torch import augment as A
from reference_torch.data import make_loader
from reference_torch.train import Trainer, evaluate, seed_everything
from reference_torch.twins import SmallCNN

from .runner import small_model_threads

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
    "quick": dict(n=1500, train=300, factors=(1, 2), ablation_factor=2, epochs=4,
                  transforms=("crop", "colour"), test=600),
    "shapes": dict(n=5000, train=1000, factors=(1, 2, 4, 8), ablation_factor=4, epochs=10,
                   transforms=tuple(TRANSFORMS), test=None),
    "cifar10": dict(train=5000, factors=(1, 2, 4, 8), ablation_factor=4, epochs=6,
                    transforms=tuple(TRANSFORMS), test=None),
}
# Narrow first layers: twice as fast as (16, 32, 64, 64) on a CPU, and the default
# profile trains 14 networks (measured on shapes, 500 originals grown 8x, 5 epochs: 48 % against
# 58 % test accuracy).
MODEL = dict(widths=(8, 16, 32, 64), lr=2e-3, batch_size=32)
# A transformation counts as helpful when it beats plain repeats by more than this many
# test-accuracy points: one seed's runs differ by a few points anyway.
CLEAR_GAIN_POINTS = 3


def add_arguments(parser):
    parser.add_argument("--train-size", type=int, default=None,
                        help="original training images (default 1000 for shapes, 5000 for CIFAR-10)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs over each grown set (default 10 for shapes, 6 for CIFAR-10)")
    parser.add_argument("--no-ablation", action="store_true", help="skip the per-transformation ablation")


# ------------------------------------------------------------------- growing
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


def train_and_test(x, y, test, mean, std, epochs, seed, num_classes):
    """Train the CNN on ``(x, y)`` for ``epochs``; returns (train accuracy, test accuracy,
    wall seconds, CPU seconds (all threads), optimiser steps)."""
    seed_everything(seed)
    model = SmallCNN(tuple(x.shape[1:]), num_classes=num_classes, widths=MODEL["widths"], batch_norm=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=MODEL["lr"])
    normalize = A.Normalize(mean, std)
    loader = make_loader(x, y, batch_size=MODEL["batch_size"], shuffle=True, seed=seed, transform=normalize)
    trainer = Trainer(model, optimizer, seed=seed, progress=False)
    start, cpu = time.perf_counter(), time.process_time()
    history = trainer.fit(loader, epochs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    accuracy = evaluate(model, make_loader(*test, batch_size=500, transform=normalize))["accuracy"]
    return history[-1]["accuracy"], accuracy, seconds, cpu, trainer.step


# ------------------------------------------------------------------- figures
def show(image):
    return np.clip(image.permute(1, 2, 0).numpy(), 0, 1)


def combo_label(names):
    return " + ".join(names) if names else "none"


def plot_samples(x, labels, classes, names, growth, seed, dataset, columns=6):
    """Rows: no augmentation, each transformation alone, the growth pipeline, all
    together; columns: images, titled with their class."""
    rows = [("original", [])] + [(TRANSFORMS[n][0], [n]) for n in names] + [(combo_label(growth), list(growth))]
    if list(growth) != list(names):  # (the quick profile's growth pipeline is all of them)
        rows.append((f"all {len(names)} together", list(names)))
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.35 * columns + 1.9, 1.35 * len(rows) + 0.5),
                             squeeze=False)
    for r, (label, which) in enumerate(rows):
        images = compose(which, seed + r)(x[:columns]) if which else x[:columns]
        for c in range(columns):
            ax = axes[r, c]
            ax.imshow(show(images[c]), interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    for c in range(columns):
        axes[0, c].set_title(classes[int(labels[c])], fontsize=9)
    fig.suptitle(f"Augmented copies of {columns} training images ({dataset}, "
                 f"{x.shape[2]}x{x.shape[3]} px)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_accuracy(factors, aug, rep, base, num_classes, dataset, epochs):
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    ax.plot(factors, [100 * aug[k]["test_accuracy"] for k in factors], "-o", color="tab:blue",
            label="grown by augmented copies")
    ax.plot(factors, [100 * rep[k]["test_accuracy"] for k in factors], "--s", color="tab:gray",
            label="originals repeated (same steps, no new images)")
    ax.plot(factors, [100 * aug[k]["train_accuracy"] for k in factors], ":o", color="tab:blue", alpha=0.5,
            ms=4, label="training accuracy, augmented")
    ax.plot(factors, [100 * rep[k]["train_accuracy"] for k in factors], ":s", color="tab:gray", alpha=0.5,
            ms=4, label="training accuracy, repeated")
    ax.axhline(100 / num_classes, color="0.5", lw=0.8, ls="-.", label=f"chance ({100 / num_classes:.0f} %)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(factors, [f"{k}x\n({k * base:,})" for k in factors])
    ax.set(title=f"Accuracy vs training-set growth ({dataset}, {base:,} originals, {epochs} epochs)",
           xlabel="growth factor (training images)", ylabel="accuracy (%)", ylim=(0, 104))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=2)
    fig.tight_layout()
    return fig


def plot_time(factors, aug, rep, base, dataset):
    fig, ax = plt.subplots(figsize=(6.8, 4.2))
    train = [aug[k]["train_seconds"] for k in factors]
    made = [aug[k]["augment_seconds"] for k in factors]
    width = 0.35
    pos = np.arange(len(factors))
    ax.bar(pos - width / 2, train, width, color="tab:blue", label="training, augmented set")
    ax.bar(pos - width / 2, made, width, bottom=train, color="tab:orange", label="making the augmented copies")
    ax.bar(pos + width / 2, [rep[k]["train_seconds"] for k in factors], width, color="tab:gray",
           label="training, repeated originals")
    for i, k in enumerate(factors):
        ax.text(pos[i] - width / 2, train[i] + made[i], f"{train[i] + made[i]:.1f}", ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(pos, [f"{k}x ({k * base:,})" for k in factors])
    ax.set(title=f"Wall time vs training-set growth ({dataset})", xlabel="growth factor (training images)",
           ylabel="wall time (s)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ablation(rows, num_classes, dataset, factor):
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(rows) + 2), 4.3))
    pos = np.arange(len(rows))
    test = [100 * r["test_accuracy"] for r in rows]
    train = [100 * r["train_accuracy"] for r in rows]
    colours = ["tab:gray"] + ["tab:blue"] * (len(rows) - 3) + ["tab:green", "tab:olive"]
    ax.bar(pos, test, 0.6, color=colours)
    ax.plot(pos, train, "k_", ms=22, mew=2)
    for i, v in enumerate(test):
        ax.text(i, v + 1.5, f"{v:.1f}", ha="center", va="bottom", fontsize=8,
                bbox=dict(facecolor="white", edgecolor="none", pad=0.3))  # readable over the dashed line
    ax.axhline(test[0], color="tab:gray", ls="--", lw=1)
    ax.axhline(100 / num_classes, color="0.5", ls="-.", lw=0.8)
    ax.set_xticks(pos, [r["label"].replace(" (", "\n(") for r in rows], fontsize=8)
    ax.set(title=f"Which transformation helps? Training set grown {factor}x ({dataset})",
           xlabel="transformations that made the copies", ylabel="accuracy (%)", ylim=(0, 105))
    ax.grid(axis="y", alpha=0.3)
    handles = [Patch(color="tab:gray", label="test: no augmentation (repeats)"),
               Patch(color="tab:blue", label="test: one transformation"),
               Patch(color="tab:green", label="test: the growth pipeline"),
               Patch(color="tab:olive", label="test: all together"),
               Line2D([], [], color="k", marker="_", ms=14, mew=2, ls="", label="training accuracy (last epoch)"),
               Line2D([], [], color="tab:gray", ls="--", label="level without augmentation"),
               Line2D([], [], color="0.5", ls="-.", label=f"chance ({100 / num_classes:.0f} %)")]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------- run
def run(ctx):
    # Small CNNs: on two busy cores one torch thread beats two that fight over them
    # (measured here: the 1x setting 1.7 s on one thread, 8 to 65 s on two).
    with small_model_threads(ctx):
        return experiment(ctx)


def experiment(ctx):
    profile = dict(PROFILES["quick" if ctx.quick else ctx.dataset])
    if ctx.quick and ctx.dataset != "shapes":
        profile.pop("n")
    base = ctx.args.train_size or profile["train"]
    epochs = ctx.args.epochs or profile["epochs"]
    options = {"n": profile["n"]} if ctx.dataset == "shapes" else {}
    splits = minidl.data.load_dataset(ctx.dataset, data_dir=ctx.data_dir, seed=ctx.seed, **options)
    classes = [str(c) for c in splits.classes]
    num_classes = len(classes)
    mean, std = splits.mean, splits.std
    if not num_classes <= base <= len(splits.train):
        raise SystemExit(f"{NAME}: --train-size must be between {num_classes} (one image per class) and "
                         f"the {len(splits.train):,} training images, got {base}")
    if epochs < 1:
        raise SystemExit(f"{NAME}: --epochs must be at least 1, got {epochs}")
    _, keep = minidl.data.stratified_split(splits.train.y, base, seed=ctx.seed)
    x = torch.from_numpy(splits.train.x[keep])
    y = torch.from_numpy(splits.train.y[keep])
    # No model selection here, so validation and test images together score every run.
    tx = np.concatenate([splits.val.x, splits.test.x])
    ty = np.concatenate([splits.val.y, splits.test.y])
    if profile["test"]:
        tx, ty = tx[:profile["test"]], ty[:profile["test"]]
    test = (torch.from_numpy(tx), torch.from_numpy(ty))
    names = list(profile["transforms"])
    growth = [n for n in GROWTH if n in names]
    factors = list(profile["factors"])
    metrics = {"dataset": ctx.dataset, "train_size": base, "test_size": len(ty), "epochs": epochs,
               "factors": factors, "transforms": names, "growth_transforms": growth,
               "model": dict(MODEL, widths=list(MODEL["widths"]))}

    ctx.save_figure(plot_samples(x, y, classes, names, growth, ctx.seed, ctx.dataset), "augmented_samples",
                    "Each row applies one transformation to the same training images; the last rows apply "
                    f"the growth pipeline ({combo_label(growth)}) and all {len(names)} transformations in turn. "
                    "These are the kinds of copies added to the training set.")

    def one(factor, which, tag):
        gx, gy, made = grow(x, y, factor, which, seed=ctx.seed + 17 * factor)
        train_acc, test_acc, seconds, cpu, steps = train_and_test(gx, gy, test, mean, std, epochs, ctx.seed,
                                                                  num_classes)
        result = {"factor": factor, "transforms": list(which), "images": len(gy), "steps": steps,
                  "train_accuracy": train_acc, "test_accuracy": test_acc, "train_seconds": seconds,
                  "train_cpu_seconds": cpu, "augment_seconds": made}
        ctx.log(f"{tag} {factor}x ({len(gy):,} images, {steps} steps): train {100 * train_acc:.1f} %, "
                f"test {100 * test_acc:.1f} %, {seconds:.1f} s + {made:.2f} s augmenting")
        return result

    # ---- growth: augmented copies vs plain repeats, the same epochs
    jobs = [(k, "augmented") for k in factors] + [(k, "repeated") for k in factors if k > 1]
    aug, rep = {}, {}
    for k, kind in ctx.progress(jobs, "growth"):
        if kind == "augmented":
            aug[k] = one(k, growth if k > 1 else [], "augmented")
        else:
            rep[k] = one(k, [], "repeated")
    rep[1] = aug[1]  # growth 1x: the originals alone, the same run for both
    metrics["growth"] = {"augmented": aug, "repeated": rep}

    ctx.save_figure(plot_accuracy(factors, aug, rep, base, num_classes, ctx.dataset, epochs),
                    "accuracy_vs_growth",
                    f"Test accuracy (solid/dashed) and final training accuracy (dotted) after {epochs} epochs "
                    f"over the grown set. Blue: the originals plus augmented copies ({combo_label(growth)}); "
                    "grey: the originals repeated as often, the same number of steps without new images.")
    ctx.save_figure(plot_time(factors, aug, rep, base, ctx.dataset), "time_vs_growth",
                    "Wall time per growth factor: training grows linearly with the number of images "
                    "(fixed epochs); making the augmented copies costs little in comparison.")
    rows = []
    for k in factors:
        for kind, res in (("augmented", aug[k]), ("repeated", rep[k])):
            if k == 1 and kind == "repeated":
                continue
            rows.append({"growth": f"{k}x", "copies": "originals only" if k == 1 else kind,
                         "images": res["images"], "steps": res["steps"],
                         "train acc (%)": round(100 * res["train_accuracy"], 1),
                         "test acc (%)": round(100 * res["test_accuracy"], 1),
                         "training (s)": round(res["train_seconds"], 1),
                         "training CPU (s)": round(res["train_cpu_seconds"], 1),
                         "augmenting (s)": round(res["augment_seconds"], 2)})
    ctx.table("growth", rows, f"Every setting trains the same CNN (widths {MODEL['widths']}, batch norm, Adam "
              f"{MODEL['lr']:g}, batch {MODEL['batch_size']}) for {epochs} epochs over its training set; "
              f"test accuracy on {len(ty):,} held-out images. Wall time depends on what else runs on "
              "the machine; CPU time (all threads) less so.")
    best_k = max(factors, key=lambda k: aug[k]["test_accuracy"])
    gain = aug[factors[-1]]["test_accuracy"] - rep[factors[-1]]["test_accuracy"]
    ctx.note(f"With {base:,} original images the CNN reaches {100 * aug[1]['test_accuracy']:.1f} % test "
             f"accuracy (training accuracy {100 * aug[1]['train_accuracy']:.0f} %). Grown {factors[-1]}x by "
             f"augmentation: {100 * aug[factors[-1]]['test_accuracy']:.1f} %, against "
             f"{100 * rep[factors[-1]]['test_accuracy']:.1f} % for the originals repeated {factors[-1]} times "
             f"(the same {aug[factors[-1]]['steps']} steps), a difference of {100 * gain:+.1f} points; the best "
             f"factor is {best_k}x. Training took {aug[1]['train_seconds']:.1f} s at 1x and "
             f"{aug[factors[-1]]['train_seconds']:.1f} s at {factors[-1]}x (the same epochs over "
             f"{factors[-1]} times the images); making the augmented copies took "
             f"{aug[factors[-1]]['augment_seconds']:.2f} s.")
    metrics.update(test_accuracy={str(k): aug[k]["test_accuracy"] for k in factors},
                   repeated_test_accuracy={str(k): rep[k]["test_accuracy"] for k in factors},
                   train_seconds={str(k): aug[k]["train_seconds"] for k in factors},
                   best_factor=best_k)

    # ---- ablation: each transformation alone, none, all, at one growth factor
    if ctx.args.no_ablation:
        return metrics
    k = profile["ablation_factor"]
    ablation = [{"label": "none (repeats)", "transform": "none", **rep[k]}]
    for name in ctx.progress(names + ["all"], "ablation"):
        if name == "all":
            ablation.append({"label": combo_label(growth), "transform": "+".join(growth), **aug[k]})
            every = aug[k] if growth == names else one(k, names, "all")  # the same pipeline: no rerun
            ablation.append({"label": f"all {len(names)} together", "transform": "all", **every})
        else:
            ablation.append({"label": TRANSFORMS[name][0], "transform": name, **one(k, [name], name)})
    metrics["ablation"] = ablation
    ctx.save_figure(plot_ablation(ablation, num_classes, ctx.dataset, k), "ablation",
                    f"Test accuracy (bars) and final training accuracy (black ticks) with the training set "
                    f"grown {k}x by one transformation alone (blue), by none (plain repeats, grey), by the "
                    f"growth pipeline ({combo_label(growth)}, green) and by all {len(names)} together (olive). A "
                    "transformation helps when its bar rises above the dashed line.")
    none = ablation[0]["test_accuracy"]
    ctx.table("ablation", [{"augmentation": r["label"], "train acc (%)": round(100 * r["train_accuracy"], 1),
                            "test acc (%)": round(100 * r["test_accuracy"], 1),
                            "vs none (points)": round(100 * (r["test_accuracy"] - none), 1)} for r in ablation],
              f"The training set grown {k}x ({k * base:,} images, {epochs} epochs) by each transformation.")
    singles = sorted(ablation[1:-2], key=lambda r: -r["test_accuracy"])
    helped = [r for r in singles if 100 * (r["test_accuracy"] - none) > CLEAR_GAIN_POINTS]
    ctx.note(f"Ablation at {k}x: " + ", ".join(f"{r['label']} {100 * (r['test_accuracy'] - none):+.1f}"
                                             for r in singles)
             + f" points against no augmentation ({100 * none:.1f} %); {combo_label(growth)} "
             f"{100 * (ablation[-2]['test_accuracy'] - none):+.1f}, all {len(names)} together "
             f"{100 * (ablation[-1]['test_accuracy'] - none):+.1f}. "
             + (f"Clearly helpful here (more than {CLEAR_GAIN_POINTS} points): "
                f"{', '.join(r['label'] for r in helped)}." if helped else
                f"None of them helped by more than {CLEAR_GAIN_POINTS} points at this budget.")
             + " Single runs: differences of a few points are within the noise of one seed.")
    metrics.update(ablation_factor=k, best_transform=singles[0]["transform"],
                   helpful_transforms=[r["transform"] for r in helped])
    return metrics
