"""UvA DL1 assignment 1: an MLP with explicit backpropagation in NumPy, the same MLP with
autograd, and its PyTorch twin, trained with the course's SGD settings.

All three start from the same weights (the explicit-backprop MLP's Kaiming draw), so any difference
between their curves comes from the engines (float64 against float32, the torch loader's data order),
not from the initialisation. The PyTorch MLP with batch norm is trained as well, from its own Kaiming
draw. Without torch the two PyTorch models are skipped (said in a note) and the rest runs.
"""
import copy

import matplotlib.pyplot as plt
import numpy as np

import minidl as md  # with md.data, md.manual, md.models, md.optim and md.train
import minidl.metrics  # noqa: F401

from . import plots
from .runner import beyond_noise, binomial_se, comma_list, cpu_threads, positive_int

NAME = "mlp_numpy"
COURSE = "UvA DL1"
TASK = "assignment 1 (MLP in NumPy and PyTorch)"
SUMMARY = "explicit-backprop NumPy MLP vs autograd MLP vs PyTorch twin: curves, confusion, F-beta"
STATEMENT = """
Implement the modules of a multi-layer perceptron (linear layer, ELU, softmax, cross-entropy) with
their forward and backward passes by hand, assemble them into an MLP and train it with mini-batch
SGD (one hidden layer of 128 units, learning rate 0.1, batch size 128, 10 epochs, seed 42) on
CIFAR-10, flattened and normalised per channel, with 45,000 training and 5,000 validation images.
Keep the model with the best validation accuracy and evaluate it on the test set: accuracy, the
confusion matrix, and per-class precision, recall and F-beta for beta = 0.1, 1 and 10. Then build
the same MLP in PyTorch (Kaiming initialisation, optionally batch normalisation between each linear
layer and its ELU), train it the same way and compare. (Offline, the default runs on the embedded
digits instead: scikit-learn's 1,797 handwritten 8x8 digits, 64 inputs, split into 1,077 training,
360 validation and 360 test images; ``--dataset cifar10`` runs the course's setting.)
"""
DATASETS = ("digits", "cifar10")
DEFAULT = True
# Small matrices: one BLAS (and torch) thread beats several that fight over a busy
# machine's cores (measured: torch's 10 digits epochs 0.3 s on one thread, 6 s on two).
THREADS = "small"
TORCH = True  # the twins: --device, --amp, --resume apply to them; the rest runs without torch
PROFILES = {  # the course's settings; the quick run keeps a few batches of every split
    "default": {"epochs": 10, "batch_size": 128, "lr": 0.1, "hidden": (128,),
                "train_size": None, "val_size": None, "test_size": None},
    "quick": {"epochs": 3, "train_size": 768, "val_size": 256, "test_size": 256},
}

COURSE_SEED = 42  # the seed used is 42 + --seed, so a plain run uses the course's 42
COURSE_SPLIT = {"train": 45000, "val": 5000}  # the statement's CIFAR-10 training and validation images
BETAS = (0.1, 1.0, 10.0)
SCORES = {"precision": "precision", "recall": "recall", **{f"f_beta_{b:g}": f"F-beta, beta={b:g}" for b in BETAS}}
# The course's CIFAR-10 normalisation (digits: the mean and std of its training split).
CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
MODELS = {"numpy": "NumPy, explicit backprop (md.manual)", "autograd": "minidl autograd (md.models.MLP)",
          "torch": "PyTorch twin", "torch_bn": "PyTorch twin + batch norm"}  # key -> legend label
SHORT = {"numpy": "NumPy", "autograd": "autograd", "torch": "PyTorch", "torch_bn": "PyTorch with batch norm"}


def add_arguments(parser):
    parser.add_argument("--hidden", type=comma_list(positive_int), help="hidden layer sizes, e.g. 256,128")
    for part in ("train", "val", "test"):
        parser.add_argument(f"--{part}-size", type=positive_int,
                            help=f"images kept of the {part} split, drawn at random (None: all)")


# ------------------------------------------------------------------------ data
def load_flat(ctx):
    """Flattened, normalised (N, D) float32 arrays for train, val and test."""
    splits = ctx.load_dataset()
    mean, std = (CIFAR_MEAN, CIFAR_STD) if ctx.dataset == "cifar10" else (splits.mean, splits.std)
    flat = {}
    for part in ("train", "val", "test"):
        x, y = getattr(splits, part).x, getattr(splits, part).y
        size = getattr(ctx.config, f"{part}_size")
        keep = ctx.rng(1).permutation(len(y))[:size] if size and size < len(y) else slice(None)  # None: all
        x, y = x[keep], y[keep]
        flat[part] = (md.data.normalize(x, mean, std).reshape(len(x), -1), y)
    return flat, [str(c) for c in splits.classes]


# ------------------------------------------------------------ the NumPy MLP
def sgd_step(mlp, lr):
    """The course's update: W <- W - lr dL/dW for every linear module."""
    for layer in mlp.linear_modules:
        for name in layer.params:
            layer.params[name] -= lr * layer.grads[name]


def train_numpy(mlp, data, lr, epochs, batch_size, seed, progress):
    """Mini-batch SGD with explicit forward/backward; keeps the best-validation copy."""
    loss_module = md.manual.CrossEntropyModule()
    loader = md.data.DataLoader(*data["train"], batch_size=batch_size, shuffle=True, seed=seed)
    history = {"loss": [], "val_accuracy": []}
    best, best_acc = None, -1.0
    for _ in progress(range(epochs), "NumPy MLP epochs"):
        total = 0.0
        for x, y in loader:
            probs = mlp.forward(x.astype(np.float64))
            total += loss_module.forward(probs, y) * len(y)
            mlp.backward(loss_module.backward(probs, y))
            sgd_step(mlp, lr)
        mlp.clear_cache()
        history["loss"].append(total / loader.num_examples)
        val_acc = md.metrics.accuracy(data["val"][1], mlp.forward(data["val"][0].astype(np.float64)))
        history["val_accuracy"].append(val_acc)
        if val_acc > best_acc:
            best, best_acc = copy.deepcopy(mlp), val_acc
    best.clear_cache()
    return best, history


def linear_names(model):
    """The names of an autograd or torch model's linear layers, in order."""
    return [name for name, m in model.named_modules() if type(m).__name__ == "Linear"]


def manual_state_dict(mlp, model, which="params"):
    """The NumPy MLP's weights (``which="grads"``: their gradients) under the key names of an
    autograd/torch twin ``model``."""
    state = {}
    for name, layer in zip(linear_names(model), mlp.linear_modules, strict=True):
        values = getattr(layer, which)
        state[f"{name}.weight"], state[f"{name}.bias"] = values["weight"], values["bias"].reshape(-1)
    return state


def gradient_check(mlp, model, x, y):
    """Largest |dL/dW| difference between explicit backprop and autograd on one batch,
    from the same weights, both in float64."""
    probs = mlp.forward(x.astype(np.float64))
    mlp.backward(md.manual.CrossEntropyModule().backward(probs, y))
    model = copy.deepcopy(model).double()
    model.load_state_dict(manual_state_dict(mlp, model))
    model.zero_grad()
    md.nn.CrossEntropyLoss()(model(md.tensor(x.astype(np.float64))), md.tensor(y)).backward()
    explicit = manual_state_dict(mlp, model, "grads")
    diff = max(float(np.abs(p.grad - explicit[name]).max()) for name, p in model.named_parameters())
    mlp.clear_cache()
    return diff


# ----------------------------------------------------------- the torch twins
def train_twins(ctx, start, data, n_classes, seed):
    """The PyTorch twin from the NumPy MLP's initial weights ``start``, and the twin with
    batch norm from its own Kaiming draw, each kept at its best validation epoch.
    Returns ({key: history}, {key: test logits}); both empty without torch."""
    try:
        import torch
    except ImportError:
        ctx.note("torch is not installed, so the two PyTorch twins were skipped.")
        return {}, {}
    from reference_torch.checkpoint import load_checkpoint
    from reference_torch.mlp_twin import MLP as TorchMLP
    from reference_torch.train import Checkpoint

    # torch is imported only now, after the runner set every thread pool it had seen: give it
    # minidl's count (torch's own default spun several threads over these tiny matrices)
    with cpu_threads(md.threads.num_threads()):
        n_inputs, hidden = data["train"][0].shape[1], list(ctx.config.hidden)
        twin = TorchMLP(n_inputs, hidden, n_classes)
        twin.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32))
                              for k, v in manual_state_dict(start, twin).items()})
        torch.manual_seed(seed)
        models = {"torch": twin, "torch_bn": TorchMLP(n_inputs, hidden, n_classes, use_batch_norm=True)}
        histories, logits = {}, {}
        for key, model in ctx.progress(models.items(), "PyTorch twins", total=len(models)):
            best = Checkpoint(ctx.out / "checkpoints" / key / "best.pt", monitor="val_accuracy", mode="max")
            # the course's seed (42 + --seed) orders the twins' batches too
            trainer = ctx.trainer(key, model, torch.optim.SGD(model.parameters(), lr=ctx.config.lr),
                                  callbacks=[best], seed=seed)
            history = ctx.fit(trainer, ctx.loader(*data["train"], shuffle=True),
                              val_loader=ctx.loader(*data["val"], batch_size=1000))
            histories[key] = {k: [epoch[k] for epoch in history] for k in ("loss", "val_accuracy")}
            model.load_state_dict(load_checkpoint(best.path, map_location=ctx.device)["model"])
            model.eval()
            with torch.no_grad():
                logits[key] = model(ctx.to_device(data["test"][0])).float().cpu().numpy()
        return histories, logits


# --------------------------------------------------------------------- figures
def plot_curves(histories, best, title):
    """Loss and validation accuracy per epoch, the epoch kept (``best[key]``, from 0) circled."""
    fig = plots.training_curves({MODELS[k]: h for k, h in histories.items()}, title=title,
                                units={"loss": "cross-entropy (nats)"},
                                titles={"loss": "Training loss (mean over each epoch)",
                                        "accuracy": "Validation accuracy (circle: best epoch, kept for test)"})
    ax_loss, ax_acc = fig.axes
    for ax in fig.axes:  # the NumPy line wide and pale, so that autograd's, on top of it, stays visible
        ax.lines[0].set(lw=4, alpha=0.45)
    for i, (key, h) in enumerate(histories.items()):
        ax_acc.scatter(best[key] + 1, 100 * h["val_accuracy"][best[key]], s=120, facecolors="none",
                       edgecolors=f"C{i}", lw=1.5)
    ax_loss.get_legend().remove()  # one legend for both panels
    ax_acc.legend(ax_acc.lines[:len(histories)], [MODELS[k] for k in histories], fontsize=8, loc="lower right")
    return fig


def plot_confusion(reports, keys, classes):
    fig, axes = plt.subplots(1, len(keys), figsize=(5.6 * len(keys), 5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        plots.confusion_matrix(reports[key]["confusion_matrix"], classes, MODELS[key], ax=ax)
        ax.grid(False)  # grid lines would cross the cells
    fig.suptitle("Confusion on the test set (each cell: images, and % of the true class as its colour)")
    fig.tight_layout()
    return fig


def plot_fbeta(report, classes):
    per_class = report["per_class"]
    lowest = min(min(per_class[key]) for key in SCORES)
    bottom = max(0, 10 * np.floor(10 * lowest - 1))  # zoom in on the differences
    fig = plots.bar_chart({c: {label: 100 * per_class[key][i] for key, label in SCORES.items()}
                           for i, c in enumerate(classes)},
                          "NumPy MLP on the test set, per class: F-beta leans to precision for "
                          "beta=0.1, to recall for beta=10", f"score (%; axis from {bottom:.0f})",
                          fmt="{:.0f}", xlabel="class", figsize=(12, 4.4), ylim=(bottom, 104))
    fig.axes[0].legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- run
def run(ctx):
    config, seed = ctx.config, COURSE_SEED + ctx.seed
    hidden, lr, batch_size, epochs = list(config.hidden), config.lr, config.batch_size, config.epochs
    data, classes = load_flat(ctx)
    n_inputs, n_classes, sizes = data["train"][0].shape[1], len(classes), {part: len(data[part][1]) for part in data}
    ctx.log(f"{ctx.dataset}: {sizes['train']} train / {sizes['val']} val / {sizes['test']} test, {n_inputs} inputs, "
            f"seed {seed}")

    md.manual_seed(seed)
    numpy_mlp = md.manual.MLP(n_inputs, hidden, n_classes)
    start = copy.deepcopy(numpy_mlp)  # the initial weights, for the PyTorch twin
    autograd_mlp = md.models.MLP(n_inputs, hidden, n_classes, activation="elu")
    autograd_mlp.load_state_dict(manual_state_dict(numpy_mlp, autograd_mlp))  # same start
    grad_diff = gradient_check(numpy_mlp, autograd_mlp, *(part[:batch_size] for part in data["train"]))
    ctx.log(f"explicit backprop vs autograd, same weights, one batch: max |dW difference| {grad_diff:.1e}")

    histories, predictions = {}, {}
    numpy_mlp, histories["numpy"] = train_numpy(numpy_mlp, data, lr, epochs, batch_size, seed, ctx.progress)
    predictions["numpy"] = numpy_mlp.forward(data["test"][0].astype(np.float64))

    keep_best = md.train.EarlyStopping("val_accuracy", patience=epochs + 1, restore_best=True)
    history = md.train.fit(  # patience > epochs: never stops, only restores the best epoch
        autograd_mlp, md.nn.CrossEntropyLoss(), md.optim.SGD(autograd_mlp.parameters(), lr=lr),
        md.data.DataLoader(*data["train"], batch_size=batch_size, shuffle=True, seed=seed),
        md.data.DataLoader(*data["val"], batch_size=1000), epochs=epochs, callbacks=[keep_best], progress=False)
    histories["autograd"] = {"loss": history["loss"], "val_accuracy": history["val_accuracy"]}
    predictions["autograd"] = md.train.predict(autograd_mlp, data["test"][0])
    for key in ("numpy", "autograd"):  # the twins' histories are kept by ctx.fit
        ctx.history(key, histories[key])

    twin_histories, twin_logits = train_twins(ctx, start, data, n_classes, seed)
    histories, predictions = {**histories, **twin_histories}, {**predictions, **twin_logits}

    reports = {key: md.metrics.classification_report(data["test"][1], p, BETAS, n_classes)
               for key, p in predictions.items()}
    best = {key: int(np.argmax(h["val_accuracy"])) for key, h in histories.items()}  # the epochs kept
    rows = [{"model": MODELS[k], "best_epoch": best[k] + 1, "val_accuracy": histories[k]["val_accuracy"][best[k]],
             "test_accuracy": r["accuracy"], **{name: r[name] for name in SCORES}} for k, r in reports.items()]

    title = f"MLP {hidden} on {ctx.dataset}: SGD, lr {lr}, batch {batch_size}, seed {seed}"
    ctx.save_figure(plot_curves(histories, best, title), "curves",
                    "Training loss and validation accuracy per epoch. The NumPy, autograd and "
                    "PyTorch MLPs start from the same weights; the NumPy and autograd MLPs also "
                    "see the same batches, so their curves lie on top of each other.")
    shown = ["numpy", "torch_bn"] if "torch_bn" in reports else ["numpy"]
    ctx.save_figure(plot_confusion(reports, shown, classes), "confusion_matrix", "Test-set confusion matrices "
                    f"of the best-validation {' and of the '.join(MODELS[k] for k in shown)}: each cell holds its "
                    "number of test images and its share of the true class (the colour); off-diagonal cells are "
                    "the classes confused.")
    ctx.save_figure(plot_fbeta(reports["numpy"], classes), "per_class_scores",
                    "Per-class precision, recall and F-beta of the NumPy MLP on the test set.")
    ctx.table("results", rows, "Best-validation models on the test set (macro averages over classes for precision, "
              "recall and F-beta).",
              columns={"model": "model", "best_epoch": "best epoch",
                       "val_accuracy": ("val accuracy (%)", "{:.1%}"), "test_accuracy": ("test accuracy (%)", "{:.1%}"),
                       **{k: (f"{label} (%)", "{:.1%}") for k, label in SCORES.items()}})
    n_test, accuracy = sizes["test"], reports["numpy"]["accuracy"]
    accuracies = [r["accuracy"] for r in reports.values()]
    spread, noise = max(accuracies) - min(accuracies), binomial_se(accuracy, n_test) * 2 ** 0.5
    ctx.headline("NumPy MLP test accuracy", accuracy, 1 / n_classes, "chance", noise=binomial_se(accuracy, n_test))
    if ctx.dataset == "digits":
        ctx.note(f"Offline data: the embedded digits ({sizes['train']:,} training, {sizes['val']:,} "
                 f"validation, {n_test:,} test images of {n_inputs} pixels), not the statement's CIFAR-10 "
                 f"({COURSE_SPLIT['train']:,}/{COURSE_SPLIT['val']:,}): digits are far easier, so expect far higher "
                 "accuracies than on CIFAR-10.")
    ctx.note("Explicit backprop and autograd give the same gradients from the same weights (largest difference "
             f"{grad_diff:.1e}). Test accuracy: "
             + ", ".join(f"{SHORT[k]} {reports[k]['accuracy']:.1%}" for k in reports) + f". One test image is "
             f"{1 / n_test:.1%}; the largest gap between two engines, {100 * spread:.1f} points, is "
             f"{'beyond' if beyond_noise(spread, noise) else 'within'} two standard errors of a difference (one is "
             f"{100 * noise:.1f} points).")
    return {"dataset": ctx.dataset, "seed": seed, "epochs": epochs, "hidden": hidden, "lr": lr,
            "batch_size": batch_size, "chance_accuracy": 1 / n_classes, "course_cifar10_split": COURSE_SPLIT,
            "images": sizes, "one_test_image": 1 / n_test, "largest_engine_gap": spread, "difference_noise": noise,
            "manual_vs_autograd_max_grad_diff": grad_diff,
            "models": {key: {**reports[key], "history": histories[key]} for key in reports}}
