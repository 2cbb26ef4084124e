"""ITU week 4 task 1b and week 5 task 2: a small CNN against an MLP on handwritten digits.

Both models are trained with minidl (the from-scratch engine) on the same data with the
same optimiser and budget, each at several widths: the comparison is test accuracy
against parameter count, with the binomial standard error of the test set as each one's
noise and the paired one (the images where they disagree) as the noise of their difference.
Both end in one hidden layer of the same width before the linear classifier, and a
t-SNE of that penultimate layer for training and test images, coloured by the true and
by the predicted class, shows how well each separates the classes before the
classifier sees them.
"""
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.neighbors import KNeighborsClassifier

import minidl as md
import minidl.data  # noqa: F401
import minidl.models  # noqa: F401
import minidl.optim  # noqa: F401
import minidl.train  # noqa: F401

from . import plots
from .runner import binomial_se, comma_list, paired_se, positive_float, positive_int

NAME = "cnn_vs_mlp"
COURSE = "ITU advanced ML"
TASK = "week 4, task 1b; week 5, task 2"
SUMMARY = "small CNN vs MLP on digits/MNIST (minidl): accuracy vs parameters, t-SNE of learned features"
STATEMENT = """
Train a multi-layer perceptron and a small convolutional network on handwritten digits
and compare them: test accuracy against the number of trainable parameters, over
several widths of each. The CNN
sees the image as a grid (local 3x3 filters shared over all positions, pooling), the
MLP as a flat vector of pixels. Then look inside: embed the learned features (the last
hidden layer) of training and test images with t-SNE and colour the points by their
true and by their predicted class. Well-separated clusters mean the network has learned
features in which the classes are (nearly) linearly separable; test points that land
in another class's cluster are the errors. (Offline the kit uses scikit-learn's 1,797
digits, upscaled to MNIST's 28x28.)
"""
DATASETS = ("digits", "mnist")
DEFAULT = True
THREADS = "small"  # CNNs of 30k-110k parameters: one thread beats several on a busy small machine

HIDDEN = 64  # the last hidden layer of both models: the features the t-SNE embeds
# The widths each model is trained at: the MLP's first hidden layer (the second has
# HIDDEN units), the CNN's first conv layer (the second has twice as many channels).
# The widths in MAIN are compared in the table, the curves and the t-SNE.
MLP_WIDTHS, CNN_WIDTHS = (16, 32, 64, 128, 256), (2, 4, 8, 16)
MAIN = {"MLP": 128, "CNN": 16}

# At most this many training / validation / test images (None: all of them), and the
# points per split in the t-SNE. Full MNIST is capped at 20,000 training images:
# minutes, not hours, on two cores (offline only 7,333 are at hand anyway).
PROFILES = {
    "default": {"epochs": 10, "lr": 2e-3, "batch_size": 64, "train_images": None, "val_images": None,
                "test_images": None, "tsne_points": 400, "mlp_widths": MLP_WIDTHS, "cnn_widths": CNN_WIDTHS},
    "quick": {"epochs": 2, "train_images": 400, "val_images": 200, "test_images": 400, "tsne_points": 120,
              "mlp_widths": (32, 128), "cnn_widths": (4, 16)},
}
DATASET_SETTINGS = {"mnist": {"epochs": 6, "train_images": 20000, "tsne_points": 500}}
COLUMNS = {"model": "model", "width": "width (first layer)", "parameters": ("parameters", "{:,}"), "feature_size": "feature size",
           "train_accuracy": ("train accuracy", "{:.1%}"), "val_accuracy": ("val accuracy", "{:.1%}"),
           "test_accuracy": ("test accuracy", "{:.1%}"),
           "feature_knn_accuracy": ("5-NN on features", "{:.1%}"),
           "test_se": ("± standard error", "{:.1%}"), "seconds": ("training CPU time (s)", "{:.1f}")}


def add_arguments(parser):
    parser.add_argument("--epochs", type=positive_int, help="training epochs of both models")
    parser.add_argument("--lr", type=positive_float, help="Adam learning rate")
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size")
    for name in ("mlp", "cnn"):
        parser.add_argument(f"--{name}-widths", type=comma_list(positive_int),
                            help=f"the {name.upper()}'s widths for the accuracy-against-parameters curve")


def check(config):
    for name, width in MAIN.items():
        if width not in getattr(config, f"{name.lower()}_widths"):
            return f"--{name.lower()}-widths must include {width}, the {name} compared in the table"


# ------------------------------------------------------------------- data
def load(ctx):
    """Normalised train/val/test arrays, each cut to its limit, and the class names:
    digits at 28x28 (MNIST's size), or MNIST (see ``Run.load_dataset``)."""
    splits = ctx.load_dataset(size=28) if ctx.dataset == "digits" else ctx.load_dataset()
    limits = {"train": ctx.config.train_images, "val": ctx.config.val_images,
              "test": ctx.config.test_images}

    def arrays(part):
        x, y = getattr(splits, part).x, getattr(splits, part).y
        if limits[part] is not None and len(y) > limits[part]:
            keep = ctx.rng(1).permutation(len(y))[:limits[part]]
            x, y = x[keep], y[keep]
        return splits.normalize(x), y.astype(np.int64)

    return {part: arrays(part) for part in limits}, [str(c) for c in splits.classes]


class CNN(md.nn.Module):
    """SmallCNN's two conv stages (3x3 conv, ReLU, 2x2 max pool), then one hidden layer of
    ``hidden`` units, as the MLP ends: ``body`` gives the features the head classifies."""

    def __init__(self, in_shape, width, hidden, num_classes):
        super().__init__()
        convs = md.models.SmallCNN(in_shape, widths=(width, 2 * width), kernel_size=3)
        self.body = md.nn.Sequential(convs.body, md.nn.Linear(convs.head.in_features, hidden), md.nn.ReLU())
        self.head = md.nn.Linear(hidden, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def model(name, width, in_shape, num_classes):
    """The MLP (hidden layers ``width`` and HIDDEN) or the CNN (``width`` and twice as many
    channels, then HIDDEN units)."""
    if name == "MLP":
        return md.models.MLP(int(np.prod(in_shape)), hidden=(width, HIDDEN), num_classes=num_classes)
    return CNN(in_shape, width, HIDDEN, num_classes)


def count_parameters(model):
    return int(sum(p.data.size for p in model.parameters()))


# ---------------------------------------------------------------- t-SNE
def tsne_sample(model, data, count, seed):
    """Features, true and predicted classes of ``count`` training and ``count`` test
    images, and which split each came from."""
    rng = np.random.default_rng(seed)
    picks = {part: rng.permutation(len(data[part][1]))[:count] for part in ("train", "test")}
    x = np.concatenate([data[part][0][pick] for part, pick in picks.items()])
    y = np.concatenate([data[part][1][pick] for part, pick in picks.items()])
    split = np.concatenate([[part] * len(pick) for part, pick in picks.items()])
    return md.train.predict(model.body, x), y, md.train.predict(model, x).argmax(axis=1), split


# tab10 without its grey (the other split is pale grey, the rings of the errors black)
CLASS_COLOURS = [f"C{k}" for k in (0, 1, 2, 3, 4, 5, 6, 8, 9)] + ["gold"]


def plot_tsne(name, points, labels, predicted, split, classes, dataset):
    """2x2 panels: training / test points, coloured by true / predicted class; the
    other split in pale grey behind them; misclassified points ringed in black."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 9.2), sharex=True, sharey=True)
    wrong = labels != predicted
    for row, part in enumerate(("train", "test")):
        sel = split == part
        for col, (what, colour_by) in enumerate((("true class", labels), ("predicted class", predicted))):
            ax = axes[row, col]
            plots.scatter_2d(points[sel], colour_by[sel], classes, ax=ax, colors=CLASS_COLOURS,
                             title=f"{part} images ({sel.sum()}), coloured by {what}")
            ax.get_legend().remove()  # one legend for the figure
            ax.scatter(*points[~sel].T, s=6, c="0.88", linewidths=0, zorder=0)
            ax.scatter(*points[sel & wrong].T, s=40, facecolors="none", edgecolors="black",
                       linewidths=0.9, label="misclassified")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", title="class", markerscale=1.6, fontsize=9)
    fig.suptitle(f"t-SNE of the {name}'s penultimate layer ({points.shape[0]} images of {dataset}; "
                 "pale grey: the other split)")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return fig


# --------------------------------------------------------------------- run
def train(ctx, model, data):
    """Adam on ``model``; returns its history and the CPU seconds it took."""
    loader = md.data.DataLoader(*data["train"], batch_size=ctx.config.batch_size, shuffle=True,
                                seed=ctx.seed)
    val_loader = md.data.DataLoader(*data["val"], batch_size=256)
    optimizer = md.optim.Adam(model.parameters(), lr=ctx.config.lr)
    start = time.process_time()
    history = md.train.fit(model, md.nn.CrossEntropyLoss(), optimizer, loader, val_loader,
                           epochs=ctx.config.epochs, progress=False)
    return history.as_dict(), time.process_time() - start


def plot_accuracy_vs_parameters(curve, n_test, dataset):
    fig = plots.line_plot({f"{name} ({len(points)} widths)": ([p["parameters"] for p in points],
                                                             [100 * p["test_accuracy"] for p in points])
                           for name, points in curve.items()},
                          f"Test accuracy against model size ({dataset}; bars: ±1 standard error, "
                          f"{n_test} test images)", "trainable parameters (log scale)", "test accuracy (%)",
                          logx=True)
    ax = fig.axes[0]
    for i, points in enumerate(curve.values()):
        ax.errorbar([p["parameters"] for p in points], [100 * p["test_accuracy"] for p in points],
                    [100 * p["test_se"] for p in points], fmt="none", color=f"C{i}", capsize=3)
        for p in points:  # each point named by its width
            ax.annotate(f"width {p['width']}", (p["parameters"], 100 * p["test_accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(-5, 5) if i else (5, -10), ha="right" if i else "left")
    return fig


def run(ctx):
    data, classes = load(ctx)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    in_shape, n_test = x_train.shape[1:], len(y_test)
    ctx.log(f"{len(y_train)} training, {len(data['val'][1])} validation, {n_test} "
            f"test images of shape {in_shape}, {len(classes)} classes")
    curve, nets, histories, rows, correct = {"MLP": [], "CNN": []}, {}, {}, [], {}
    metrics = {"dataset": ctx.dataset, "epochs": ctx.config.epochs, "hidden": HIDDEN,
               "images": {part: len(y) for part, (_, y) in data.items()}}
    for name, points in curve.items():
        for width in sorted(getattr(ctx.config, f"{name.lower()}_widths")):
            md.manual_seed(ctx.seed)  # every model from the same seed: only the width differs
            net = model(name, width, in_shape, len(classes))
            history, seconds = train(ctx, net, data)
            result = {split: md.train.evaluate(net, md.data.DataLoader(*data[split], batch_size=256),
                                               md.nn.CrossEntropyLoss()) for split in ("train", "test")}
            accuracy = result["test"]["accuracy"]
            points.append({"model": name, "width": width, "parameters": count_parameters(net),
                           "test_accuracy": accuracy, "test_se": binomial_se(accuracy, n_test),
                           "seconds": seconds})
            ctx.log(f"{name} width {width}: test accuracy {accuracy:.1%}, {points[-1]['parameters']:,} parameters")
            if width != MAIN[name]:
                continue
            nets[name], histories[name] = net, history
            correct[name] = md.train.predict(net, x_test).argmax(axis=1) == y_test  # per test image
            ctx.history(name.lower(), history)
            # How separable the learned features are: 5-NN on features, fit on training images.
            features = md.train.predict(net.body, x_train)
            knn = KNeighborsClassifier(5).fit(features, y_train)
            row = {**points[-1], "feature_size": features.shape[1],
                   "train_accuracy": result["train"]["accuracy"], "val_accuracy": history["val_accuracy"][-1],
                   "feature_knn_accuracy": knn.score(md.train.predict(net.body, x_test), y_test)}
            rows.append(row)
            metrics.update({f"{name.lower()}_{key}": value for key, value in row.items() if key != "model"})
            metrics[f"{name.lower()}_test_loss"] = result["test"]["loss"]
    metrics["accuracy_vs_parameters"] = curve

    ctx.table("comparison", rows, f"MLP (hidden layers {MAIN['MLP']} and {HIDDEN}) against CNN (convs of "
              f"{MAIN['CNN']} and {2 * MAIN['CNN']} channels, then {HIDDEN} hidden units) on {ctx.dataset}: the "
              f"same Adam optimiser (lr {ctx.config.lr}, batch {ctx.config.batch_size}) and {ctx.config.epochs} "
              f"epochs for both. The standard error is binomial, on {n_test} test images. '5-NN on features' "
              "classifies test images by their 5 nearest training images in the penultimate layer's features.",
              columns=COLUMNS)
    ctx.save_figure(plot_accuracy_vs_parameters(curve, n_test, ctx.dataset), "accuracy_vs_parameters",
                    f"Test accuracy of each model at {len(curve['MLP'])} (MLP) and {len(curve['CNN'])} (CNN) "
                    f"widths against its number of trainable parameters, each trained {ctx.config.epochs} "
                    f"epochs; bars: ±1 binomial standard error on the {n_test} test images.")
    ctx.save_figure(plots.training_curves(histories, chance=1 / len(classes),
                                          units={"loss": "loss (nats)"},
                                          titles={"loss": f"Cross-entropy loss ({ctx.dataset})",
                                                  "accuracy": f"Accuracy ({ctx.dataset})"}),
                    "learning_curves", "Training and validation loss and accuracy per epoch of the two "
                    "models of the table.")
    for name, net in nets.items():
        features, labels, predicted, split = tsne_sample(net, data, ctx.config.tsne_points, ctx.seed)
        metrics[f"{name.lower()}_tsne_input_size"] = features.shape[1]
        points = plots.tsne_embedding(features, ctx.seed)
        ctx.save_figure(plot_tsne(name, points, labels, predicted, split, classes, ctx.dataset),
                        f"tsne_{name.lower()}",
                        f"t-SNE of the {name}'s penultimate layer ({features.shape[1]} units, the input of "
                        f"its classifier) for {(split == 'train').sum()} training and {(split == 'test').sum()} "
                        "test images, embedded together; left coloured by the true class, right by the "
                        "predicted one; misclassified points ringed in black, the other split in pale grey.")

    mlp, cnn = rows
    # Both models are tested on the same images: the noise of their difference is the paired
    # one, set by the images where they disagree (the binomial error of each would count twice
    # the images that both get right or both get wrong).
    gap, noise = cnn["test_accuracy"] - mlp["test_accuracy"], paired_se(correct["CNN"], correct["MLP"])
    only = {name: int((correct[name] & ~correct[other]).sum()) for name, other in (("CNN", "MLP"), ("MLP", "CNN"))}
    verdict = ctx.headline("CNN test accuracy", cnn["test_accuracy"], mlp["test_accuracy"],
                           f"the MLP ({mlp['parameters']:,} parameters)", noise=noise)
    ctx.note(f"The CNN reaches {cnn['test_accuracy']:.1%} ± {cnn['test_se']:.1%} test accuracy with "
             f"{cnn['parameters']:,} parameters, the MLP {mlp['test_accuracy']:.1%} ± {mlp['test_se']:.1%} with "
             f"{mlp['parameters']:,}: a difference of {100 * gap:+.1f} points ({round(gap * n_test):+d} of {n_test} "
             f"test images: {only['CNN']} only the CNN gets right, {only['MLP']} only the MLP), against a paired "
             f"standard error of the difference of {100 * noise:.1f} points: "
             + ("more than twice the noise." if verdict == "beats the baseline" else "within twice the noise, "
                "so this test set cannot tell the two apart."))
    smallest = {name: min(points, key=lambda p: p["parameters"]) for name, points in curve.items()}
    ctx.note(f"Across widths: the smallest CNN ({smallest['CNN']['parameters']:,} parameters) reaches "
             f"{smallest['CNN']['test_accuracy']:.1%}, the smallest MLP ({smallest['MLP']['parameters']:,}) "
             f"{smallest['MLP']['test_accuracy']:.1%}; see the accuracy-against-parameters figure.")
    ctx.note(f"5-NN accuracy on the penultimate layer's {HIDDEN} features: {cnn['feature_knn_accuracy']:.1%} "
             f"(CNN) and {mlp['feature_knn_accuracy']:.1%} (MLP).")
    metrics.update(comparison=rows, cnn_minus_mlp=gap, difference_se=noise, verdict=verdict,
                   only_cnn_correct=only["CNN"], only_mlp_correct=only["MLP"])
    return metrics
