"""ITU week 4, task 2: a CNN for CIFAR-10 (offline: the procedural ``shapes`` images).

Look at the data (samples per class, the class distribution), train a small CNN with
minidl, follow its curves, read the confusion matrix and the per-class accuracy, then
sweep one factor at a time: depth and width, each both ways (--profile full adds batch
size, learning rate and kernel size). Every run follows a cosine schedule to zero, and
every sweep setting gets the same budget, long enough to flatten out: the sweep ranks
where settings end, not how fast they start (by default on 1,000 training images shrunk
to 16x16 pixels; with full on the main model's budget, whose run is then the base).
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
from .runner import beyond_noise, binomial_se, comma_list, positive_int

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
# images: shapes images made (not for CIFAR-10); train_images: the main model's (None: all;
# else validation and test are cut to half as many). The sweep's budget, every setting's: its
# sweep_images average-pooled sweep_pool-fold (2: 16x16 pixels, half the CPU s per image) for
# sweep_epochs (None: the main model's data and epochs, and its run is the base). Measured: the
# default's base ends within 0.3 points of itself trained twice as long, at 6 CPU s a setting.
PROFILES = {
    "default": {"epochs": 10, "images": 10000, "train_images": None, "sweep": ("depth", "width"),
                "sweep_images": 1000, "sweep_pool": 2, "sweep_epochs": 20},
    "full": {"sweep": tuple(SWEEP), "sweep_epochs": None},
    "quick": {"epochs": 4, "images": 3000, "train_images": 2400, "sweep": ("depth",),
              "sweep_images": 600, "sweep_pool": 2, "sweep_epochs": 8},
}
DATASET_SETTINGS = {"cifar10": {"epochs": 6}}
SWEEP_COLUMNS = {"setting": "setting", "widths": "channel widths", "parameters": ("parameters", "{:,}"),
                 "val_accuracy": ("val accuracy", "{:.1%}"), "val_se": ("± s.e.", "{:.1%}"), "vs_base": ("vs base",
                 "{:+.1%}"), "beyond_noise": "beyond 2 s.e.", "last_epoch_gain": ("gain, last epoch", "{:+.1%}"),
                 "late_gain": ("gain, last quarter", "{:+.1%}"), "seconds": ("CPU time (s)", "{:.1f}")}


def add_arguments(parser):
    parser.add_argument("--epochs", type=positive_int, help="epochs of the main model")
    parser.add_argument("--sweep", type=comma_list(str, tuple(SWEEP)), metavar="FACTORS",
                        help=f"the factors the sweep varies, one at a time ({', '.join(SWEEP)})")
    parser.add_argument("--no-sweep", dest="sweep", action="store_const", const=(),
                        help="skip the hyperparameter sweep")


# ------------------------------------------------------- data and training
def subset(x, y, limit, rng):
    keep = slice(None) if limit is None or len(y) <= limit else rng.permutation(len(y))[:limit]
    return x[keep], y[keep]


def check(config):
    if config.sweep_pool not in (1, 2):  # 8x8 pixels would leave depth 4's last stage nothing to pool
        return f"sweep_pool {config.sweep_pool!r}: the sweep shrinks the images 1- or 2-fold (32 or 16 pixels)"


def pool(x, k):
    """Images shrunk k-fold by averaging k x k blocks (k = 1: unchanged)."""
    n, c, h, w = x.shape
    return x if k == 1 else x.reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5), dtype=x.dtype)


def train_cnn(x, y, val, num_classes, setting, epochs, seed, progress=False):
    """A SmallCNN of ``setting`` trained with Adam, cosine decay to zero: (model, history, CPU s)."""
    md.manual_seed(seed)
    model = md.models.SmallCNN(x.shape[1:], num_classes=num_classes, widths=setting["widths"],
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


def late_gain(curve):
    """A validation curve's change over its last quarter of epochs (at least one)."""
    k = max(1, len(curve) // 4)
    return curve[-1] - curve[-1 - k] if len(curve) > k else None


def sweep_setting(factor, value):
    """BASE with one factor changed: depth and width reshape the channel widths."""
    if factor == "depth":
        return {**BASE, "widths": tuple(BASE["widths"][0] * 2 ** k for k in range(value))}
    if factor == "width":
        return {**BASE, "widths": tuple(int(w * value) for w in BASE["widths"])}
    return {**BASE, factor: value}


def shown(value):
    """A setting's value as text: widths as 16x32x64."""
    return "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


# ---------------------------------------------------------------- figures
def plot_confusion(cm, per_class, classes, order, dataset):
    """The confusion matrix, and beside it every class's accuracy (``per_class``), hardest first (``order``)."""
    colours = ["tab:red" if r < 3 else "tab:blue" for r in range(len(classes))]
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.25, 1]})
    plots.confusion_matrix(cm, classes, f"Confusion matrix, test set ({dataset})", ax=ax)
    plots.bar_chart({classes[k]: 100 * per_class[k] for k in order}, "Per-class test accuracy (red: the 3 hardest)",
                    "test accuracy (%)", ax=ax_bar, colors=colours, chance=100 / len(classes),
                    baseline=("overall accuracy", 100 * np.trace(cm) / cm.sum()), xlabel="true class",
                    rotation=45, ylim=(0, 110), unit=" %")
    for label, colour in zip(ax_bar.get_xticklabels(), colours):
        label.set_color(colour)
    return fig


def plot_sweep(rows, curves, num_classes, dataset):
    """Left: every setting's validation curve; right: where each ends, ± one s.e."""
    names, chance = [row["setting"] for row in rows], 100 / num_classes
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1, 1.1]})
    plots.line_plot({n: (np.arange(1, len(c) + 1), 100 * np.array(c)) for n, c in zip(names, curves)},
                    f"Validation accuracy per epoch ({dataset})", "epoch", "validation accuracy (%)", ax=ax,
                    chance=chance, unit=" %")
    ax.xaxis.get_major_locator().set_params(integer=True)  # whole epochs
    base, noise = 100 * rows[0]["val_accuracy"], 100 * rows[0]["val_se"] * 2 ** 0.5  # of a difference
    top = 100 * max(row["val_accuracy"] for row in rows)
    plots.bar_chart({n: 100 * r["val_accuracy"] for n, r in zip(names, rows)}, "Final validation accuracy ± 1 s.e.",
                    "validation accuracy (%)", ax=ax_bar, errors={n: 100 * r["val_se"] for n, r in zip(names, rows)},
                    colors=[f"C{i}" for i in range(len(rows))], chance=chance, unit=" %", xlabel="setting",
                    baseline=("base setting", base), rotation=30, ylim=(0, min(105, top + 22)))  # room for the legend
    ax_bar.axhspan(base - 2 * noise, base + 2 * noise, color="0.5", alpha=0.15, lw=0,
                   label="base ± 2 s.e. of a difference")
    ax_bar.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------- run
def describe(ctx, splits, classes):
    """The figures and the note about the data; returns its metrics."""
    counts = {name: np.bincount(part.y, minlength=len(classes)).tolist()
              for name, part in (("train", splits.train), ("validation", splits.val), ("test", splits.test))}
    (x, y), (c, h, w) = (splits.train.x, splits.train.y), splits.train.x.shape[1:]
    per_class, rng = min(8, min(counts["train"])), ctx.rng(2)
    picks = [rng.choice(np.flatnonzero(y == k), size=per_class, replace=False) for k in range(len(classes))]
    ctx.save_figure(plots.image_grid(x[np.concatenate(picks)], f"{per_class} random training images per class "
                                     f"({ctx.dataset}, {h}x{w} pixels)", columns=per_class, row_labels=classes,
                                     size=1.05), "samples", f"{per_class} random training images of every class.")
    bars = {c: {f"{split} ({sum(n):,} images)": n[k] for split, n in counts.items()} for k, c in enumerate(classes)}
    fig = plots.bar_chart(bars, f"Class distribution per split ({ctx.dataset})", "images", xlabel="class", fmt="{:.0f}",
                          rotation=30, figsize=(11, 4.2), ylim=(0, 1.3 * max(map(max, counts.values()))))
    fig.axes[0].legend(ncol=len(counts), loc="upper center", fontsize=8)  # above the bars, not on them
    ctx.save_figure(fig, "class_distribution", "Number of images of each class in the training, validation "
                    "and test splits.")
    mean, std = np.ravel(splits.mean), np.ravel(splits.std)
    smallest = min(counts["train"]) / max(max(counts["train"]), 1)
    ctx.note(f"{sum(counts['train']):,} training images of {c}x{h}x{w} (channels x height x width), "
             f"{len(classes)} classes; the smallest class has {smallest:.0%} of the images of the largest. "
             f"Per-channel mean {np.round(mean, 3).tolist()}, std {np.round(std, 3).tolist()}.")
    return {"dataset": ctx.dataset, "classes": classes, "image_shape": [c, h, w], "class_counts": counts,
            "train_images": sum(counts["train"]), "smallest_class_share": smallest, "channel_mean": mean,
            "channel_std": std}


def sweep(ctx, x, y, val, num_classes, epochs, main_run):
    """One factor at a time away from BASE, each for the same ``epochs`` on the same data
    (``main_run``: the main model's run, the base when it had this budget); its rows."""
    settings = [("base", None, BASE)] + [(factor, value, sweep_setting(factor, value))  # each factor once
                                         for factor in dict.fromkeys(ctx.config.sweep) for value in SWEEP[factor]]
    rows, curves = [], []
    for factor, value, setting in ctx.progress(settings, "sweep"):
        model, history, seconds = main_run if factor == "base" and main_run else train_cnn(
            x, y, val, num_classes, setting, epochs, ctx.seed)
        curve = history["val_accuracy"]
        name = "base" if factor == "base" else f"{factor}={shown(value)}"
        rows.append({"setting": name, "factor": factor, "value": value, **setting,
                     "parameters": sum(p.data.size for p in model.parameters()),
                     "val_accuracy": curve[-1], "val_se": binomial_se(curve[-1], len(val[1])),
                     "last_epoch_gain": curve[-1] - curve[-2] if len(curve) > 1 else None,
                     "late_gain": late_gain(curve), "seconds": seconds})
        curves.append(curve)
        ctx.history("sweep_" + name.replace("=", "_"), history)
    base = rows[0]
    for row in rows[1:]:  # the binomial noise of a difference of two validation accuracies
        row.update(vs_base=row["val_accuracy"] - base["val_accuracy"],
                   diff_se=float(np.hypot(row["val_se"], base["val_se"])))
        row["beyond_noise"] = beyond_noise(row["vs_base"], row["diff_se"])
    budget = f"{epochs} epochs on {len(y):,} training images of {x.shape[2]}x{x.shape[3]} pixels"
    shown_rows = [{k: row[k] for k in SWEEP_COLUMNS if k in row} for row in rows]  # in metrics: all
    ctx.table("sweep", shown_rows, f"One factor at a time away from the base setting (batch {BASE['batch_size']}, lr "
              f"{BASE['lr']}, widths {shown(BASE['widths'])}, kernel {BASE['kernel_size']}), each trained the same "
              f"{budget}, its learning rate decaying to zero: accuracy on {len(val[1]):,} validation images ± its "
              "binomial standard error, its difference from the base, whether that exceeds twice its standard "
              "error, its change over the last epoch and the last quarter of the epochs.", columns=SWEEP_COLUMNS)
    ctx.save_figure(plot_sweep(rows, curves, num_classes, ctx.dataset), "sweep",
                    f"Left: validation accuracy of each sweep setting after each of its {budget}. Right: its "
                    "final value ± one binomial standard error; dashed: the base setting, grey band: twice the "
                    "standard error of a difference from it (settings inside it are within noise).")
    return rows


def run(ctx):
    cfg = ctx.config
    splits = ctx.load_dataset(n=cfg.images) if ctx.dataset == "shapes" else ctx.load_dataset()
    classes = [str(c) for c in splits.classes]
    num_classes, metrics = len(classes), describe(ctx, splits, classes)

    norm, rng = splits.normalize, ctx.rng(1)
    x_train, y_train = subset(norm(splits.train.x), splits.train.y, cfg.train_images, rng)
    limit = None if cfg.train_images is None else cfg.train_images // 2
    val = subset(norm(splits.val.x), splits.val.y, limit, rng)
    x_test, y_test = subset(norm(splits.test.x), splits.test.y, limit, rng)

    # ------------------------------------------------------ the main model
    main_run = model, history, seconds = train_cnn(x_train, y_train, val, num_classes, BASE, cfg.epochs,
                                                   ctx.seed, progress=True)
    ctx.history("cnn", history)
    cm = confusion_matrix(md.train.predict(model, x_test), y_test, num_classes=num_classes)
    test_acc = float(np.trace(cm) / cm.sum())
    per_class = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    order = np.argsort(per_class, kind="stable")  # hardest first
    off = cm - np.diag(np.diag(cm))
    i, j = np.unravel_index(np.argmax(off), off.shape)
    curves = plots.training_curves({"CNN": history}, chance=1 / num_classes, units={"loss": "loss (nats)"},
                                   titles={"loss": f"Cross-entropy loss ({ctx.dataset})",
                                           "accuracy": f"Accuracy ({ctx.dataset})"})
    ctx.save_figure(curves, "training_curves", f"Loss and accuracy per epoch of the CNN (widths "
                    f"{shown(BASE['widths'])}, {BASE['kernel_size']}x{BASE['kernel_size']} kernels, batch norm; "
                    f"Adam, lr {BASE['lr']} with cosine decay, batch {BASE['batch_size']}, random horizontal flips) "
                    "on training and validation data.")
    ctx.save_figure(plot_confusion(cm, per_class, classes, order, ctx.dataset), "confusion_matrix",
                    "Left: test confusion matrix, each cell the number of test images and its share of "
                    "the true class (the colour). Right: accuracy of every class, hardest first.")
    params, val_accuracy = sum(p.data.size for p in model.parameters()), history["val_accuracy"]
    late, val_noise = late_gain(val_accuracy), binomial_se(val_accuracy[-1], len(val[1])) * 2 ** 0.5
    ctx.headline("CNN test accuracy", test_acc, 1 / num_classes, "chance", noise=binomial_se(test_acc, len(y_test)))
    ctx.note(f"The CNN ({params:,} parameters, {cfg.epochs} epochs, {seconds:.0f} CPU s) reaches "
             f"{test_acc:.1%} ± {binomial_se(test_acc, len(y_test)):.1%} test accuracy on {len(y_test):,} images "
             f"(chance: {1 / num_classes:.0%}). Hardest classes: "
             + ", ".join(f"{classes[k]} ({per_class[k]:.0%})" for k in order[:3])
             + f"; the most common confusion is {classes[i]} taken for {classes[j]} ({off[i, j]} test images)."
             + ("" if late is None else f" Over the last quarter of its {cfg.epochs} epochs its validation "
                f"accuracy changed by {100 * late:+.1f} points, against {100 * val_noise:.1f} for one standard "
                f"error of a difference of two accuracies on {len(val[1]):,} images: "
                + ("flat within noise." if abs(late) <= val_noise else "still moving; more --epochs may help.")))
    metrics.update(test_accuracy=test_acc, test_images=len(y_test), parameters=params, epochs=cfg.epochs,
                   train_seconds=seconds, final_train_accuracy=history["accuracy"][-1],
                   final_val_accuracy=val_accuracy[-1], late_val_gain=late, val_difference_se=val_noise,
                   confusion_matrix=cm, per_class_accuracy=dict(zip(classes, per_class.tolist())),
                   hardest_classes=[classes[k] for k in order[:3]], setting=BASE,
                   most_confused={"true": classes[i], "predicted": classes[j], "images": int(off[i, j])})
    if not cfg.sweep:
        return metrics

    # ------------------------------------------------------ the sweep
    if cfg.sweep_epochs is None:  # the main model's budget: its run is the base setting
        xs, ys, sweep_val, epochs = x_train, y_train, val, cfg.epochs
    else:
        xs, ys = subset(pool(x_train, cfg.sweep_pool), y_train, cfg.sweep_images, ctx.rng(3))
        sweep_val, epochs, main_run = (pool(val[0], cfg.sweep_pool), val[1]), cfg.sweep_epochs, None
    rows = sweep(ctx, xs, ys, sweep_val, num_classes, epochs, main_run)
    best, base = max(rows, key=lambda row: row["val_accuracy"]), rows[0]
    beyond = [row["setting"] for row in rows[1:] if row["beyond_noise"]]
    steepest = max(rows, key=lambda row: abs(row["late_gain"] or 0))
    late_noise = binomial_se(steepest["val_accuracy"], len(val[1])) * 2 ** 0.5
    ctx.note(f"Sweep: best {best['setting']} with {best['val_accuracy']:.1%} validation accuracy (base "
             f"{base['val_accuracy']:.1%}). Beyond twice the standard error of their difference from the base: "
             f"{', '.join(beyond) or 'none'}." + (
                 "" if steepest["late_gain"] is None else " The largest change over the last quarter of the "
                 f"epochs is {100 * steepest['late_gain']:+.1f} points ({steepest['setting']}), against "
                 f"{100 * late_noise:.1f} for one standard error of a difference: " + (
                     "every curve is flat within noise." if abs(steepest["late_gain"]) <= late_noise
                     else "not all have flattened out on this budget.")))
    metrics.update(sweep=rows, best_setting={k: best[k] for k in ("factor", "value", *BASE)},
                   best_sweep_val_accuracy=best["val_accuracy"], sweep_late_gain_noise=late_noise,
                   sweep_epochs=epochs, sweep_train_images=len(ys), sweep_image_shape=list(xs.shape[1:]))
    return metrics
