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
from sklearn.manifold import TSNE
from sklearn.neighbors import KNeighborsClassifier
from threadpoolctl import threadpool_limits

import minidl as md
import minidl.data  # noqa: F401
import minidl.models  # noqa: F401
import minidl.optim  # noqa: F401
import minidl.train  # noqa: F401

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

# Per profile: at most this many training / validation / test images, epochs, points
# per split in the t-SNE. (Full MNIST is capped at 20,000 training images: minutes, not
# hours, on two cores; offline only 7,333 are at hand anyway.)
PROFILES = {
    "quick": dict(train=400, val=200, test=400, epochs=2, tsne=120),
    "digits": dict(train=None, val=None, test=None, epochs=10, tsne=400),
    "mnist": dict(train=20000, val=None, test=None, epochs=6, tsne=500),
}
# tab10 with its grey (class 7) made black: grey marks the other split in the t-SNE plots
PALETTE = [c if i != 7 else "black" for i, c in enumerate(plt.get_cmap("tab10").colors)]


def COLOURS(i):  # noqa: N802  (used like a colormap)
    return PALETTE[i % len(PALETTE)]


def add_arguments(parser):
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: per dataset)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3)")
    parser.add_argument("--batch-size", type=int, default=64, help="mini-batch size (default 64)")


# ------------------------------------------------------------------- data
def load_splits(ctx):
    """digits at 28x28 (MNIST's size), or MNIST (see ``Run.load_dataset``)."""
    return ctx.load_dataset(size=28) if ctx.dataset == "digits" else ctx.load_dataset()


def load(ctx, profile):
    """Normalised train/val/test arrays (subsets in the quick profile) and class names."""
    splits = load_splits(ctx)

    def arrays(part, limit=None):
        x, y = part.x, part.y
        if limit is not None and len(y) > limit:
            keep = ctx.rng(1).permutation(len(y))[:limit]
            x, y = x[keep], y[keep]
        return splits.normalize(x), y.astype(np.int64)

    data = {part: arrays(getattr(splits, part), profile[part]) for part in ("train", "val", "test")}
    return data, [str(c) for c in splits.classes]


def models(in_shape, num_classes):
    """The two contenders, each with one hidden representation fed to a linear head."""
    c, h, w = in_shape
    return {
        "MLP": md.models.MLP(c * h * w, hidden=(128, 64), num_classes=num_classes),
        "CNN": md.models.SmallCNN(in_shape, num_classes=num_classes, widths=(16, 32), kernel_size=3),
    }


def count_parameters(model):
    return int(sum(p.data.size for p in model.parameters()))


# ---------------------------------------------------------------- figures
def plot_curves(histories, dataset):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        epochs = np.arange(1, len(h["loss"]) + 1)
        ax_loss.plot(epochs, h["loss"], "-o", ms=3, color=COLOURS(i), label=f"{name} train")
        ax_loss.plot(epochs, h["val_loss"], "--s", ms=3, color=COLOURS(i), label=f"{name} validation")
        ax_acc.plot(epochs, 100 * np.asarray(h["accuracy"]), "-o", ms=3, color=COLOURS(i),
                    label=f"{name} train")
        ax_acc.plot(epochs, 100 * np.asarray(h["val_accuracy"]), "--s", ms=3, color=COLOURS(i),
                    label=f"{name} validation")
    ax_loss.set(title=f"Cross-entropy loss ({dataset})", xlabel="epoch", ylabel="loss (nats)")
    ax_acc.set(title=f"Accuracy ({dataset})", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def plot_tsne(name, emb, labels, predicted, split, classes, dataset):
    """2x2 panels: training / test points, coloured by true / predicted class;
    test points predicted wrongly are ringed in black."""
    fig, axes = plt.subplots(2, 2, figsize=(10, 9.2), sharex=True, sharey=True)
    for row, part in enumerate(("train", "test")):
        sel = split == part
        for col, (what, colour_by) in enumerate((("true class", labels), ("predicted class", predicted))):
            ax = axes[row, col]
            ax.scatter(emb[~sel, 0], emb[~sel, 1], s=6, c="0.85", linewidths=0)  # the other split
            for k in range(len(classes)):
                pts = sel & (colour_by == k)
                ax.scatter(emb[pts, 0], emb[pts, 1], s=10, color=COLOURS(k), linewidths=0,
                           label=classes[k])
            wrong = sel & (labels != predicted)
            ax.scatter(emb[wrong, 0], emb[wrong, 1], s=40, facecolors="none", edgecolors="black",
                       linewidths=0.9, label="misclassified")
            ax.set_title(f"{part} images ({sel.sum()}), coloured by {what}", fontsize=10)
            if row == 1:
                ax.set_xlabel("t-SNE dimension 1")
            if col == 0:
                ax.set_ylabel("t-SNE dimension 2")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", title="class", markerscale=1.6, fontsize=9)
    fig.suptitle(f"t-SNE of the {name}'s learned features ({dataset}; grey: the other split)")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    return fig


# --------------------------------------------------------------------- run
def tsne_embedding(model, data, count, seed):
    """Features of ``count`` training and ``count`` test images, embedded together."""
    rng = np.random.default_rng(seed)
    xs, ys, splits = [], [], []
    for part in ("train", "test"):
        x, y = data[part]
        pick = rng.permutation(len(y))[:count]
        xs.append(x[pick])
        ys.append(y[pick])
        splits += [part] * len(pick)
    x, y = np.concatenate(xs), np.concatenate(ys)
    features = md.train.predict(model.body, x)
    predicted = md.train.predict(model, x).argmax(axis=1)
    perplexity = min(30.0, (len(y) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                max_iter=750 if count > 150 else 500)
    # One thread: sklearn's Barnes-Hut gradient in OpenMP threads is many times slower
    # than one thread on a small, busy machine (measured: 18 s against 1.3 s CPU, 800 points).
    with threadpool_limits(1):
        emb = tsne.fit_transform(features.astype(np.float64))
    return emb, y, predicted, np.array(splits), features


def run(ctx):
    profile = PROFILES["quick" if ctx.quick else ctx.dataset]
    epochs = ctx.args.epochs or profile["epochs"]
    data, classes = load(ctx, profile)
    x_train, y_train = data["train"]
    ctx.log(f"{len(y_train)} training, {len(data['val'][1])} validation, {len(data['test'][1])} "
            f"test images of shape {x_train.shape[1:]}, {len(classes)} classes")
    md.manual_seed(ctx.seed)
    nets = models(x_train.shape[1:], len(classes))
    loss_fn = md.nn.CrossEntropyLoss()
    histories, rows, metrics = {}, [], {"dataset": ctx.dataset, "epochs": epochs}
    for name, model in nets.items():
        train_loader = md.data.DataLoader(x_train, y_train, batch_size=ctx.args.batch_size,
                                          shuffle=True, seed=ctx.seed)
        val_loader = md.data.DataLoader(*data["val"], batch_size=256)
        optimizer = md.optim.Adam(model.parameters(), lr=ctx.args.lr)
        start = time.perf_counter()
        history = md.train.fit(model, loss_fn, optimizer, train_loader, val_loader, epochs=epochs,
                               progress=not ctx.quick)
        seconds = time.perf_counter() - start
        histories[name] = history
        result = {split: md.train.evaluate(model, md.data.DataLoader(*data[split], batch_size=256),
                                           loss_fn) for split in ("train", "test")}
        # How separable the learned features are: 5-NN on features, fit on training images.
        knn = KNeighborsClassifier(5).fit(md.train.predict(model.body, x_train), y_train)
        knn_acc = knn.score(md.train.predict(model.body, data["test"][0]), data["test"][1])
        rows.append({"model": name, "parameters": count_parameters(model),
                     "feature size": int(np.prod(md.train.predict(model.body, x_train[:1]).shape[1:])),
                     "train accuracy (%)": round(100 * result["train"]["accuracy"], 2),
                     "val accuracy (%)": round(100 * history["val_accuracy"][-1], 2),
                     "test accuracy (%)": round(100 * result["test"]["accuracy"], 2),
                     "5-NN on features (%)": round(100 * knn_acc, 2),
                     "training time (s)": round(seconds, 1)})
        key = name.lower()
        metrics.update({f"{key}_parameters": count_parameters(model),
                        f"{key}_test_accuracy": result["test"]["accuracy"],
                        f"{key}_test_loss": result["test"]["loss"],
                        f"{key}_train_accuracy": result["train"]["accuracy"],
                        f"{key}_feature_knn_accuracy": knn_acc,
                        f"{key}_seconds": seconds,
                        f"{key}_history": history.as_dict()})
        ctx.log(f"{name}: {rows[-1]}")

    ctx.table("comparison", rows, f"MLP against CNN on {ctx.dataset}: the same Adam optimiser "
              f"(lr {ctx.args.lr}, batch {ctx.args.batch_size}) and {epochs} epochs for both. "
              "'5-NN on features' classifies test images by their 5 nearest training images in "
              "the learned feature space.")
    ctx.save_figure(plot_curves(histories, ctx.dataset), "learning_curves",
                    "Training and validation loss and accuracy per epoch, both models.")
    for name, model in nets.items():
        emb, labels, predicted, split, _ = tsne_embedding(model, data, profile["tsne"], ctx.seed)
        fig = plot_tsne(name, emb, labels, predicted, split, classes, ctx.dataset)
        ctx.save_figure(fig, f"tsne_{name.lower()}",
                        f"t-SNE of the {name}'s learned features (the input of its last layer) for "
                        f"{(split == 'train').sum()} training and {(split == 'test').sum()} test "
                        "images, embedded "
                        "together; left coloured by the true class, right by the predicted one; "
                        "misclassified points ringed in black, the other split in grey.")

    mlp, cnn = rows
    ratio = mlp["parameters"] / cnn["parameters"]
    better = "better" if cnn["test accuracy (%)"] > mlp["test accuracy (%)"] else "worse"
    ctx.note(f"The CNN reaches {cnn['test accuracy (%)']:.1f} % test accuracy with "
             f"{cnn['parameters']:,} parameters, the MLP {mlp['test accuracy (%)']:.1f} % with "
             f"{mlp['parameters']:,} ({ratio:.0f}x as many): weight sharing does {better} with far "
             "fewer parameters.")
    ctx.note(f"In the t-SNE plots the classes form clusters; 5-NN accuracy on the learned "
             f"features is {cnn['5-NN on features (%)']:.1f} % (CNN) and "
             f"{mlp['5-NN on features (%)']:.1f} % (MLP).")
    metrics["comparison"] = rows
    return metrics
