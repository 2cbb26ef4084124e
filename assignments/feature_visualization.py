"""Interpretability assignment, ITU week 5, tasks 3 and 4: what a CNN computes inside.

    data      shapes (10 classes of 32x32 colour shapes on clutter) or CIFAR-10
              (--dataset cifar10 --data-dir ...)
    model     the interpretability drivers' small CNN (``_explain_common``), trained here
              or loaded with --checkpoint; with --weights also an ImageNet ResNet-18
    outputs   activation maps of three layers for a few test images; saliency taken at
              the input and at each block; activation maximisation (gradient ascent on
              the input, ``reference_torch.explain.featvis``) for channels of three
              layers and for the output classes, with and without the regularisers that
              make it work, beside the test image that excites each unit most

Activation maximisation on 32-pixel models is where lucent's defaults fail (its 8-pixel
jitter and 12-pixel padding wipe out a 32-pixel image); ``featvis`` scales every
transform with the image size. Each visualisation's objective is compared with that of
its grey starting image and with the best real test image.
"""
from __future__ import annotations

from collections import OrderedDict

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from reference_torch import explain as E
from reference_torch.explain.plots import attribution_grid
from reference_torch.models import load_torchvision_weights, resnet18

from . import _explain_common as C
from . import plots
from .runner import positive_int

NAME = "feature_visualization"
COURSE = "interpretability assignment (ITU advanced ML)"
TASK = "week 5, tasks 3 and 4"
SUMMARY = ("activation maps, saliency at several layers, activation maximisation of channels and classes "
           "(Fourier images, transforms) on a small CNN, and on ResNet-18 with --weights")
STATEMENT = """
Look inside a trained convolutional network. First, show the activation maps of at
least two layers for at least two images: early layers respond to colours and edges at
full resolution, later ones to larger parts at a coarser one. Second, take the saliency
(the gradient of the class score) not only with respect to the input pixels but with
respect to the activations of inner layers, and compare how coarse and how object-like
the maps become with depth. Third, visualise what single units respond to by
activation maximisation: start from a grey image and change its pixels by gradient
ascent until a chosen channel (or a class's logit) is as large as possible. Done
naively this gives high-frequency noise that fools the network; the regularisers of
Olah et al. (2017, lucid) make it work: random jitter, scaling and rotation of the image
at every step, so that only robust patterns survive, and a decorrelated Fourier
parameterisation (the image's spectrum, scaled down at high frequencies, with
decorrelated colours) as a frequency penalty. Show a grid per layer, and the classes.
Does the optimised image excite its unit more than any real image does?
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True
# On top of the shared training settings: test images shown, channels per activation-map layer and
# visualised per layer, ascent steps, the ResNet's, its image size and channels per layer, and the
# test images searched for each unit's top example.
PROFILES = {
    "default": {**C.TRAINING, "examples": 3, "map_channels": 4, "channels": 8, "steps": 160, "resnet_steps": 96,
                "resnet_size": 128, "resnet_channels": 4, "search": 1000},
    "quick": {**C.QUICK_TRAINING, "examples": 2, "map_channels": 3, "channels": 3, "steps": 48, "resnet_steps": 12,
              "resnet_size": 64, "resnet_channels": 2, "search": 300},
}
DATASET_SETTINGS = C.DATASET_SETTINGS
# The three ways of making an image that the figures compare: label, arguments of featvis.visualize
RECIPES = OrderedDict(
    lucid=("Fourier + transforms", dict(param="fourier", decorrelate=True, transforms=E.RandomTransforms())),
    pixel_regularised=("pixels + transforms + TV", dict(param="pixel", decorrelate=True,
                                                        transforms=E.RandomTransforms(), tv_weight=0.5)),
    naive=("pixels, no regulariser", dict(param="pixel", decorrelate=False, transforms=None)),
)
# ImageNet's normalisation (torchvision's weights expect it) and a few classes to visualise
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CLASSES = {1: "goldfish", 130: "flamingo", 323: "monarch butterfly", 340: "zebra", 949: "strawberry"}


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--weights", type=C.resnet18_weights_file, default=None, metavar="PATH",
                        help="ImageNet ResNet-18 weights in torchvision's format (torch.save(model.state_dict(), "
                             "PATH)); adds its feature visualisations (about two minutes more on one CPU core)")
    parser.add_argument("--channels", type=positive_int, help="channels visualised per layer of the small CNN")
    parser.add_argument("--steps", type=positive_int, help="gradient-ascent steps per visualisation of the small CNN")


# ------------------------------------------------------------------------ activation maximisation
def maximise(model, objective, size, steps, recipe, seed):
    """Visualise ``objective`` with one recipe: the Visualization, the objective of the grey
    start (0 steps, same seed) and that of the result under random transforms."""
    start = E.visualize(model, objective, size, steps=0, seed=seed, **RECIPES[recipe][1])
    result = E.visualize(model, objective, size, steps=steps, seed=seed, **RECIPES[recipe][1])
    return result, start.scores, E.transform_robustness(model, objective, result.images, seed + 1)


def visualise_units(ctx, model, objective, recipes, search, names):
    """``objective`` maximised with each recipe, beside the test images of ``search`` that
    excite its units most. Returns the results by recipe, a row of numbers per unit, and the
    rows of its ``unit_grid``: one per recipe (unit ``names`` over the first), the test images."""
    results = {r: maximise(model, objective, tuple(search.shape[-2:]), ctx.config.steps, r, ctx.seed)
               for r in recipes}
    best_value, best_index, spread = E.dataset_examples(model, objective, search)
    (lucid, start, robust), naive = results["lucid"], results["naive"][0]
    gain, layer = lucid.scores - start, objective.layer is not None
    rows = [{"unit": objective.indices[i] if layer else names[i], "start": float(start[i]),
             "optimised": float(lucid.scores[i]), "gain": float(gain[i]),
             "gain_in_test_std": float(gain[i] / spread[i].clamp(min=1e-8)),  # comparable across layers
             "optimised_under_transforms": float(robust[i]), "best_test_image": float(best_value[i]),
             "naive_pixels": float(naive.scores[i]), "beats": bool(lucid.scores[i] > best_value[i])}
            for i in range(len(names))]
    grid = [(RECIPES[r][0], v.images, v.scores, None if i else names) for i, (r, (v, *_)) in enumerate(results.items())]
    test = "test image that\nexcites it most" if layer else "test image with\nthe largest logit"
    return results, rows, grid + [(test, search[best_index.cpu().numpy()], best_value, None)]


# ------------------------------------------------------------------------ figures
def plot_activation_maps(x, maps, channels, row_labels, dataset):
    """Rows: images; columns: the input, then ``channels[block]`` of every block. Each
    channel's column has one colour scale, so its maps compare across the images."""
    columns = [(block, c) for block in maps for c in channels[block]]
    fig, axes = plt.subplots(len(x), 1 + len(columns), squeeze=False, layout="constrained",
                             figsize=(1.35 * (1 + len(columns)) + 0.6, 1.45 * len(x) + 1.1))
    for r in range(len(x)):
        plots.show_image(axes[r, 0], x[r], "input" if r == 0 else None)
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    for col, (block, c) in enumerate(columns, start=1):
        column = maps[block][:, c].cpu().numpy()
        top = max(float(column.max()), 1e-8)
        for r in range(len(x)):
            im = plots.show_image(axes[r, col], column[r], cmap="viridis", vmin=0, vmax=top)
        axes[0, col].set_title(f"{block} ({column.shape[-2]}x{column.shape[-1]})\nchannel {c}", fontsize=8)
    cbar = fig.colorbar(im, ax=axes[:, 1:], location="bottom", shrink=0.4, aspect=30)
    cbar.set_label("activation / largest value in its column (0 = dark, max = yellow)", fontsize=8)
    cbar.set_ticks([0, top], labels=["0", "max"])
    fig.suptitle(f"Activation maps after each block's ReLU ({dataset}); per layer the channels that differ "
                 "most between these images", fontsize=10)
    return fig


def unit_grid(title, rows, size=1.45):
    """Rows of (label, images (N, C, H, W), N objectives, N unit names or None): every image
    captioned with its objective, under its unit's name where the row has names."""
    images = [image for _, stack, _, _ in rows for image in (stack.cpu().numpy() if torch.is_tensor(stack) else stack)]
    captions = [(f"{names[i]}\n" if names else "") + f"{float(score):.1f}"
                for _, _, scores, names in rows for i, score in enumerate(scores)]
    return plots.image_grid(images, title, captions, len(rows[0][2]), [r[0] for r in rows], size=size)


def plot_gains(units, title):
    """Objective of the grey start, the best test image and the optimised image, per unit."""
    series = {"start": "grey start", "best_test_image": "best test image",
              "optimised": "optimised (Fourier + transforms)"}
    fig, axes = plt.subplots(1, len(units), figsize=(4.2 * len(units), 3.9), squeeze=False)
    for ax, (group, rows) in zip(axes[0], units.items()):
        values = {str(row["unit"]): {label: row[key] for key, label in series.items()} for row in rows}
        heights = [v for per_unit in values.values() for v in per_unit.values()]
        plots.bar_chart(values, group, "objective", ax=ax, fmt="", colors=("0.6", "tab:blue", "tab:red"),
                        xlabel="class" if group == "classes" else "channel", rotation=45 if group == "classes" else 0,
                        ylim=(1.15 * min(0, min(heights)), 1.15 * max(heights)))
        ax.axhline(0, color="black", lw=0.6)
        ax.get_legend().remove()  # one legend below the panels: here it would hide bars
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    cfg = ctx.config
    resnet = None
    if cfg.weights:  # a bad file fails before training, with a message listing wrong keys and shapes
        resnet = nn.Sequential(OrderedDict(normalize=E.Normalize(IMAGENET_MEAN, IMAGENET_STD), net=(
            load_torchvision_weights(resnet18(num_classes=1000), cfg.weights)))).to(ctx.device).eval()
    splits, model, info = C.data_and_model(ctx)
    blocks = C.blocks(model, splits.in_shape[1])

    # ---- task 3a: activation maps of every block for a few test images
    pick = C.pick_examples(ctx, model, splits.test, cfg.examples, ctx.rng())
    x, row_labels = ctx.to_device(splits.test.x[pick]), C.prediction_labels(ctx, model, splits, pick)
    acts = E.activation_maps(model, x, [b.relu for b in blocks])
    maps = {b.name: acts[b.relu] for b in blocks}
    shown = {name: sorted(act.flatten(2).mean(2).std(0).argsort(descending=True)[:cfg.map_channels].tolist())
             for name, act in maps.items()}  # the channels whose mean activation differs most between the images
    ctx.save_figure(plot_activation_maps(splits.test.x[pick], maps, shown, row_labels, ctx.dataset), "activation_maps",
                    f"Activation maps of {len(blocks)} layers (after batch norm and ReLU, before pooling) for {len(x)} "
                    "test images: the first block sees colours and edges at full resolution, deeper ones larger parts "
                    "at a coarser one. One colour scale per column: brightness compares across the images.")

    # ---- task 3b: saliency at the input and at every block
    saliency = {"input (saliency)": E.Saliency(model).attribute(x).relevance}
    for b in blocks:
        saliency[f"{b.name} ({b.size}x{b.size})"] = E.LayerSaliency(model, layer=b.relu).attribute(x).relevance
    ctx.save_figure(attribution_grid(x, saliency, row_labels=row_labels,
                                     title=f"Saliency of the predicted class at different layers ({ctx.dataset})"),
                    "layer_saliency",
                    "Saliency of the predicted class's logit, the largest |gradient| over channels, with respect to "
                    "the input pixels and to each block's activations (upsampled): with depth the maps become coarser "
                    "and cover the object as a whole, not single edges. Each map is scaled to its own maximum.")

    # ---- task 4: activation maximisation, channels of every conv layer and the classes
    search, units = splits.test.x[:cfg.search], {}
    for b in blocks:
        channels = list(range(min(cfg.channels, b.channels)))
        _, units[b.conv_name], rows = visualise_units(ctx, model, E.channel(b.conv, channels), ("lucid", "naive"),
                                                      search, [f"channel {c}" for c in channels])
        ctx.save_figure(unit_grid(f"{b.conv_name} ({b.channels} channels, {b.size}x{b.size}): images that maximise "
                                  f"the mean of each channel, {cfg.steps} steps", rows), f"featvis_{b.conv_name}",
                        f"Activation maximisation for the first {len(channels)} channels of {b.conv_name} (the "
                        "conv's own output, before batch norm and ReLU"
                        + ("; a linear 3x3 filter, so the mean over the image is maximised by a flat colour: its "
                           "channels are colour detectors" if b.number == 1 else "")
                        + "). Rows: the lucid recipe (decorrelated Fourier image, random jitter, scale and rotation "
                        "at every step), plain pixel ascent, and the test image with the largest mean activation. "
                        "Above each image: its objective.")
    names = [C.class_name(splits, k) for k in range(splits.num_classes)]
    results, units["classes"], rows = visualise_units(ctx, model, E.class_logit(range(len(names))),
                                                      tuple(RECIPES), search, names)
    ctx.save_figure(unit_grid(f"Class logits of the small CNN ({ctx.dataset}): the three recipes and the most "
                              f"typical test image, {cfg.steps} steps", rows), "featvis_classes",
                    "Images that maximise each class's logit. Rows: the three recipes (lucid; pixels with its "
                    "transforms and a total-variation penalty; plain pixels) and the test image with the largest "
                    "logit. Above each image: its logit.")
    recipes = [{"recipe": RECIPES[r][0], "start_logit": float(start.mean()), "optimised_logit": float(v.scores.mean()),
                "transformed_logit": float(robust.mean()), "robust_share": float(robust.mean() / v.scores.mean())}
               for r, (v, start, robust) in results.items()]
    ctx.table("recipes", recipes,
              f"Class logits, mean over the {len(names)} classes, of the grey start and of the optimised image "
              "without and under random shifts, zooms and rotations. Plain pixel ascent finds a high but fragile "
              "logit (an adversarial pattern); the regularised recipes find patterns that survive the transforms.",
              columns={"recipe": "recipe", "start_logit": ("mean logit, start", "{:.2f}"),
                       "optimised_logit": ("mean logit, optimised", "{:.2f}"),
                       "transformed_logit": ("mean logit under random transforms", "{:.2f}"),
                       "robust_share": ("robust share (%)", "{:.1%}")})
    ctx.save_figure(plot_gains(units, f"Objective before and after gradient ascent (small CNN, {ctx.dataset})"),
                    "objective_gains",
                    "Per visualised unit, the objective (mean channel activation or class logit) of the grey start, "
                    "of the test image that excites it most and of the optimised image (Fourier + transforms).")
    every_unit = [{"layer": key, **row} for key, rows in units.items() for row in rows]
    ctx.table("objective_gains", every_unit,
              "Per unit of the small CNN, the objective of the grey start, of the lucid image (also under random "
              "transforms), the gain (also in standard deviations over test images), of the best test image "
              "and of plain pixel ascent, and whether the lucid image beats that test image.",
              columns={"layer": "layer", "unit": "unit", **{key: (key.replace("_", " "), "{:.3f}") for key in (
                  "start", "optimised", "gain", "gain_in_test_std", "optimised_under_transforms", "best_test_image",
                  "naive_pixels")}, "beats": "beats the best test image"})
    gains, in_std, beats = (np.array([r[key] for r in every_unit]) for key in ("gain", "gain_in_test_std", "beats"))
    metrics = {**C.model_metrics(ctx, info), "steps": cfg.steps,
               "activation_map_layers": {name: list(a.shape[1:]) for name, a in maps.items()},
               "recipes": recipes, "units": units, "min_gain": float(gains.min()),
               "all_gains_positive": bool((gains > 0).all()), "min_gain_in_test_std": float(in_std.min()),
               "median_gain_in_test_std": float(np.median(in_std)),
               "share_beating_best_test_image": float(beats.mean())}
    if resnet is None:
        ctx.note("No --weights given: the activation maximisation ran on the small CNN only; --weights PATH "
                 "(torchvision's ImageNet ResNet-18 state_dict) adds ResNet-18's layers and classes.")
    else:
        metrics["resnet18"] = visualise_resnet(ctx, resnet)
    C.note_accuracy(ctx, info, "The small CNN")
    ctx.note(f"Gradient ascent raised the objective of {int((gains > 0).sum())} of {len(gains)} units above the grey "
             f"start (smallest gain {gains.min():.2f}, median {np.median(gains):.2f}; in standard deviations of the "
             f"objective over test images: smallest {in_std.min():.1f}, median {np.median(in_std):.1f}); the "
             f"optimised image beats the best of {len(search)} test images for {100 * beats.mean():.0f} % of them.")
    lucid, _, naive = recipes
    ctx.note(f"Class logits under random transforms keep {100 * lucid['robust_share']:.0f} % of their value with the "
             f"Fourier recipe and {100 * naive['robust_share']:.0f} % with plain pixels: unregularised ascent finds "
             "fragile, adversarial patterns.")
    return metrics


def visualise_resnet(ctx, resnet):
    """Channels of layer2..layer4 and a few classes of the ImageNet ResNet-18, lucid recipe. Its
    transforms do not enlarge the canvas (pad=0): a padded 2x2 layer4 map at 64 pixels would
    become 3x3, another objective than the one scored. Grey fills what a shift brings in."""
    cfg = ctx.config
    size, steps, channels = cfg.resnet_size, cfg.resnet_steps, list(range(cfg.resnet_channels))
    classes = list(IMAGENET_CLASSES)[:len(channels)]
    objectives = {**{f"layer{k}": (E.channel(f"net.layer{k}", channels), [f"channel {c}" for c in channels])
                     for k in (2, 3, 4)}, "classes": (E.class_logit(classes), [IMAGENET_CLASSES[k] for k in classes])}
    ctx.log(f"ResNet-18: {len(objectives)} visualisations of {size}x{size} images, {steps} steps each")
    results = {key: maximise(resnet, objective, size, steps, "lucid", ctx.seed) for key, (objective, _) in
               objectives.items()}
    ctx.save_figure(unit_grid(f"ImageNet ResNet-18 ({cfg.weights}): Fourier images with transforms, {size}x{size}, "
                              f"{steps} steps", [(key, v.images, v.scores, objectives[key][1])
                                                 for key, (v, _, _) in results.items()], size=1.9), "featvis_resnet18",
                    f"Activation maximisation on the ImageNet ResNet-18: channels {channels} of the outputs of "
                    "layer2 to layer4, and the logits of a few classes. Above each image: its unit and the "
                    "objective it reaches.")
    units = {key: {"start": start.tolist(), "optimised": v.scores.tolist(), "gain": (v.scores - start).tolist()}
             for key, (v, start, _) in results.items()}
    gains = [g for unit in units.values() for g in unit["gain"]]
    ctx.note(f"ResNet-18 (--weights {cfg.weights}): the objective rose for {sum(g > 0 for g in gains)} of "
             f"{len(gains)} visualised units (smallest gain {min(gains):.2f}).")
    return {"size": size, "steps": steps, "units": units, "min_gain": min(gains),
            "classes": {k: IMAGENET_CLASSES[k] for k in classes}}
