"""ITU week 4 task 1b and week 5 task 2: a small CNN against an MLP on handwritten digits.

Both models are trained with minidl (the from-scratch engine) on the same data with the
same optimiser and budget. The comparison is accuracy against parameter count: the CNN
shares its weights across positions and reaches a better accuracy with a fraction of the
MLP's parameters. A t-SNE of each model's learned features (the input of its last
layer) for training and test images, coloured by the true and by the predicted class,
shows how well the classes are separated before the classifier sees them.
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
from .runner import positive_float, positive_int

NAME = "cnn_vs_mlp"
COURSE = "ITU advanced ML"
TASK = "week 4, task 1b; week 5, task 2"
SUMMARY = "small CNN vs MLP on digits/MNIST (minidl): accuracy vs parameters, t-SNE of learned features"
STATEMENT = """
Train a multi-layer perceptron and a small convolutional network on handwritten digits
and compare them: test accuracy against the number of trainable parameters. The CNN
sees the image as a grid (local 3x3 filters shared over all positions, pooling), the
MLP as a flat vector of pixels. Then look inside: embed the learned features (the last
hidden layer) of training and test images with t-SNE and colour the points by their
true and by their predicted class. Well-separated clusters mean the network has learned
features in which the classes are (nearly) linearly separable; test points that land
in another class's cluster are the errors.
"""
DATASETS = ("digits", "mnist")
DEFAULT = True
THREADS = "small"  # a 20k-parameter CNN: one thread beats several on a busy small machine

# At most this many training / validation / test images (None: all of them), and the
# points per split in the t-SNE. Full MNIST is capped at 20,000 training images:
# minutes, not hours, on two cores (offline only 7,333 are at hand anyway).
PROFILES = {
    "default": {"epochs": 10, "lr": 2e-3, "batch_size": 64, "train_images": None, "val_images": None,
                "test_images": None, "tsne_points": 400},
    "quick": {"epochs": 2, "train_images": 400, "val_images": 200, "test_images": 400, "tsne_points": 120},
}
DATASET_SETTINGS = {"mnist": {"epochs": 6, "train_images": 20000, "tsne_points": 500}}
COLUMNS = {"model": "model", "parameters": ("parameters", "{:,}"), "feature_size": "feature size",
           "train_accuracy": ("train accuracy", "{:.1%}"), "val_accuracy": ("val accuracy", "{:.1%}"),
           "test_accuracy": ("test accuracy", "{:.1%}"),
           "feature_knn_accuracy": ("5-NN on features", "{:.1%}"),
           "seconds": ("training time (s)", "{:.1f}")}


def add_arguments(parser):
    parser.add_argument("--epochs", type=positive_int, help="training epochs of both models")
    parser.add_argument("--lr", type=positive_float, help="Adam learning rate")
    parser.add_argument("--batch-size", type=positive_int, help="mini-batch size")


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


def models(in_shape, num_classes):
    """The two contenders, each with one hidden representation fed to a linear head."""
    c, h, w = in_shape
    return {
        "MLP": md.models.MLP(c * h * w, hidden=(128, 64), num_classes=num_classes),
        "CNN": md.models.SmallCNN(in_shape, num_classes=num_classes, widths=(16, 32), kernel_size=3),
    }


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


def plot_tsne(name, points, labels, predicted, split, classes, dataset):
    """2x2 panels: training / test points, coloured by true / predicted class; the
    other split in pale grey behind them; misclassified points ringed in black."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 9.2), sharex=True, sharey=True)
    wrong = labels != predicted
    for row, part in enumerate(("train", "test")):
        sel = split == part
        for col, (what, colour_by) in enumerate((("true class", labels), ("predicted class", predicted))):
            ax = axes[row, col]
            plots.scatter_2d(points[sel], colour_by[sel], classes, ax=ax,
                             title=f"{part} images ({sel.sum()}), coloured by {what}")
            ax.get_legend().remove()  # one legend for the figure
            ax.scatter(*points[~sel].T, s=6, c="0.88", linewidths=0, zorder=0)
            ax.scatter(*points[sel & wrong].T, s=40, facecolors="none", edgecolors="black",
                       linewidths=0.9, label="misclassified")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", title="class", markerscale=1.6, fontsize=9)
    fig.suptitle(f"t-SNE of the {name}'s learned features ({dataset}; pale grey: the other split)")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return fig


# --------------------------------------------------------------------- run
def train(ctx, model, data):
    """Adam on ``model``; returns its history and the seconds it took."""
    loader = md.data.DataLoader(*data["train"], batch_size=ctx.config.batch_size, shuffle=True,
                                seed=ctx.seed)
    val_loader = md.data.DataLoader(*data["val"], batch_size=256)
    optimizer = md.optim.Adam(model.parameters(), lr=ctx.config.lr)
    start = time.perf_counter()
    history = md.train.fit(model, md.nn.CrossEntropyLoss(), optimizer, loader, val_loader,
                           epochs=ctx.config.epochs)
    return history.as_dict(), time.perf_counter() - start


def run(ctx):
    data, classes = load(ctx)
    (x_train, y_train), (x_test, y_test) = data["train"], data["test"]
    ctx.log(f"{len(y_train)} training, {len(data['val'][1])} validation, {len(y_test)} "
            f"test images of shape {x_train.shape[1:]}, {len(classes)} classes")
    md.manual_seed(ctx.seed)
    nets = models(x_train.shape[1:], len(classes))
    histories, rows, metrics = {}, [], {"dataset": ctx.dataset, "epochs": ctx.config.epochs}
    for name, model in nets.items():
        histories[name], seconds = train(ctx, model, data)
        ctx.history(name.lower(), histories[name])
        result = {split: md.train.evaluate(model, md.data.DataLoader(*data[split], batch_size=256),
                                           md.nn.CrossEntropyLoss()) for split in ("train", "test")}
        # How separable the learned features are: 5-NN on features, fit on training images.
        features = md.train.predict(model.body, x_train)
        knn = KNeighborsClassifier(5).fit(features, y_train)
        row = {"model": name, "parameters": count_parameters(model), "feature_size": features.shape[1],
               "train_accuracy": result["train"]["accuracy"],
               "val_accuracy": histories[name]["val_accuracy"][-1],
               "test_accuracy": result["test"]["accuracy"],
               "feature_knn_accuracy": knn.score(md.train.predict(model.body, x_test), y_test),
               "seconds": seconds}
        rows.append(row)
        metrics.update({f"{name.lower()}_{key}": value for key, value in row.items() if key != "model"})
        metrics[f"{name.lower()}_test_loss"] = result["test"]["loss"]
        ctx.log(f"{name}: test accuracy {row['test_accuracy']:.1%}, {row['parameters']:,} parameters")

    ctx.table("comparison", rows, f"MLP against CNN on {ctx.dataset}: the same Adam optimiser "
              f"(lr {ctx.config.lr}, batch {ctx.config.batch_size}) and {ctx.config.epochs} epochs "
              "for both. '5-NN on features' classifies test images by their 5 nearest training "
              "images in the learned feature space.", columns=COLUMNS)
    ctx.save_figure(plots.training_curves(histories, chance=1 / len(classes),
                                          units={"loss": "loss (nats)"},
                                          titles={"loss": f"Cross-entropy loss ({ctx.dataset})",
                                                  "accuracy": f"Accuracy ({ctx.dataset})"}),
                    "learning_curves", "Training and validation loss and accuracy per epoch, both models.")
    for name, model in nets.items():
        features, labels, predicted, split = tsne_sample(model, data, ctx.config.tsne_points, ctx.seed)
        points = plots.tsne_embedding(features, ctx.seed)
        ctx.save_figure(plot_tsne(name, points, labels, predicted, split, classes, ctx.dataset),
                        f"tsne_{name.lower()}",
                        f"t-SNE of the {name}'s learned features (the input of its last layer) for "
                        f"{(split == 'train').sum()} training and {(split == 'test').sum()} test "
                        "images, embedded together; left coloured by the true class, right by the "
                        "predicted one; misclassified points ringed in black, the other split in "
                        "pale grey.")

    mlp, cnn = rows
    better = "better" if cnn["test_accuracy"] > mlp["test_accuracy"] else "worse"
    ctx.note(f"The CNN reaches {cnn['test_accuracy']:.1%} test accuracy with "
             f"{cnn['parameters']:,} parameters, the MLP {mlp['test_accuracy']:.1%} with "
             f"{mlp['parameters']:,} ({mlp['parameters'] / cnn['parameters']:.0f}x as many): weight "
             f"sharing does {better} with far fewer parameters.")
    ctx.note(f"In the t-SNE plots the classes form clusters; 5-NN accuracy on the learned "
             f"features is {cnn['feature_knn_accuracy']:.1%} (CNN) and "
             f"{mlp['feature_knn_accuracy']:.1%} (MLP).")
    metrics["comparison"] = rows
    return metrics
