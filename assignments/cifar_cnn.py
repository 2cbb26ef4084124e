"""ITU week 4, task 2: a CNN for CIFAR-10 (offline: the procedural ``shapes`` images).

Look at the data (a grid of samples per class, the class distribution), train a small
CNN with minidl, follow the training and validation curves, read the confusion matrix
and the per-class accuracy (which classes are hardest, and what they are mistaken
for), then run a small one-factor-at-a-time hyperparameter sweep: batch size, learning
rate, depth and width (each both ways) and kernel size. Every run follows a cosine
learning-rate schedule to zero over its epochs, and every sweep setting gets the same
budget; with --profile full that is the main model's, which ends on a plateau (the
default sweeps depth and width on a shorter budget, to fit two CPU minutes).
"""
import time

import matplotlib.pyplot as plt
import numpy as np

import minidl as md
import minidl.data  # noqa: F401
import minidl.models  # noqa: F401
import minidl.optim  # noqa: F401
import minidl.train  # noqa: F401
from minidl.metrics import confusion_matrix

from . import plots
from .runner import binomial_se, comma_list, positive_int

NAME = "cifar_cnn"
COURSE = "ITU advanced ML"
TASK = "week 4, task 2"
SUMMARY = "a CNN on CIFAR-10 (offline: shapes) with minidl: data, curves, confusion matrix, sweep"
STATEMENT = """
Train a convolutional network on CIFAR-10 (32x32 colour images, 10 classes). First
describe the data: show example images of every class and the class distribution.
Train the network and plot the training and validation loss and accuracy per epoch;
evaluate it on the test set with a confusion matrix and the accuracy of every class,
and name the classes that are hardest to tell apart. Finally vary the batch size, the
learning rate, the depth or width of the network and the kernel size, and report which
setting works best. (Offline the kit uses ``shapes``, procedural 32x32 colour images of
ten shapes on cluttered backgrounds, in place of CIFAR-10.)
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"  # a 10k-parameter CNN: one thread beats several on a busy small machine

BASE = {"batch_size": 64, "lr": 3e-3, "widths": (8, 16, 32), "kernel_size": 3}
# One factor at a time, away from BASE: the values each factor of the sweep tries. depth:
# conv stages (the channels doubling at each); width: a multiple of every stage's channels.
SWEEP = {"batch_size": (32, 128), "lr": (1e-3, 1e-2), "depth": (2, 4), "width": (0.5, 1.5), "kernel_size": (5,)}
# images: how many shapes images are generated (not used for CIFAR-10); train_images:
# the main model's training images (None: all; the validation and test sets are cut to
# half as many); sweep_images, sweep_val_images, sweep_epochs: each sweep run's budget,
# the same for every setting. The default sweeps depth and width only, on a quarter of the
# images, to fit two CPU minutes (measured: the main model's 10 epochs on 8,000 images take
# 59 CPU s on one thread); "full" sweeps every factor on the main model's whole budget.
PROFILES = {
    "default": {"epochs": 10, "images": 10000, "train_images": None, "sweep": ("depth", "width"),
                "sweep_images": 2000, "sweep_val_images": 500, "sweep_epochs": 5},
    "full": {"sweep": tuple(SWEEP), "sweep_images": None, "sweep_val_images": None, "sweep_epochs": 10},
    "quick": {"epochs": 4, "images": 3000, "train_images": 2400, "sweep": ("lr", "depth"),
              "sweep_images": 600, "sweep_val_images": 300, "sweep_epochs": 2},
}
DATASET_SETTINGS = {"cifar10": {"epochs": 6, "sweep_epochs": 3}}
SWEEP_COLUMNS = {"factor": "factor", "value": "value", "batch_size": "batch size", "lr": "learning rate",
                 "widths": "channel widths", "kernel_size": "kernel", "parameters": ("parameters", "{:,}"),
                 "val_accuracy": ("val accuracy", "{:.1%}"), "last_epoch_gain": ("gain in its last epoch", "{:+.1%}"),
                 "seconds": ("CPU time (s)", "{:.1f}")}


def add_arguments(parser):
    parser.add_argument("--epochs", type=positive_int, help="epochs of the main model")
    parser.add_argument("--sweep", type=comma_list(str, tuple(SWEEP)), metavar="FACTORS",
                        help=f"the factors the sweep varies, one at a time ({', '.join(SWEEP)})")
    parser.add_argument("--no-sweep", dest="sweep", action="store_const", const=(),
                        help="skip the hyperparameter sweep")


# ------------------------------------------------------- data and training
def subset(x, y, limit, rng):
    if limit is None or len(y) <= limit:
        return x, y
    keep = rng.permutation(len(y))[:limit]
    return x[keep], y[keep]


def train_cnn(x, y, val, in_shape, num_classes, setting, epochs, seed, progress=False):
    """A SmallCNN of ``setting`` trained with Adam and cosine decay to zero; returns the
    model, its history and the CPU seconds it took."""
    md.manual_seed(seed)
    model = md.models.SmallCNN(in_shape, num_classes=num_classes, widths=setting["widths"],
                               kernel_size=setting["kernel_size"], batch_norm=True)
    optimizer = md.optim.Adam(model.parameters(), lr=setting["lr"])
    scheduler = md.optim.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    # Random horizontal flips: a mirrored shape (or CIFAR object) keeps its class.
    loader = md.data.DataLoader(x, y, batch_size=setting["batch_size"], shuffle=True, seed=seed,
                                transform=md.data.augment.horizontal_flip)
    val_loader = md.data.DataLoader(*val, batch_size=256)
    start = time.process_time()
    history = md.train.fit(model, md.nn.CrossEntropyLoss(), optimizer, loader, val_loader,
                           epochs=epochs, scheduler=scheduler, progress=progress)
    return model, history.as_dict(), time.process_time() - start


def sweep_setting(factor, value):
    """BASE with one factor changed: depth and width reshape the channel widths."""
    if factor == "depth":
        return {**BASE, "widths": tuple(BASE["widths"][0] * 2 ** k for k in range(value))}
    if factor == "width":
        return {**BASE, "widths": tuple(int(w * value) for w in BASE["widths"])}
    return {**BASE, factor: value}


def count_parameters(model):
    return int(sum(p.data.size for p in model.parameters()))


def shown(value):
    """A setting's value as text: widths as 16x32x64."""
    return "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


# ---------------------------------------------------------------- figures
def plot_samples(x, y, classes, per_class, rng, dataset):
    picks = [rng.choice(np.flatnonzero(y == k), size=per_class, replace=False) for k in range(len(classes))]
    return plots.image_grid(x[np.concatenate(picks)], f"{per_class} random training images per class "
                            f"({dataset}, {x.shape[2]}x{x.shape[3]} pixels)", columns=per_class,
                            row_labels=classes, size=1.05)


def plot_distribution(counts, classes, dataset):
    bars = {c: {f"{split} ({sum(n):,} images)": n[k] for split, n in counts.items()}
            for k, c in enumerate(classes)}
    fig = plots.bar_chart(bars, f"Class distribution per split ({dataset})", "images", xlabel="class",
                          fmt="{:.0f}", rotation=30, figsize=(11, 4.2),
                          ylim=(0, 1.3 * max(map(max, counts.values()))))
    fig.axes[0].legend(ncol=len(counts), loc="upper center", fontsize=8)  # above the bars, not on them
    return fig


def plot_confusion(cm, classes, order, dataset):
    """The confusion matrix, and beside it every class's accuracy, hardest first (``order``)."""
    per_class = 100 * np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    colours = ["tab:red" if r < 3 else "tab:blue" for r in range(len(classes))]
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.25, 1]})
    plots.confusion_matrix(cm, classes, f"Confusion matrix, test set ({dataset})", ax=ax)
    plots.bar_chart({classes[k]: per_class[k] for k in order}, "Per-class test accuracy (red: the 3 hardest)",
                    "test accuracy (%)", ax=ax_bar, colors=colours, chance=100 / len(classes),
                    baseline=("overall accuracy", 100 * np.trace(cm) / cm.sum()), xlabel="true class",
                    rotation=45, ylim=(0, 110))
    for label, colour in zip(ax_bar.get_xticklabels(), colours):
        label.set_color(colour)
    return fig


def setting_name(row):
    return "base" if row["factor"] == "base" else f"{row['factor']}={shown(row['value'])}"


def plot_sweep(rows, num_classes, dataset, noise):
    factors = list(dict.fromkeys(row["factor"] for row in rows[1:]))
    accuracies = {setting_name(row): 100 * row["val_accuracy"] for row in rows}
    colours = ["0.55"] + [f"C{factors.index(row['factor'])}" for row in rows[1:]]  # base in grey
    fig = plots.bar_chart(accuracies, f"Hyperparameter sweep, one change from the base setting at a "
                           f"time ({dataset})", "validation accuracy (%)", colors=colours,
                           chance=100 / num_classes, baseline=("base setting", accuracies["base"]),
                           xlabel="setting", rotation=30, figsize=(10, 4.2),
                           ylim=(0, min(105, max(accuracies.values()) + 22)))  # room for the legend
    base = accuracies["base"]
    fig.axes[0].axhspan(base - 200 * noise, base + 200 * noise, color="0.5", alpha=0.15, lw=0,
                        label="base ± 2 s.e. of a difference")
    fig.axes[0].legend(fontsize=8)
    return fig


# --------------------------------------------------------------------- run
def describe(ctx, splits, classes):
    """The figures and the note about the data; returns the class counts per split."""
    counts = {name: np.bincount(part.y, minlength=len(classes)).tolist()
              for name, part in (("train", splits.train), ("validation", splits.val), ("test", splits.test))}
    per_class = min(8, min(counts["train"]))
    samples = plot_samples(splits.train.x, splits.train.y, classes, per_class, ctx.rng(2), ctx.dataset)
    ctx.save_figure(samples, "samples", f"{per_class} random training images of every class.")
    ctx.save_figure(plot_distribution(counts, classes, ctx.dataset), "class_distribution",
                    "Number of images of each class in the training, validation and test splits.")
    c, h, w = splits.train.x.shape[1:]
    mean, std = np.ravel(splits.mean), np.ravel(splits.std)
    ctx.note(f"{sum(counts['train']):,} training images of {c}x{h}x{w} (channels x height x width), "
             f"{len(classes)} classes; the smallest class has "
             f"{min(counts['train']) / max(max(counts['train']), 1):.0%} of the images of the largest. "
             f"Per-channel mean {np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()}.")
    return counts


def sweep(ctx, x, y, val, in_shape, num_classes):
    """One factor at a time away from BASE, each on a short budget; the table's rows."""
    settings = [("base", None, BASE)] + [(factor, value, sweep_setting(factor, value))
                                         for factor in dict.fromkeys(ctx.config.sweep)  # each once
                                         for value in SWEEP[factor]]
    rows = []
    for factor, value, setting in ctx.progress(settings, "sweep"):
        model, history, seconds = train_cnn(x, y, val, in_shape, num_classes, setting,
                                            ctx.config.sweep_epochs, ctx.seed)
        val_accuracy = history["val_accuracy"]
        rows.append({"factor": factor, "value": value, **setting, "parameters": count_parameters(model),
                     "val_accuracy": val_accuracy[-1],
                     "last_epoch_gain": val_accuracy[-1] - val_accuracy[-2] if len(val_accuracy) > 1 else None,
                     "seconds": seconds})
        ctx.history("sweep_base" if factor == "base" else f"sweep_{factor}_{shown(value)}", history)
        ctx.log(f"sweep {setting_name(rows[-1])}: {rows[-1]['val_accuracy']:.1%}")
    return rows


def run(ctx):
    cfg = ctx.config
    splits = ctx.load_dataset(n=cfg.images) if ctx.dataset == "shapes" else ctx.load_dataset()
    classes = [str(c) for c in splits.classes]
    num_classes, in_shape = len(classes), splits.train.x.shape[1:]
    counts = describe(ctx, splits, classes)
    metrics = {"dataset": ctx.dataset, "classes": classes, "image_shape": list(in_shape),
               "class_counts": counts, "channel_mean": np.ravel(splits.mean),
               "channel_std": np.ravel(splits.std)}

    norm, rng = splits.normalize, ctx.rng(1)
    x_train, y_train = subset(splits.train.x, splits.train.y, cfg.train_images, rng)
    limit = None if cfg.train_images is None else cfg.train_images // 2
    val = subset(norm(splits.val.x), splits.val.y, limit, rng)
    x_test, y_test = subset(splits.test.x, splits.test.y, limit, rng)
    x_train = norm(x_train)

    # ------------------------------------------------------ the main model
    model, history, seconds = train_cnn(x_train, y_train, val, in_shape, num_classes, BASE,
                                        cfg.epochs, ctx.seed, progress=True)
    ctx.history("cnn", history)
    cm = confusion_matrix(md.train.predict(model, norm(x_test)), y_test, num_classes=num_classes)
    test_acc = float(np.trace(cm) / cm.sum())
    per_class = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    order = np.argsort(per_class, kind="stable")  # hardest first
    hardest = [classes[k] for k in order[:3]]
    off = cm - np.diag(np.diag(cm))
    i, j = np.unravel_index(np.argmax(off), off.shape)
    ctx.save_figure(plots.training_curves({"CNN": history}, chance=1 / num_classes,
                                          units={"loss": "loss (nats)"},
                                          titles={"loss": f"Cross-entropy loss ({ctx.dataset})",
                                                  "accuracy": f"Accuracy ({ctx.dataset})"}),
                    "training_curves",
                    f"Loss and accuracy per epoch of the CNN (widths {shown(BASE['widths'])}, "
                    f"{BASE['kernel_size']}x{BASE['kernel_size']} kernels, batch norm; Adam, lr "
                    f"{BASE['lr']} with cosine decay, batch {BASE['batch_size']}, random horizontal "
                    "flips) on training and validation data.")
    ctx.save_figure(plot_confusion(cm, classes, order, ctx.dataset), "confusion_matrix",
                    "Left: test confusion matrix, each cell the number of test images and its share of "
                    "the true class (the colour). Right: accuracy of every class, hardest first.")
    params, val_accuracy = count_parameters(model), history["val_accuracy"]
    last = val_accuracy[-1] - val_accuracy[-3] if len(val_accuracy) > 2 else None  # over the last two epochs
    ctx.headline("CNN test accuracy", test_acc, 1 / num_classes, "chance", noise=binomial_se(test_acc, len(y_test)))
    if last is not None:
        ctx.note(f"Over its last two epochs the validation accuracy changed by {100 * last:+.1f} points "
                 f"(one validation image is {100 / len(val[1]):.2f} points): "
                 + ("a plateau, as the cosine schedule brings the learning rate to zero." if abs(last) < 0.01
                    else "still moving; more epochs (--epochs) may help."))
    ctx.note(f"The CNN ({params:,} parameters, {cfg.epochs} epochs, {seconds:.0f} CPU s) reaches "
             f"{test_acc:.1%} ± {binomial_se(test_acc, len(y_test)):.1%} test accuracy on {len(y_test):,} images "
             f"(chance: {1 / num_classes:.0%}). Hardest classes: "
             + ", ".join(f"{classes[k]} ({per_class[k]:.0%})" for k in order[:3])
             + f"; the most common confusion is {classes[i]} taken for {classes[j]} "
             f"({off[i, j]} test images).")
    metrics.update(test_accuracy=test_acc, parameters=params, epochs=cfg.epochs, train_seconds=seconds,
                   final_train_accuracy=history["accuracy"][-1],
                   final_val_accuracy=val_accuracy[-1], last_two_epochs_val_gain=last,
                   per_class_accuracy=dict(zip(classes, per_class.tolist())), hardest_classes=hardest,
                   most_confused={"true": classes[i], "predicted": classes[j], "images": int(off[i, j])},
                   confusion_matrix=cm)
    if not cfg.sweep:
        return metrics

    # ------------------------------------------------------ the sweep
    xs, ys = subset(x_train, y_train, cfg.sweep_images, ctx.rng(3))
    sweep_val = subset(*val, cfg.sweep_val_images, ctx.rng(4))
    rows = sweep(ctx, xs, ys, sweep_val, in_shape, num_classes)
    best = max(rows, key=lambda row: row["val_accuracy"])
    base = rows[0]["val_accuracy"]
    noise = binomial_se(base, len(sweep_val[1])) * 2 ** 0.5  # of a difference between two settings
    ctx.table("sweep", rows, f"One factor at a time away from the base setting (batch "
              f"{BASE['batch_size']}, lr {BASE['lr']}, widths {shown(BASE['widths'])}, kernel "
              f"{BASE['kernel_size']}), each trained the same {cfg.sweep_epochs} epochs on {len(ys):,} "
              f"training images with its learning rate decaying to zero; accuracy on {len(sweep_val[1]):,} "
              "validation images, and its change in the last epoch (near 0: converged).", columns=SWEEP_COLUMNS)
    ctx.save_figure(plot_sweep(rows, num_classes, ctx.dataset, noise), "sweep",
                    "Validation accuracy of each sweep setting against the base setting (dashed); the grey band "
                    "is twice the standard error of a difference from it: settings inside it are within noise.")
    best_name = "the base setting" if best["factor"] == "base" else setting_name(best)
    beyond = [setting_name(row) for row in rows[1:] if abs(row["val_accuracy"] - base) > 2 * noise]
    ctx.note(f"Best sweep setting: {best_name} with {best['val_accuracy']:.1%} validation accuracy "
             f"(base {base:.1%}). One standard error of a difference between two settings is "
             f"{100 * noise:.1f} points on {len(sweep_val[1]):,} validation images; "
             + (f"only {', '.join(beyond)} differ from the base by more than twice that." if beyond else
                "no setting differs from the base by more than twice that.")
             + (f" The base still gained {100 * rows[0]['last_epoch_gain']:+.1f} points in its last epoch: this "
                "budget is too short to compare converged settings; --profile full gives every setting the main "
                "model's budget." if (rows[0]["last_epoch_gain"] or 0) > noise else ""))
    metrics.update(sweep=rows, best_setting={k: best[k] for k in ("factor", "value", *BASE)},
                   best_sweep_val_accuracy=best["val_accuracy"])
    return metrics
