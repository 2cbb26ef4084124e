"""KTH advanced DL, memorisation practical part I: learning versus memorisation (Zhang et
al. 2017, "Understanding deep learning requires rethinking generalization").

One network, SGD with momentum and nothing else, on the true labels, on partly and fully
random labels and on destroyed images, each set drawn once by
``reference_torch.memorization.corrupt``; a run stops once an epoch's running training
accuracy reaches the threshold, or when the epoch budget ends. The true-label run of Part
II's network keeps its initialisation and checkpoints at a fixed schedule of epochs in
``<out>/checkpoints/<model>_true``, where ``layer_criticality`` finds them.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch import augment as A
from reference_torch.memorization import EpochCheckpoints, StopWhenFitted, build_network, corrupt, fitted_step
from reference_torch.train import seed_everything

from . import plots
from .runner import binomial_se, comma_list, fraction, nonnegative_int, positive_int

NAME = "memorization"
COURSE = "KTH advanced DL"
TASK = "memorisation practical, part I"
SUMMARY = ("fit true, partly and fully random labels and destroyed images: steps to fit, "
           "generalisation gap, and what explicit regularisation changes (Zhang et al. 2017)")
STATEMENT = """
Train a network (the thin ResNet-18 without batch norm, or an MLP) with SGD and momentum
and no explicit regularisation on the true labels, on labels of which 20, 40, 60, 80 and
100 % are replaced by random classes, and on images replaced by shuffled pixels (one
permutation for all images), random pixels (a permutation per image) and gaussian noise.
Plot the training loss against the steps, the steps until the training set is fitted and
the test error against the share of corrupted labels (figure 1 of Zhang et al. 2017). Then
train with weight decay, data augmentation and dropout: is explicit regularisation
necessary, or sufficient, to generalise? Keep the initial and intermediate checkpoints of
the true-label network for Part II. (Offline: the digits, with the MLP of Part II's MNIST study.)
"""
DATASETS = ("digits", "shapes", "cifar10")  # digits first: on shapes true and random labels fitted alike (see README)
DEFAULT = True
THREADS = "small"
TORCH = True

SETTINGS = {  # name -> (corruption, share of labels, label in figures)
    "true": ("labels", 0.0, "true labels"),
    **{f"labels_{p}": ("labels", p / 100, f"{p} % random labels") for p in (20, 40, 60, 80)},
    "random_labels": ("labels", 1.0, "random labels"),
    "shuffled_pixels": ("shuffled_pixels", 0.0, "shuffled pixels"),
    "random_pixels": ("random_pixels", 0.0, "random pixels"),
    "gaussian": ("gaussian", 0.0, "gaussian"),
}
REGULARIZERS = {"none": "no regularisation", "weight_decay": "weight decay", "augmentation": "augmentation",
                "dropout": "dropout"}
PROFILES = {
    "default": {"epochs": 40, "batch_size": 64, "lr": 0.01, "model": "mlp", "part2_model": "resnet",
                "part2_epochs": 20, "part2_lr": 0.02, "widths": (8, 16, 32, 64), "hidden": (512,),
                "dataset_channels": 3, "train_size": None, "shapes_images": 4000, "image_size": 16,
                "settings": tuple(SETTINGS), "regularizers": tuple(REGULARIZERS), "weight_decay": 5e-4,
                "dropout": 0.5, "fit_threshold": 1.0, "checkpoint_epochs": (0, 1, 2, 4, 8, 14, 20)},
    "quick": {"epochs": 10, "shapes_images": 500, "settings": ("true", "labels_40", "random_labels", "shuffled_pixels"),
              "regularizers": ("none", "weight_decay"), "part2_epochs": 2, "checkpoint_epochs": (0, 1, 2)},
    "full": {"epochs": 300, "model": "resnet", "widths": (16, 32, 64, 128), "shapes_images": 10000, "image_size": 32,
             "part2_epochs": 60, "checkpoint_epochs": (0, 1, 2, 5, 10, 20, 40, 60)},
}
# The digits: the MLP of Part II's MNIST study (three hidden layers of 256), whose true-label run
# keeps the checkpoints; random labels take longer. 512 of the 1,077 training digits: 110 s of CPU on all.
DATASET_SETTINGS = {"digits": {"model": "mlp", "part2_model": "mlp", "hidden": (256, 256, 256), "lr": 0.05,
                               "epochs": 100, "dataset_channels": 1, "checkpoint_epochs": (0, 1, 2, 4, 8),
                               "train_size": 512},
                    "cifar10": {"model": "resnet", "widths": (16, 32, 64, 128), "batch_size": 128, "lr": 0.01,
                                "epochs": 300, "part2_epochs": 60, "checkpoint_epochs": (0, 1, 2, 5, 10, 20, 40, 60)}}
MODELS = ("mlp", "resnet")
INITS = {"mlp": "default", "resnet": "he"}  # the ResNet without batch norm needs He's (reference_torch.memorization)


def add_arguments(parser):
    parser.add_argument("--model", choices=MODELS, help="network of the corruption sweep")
    parser.add_argument("--part2-model", choices=MODELS + ("none",),
                        help="network whose true-label checkpoints Part II reads (none: only the sweep's)")
    parser.add_argument("--settings", type=comma_list(str, SETTINGS), help="data settings to train on")
    parser.add_argument("--regularizers", type=comma_list(str, REGULARIZERS),
                        help="the regularisation study (true and random labels)")
    parser.add_argument("--train-size", type=positive_int, help="training images (None: all)")
    parser.add_argument("--fit-threshold", type=fraction, help="training accuracy that counts as fitted")
    parser.add_argument("--checkpoint-epochs", type=comma_list(nonnegative_int), help="epochs whose weights are kept")


def check(config):
    if "resnet" in (config.model, config.part2_model) and config.dataset_channels == 1:
        return "the thin ResNet-18 needs colour images: --model mlp --part2-model mlp with --dataset digits"
    if "true" not in config.settings:
        return "--settings must include true (the reference every other setting is compared with)"


# --------------------------------------------------------------------------- pieces Part II uses too
def model_meta(ctx, splits, name, dataset_options):
    """What Part II needs to rebuild the network and its data from the checkpoints alone."""
    c = ctx.config
    return {"model": name, "init": INITS[name], "widths": list(c.widths), "hidden": list(c.hidden),
            "num_classes": splits.num_classes, "in_shape": list(splits.in_shape), "dataset": ctx.dataset,
            "dataset_options": dataset_options, "seed": ctx.seed, "train_size": c.train_size}


def train(ctx, label, meta, x, y, epochs, lr, *, weight_decay=0.0, augment=None, dropout=0.0,
          threshold=None, checkpoint_epochs=None):
    """One SGD run (momentum 0.9) from the run's seed; returns (trainer, history, steps per epoch)."""
    seed_everything(ctx.seed)  # every setting starts from the same weights
    model = build_network(meta, dropout)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    callbacks = [StopWhenFitted(threshold)] if threshold else []
    if checkpoint_epochs:
        folder = ctx.out / "checkpoints" / label
        for stale in [] if ctx.config.resume else folder.glob("epoch_*.pt"):  # a fresh run: none of an older one
            stale.unlink()
        callbacks.append(EpochCheckpoints(folder, checkpoint_epochs, meta))
    trainer = ctx.trainer(label, model, optimizer, callbacks=callbacks)
    loader = ctx.loader(x, y, shuffle=True, transform=augment)
    return trainer, ctx.fit(trainer, loader, epochs), len(loader)


def fit_text(run, epochs):
    return (f"in {run['fitted_step']:,} steps ({run['epochs']} epochs)" if run["fitted_step"] is not None else
            f"not within the budget of {epochs} epochs ({run['train_accuracy']:.1%} training accuracy at the end)")


def load_data(ctx, c):
    """(splits, training images normalised, their labels, dataset options)."""
    options = {"n": c.shapes_images, "size": c.image_size} if ctx.dataset == "shapes" else {}
    splits = ctx.load_dataset(**options)
    keep = slice(None) if c.train_size is None else slice(0, c.train_size)
    return splits, splits.normalize(splits.train.x[keep]), splits.train.y[keep], options


# --------------------------------------------------------------------------- figures
def plot_figure1(runs, shares, budget_steps, model, dataset):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.3))
    curves = {SETTINGS[s][2]: (np.array([h["epoch"] for h in r["history"]]) * r["steps_per_epoch"],
                               [h["loss"] for h in r["history"]]) for s, r in runs.items()}
    plots.line_plot(curves, "(a) training loss", "optimisation steps", "training loss (cross-entropy)", ax=axes[0],
                    logy=True)
    fitted = [s for s in shares if runs[s]["fitted_step"] is not None]
    missed = [s for s in shares if s not in fitted]
    series = {"steps until fitted": ([100 * shares[s] for s in fitted], [runs[s]["fitted_step"] for s in fitted]),
              "not fitted: the budget's steps": ([100 * shares[s] for s in missed], [budget_steps[s] for s in missed])}
    series = {name: points for name, points in series.items() if points[0]}  # no empty line in the legend
    axes[0].legend(fontsize=7, loc="upper right")  # the curves fall from the top left to the bottom right
    plots.line_plot(series, "(b) convergence slowdown", "label corruption (%)", "steps until fitted", ax=axes[1])
    axes[1].set_ylim(0, None)
    x = [100 * shares[s] for s in shares]
    plots.line_plot({"test error": (x, [100 * runs[s]["test_error"] for s in shares]),
                     "training error (last epoch)": (x, [100 - 100 * runs[s]["train_accuracy"] for s in shares])},
                    "(c) generalisation error growth", "label corruption (%)", "error (%)", ax=axes[2], chance=90,
                    unit=" %")
    fig.suptitle(f"Fitting random labels and random pixels ({model}, {dataset})")
    fig.tight_layout()
    return fig


def plot_regularization(rows, dataset, model):
    values = {REGULARIZERS[r["regularizer"]]: {"train, true labels": 100 * r["true_train"],
                                               "test, true labels": 100 * r["true_test"],
                                               "train, random labels": 100 * r["random_train"]} for r in rows}
    return plots.bar_chart(values, f"Explicit regularisation ({model}, {dataset})", "accuracy (%)",
                           xlabel="regulariser", chance=10, unit=" %", ylim=(0, 112),
                           colors=["tab:blue", "tab:orange", "tab:gray"])


# --------------------------------------------------------------------------- the run
def run(ctx):
    c = ctx.config
    splits, x, y, options = load_data(ctx, c)
    test_y, meta = splits.test.y, model_meta(ctx, splits, c.model, options)
    test_loader = ctx.loader(splits.normalize(splits.test.x), test_y, batch_size=500)
    metrics = {"dataset": ctx.dataset, "model": c.model, "train_size": len(y), "test_size": len(test_y),
               "fit_threshold": c.fit_threshold, "epoch_budget": c.epochs, "runs": {}}
    ctx.log(f"{len(y):,} training images ({splits.description})")

    runs = {}
    for name in ctx.progress(c.settings, "data settings"):
        kind, share, label = SETTINGS[name]
        cx, cy = corrupt(splits.train.x[:len(y)], y, kind, share, num_classes=splits.num_classes, seed=ctx.seed + 1)
        cx = splits.normalize(cx)
        keep = c.checkpoint_epochs if name == "true" and c.part2_model in (c.model, "none") else None
        trainer, history, per_epoch = train(ctx, f"{c.model}_{name}", meta, cx, cy, c.epochs, c.lr,
                                            threshold=c.fit_threshold, checkpoint_epochs=keep)
        run = {"setting": label, "history": history, "steps_per_epoch": per_epoch, "epochs": len(history),
               "fitted_step": fitted_step(history, per_epoch, c.fit_threshold),
               "train_accuracy": history[-1]["accuracy"]}
        if kind == "labels":  # scored on the true test labels
            run["test_error"] = 1 - trainer.evaluate(test_loader)["accuracy"]
        elif kind == "shuffled_pixels":  # the test images shuffled alike (same seed: same permutation)
            tx = splits.normalize(corrupt(splits.test.x, test_y, kind, num_classes=splits.num_classes,
                                          seed=ctx.seed + 1)[0])
            run["test_error"] = 1 - trainer.evaluate(ctx.loader(tx, test_y, batch_size=500))["accuracy"]
        runs[name] = run
        tested = f"; test error {run['test_error']:.1%}" if "test_error" in run else ""
        ctx.log(f"{label}: fitted {fit_text(run, c.epochs)}{tested}")
    metrics["runs"] = {k: {key: v for key, v in r.items() if key != "history"} for k, r in runs.items()}

    shares = {s: SETTINGS[s][1] for s in c.settings if SETTINGS[s][0] == "labels"}
    budget = {s: c.epochs * runs[s]["steps_per_epoch"] for s in shares}
    ctx.save_figure(plot_figure1(runs, shares, budget, c.model, ctx.dataset),
                    "figure1", f"(a) Training loss of the {c.model} per data setting, until its training set is fitted "
                    f"(an epoch at {c.fit_threshold:.0%} training accuracy) or {c.epochs} epochs end. (b) Steps until "
                    "fitted against the share of random labels. (c) Test error on the true test labels and final "
                    "training error against the share of random labels; the dotted line is chance.")
    ctx.table("settings", [{k: r.get(k) for k in ("setting", "epochs", "fitted_step", "train_accuracy", "test_error")}
                           for r in runs.values()],
              f"The {c.model} on {len(y):,} {ctx.dataset} images, SGD lr {c.lr:g}, momentum 0.9, batch {c.batch_size}, "
              "no regularisation. Steps until fitted: none when the budget ended first.",
              columns={"setting": "data", "epochs": "epochs", "fitted_step": "steps until fitted",
                       "train_accuracy": ("training accuracy", "{:.1%}"), "test_error": ("test error", "{:.1%}")})
    true, rand = runs["true"], runs.get("random_labels")
    if rand is not None:
        ratio = (f" ({rand['fitted_step'] / true['fitted_step']:.1f} times as many)"
                 if rand["fitted_step"] and true["fitted_step"] else "")
        ctx.note(f"The {c.model} fits the true labels {fit_text(true, c.epochs)} and fully random labels "
                 f"{fit_text(rand, c.epochs)}{ratio}. Its test error is {true['test_error']:.1%} on true labels and "
                 f"{rand['test_error']:.1%} on random ones (chance {1 - 1 / splits.num_classes:.0%}), at a training "
                 f"error of {1 - true['train_accuracy']:.1%} and {1 - rand['train_accuracy']:.1%}: the same network "
                 "and optimiser memorise labels that hold nothing to learn, so capacity alone does not explain why "
                 "the network generalises on the true labels.")
    chance = 1 / splits.num_classes  # memorisation: random labels fitted far above what learning nothing gives
    label, value, count = (("training accuracy on random labels", rand["train_accuracy"], len(y)) if rand else
                           ("test accuracy, true labels", 1 - true["test_error"], len(test_y)))
    ctx.headline(label, value, chance, "chance", noise=binomial_se(chance, count))
    if c.regularizers:
        regularization_study(ctx, meta, splits, x, y, test_loader, runs, metrics)
    if c.part2_model not in (c.model, "none"):
        part2_run(ctx, splits, x, y, test_loader, options, metrics)
    return metrics


def augmentation(in_shape):
    """Random crops (padding an eighth of the side) and, for colour images, horizontal flips
    (a mirrored digit is no digit; a mirrored shape or CIFAR image is)."""
    crop = A.RandomCrop(padding=max(1, in_shape[-1] // 8), padding_mode="constant")
    return A.Compose([crop, A.RandomHorizontalFlip()] if in_shape[0] == 3 else [crop])


def regularization_study(ctx, meta, splits, x, y, test_loader, runs, metrics):
    """True and fully random labels with each regulariser alone ("none": the sweep's runs)."""
    c = ctx.config
    random_y = corrupt(splits.train.x[:len(y)], y, "labels", 1.0, num_classes=splits.num_classes, seed=ctx.seed + 1)[1]
    rows = metrics["regularization"] = []
    for reg in ctx.progress(c.regularizers, "regularisers"):
        options = {"weight_decay": {"weight_decay": c.weight_decay}, "dropout": {"dropout": c.dropout},
                   "augmentation": {"augment": augmentation(splits.in_shape)}}
        row = {"regularizer": reg}
        for part, labels in (("true", y), ("random", random_y)):
            done = runs.get("true" if part == "true" else "random_labels") if reg == "none" else None
            if done is None:  # else the same run as in the sweep
                trainer, history, _ = train(ctx, f"{c.model}_{reg}_{part}", meta, x, labels, c.epochs, c.lr,
                                            threshold=c.fit_threshold, **options.get(reg, {}))
                done = {"train_accuracy": history[-1]["accuracy"], "epochs": len(history)}
                if part == "true":
                    done["test_accuracy"] = trainer.evaluate(test_loader)["accuracy"]
            row.update({f"{part}_train": done["train_accuracy"], f"{part}_epochs": done["epochs"]})
            if part == "true":
                row["true_test"] = done["test_accuracy"] if "test_accuracy" in done else 1 - done["test_error"]
        rows.append(row)
    ctx.save_figure(plot_regularization(rows, ctx.dataset, c.model), "regularization",
                    f"Final training accuracy on true and on random labels, and test accuracy of the true-label "
                    f"network, with no regularisation, weight decay ({c.weight_decay:g}), augmentation (random crops, "
                    f"flips for colour images) or dropout ({c.dropout:g}), each run until fitted or {c.epochs} epochs.")
    ctx.table("regularization", rows, "Each regulariser alone; accuracies of the last epoch (training) and on the "
              "test set (true labels).", columns={
                  "regularizer": "regulariser", "true_train": ("train acc, true", "{:.1%}"),
                  "true_test": ("test acc, true", "{:.1%}"), "random_train": ("train acc, random", "{:.1%}"),
                  "true_epochs": "epochs, true", "random_epochs": "epochs, random"})

    def listed(group, key):
        return ", ".join(f"{REGULARIZERS[r['regularizer']]} {r[key]:.1%}" for r in group)
    none, others = [r for r in rows if r["regularizer"] == "none"], [r for r in rows if r["regularizer"] != "none"]
    memorised, held = [r for r in others if r["random_train"] >= 0.5], [r for r in others if r["random_train"] < 0.5]
    ctx.note(f"Regularisation, test accuracy on true labels: {listed(rows, 'true_test')} (chance "
             f"{1 / splits.num_classes:.0%})" + (f"; without any regulariser the network generalises too (not "
             "necessary)" if none and none[0]["true_test"] > 2 / splits.num_classes else "")
             + (f". With {listed(memorised, 'random_train')} training accuracy on random labels it still memorises "
                "them (not sufficient to prevent it)" if memorised else "")
             + (f"; {listed(held, 'random_train')} kept random labels unfitted within the {c.epochs}-epoch budget "
                "(memorisation slowed, not shown to be impossible)" if held else "") + ".")


def part2_run(ctx, splits, x, y, test_loader, options, metrics):
    """Part II's network on the true labels, with its checkpoints."""
    c, label = ctx.config, f"{ctx.config.part2_model}_true"
    kept = ", ".join(map(str, c.checkpoint_epochs))
    trainer, history, _ = train(ctx, label, model_meta(ctx, splits, c.part2_model, options), x, y, c.part2_epochs,
                                c.part2_lr, checkpoint_epochs=c.checkpoint_epochs)
    metrics["part2"] = {"model": c.part2_model, "epochs": len(history), "train_accuracy": history[-1]["accuracy"],
                        "test_error": 1 - trainer.evaluate(test_loader)["accuracy"],
                        "checkpoints": str(ctx.out / "checkpoints" / label)}
    ctx.note(f"Part II's network ({c.part2_model}, true labels, {len(history)} epochs, lr {c.part2_lr:g}): training "
             f"accuracy {history[-1]['accuracy']:.1%}, test error {metrics['part2']['test_error']:.1%}; its "
             f"checkpoints (epochs {kept}) are in {metrics['part2']['checkpoints']}.")
