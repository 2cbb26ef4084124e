"""UvA DL1 assignment 1: an MLP with explicit backpropagation in NumPy, the same MLP
with autograd, and its PyTorch twin, trained with the course's SGD settings.

All three start from the same weights (the explicit-backprop MLP's Kaiming draw), so
any difference between their curves comes from the engines (float64 against float32,
the data order of the torch loader), not from the initialisation. The PyTorch MLP
with batch normalisation is trained as well, from its own Kaiming draw.
"""
import copy

import matplotlib.pyplot as plt
import numpy as np
import torch

import minidl as md
import minidl.data  # noqa: F401
import minidl.manual  # noqa: F401
import minidl.metrics  # noqa: F401
import minidl.models  # noqa: F401
import minidl.optim  # noqa: F401
import minidl.train  # noqa: F401
from reference_torch.data import make_loader
from reference_torch.mlp_twin import MLP as TorchMLP
from reference_torch.train import Callback, Trainer

from .runner import small_model_threads

NAME = "mlp_numpy"
COURSE = "UvA DL1"
TASK = "assignment 1 (MLP in NumPy and PyTorch)"
SUMMARY = "explicit-backprop NumPy MLP vs autograd MLP vs PyTorch twin: curves, confusion, F-beta"
STATEMENT = """
Implement the modules of a multi-layer perceptron (linear layer, ELU, softmax,
cross-entropy) with their forward and backward passes by hand, assemble them into an
MLP and train it with mini-batch SGD (one hidden layer of 128 units, learning rate 0.1,
batch size 128, 10 epochs, seed 42) on CIFAR-10, flattened and normalised per channel,
with 45,000 training and 5,000 validation images. Keep the model with the best
validation accuracy and evaluate it on the test set: accuracy, the confusion matrix,
and per-class precision, recall and F-beta for beta = 0.1, 1 and 10. Then build the
same MLP in PyTorch (Kaiming initialisation, optionally batch normalisation between
each linear layer and its ELU), train it the same way and compare.
"""
DATASETS = ("digits", "cifar10")
DEFAULT = True

# The course's defaults. The seed used is 42 + --seed, so a plain run uses the course's 42.
HIDDEN, LR, BATCH_SIZE, EPOCHS, COURSE_SEED = [128], 0.1, 128, 10, 42
BETAS = (0.1, 1.0, 10.0)
# The course's CIFAR-10 normalisation (digits: the mean and std of its training split).
CIFAR_MEAN, CIFAR_STD = (0.491, 0.482, 0.447), (0.247, 0.243, 0.262)
MODELS = {  # key -> legend label
    "numpy": "NumPy, explicit backprop (md.manual)",
    "autograd": "minidl autograd (md.models.MLP)",
    "torch": "PyTorch twin",
    "torch_bn": "PyTorch twin + batch norm",
}


def add_arguments(parser):
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs (default {EPOCHS})")
    parser.add_argument("--lr", type=float, default=LR, help=f"SGD learning rate (default {LR})")
    parser.add_argument("--hidden", type=int, nargs="+", default=HIDDEN,
                        help="hidden layer sizes (default 128)")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help=f"mini-batch size (default {BATCH_SIZE})")


# ------------------------------------------------------------------------ data
def load_flat(ctx):
    """Flattened, normalised (N, D) float32 arrays for train, val and test."""
    splits = md.data.load_dataset(ctx.dataset, data_dir=ctx.data_dir, seed=ctx.seed)
    mean, std = (CIFAR_MEAN, CIFAR_STD) if ctx.dataset == "cifar10" else (splits.mean, splits.std)
    mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    flat = {}
    for part in ("train", "val", "test"):
        d = getattr(splits, part)
        x, y = d.x, d.y
        if ctx.quick:  # a few batches of every split
            keep = ctx.rng(1).permutation(len(y))[:{"train": 768, "val": 256, "test": 256}[part]]
            x, y = x[keep], y[keep]
        flat[part] = (((x - mean) / std).reshape(len(x), -1).astype(np.float32), y)
    return flat, splits.classes


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


def manual_state_dict(mlp, model):
    """The NumPy MLP's weights under the key names of an autograd/torch twin ``model``."""
    names = [name for name, m in model.named_modules() if type(m).__name__ == "Linear"]
    state = {}
    for name, layer in zip(names, mlp.linear_modules, strict=True):
        state[f"{name}.weight"] = layer.params["weight"]
        state[f"{name}.bias"] = layer.params["bias"].reshape(-1)
    return state


def gradient_check(mlp, model, x, y):
    """Largest |dL/dW| difference between explicit backprop and autograd on one batch,
    from the same weights, both in float64."""
    probs = mlp.forward(x.astype(np.float64))
    loss_module = md.manual.CrossEntropyModule()
    mlp.backward(loss_module.backward(probs, y))
    model = copy.deepcopy(model).double()
    model.load_state_dict(manual_state_dict(mlp, model))
    model.zero_grad()
    md.nn.CrossEntropyLoss()(model(md.tensor(x.astype(np.float64))), md.tensor(y)).backward()
    params = dict(model.named_parameters())
    diff = 0.0
    for name, layer in zip([n for n, m in model.named_modules() if type(m).__name__ == "Linear"],
                           mlp.linear_modules):
        diff = max(diff, float(np.abs(params[f"{name}.weight"].grad - layer.grads["weight"]).max()),
                   float(np.abs(params[f"{name}.bias"].grad - layer.grads["bias"].reshape(-1)).max()))
    mlp.clear_cache()
    return diff


# ----------------------------------------------------------- the torch twins
class KeepBest(Callback):
    """Remember the weights of the epoch with the best validation accuracy."""

    def __init__(self):
        self.best, self.state = -1.0, None

    def on_epoch_end(self, trainer, metrics):
        if metrics["val_accuracy"] > self.best:
            self.best = metrics["val_accuracy"]
            self.state = copy.deepcopy(trainer.model.state_dict())


def train_torch(model, data, lr, epochs, batch_size, seed):
    torch.manual_seed(seed)
    keep = KeepBest()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), device="cpu",
                      callbacks=[keep], seed=seed, progress=False)
    history = trainer.fit(make_loader(*data["train"], batch_size=batch_size, shuffle=True, seed=seed),
                          epochs, val_loader=make_loader(*data["val"], batch_size=1000))
    model.load_state_dict(keep.state)
    return model, {"loss": [h["loss"] for h in history],
                   "val_accuracy": [h["val_accuracy"] for h in history]}


@torch.no_grad()
def torch_logits(model, x):
    model.eval()
    return model(torch.from_numpy(x)).numpy()


# --------------------------------------------------------------------- figures
def plot_curves(histories, title):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    styles = {"numpy": ("C0", "-", "o"), "autograd": ("C1", "--", "s"),
              "torch": ("C2", ":", "^"), "torch_bn": ("C3", "-", "d")}
    for key, h in histories.items():
        colour, line, marker = styles[key]
        epochs = np.arange(1, len(h["loss"]) + 1)
        # the NumPy line is drawn wide and pale so that autograd's, on top of it, stays visible
        wide = dict(lw=4, alpha=0.45) if key == "numpy" else {}
        ax_loss.plot(epochs, h["loss"], color=colour, ls=line, marker=marker, ms=4,
                     label=MODELS[key], **wide)
        acc = 100 * np.asarray(h["val_accuracy"])
        ax_acc.plot(epochs, acc, color=colour, ls=line, marker=marker, ms=4, label=MODELS[key],
                    **wide)
        best = int(np.argmax(acc))
        ax_acc.scatter(epochs[best], acc[best], s=120, facecolors="none", edgecolors=colour, lw=1.5)
    ax_loss.set(title="Training loss (mean over each epoch)", xlabel="epoch",
                ylabel="cross-entropy (nats)")
    ax_acc.set(title="Validation accuracy (circle: best epoch, kept for test)", xlabel="epoch",
               ylabel="accuracy (%)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_acc.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_confusion(cms, classes, titles):
    fig, axes = plt.subplots(1, len(cms), figsize=(5.6 * len(cms), 5))
    for ax, cm, title in zip(np.atleast_1d(axes), cms, titles):
        cm = np.asarray(cm)
        rates = 100 * cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=100)
        for (i, j), n in np.ndenumerate(cm):
            if n:
                ax.text(j, i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if rates[i, j] > 60 else "black")
        ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes[0]) > 2 else 0,
                      ha="right" if len(classes[0]) > 2 else "center", fontsize=8)
        ax.set_yticks(range(len(classes)), classes, fontsize=8)
        ax.set(xlabel="predicted class", ylabel="true class", title=title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    fig.suptitle("Test confusion matrices (numbers: image counts; colour: row-normalised)")
    fig.tight_layout()
    return fig


def plot_fbeta(report, classes):
    per_class = report["per_class"]
    keys = ["precision", "recall"] + [f"f_beta_{b:g}" for b in BETAS]
    labels = ["precision", "recall"] + [f"F-beta, beta={b:g}" for b in BETAS]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / len(keys)
    lowest = min(min(per_class[key]) for key in keys)
    for i, (key, label) in enumerate(zip(keys, labels)):
        ax.bar(np.arange(len(classes)) + (i - (len(keys) - 1) / 2) * width,
               100 * np.asarray(per_class[key]), width, label=label)
    ax.set_xticks(range(len(classes)), classes)
    bottom = max(0, 10 * np.floor(10 * lowest - 1))  # zoom in on the differences
    ax.set(xlabel="class", ylabel=f"score (%; axis from {bottom:.0f})", ylim=(bottom, 100.5),
           title="NumPy MLP on the test set, per class: F-beta leans to precision for "
                 "beta=0.1, to recall for beta=10")
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------- run
def run(ctx):
    # Small matrices: one BLAS (and torch) thread beats several that fight over a busy
    # machine's cores (measured: torch's 10 digits epochs 0.3 s on one thread, 6 s on two).
    with small_model_threads(ctx):
        return experiment(ctx)


def experiment(ctx):
    hidden, lr, batch_size = list(ctx.args.hidden), ctx.args.lr, ctx.args.batch_size
    epochs = 3 if ctx.quick else ctx.args.epochs
    seed = COURSE_SEED + ctx.seed
    data, classes = load_flat(ctx)
    n_inputs, n_classes = data["train"][0].shape[1], len(classes)
    ctx.log(f"{ctx.dataset}: {len(data['train'][1])} train / {len(data['val'][1])} val / "
            f"{len(data['test'][1])} test, {n_inputs} inputs; seed {seed}")

    md.manual_seed(seed)
    numpy_mlp = md.manual.MLP(n_inputs, hidden, n_classes)
    autograd_mlp = md.models.MLP(n_inputs, hidden, n_classes, activation="elu")
    autograd_mlp.load_state_dict(manual_state_dict(numpy_mlp, autograd_mlp))  # same start
    torch_mlp = TorchMLP(n_inputs, hidden, n_classes)
    torch_mlp.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32))
                               for k, v in manual_state_dict(numpy_mlp, torch_mlp).items()})
    torch.manual_seed(seed)
    torch_bn = TorchMLP(n_inputs, hidden, n_classes, use_batch_norm=True)
    grad_diff = gradient_check(numpy_mlp, autograd_mlp, data["train"][0][:batch_size],
                               data["train"][1][:batch_size])
    ctx.log(f"explicit backprop vs autograd, same weights, one batch: max |dW difference| "
            f"{grad_diff:.1e}")

    histories, predictions = {}, {}
    numpy_mlp, histories["numpy"] = train_numpy(numpy_mlp, data, lr, epochs, batch_size, seed,
                                                ctx.progress)
    predictions["numpy"] = numpy_mlp.forward(data["test"][0].astype(np.float64))

    keep_best = md.train.EarlyStopping("val_accuracy", patience=epochs + 1, restore_best=True)
    history = md.train.fit(  # patience > epochs: never stops, only restores the best epoch
        autograd_mlp, md.nn.CrossEntropyLoss(), md.optim.SGD(autograd_mlp.parameters(), lr=lr),
        md.data.DataLoader(*data["train"], batch_size=batch_size, shuffle=True, seed=seed),
        md.data.DataLoader(*data["val"], batch_size=1000), epochs=epochs,
        callbacks=[keep_best], progress=False)
    histories["autograd"] = {"loss": history["loss"], "val_accuracy": history["val_accuracy"]}
    predictions["autograd"] = md.train.predict(autograd_mlp, data["test"][0])

    for key, model in ctx.progress([("torch", torch_mlp), ("torch_bn", torch_bn)], "PyTorch twins"):
        model, histories[key] = train_torch(model, data, lr, epochs, batch_size, seed)
        predictions[key] = torch_logits(model, data["test"][0])

    y_test = data["test"][1]
    reports = {key: md.metrics.classification_report(y_test, p, BETAS, n_classes)
               for key, p in predictions.items()}
    rows = []
    for key, report in reports.items():
        best = int(np.argmax(histories[key]["val_accuracy"]))
        rows.append({"model": MODELS[key], "best epoch": best + 1,
                     "val acc %": round(100 * histories[key]["val_accuracy"][best], 2),
                     "test acc %": round(100 * report["accuracy"], 2),
                     "precision %": round(100 * report["precision"], 2),
                     "recall %": round(100 * report["recall"], 2),
                     **{f"F{b:g} %": round(100 * report[f"f_beta_{b:g}"], 2) for b in BETAS}})

    class_names = [str(c) for c in classes]
    title = f"MLP {hidden} on {ctx.dataset}: SGD, lr {lr}, batch {batch_size}, seed {seed}"
    ctx.save_figure(plot_curves(histories, title), "curves",
                    "Training loss and validation accuracy per epoch. The first three models "
                    "start from the same weights; the NumPy and autograd MLPs also see the "
                    "same batches, so their curves lie on top of each other.")
    ctx.save_figure(plot_confusion([reports["numpy"]["confusion_matrix"],
                                    reports["torch_bn"]["confusion_matrix"]], class_names,
                                   [MODELS["numpy"], MODELS["torch_bn"]]), "confusion_matrix",
                    "Test-set confusion matrices of the best-validation NumPy MLP and of the "
                    "batch-norm PyTorch MLP; off-diagonal cells are the classes confused.")
    ctx.save_figure(plot_fbeta(reports["numpy"], class_names), "per_class_scores",
                    "Per-class precision, recall and F-beta of the NumPy MLP on the test set.")
    ctx.table("results", rows, "Best-validation models on the test set (macro averages over "
                               "classes for precision, recall and F-beta).")
    ctx.note(f"Explicit backprop and autograd give the same gradients from the same weights "
             f"(largest difference {grad_diff:.1e}). Test accuracy: NumPy "
             f"{100 * reports['numpy']['accuracy']:.1f} %, autograd "
             f"{100 * reports['autograd']['accuracy']:.1f} %, PyTorch "
             f"{100 * reports['torch']['accuracy']:.1f} %, PyTorch with batch norm "
             f"{100 * reports['torch_bn']['accuracy']:.1f} %.")
    return {"dataset": ctx.dataset, "seed": seed, "epochs": epochs, "hidden": hidden, "lr": lr,
            "batch_size": batch_size, "chance_accuracy": 1 / n_classes,
            "manual_vs_autograd_max_grad_diff": grad_diff,
            "models": {key: {**reports[key], "history": histories[key]} for key in reports}}
