"""KTH advanced DL, memorisation practical part II: are all layers created equal? (Zhang,
Bengio and Singer 2019).

From a trained network and the checkpoints of its training, starting with its
initialisation (Part I's run folder: ``memorization`` keeps them in
``<its out>/checkpoints/<model>_true``), every weight layer in turn is put back to its value
at each checkpoint (re-initialisation) or drawn afresh from its initialiser
(re-randomisation) while every other layer keeps its trained weights, and the test error of
the resulting network is measured (``reference_torch.memorization.layer_robustness``).

Where the checkpoints come from: ``--checkpoints DIR`` reads that folder (and stops with
one line when it holds none). Without it the driver looks in memorization's run folder
beside its own (``runs/memorization`` for ``runs/layer_criticality``), for the same model
and dataset. When that holds none, the quick and default profiles first train a short
Part-I run of their own on the true labels (said in a note), so that
``python -m assignments run --default`` works in any order (it runs memorization first
anyway); the full profile stops and asks for ``memorization --profile full`` first, since
a full Part-I run is no side job. ``--model mlp`` is the paper's fully connected network
(three hidden layers of 256) on MNIST or the digits (``memorization --dataset digits``
trains the same network).
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch.memorization import build_network, layer_robustness, load_epoch_checkpoints

from . import memorization, plots
from .runner import binomial_se, comma_list, fraction

NAME = "layer_criticality"
COURSE = "KTH advanced DL"
TASK = "memorisation practical, part II"
SUMMARY = ("re-initialise or re-randomise one layer at a time of a trained network: which "
           "layers are critical, which robust (Zhang, Bengio, Singer 2019)")
STATEMENT = """
Start from a trained network and the checkpoints of its training, from the initial one to
the last (produced with the code of Part I). For every weight layer separately, set that
layer back to its value at a checkpoint (re-initialisation) or to a fresh draw from its
initial distribution (re-randomisation), keep every other layer as trained, and measure
the test error. Draw the errors as heat maps of layer against checkpoint and name the
critical layers (the error rises) and the robust ones (it stays close to the trained
network's). Do all layers matter equally? Repeat with a fully connected network on MNIST
(three hidden layers of 256). (Offline: the MLP on the scikit-learn digits when MNIST is
not at hand, and the thin ResNet-18 on ``shapes``.)
"""
# digits first: memorization's default run (the digits' MLP) leaves the checkpoints this one reads; its
# thin ResNet-18 trained here on shapes for the default's 20 epochs had 73 % test error (90 % is chance)
DATASETS = ("digits", "shapes", "mnist", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True

# Robust: re-initialised to its initial value, the network's test error stays within this
# many points of the trained network's (the size of the noise of one test set of a few
# hundred images, and well below what a critical layer costs).
ROBUST_MARGIN = 0.05
# Test accuracies of published reproductions of the MNIST setting (a 3 x 256 MLP), quoted beside ours.
PUBLISHED = {"base": 0.955, "first_layer_reinit": 0.46, "later_layers_reinit": (0.91, 0.96)}
PART1 = memorization.PROFILES["default"]  # what this driver trains when it has no Part-I checkpoints
PROFILES = {
    "default": {"model": "resnet", "checkpoints": None, "draws": 3, "margin": ROBUST_MARGIN, "test_size": None,
                **{k: PART1[k] for k in ("widths", "hidden", "train_size", "shapes_images", "image_size",
                                         "checkpoint_epochs", "batch_size", "dataset_channels")},
                "epochs": PART1["part2_epochs"], "lr": PART1["part2_lr"]},
    "quick": {"draws": 1, "test_size": 200, "epochs": 2, "shapes_images": 500, "checkpoint_epochs": (0, 1, 2)},
    "full": {"epochs": 60, "checkpoint_epochs": (0, 1, 2, 5, 10, 20, 40, 60), "widths": (16, 32, 64, 128),
             "shapes_images": 10000, "image_size": 32},
}
MLP_SETTINGS = {"model": "mlp", "dataset_channels": 1, "hidden": (256, 256, 256), "lr": 0.05, "batch_size": 64,
                "epochs": 20, "checkpoint_epochs": (0, 1, 2, 3, 5, 10, 20)}
DATASET_SETTINGS = {"digits": MLP_SETTINGS, "mnist": MLP_SETTINGS,
                    "cifar10": {"epochs": 60, "batch_size": 128, "lr": 0.01, "widths": (16, 32, 64, 128),
                                "checkpoint_epochs": (0, 1, 2, 5, 10, 20, 40, 60)}}


def add_arguments(parser):
    parser.add_argument("--model", choices=memorization.MODELS,
                        help="resnet (thin ResNet-18, colour images) or mlp (3 x 256, MNIST or digits)")
    parser.add_argument("--checkpoints", metavar="DIR",
                        help="folder of epoch_*.pt checkpoints (default: memorization's run folder)")
    parser.add_argument("--margin", type=fraction, help="a layer is robust within this test error of the trained net")
    parser.add_argument("--draws", type=int, choices=range(1, 11), metavar="1..10",
                        help="re-randomisations per layer")
    parser.add_argument("--checkpoint-epochs", type=comma_list(int), help="epochs kept when training here")


def check(config):
    if config.checkpoints is not None and not list(Path(config.checkpoints).glob("epoch_*.pt")):
        return (f"--checkpoints {config.checkpoints}: no epoch_*.pt checkpoints there; run `python -m assignments "
                "run memorization` first (it writes them to runs/memorization/checkpoints/resnet_true)")
    if config.model == "resnet" and config.dataset_channels == 1:
        return "--model resnet (the thin ResNet-18) needs colour images: use --dataset shapes or cifar10"
    if config.model == "mlp" and config.dataset_channels == 3 and config.checkpoints is None:
        return ("--model mlp is the paper's MNIST network: add --dataset digits, or --dataset mnist --data-dir DIR "
                "(or give --checkpoints DIR of an MLP)")


def find_checkpoints(ctx):
    """(folder, {epoch: state_dict}, meta), training a Part-I run here when the demo needs one."""
    c = ctx.config
    if c.checkpoints is not None:
        return Path(c.checkpoints), *read(c.checkpoints, "--checkpoints")
    label = f"{c.model}_true"
    sibling = ctx.out.parent / memorization.NAME / "checkpoints" / label
    if list(sibling.glob("epoch_*.pt")):
        found = read(sibling, "memorization's run folder")
        if found[1].get("dataset") == ctx.dataset:
            return sibling, *found
    if ctx.profile == "full":
        raise SystemExit(f"{NAME}: no {ctx.dataset} checkpoints in {sibling}; run `python -m assignments run "
                         f"memorization --profile full --dataset {ctx.dataset}` first, or give --checkpoints DIR")
    ctx.note(f"No Part-I checkpoints of the {c.model} on {ctx.dataset} in {sibling}, so this run first trained its "
             f"own on the true labels ({c.epochs} epochs, SGD lr {c.lr:g}, momentum 0.9, keeping epochs "
             f"{', '.join(map(str, c.checkpoint_epochs))}); run memorization first to study its network instead.")
    splits, x, y, options = memorization.load_data(ctx, c)
    meta = memorization.model_meta(ctx, splits, c.model, options)
    memorization.train(ctx, label, meta, x, y, c.epochs, c.lr, checkpoint_epochs=c.checkpoint_epochs)
    own = ctx.out / "checkpoints" / label
    return own, *read(own, "this run's folder")


def read(folder, where):
    try:
        return load_epoch_checkpoints(folder)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"{NAME}: {where} {folder}: {error}; run `python -m assignments run memorization` first "
                         "(it writes them to runs/memorization/checkpoints/resnet_true)") from None


def plot_heatmaps(study, labels, epochs):
    reinit, rerandom = 100 * study["reinit"], 100 * study["rerandom"]
    fig, axes = plt.subplots(1, 2, figsize=(6 + 0.45 * len(epochs), 0.32 * len(labels) + 2.2),
                             gridspec_kw={"width_ratios": [max(len(epochs), 2), max(rerandom.shape[1], 1.5)]})
    top = max(reinit.max(), rerandom.max())
    for ax, values, title, xlabel, columns, rows in (
            (axes[0], reinit, "Re-initialisation: layer reset to its value at epoch", "checkpoint (epoch)", epochs,
             labels),
            (axes[1], rerandom, "Re-randomisation", "fresh draw", range(1, rerandom.shape[1] + 1), None)):
        plots.heatmap(values, title, xlabel, "weight layer" if rows else "", ax=ax, x_labels=[str(e) for e in columns],
                      y_labels=rows, annotate="{:.0f}", colorbar="test error (%)" if rows is None else None)
        ax.images[0].set_clim(0, top)  # one colour scale for both panels, so the text colours follow it
        for text in ax.texts:
            text.set_color("white" if float(text.get_text()) < 0.5 * top else "black")
        if rows is None:
            ax.set_yticks([])
    fig.suptitle(f"Test error (%) with one layer changed, every other layer trained "
                 f"(trained network: {100 * study['base']:.1f} %)")
    fig.tight_layout()
    return fig


def run(ctx):
    c = ctx.config
    folder, checkpoints, meta = find_checkpoints(ctx)
    if meta.get("dataset") != ctx.dataset:
        raise SystemExit(f"{NAME}: the checkpoints in {folder} were trained on {meta.get('dataset')!r}; "
                         f"pass --dataset {meta.get('dataset')} (with --data-dir where it is real)")
    splits = ctx.load_dataset(**meta["dataset_options"])
    test_x, test_y = splits.normalize(splits.test.x)[:c.test_size], splits.test.y[:c.test_size]
    loader = ctx.loader(test_x, test_y, batch_size=500)
    model = build_network(meta)
    last = max(checkpoints)
    model.load_state_dict(checkpoints[last])
    model.to(ctx.device)
    study = layer_robustness(model, checkpoints, loader, seed=ctx.seed, draws=c.draws, init=meta["init"],
                             device=ctx.device,
                             progress=lambda layers: ctx.progress(layers, "layers"))
    layers, epochs, base = study["layers"], study["epochs"], study["base"]
    labels = [layer.label for layer in layers]
    at_init, rerandom = study["reinit"][:, 0], study["rerandom"].mean(axis=1)
    robust = at_init <= base + c.margin

    what = f"{meta['model']} trained {last} epochs on {meta['dataset']}"
    ctx.save_figure(plot_heatmaps(study, labels, epochs), "reinit_heatmaps",
                    f"Test error on {len(test_y):,} test images of the {what} with one weight layer (row) set back to "
                    f"its value at a checkpoint (left, column: the epoch; epoch 0 is the initialisation, epoch {last} "
                    f"the trained value) or drawn afresh from its initialiser (right, {c.draws} draw(s)).")
    verdict = ["robust" if r else "critical" for r in robust]
    bars = {f"{label} [{v}]": {"re-initialised to epoch 0": 100 * a, "re-randomised": 100 * r}
            for label, v, a, r in zip(labels, verdict, at_init, rerandom)}
    fig = plots.bar_chart(bars, f"Critical and robust layers ({what})", "test error (%)", xlabel="weight layer",
                          baseline=(f"trained network + {100 * c.margin:.0f} points (robust below)",
                                    100 * (base + c.margin)), chance=100 * (1 - 1 / splits.num_classes), unit=" %",
                          rotation=60, fmt="{:.0f}", colors=["tab:blue", "tab:gray"], ylim=(0, 105),
                          figsize=(max(8, 0.55 * len(labels) + 3), 5))
    ctx.save_figure(fig, "critical_layers",
                    f"Test error with each layer re-initialised to its initial value (blue) or re-randomised (grey, "
                    f"mean of {c.draws}); a layer is robust when the blue bar stays under the dashed line, the "
                    f"trained network's error {100 * base:.1f} % plus {100 * c.margin:.0f} points, else critical.")
    ctx.table("layers", [{"layer": label, "path": layer.path, "reinit_initial": a, "rerandom": r, "verdict": v}
                         for label, layer, a, r, v in zip(labels, layers, at_init, rerandom, verdict)],
              f"Test error with one layer changed ({what}; the trained network: {base:.1%}).",
              columns={"layer": "layer", "path": "module", "reinit_initial": ("re-initialised to epoch 0", "{:.1%}"),
                       "rerandom": ("re-randomised", "{:.1%}"), "verdict": "verdict"})
    shift = binomial_se(base, len(test_y)) * 2 ** 0.5  # two networks' errors on the same test images
    ctx.headline("test error, one layer re-randomised (mean over layers)", rerandom.mean(), at_init.mean(),
                 "re-initialised to its initial value", noise=shift)
    critical = [label for label, r in zip(labels, robust) if not r]
    worst = int(np.argmax(at_init))
    survivors = int((rerandom <= base + c.margin).sum())
    if critical:
        verdict_text = (f"Not every layer matters equally: of {len(layers)} weight layers of the {what} (test error "
                        f"{base:.1%}), {int(robust.sum())} are robust (set back to their initial values, the error "
                        f"stays within {100 * c.margin:.0f} points) and {len(critical)} critical: "
                        f"{', '.join(critical)}.")
    else:
        verdict_text = (f"By re-initialisation all {len(layers)} weight layers of the {what} (test error {base:.1%}) "
                        f"are robust: set back to its initial value, no layer raises the error by more than "
                        f"{100 * c.margin:.0f} points.")
    ctx.note(f"{verdict_text} The worst to reset is {labels[worst]} ({at_init[worst]:.1%}). Re-randomisation is "
             f"harsher: {survivors} of {len(layers)} layers survive it, with a mean error over layers of "
             f"{rerandom.mean():.1%} against {at_init.mean():.1%} for re-initialisation to the initial values"
             + ("; so the layers do not matter equally once they are drawn afresh." if survivors < len(layers)
                else "."))
    if ctx.dataset in ("digits", "mnist"):
        ctx.note(f"Published reproductions of the MNIST setting (3 x 256): base accuracy about {PUBLISHED['base']}, "
                 f"the first layer re-initialised to its initial value about {PUBLISHED['first_layer_reinit']}, the "
                 f"later layers {PUBLISHED['later_layers_reinit'][0]} to {PUBLISHED['later_layers_reinit'][1]}, any "
                 f"layer re-randomised chance. Here: base {1 - base:.3f}, first layer {1 - at_init[0]:.3f}, later "
                 f"layers {1 - at_init[1:].max():.3f} to {1 - at_init[1:].min():.3f}, re-randomised "
                 f"{1 - rerandom.max():.3f} to {1 - rerandom.min():.3f}.")
    return {"model": meta["model"], "dataset": ctx.dataset, "checkpoints": str(folder), "epochs": epochs,
            "base_error": base, "layers": labels, "reinit": study["reinit"], "rerandom": study["rerandom"],
            "robust": [bool(r) for r in robust], "critical": critical, "margin": c.margin,
            "test_images": len(test_y), "published_mnist_accuracy": PUBLISHED}
