"""ITU week 4, task 2: a CNN for CIFAR-10 (offline: the procedural ``shapes`` images).

Look at the data (a grid of samples per class, the class distribution), train a small
CNN with minidl, follow the training and validation curves, read the confusion matrix
and the per-class accuracy (which classes are hardest, and what they are mistaken
for), then run a small one-factor-at-a-time hyperparameter sweep: batch size, learning
rate, depth/width and kernel size.
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

BASE = dict(batch_size=64, lr=2e-3, widths=(16, 32, 64), kernel_size=3)
# One factor at a time, away from BASE: batch size, learning rate, width, kernel size.
SWEEP = (("batch_size", 32), ("batch_size", 128), ("lr", 5e-4), ("lr", 5e-3),
         ("widths", (8, 16, 32)), ("kernel_size", 5))
# Per profile: images generated (shapes), training images and epochs of the main model,
# training images and epochs of each sweep run, the sweep itself.
PROFILES = {
    "quick": dict(n=3000, train=2400, epochs=4, sweep_train=600, sweep_epochs=1,
                  sweep=(("lr", 5e-4), ("kernel_size", 5))),
    "shapes": dict(n=10000, train=None, epochs=5, sweep_train=4000, sweep_epochs=5, sweep=SWEEP),
    "cifar10": dict(n=None, train=None, epochs=6, sweep_train=4000, sweep_epochs=3, sweep=SWEEP),
}


def add_arguments(parser):
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the main model (default: per dataset)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the hyperparameter sweep")


# ------------------------------------------------------------------- data
def load(ctx, profile):
    options = {"n": profile["n"]} if ctx.dataset == "shapes" else {}
    return md.data.load_dataset(ctx.dataset, data_dir=ctx.data_dir, seed=ctx.seed, **options)


def subset(x, y, limit, rng):
    if limit is None or len(y) <= limit:
        return x, y
    keep = rng.permutation(len(y))[:limit]
    return x[keep], y[keep]


def train_cnn(x, y, val, in_shape, num_classes, config, epochs, seed, progress=False):
    md.manual_seed(seed)
    model = md.models.SmallCNN(in_shape, num_classes=num_classes, widths=config["widths"],
                               kernel_size=config["kernel_size"], batch_norm=True)
    optimizer = md.optim.Adam(model.parameters(), lr=config["lr"])
    scheduler = md.optim.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    # Random horizontal flips: a mirrored shape (or CIFAR object) keeps its class.
    loader = md.data.DataLoader(x, y, batch_size=config["batch_size"], shuffle=True, seed=seed,
                                transform=md.data.augment.horizontal_flip)
    val_loader = md.data.DataLoader(*val, batch_size=256)
    start = time.perf_counter()
    history = md.train.fit(model, md.nn.CrossEntropyLoss(), optimizer, loader, val_loader,
                           epochs=epochs, scheduler=scheduler, progress=progress)
    return model, history, time.perf_counter() - start


# ---------------------------------------------------------------- figures
def show(image):
    """(C, H, W) in [0, 1] -> something imshow draws: RGB (H, W, 3) or grey (H, W)."""
    return image[0] if image.shape[0] == 1 else np.clip(image.transpose(1, 2, 0), 0, 1)


def plot_samples(x, y, classes, per_class, rng, dataset):
    rows = len(classes)
    fig, axes = plt.subplots(rows, per_class, figsize=(1.05 * per_class + 1.4, 1.05 * rows + 0.6),
                             squeeze=False)
    for k, name in enumerate(classes):
        idx = np.flatnonzero(y == k)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for j in range(per_class):
            ax = axes[k, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(pick):
                ax.imshow(show(x[pick[j]]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.axis("off")
        axes[k, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(f"{per_class} random training images per class ({dataset}, "
                 f"{x.shape[2]}x{x.shape[3]} pixels)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_distribution(counts, classes, dataset):
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(counts)
    pos = np.arange(len(classes))
    for i, (split, c) in enumerate(counts.items()):
        ax.bar(pos + (i - (len(counts) - 1) / 2) * width, c, width, label=f"{split} ({sum(c):,})")
    ax.set_xticks(pos, classes, rotation=30, ha="right")
    top = max(max(c) for c in counts.values())
    ax.set(title=f"Class distribution per split ({dataset})", xlabel="class", ylabel="images",
           ylim=(0, top * 1.3))
    ax.legend(title="split (total images)", ncol=len(counts), loc="upper center", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(history, dataset):
    h = history
    epochs = np.arange(1, len(h["loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, h["loss"], "-o", ms=3, label="train")
    ax_loss.plot(epochs, h["val_loss"], "--s", ms=3, label="validation")
    ax_acc.plot(epochs, 100 * np.asarray(h["accuracy"]), "-o", ms=3, label="train")
    ax_acc.plot(epochs, 100 * np.asarray(h["val_accuracy"]), "--s", ms=3, label="validation")
    ax_acc.axhline(100 / 10, color="0.5", lw=0.8, ls=":", label="chance (10 classes)")
    ax_loss.set(title=f"Cross-entropy loss ({dataset})", xlabel="epoch", ylabel="loss (nats)")
    ax_acc.set(title=f"Accuracy ({dataset})", xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def plot_confusion(cm, classes, dataset):
    rates = 100 * cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    per_class = np.diag(rates)
    fig, (ax, ax_bar) = plt.subplots(1, 2, figsize=(13, 5.4), gridspec_kw={"width_ratios": [1.25, 1]})
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
    n = len(classes)
    for i in range(n):
        for j in range(n):
            if rates[i, j] >= 0.5:  # what would print as "0" is left blank
                ax.text(j, i, f"{rates[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 55 else "black")
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    ax.set(title=f"Confusion matrix, test set ({dataset})", xlabel="predicted class", ylabel="true class")
    fig.colorbar(im, ax=ax, fraction=0.046, label="% of the true class")
    order = np.argsort(per_class, kind="stable")
    colours = ["tab:red" if r < 3 else "tab:blue" for r in range(n)]
    ax_bar.barh(np.arange(n), per_class[order], color=colours)
    ax_bar.set_yticks(np.arange(n), [classes[k] for k in order], fontsize=8)
    for r, (k, label) in enumerate(zip(order, ax_bar.get_yticklabels())):
        ax_bar.text(per_class[k] + 1, r, f"{per_class[k]:.1f}", va="center", fontsize=8)
        label.set_color(colours[r])
    ax_bar.invert_yaxis()  # hardest at the top
    ax_bar.axvline(100 * np.trace(cm) / cm.sum(), color="0.3", ls="--", lw=1, label="overall accuracy")
    ax_bar.axvline(100 / n, color="0.5", ls=":", lw=1, label=f"chance ({100 / n:.0f} %)")
    ax_bar.set(title="Per-class test accuracy (red: the 3 hardest)", xlabel="accuracy (%)",
               ylabel="true class", xlim=(0, 110))
    ax_bar.legend(loc="upper right", fontsize=8)  # the hardest (shortest) bars are on top
    fig.tight_layout()
    return fig


def plot_sweep(rows, num_classes, dataset):
    fig, ax = plt.subplots(figsize=(9, 4))
    labels = ["base" if r["factor"] == "base" else f"{r['factor']}={r['value']}" for r in rows]
    accs = [r["val accuracy (%)"] for r in rows]
    factors = list(dict.fromkeys(r["factor"] for r in rows))
    colours = ["0.55" if r["factor"] == "base" else f"C{factors.index(r['factor'])}" for r in rows]
    ax.bar(range(len(rows)), accs, color=colours)
    for i, a in enumerate(accs):
        ax.text(i, a + 1, f"{a:.1f}", ha="center", fontsize=8)
    ax.axhline(accs[0], color="0.3", ls="--", lw=1, label="base setting")
    ax.axhline(100 / num_classes, color="0.5", ls=":", lw=1, label=f"chance ({100 / num_classes:.0f} %)")
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set(title=f"Hyperparameter sweep, one change from the base setting at a time ({dataset})",
           xlabel="setting", ylabel="validation accuracy (%)", ylim=(0, min(105, max(accs) + 22)))  # room for the legend
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------- run
def fmt(value):
    return "x".join(map(str, value)) if isinstance(value, tuple) else value


def run(ctx):
    profile = PROFILES["quick" if ctx.quick else ctx.dataset]
    epochs = ctx.args.epochs or profile["epochs"]
    splits = load(ctx, profile)
    mean, std = np.asarray(splits.mean), np.asarray(splits.std)
    classes = [str(c) for c in splits.classes]
    num_classes = len(classes)
    in_shape = splits.train.x.shape[1:]
    metrics = {"dataset": ctx.dataset, "classes": classes, "image_shape": list(in_shape)}

    # ------------------------------------------------------ the data
    counts = {name: np.bincount(part.y, minlength=num_classes).tolist()
              for name, part in (("train", splits.train), ("validation", splits.val), ("test", splits.test))}
    metrics.update(class_counts=counts, channel_mean=np.ravel(mean), channel_std=np.ravel(std))
    ctx.save_figure(plot_samples(splits.train.x, splits.train.y, classes, 8, ctx.rng(2), ctx.dataset),
                    "samples", "Eight random training images of every class.")
    ctx.save_figure(plot_distribution(counts, classes, ctx.dataset), "class_distribution",
                    "Number of images of each class in the training, validation and test splits.")
    balance = min(counts["train"]) / max(max(counts["train"]), 1)
    ctx.note(f"{sum(counts['train']):,} training images of {in_shape[0]}x{in_shape[1]}x{in_shape[2]} "
             f"(channels x height x width), {num_classes} classes; the smallest class has "
             f"{100 * balance:.0f} % of the images of the largest. Per-channel mean "
             f"{np.round(np.ravel(mean), 3).tolist()}, std {np.round(np.ravel(std), 3).tolist()}.")

    norm = splits.normalize
    rng = ctx.rng(1)
    x_train, y_train = subset(splits.train.x, splits.train.y, profile["train"], rng)
    limit = None if profile["train"] is None else profile["train"] // 2
    val = tuple(subset(norm(splits.val.x), splits.val.y, limit, rng))
    x_test, y_test = subset(splits.test.x, splits.test.y, limit, rng)
    x_train = norm(x_train)

    # ------------------------------------------------------ the main model
    model, history, seconds = train_cnn(x_train, y_train, val, in_shape, num_classes, BASE,
                                        epochs, ctx.seed, progress=not ctx.quick)
    logits = md.train.predict(model, norm(x_test))
    cm = confusion_matrix(logits, y_test, num_classes=num_classes)
    test_acc = float(np.trace(cm) / cm.sum())
    per_class = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
    hardest = [classes[k] for k in np.argsort(per_class)[:3]]
    off = cm - np.diag(np.diag(cm))
    i, j = np.unravel_index(np.argmax(off), off.shape)
    ctx.save_figure(plot_curves(history, ctx.dataset), "training_curves",
                    f"Loss and accuracy per epoch of the CNN (widths {fmt(BASE['widths'])}, "
                    f"{BASE['kernel_size']}x{BASE['kernel_size']} kernels, batch norm; Adam, lr "
                    f"{BASE['lr']} with cosine decay, batch {BASE['batch_size']}, random horizontal "
                    "flips) on training and validation data.")
    ctx.save_figure(plot_confusion(cm, classes, ctx.dataset), "confusion_matrix",
                    "Left: test confusion matrix, each row as % of its true class. Right: accuracy "
                    "of every class, hardest first.")
    params = int(sum(p.data.size for p in model.parameters()))
    ctx.note(f"The CNN ({params:,} parameters, {epochs} epochs, {seconds:.0f} s) reaches "
             f"{100 * test_acc:.1f} % test accuracy (chance: {100 / num_classes:.0f} %). Hardest "
             f"classes: {', '.join(f'{c} ({100 * per_class[classes.index(c)]:.0f} %)' for c in hardest)}; "
             f"the most common confusion is {classes[i]} taken for {classes[j]} ({off[i, j]} test images).")
    metrics.update(test_accuracy=test_acc, parameters=params, epochs=epochs, train_seconds=seconds,
                   final_train_accuracy=history["accuracy"][-1],
                   final_val_accuracy=history["val_accuracy"][-1],
                   per_class_accuracy=dict(zip(classes, per_class.tolist())), hardest_classes=hardest,
                   most_confused=[classes[i], classes[j], int(off[i, j])],
                   confusion_matrix=cm, history=history.as_dict())

    # ------------------------------------------------------ the sweep
    if ctx.args.no_sweep:
        return metrics
    xs, ys = subset(x_train, y_train, profile["sweep_train"], ctx.rng(3))
    settings = [("base", "", BASE)] + [(f, fmt(v), {**BASE, f: v}) for f, v in profile["sweep"]]
    rows = []
    for factor, value, config in ctx.progress(settings, "sweep"):
        m, h, s = train_cnn(xs, ys, val, in_shape, num_classes, config, profile["sweep_epochs"], ctx.seed)
        rows.append({"factor": factor, "value": value, "batch size": config["batch_size"],
                     "learning rate": config["lr"], "widths": fmt(config["widths"]),
                     "kernel": config["kernel_size"],
                     "parameters": int(sum(p.data.size for p in m.parameters())),
                     "val accuracy (%)": round(100 * h["val_accuracy"][-1], 2),
                     "time (s)": round(s, 1)})
        ctx.log(f"sweep {factor}={value}: {rows[-1]['val accuracy (%)']} %")
    best = max(rows, key=lambda r: r["val accuracy (%)"])
    ctx.table("sweep", rows, f"One factor at a time away from the base setting (batch "
              f"{BASE['batch_size']}, lr {BASE['lr']}, widths {fmt(BASE['widths'])}, kernel "
              f"{BASE['kernel_size']}), each trained {profile['sweep_epochs']} epochs on "
              f"{len(ys):,} training images; accuracy on the validation split.")
    ctx.save_figure(plot_sweep(rows, num_classes, ctx.dataset), "sweep",
                    "Validation accuracy of each sweep setting against the base setting (dashed).")
    best_name = "the base setting" if best["factor"] == "base" else f"{best['factor']}={best['value']}"
    ctx.note(f"Best sweep setting: {best_name} with {best['val accuracy (%)']:.1f} % validation "
             f"accuracy (base {rows[0]['val accuracy (%)']:.1f} %). With so short a budget the "
             "settings that learn fastest win; differences of a few points are within the noise "
             "of one seed.")
    metrics.update(sweep=rows, best_setting={k: best[k] for k in ("factor", "value", "batch size",
                                                                  "learning rate", "widths", "kernel")},
                   best_sweep_val_accuracy=best["val accuracy (%)"] / 100)
    return metrics
