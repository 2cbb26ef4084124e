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
from reference_torch.explain import plots
from reference_torch.explain._common import inspecting
from reference_torch.explain.featvis import RandomTransforms
from reference_torch.explain.featvis import objective_value as featvis_objective
from reference_torch.models import load_torchvision_weights, resnet18

from . import _explain_common as C
from .runner import small_model_threads

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

# Per profile: images for activation maps and saliency; channels shown per activation
# map layer; channels visualised per layer; optimisation steps (small CNN, ResNet);
# ResNet image size and channels per layer; test images searched for the top example.
PROFILES = {
    "quick": dict(images=2, map_channels=3, channels=3, steps=48, resnet_steps=12, resnet_size=64,
                  resnet_channels=2, search=300),
    "full": dict(images=3, map_channels=4, channels=8, steps=160, resnet_steps=96, resnet_size=128,
                 resnet_channels=4, search=1000),
}
# The three ways of making an image that the figures compare (the arguments of featvis.visualize)
RECIPES = OrderedDict(
    lucid=dict(param="fourier", decorrelate=True, transforms=RandomTransforms(), tv_weight=0.0,
               label="Fourier + transforms"),
    pixel_regularised=dict(param="pixel", decorrelate=True, transforms=RandomTransforms(), tv_weight=0.5,
                           label="pixels + transforms + TV"),
    naive=dict(param="pixel", decorrelate=False, transforms=None, tv_weight=0.0, label="pixels, no regulariser"),
)
# ImageNet's normalisation (torchvision's weights expect it) and a few classes to visualise
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET_CLASSES = {1: "goldfish", 130: "flamingo", 323: "monarch butterfly", 340: "zebra", 949: "strawberry",
                    980: "volcano"}


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="ImageNet ResNet-18 weights in torchvision's format (a state_dict saved with "
                             "torch.save(model.state_dict(), PATH)); adds its feature visualisations "
                             "(about two minutes more on one CPU core)")
    parser.add_argument("--channels", type=int, default=None,
                        help="channels visualised per layer of the small CNN (default 8; quick 3)")
    parser.add_argument("--steps", type=int, default=None,
                        help="gradient-ascent steps per visualisation of the small CNN (default 160; quick 48)")


def profile_for(ctx):
    profile = dict(PROFILES["quick" if ctx.quick else "full"])
    for key in ("channels", "steps"):
        value = getattr(ctx.args, key)
        if value is not None:
            if value < 1:
                raise SystemExit(f"{NAME}: --{key} must be at least 1, got {value}")
            profile[key] = value
    return profile


def load_resnet(path):
    """ImageNet ResNet-18 with ImageNet's normalisation in front: it takes images in [0, 1].
    ``load_torchvision_weights`` fails with a message listing wrong keys and shapes."""
    net = load_torchvision_weights(resnet18(num_classes=1000), path)
    return nn.Sequential(OrderedDict(normalize=E.Normalize(IMAGENET_MEAN, IMAGENET_STD), net=net)).eval()


# ------------------------------------------------------------------------ activation maximisation
def maximise(model, objective, size, steps, recipe, seed):
    """Visualise ``objective`` with one recipe; returns the Visualization, the objective of
    the grey starting image (0 steps from the same seed) and the mean objective under 8
    random transforms of the result (how robust the found pattern is)."""
    options = {k: v for k, v in RECIPES[recipe].items() if k != "label"}
    start = E.visualize(model, objective, size, steps=0, seed=seed, **options)
    result = E.visualize(model, objective, size, steps=steps, seed=seed, **options)
    generator = torch.Generator().manual_seed(seed + 1)
    jitter = RandomTransforms()
    with torch.no_grad():
        robust = torch.stack([objective_value(model, objective, jitter(result.images, generator))
                              for _ in range(8)]).mean(0)
    return result, start.scores, robust


def objective_value(model, objective, images):
    """The objective of ``images`` (one per index of the objective), without gradients,
    computed as ``visualize`` computes it."""
    with inspecting(model), torch.no_grad():
        return featvis_objective(model, objective, images)


def top_examples(model, layer, channels, x, batch_size=250):
    """For each channel, over the images ``x``: the index of the image with the largest mean
    activation (the 'dataset examples' of Olah et al.), that value, and the standard
    deviation of the value over the images (the unit in which gains are compared). None
    as layer: the logits."""
    values = []
    for i in range(0, len(x), batch_size):
        batch = torch.as_tensor(x[i:i + batch_size])
        if layer is None:
            with torch.no_grad():
                out = model(batch)
        else:
            out = E.activation_maps(model, batch, [layer])[layer]
            out = out.flatten(2).mean(2)
        values.append(out[:, channels])
    values = torch.cat(values)  # (images, channels)
    best, index = values.max(0)
    return index.numpy(), best, values.std(0)


# ------------------------------------------------------------------------ figures
def plot_activation_maps(x, maps, layer_labels, channels, row_labels, dataset):
    """Rows: images; columns: the input, then ``channels[layer]`` of every layer. Every
    channel's column shares one colour scale, so its maps compare across images."""
    columns = [(layer, c) for layer in maps for c in channels[layer]]
    fig, axes = plt.subplots(len(x), 1 + len(columns), figsize=(1.35 * (1 + len(columns)) + 0.6, 1.45 * len(x) + 1.1),
                             squeeze=False, layout="constrained")
    for r in range(len(x)):
        plots.show_image(axes[r, 0], x[r])
        axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha="right", va="center", fontsize=8)
    axes[0, 0].set_title("input", fontsize=9)
    for col, (layer, c) in enumerate(columns, start=1):
        column = maps[layer][:, c].numpy()
        top = max(float(column.max()), 1e-8)
        for r in range(len(x)):
            im = axes[r, col].imshow(column[r], cmap="viridis", vmin=0, vmax=top, interpolation="nearest")
            axes[r, col].set_xticks([])
            axes[r, col].set_yticks([])
        axes[0, col].set_title(f"{layer_labels[layer]}\nchannel {c}", fontsize=8)
    cbar = fig.colorbar(im, ax=axes[:, 1:], location="bottom", shrink=0.4, aspect=30)
    cbar.set_label("activation / largest value in its column (0 = dark, max = yellow)", fontsize=8)
    cbar.set_ticks([0, top], labels=["0", "max"])
    fig.suptitle(f"Activation maps after each block's ReLU ({dataset}); per layer the channels that differ "
                 "most between these images", fontsize=10)
    return fig


def plot_unit_grid(title, column_titles, rows, row_labels, cell=1.45):
    """A grid of images: ``rows`` is a list of (N, C, H, W) stacks, one per row label."""
    n = len(column_titles)
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 1.4, cell * len(rows) + 0.9), squeeze=False,
                             layout="constrained")
    for r, (images, label) in enumerate(zip(rows, row_labels)):
        for c in range(n):
            plots.show_image(axes[r, c], images[c])
            if r == 0:
                axes[r, c].set_title(column_titles[c], fontsize=8)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig


def plot_gains(units, title):
    """Objective of the grey start, the best test image and the optimised image, per unit."""
    groups = list(units)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.8), squeeze=False)
    for ax, group in zip(axes[0], groups):
        rows = units[group]
        pos = np.arange(len(rows))
        width = 0.27
        for k, (key, label, colour) in enumerate((("start", "grey start", "0.6"),
                                                  ("best_test_image", "best test image", "tab:blue"),
                                                  ("optimised", "optimised (Fourier + transforms)", "tab:red"))):
            ax.bar(pos + (k - 1) * width, [r[key] for r in rows], width, color=colour, label=label)
        ax.set_xticks(pos, [str(r["unit"]) for r in rows], fontsize=8,
                      rotation=45 if group == "classes" else 0, ha="right" if group == "classes" else "center")
        ax.axhline(0, color="black", lw=0.6)
        ax.set(title=group, xlabel="channel" if group != "classes" else "class", ylabel="objective")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()  # below the panels: it would hide bars
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    profile = profile_for(ctx)
    resnet = load_resnet(ctx.args.weights) if ctx.args.weights else None  # a bad file fails before training
    splits = C.load_data(ctx)
    with small_model_threads(ctx):
        return visualise(ctx, splits, profile, resnet)


def visualise(ctx, splits, profile, resnet):
    model, info = C.get_model(ctx, splits)
    names = C.layer_names(model)  # conv1 -> "net.body.0", block1 -> its ReLU, ...
    depth = max(int(k[4:]) for k in names if k.startswith("conv"))
    height = splits.in_shape[1]
    rng = ctx.rng()
    metrics = {"dataset": ctx.dataset, "model": info, "test_accuracy": info["test_accuracy"],
               "chance": info["chance"], "steps": profile["steps"]}

    # ---- task 3a: activation maps of every block for a few test images
    pick = C.pick_examples(model, splits.test, profile["images"], rng)
    x = torch.as_tensor(splits.test.x[pick])
    pred, prob = C.predictions(model, splits.test.x[pick])
    row_labels = [f"true: {C.class_name(splits, splits.test.y[i])}\npred: {C.class_name(splits, p)}\n(p = {q:.2f})"
                  for i, p, q in zip(pick, pred, prob)]
    blocks = [f"block{b}" for b in range(1, depth + 1)]
    acts = E.activation_maps(model, x, [names[b] for b in blocks])
    maps = {b: acts[names[b]] for b in blocks}
    layer_labels = {b: f"{b} ({maps[b].shape[-2]}x{maps[b].shape[-1]})" for b in blocks}
    shown_channels = {}
    for b in blocks:  # the channels whose mean activation differs most between the images
        spread = maps[b].flatten(2).mean(2).std(0)
        shown_channels[b] = sorted(spread.argsort(descending=True)[:profile["map_channels"]].tolist())
    ctx.save_figure(plot_activation_maps(x, maps, layer_labels, shown_channels, row_labels, ctx.dataset),
                    "activation_maps",
                    f"Activation maps of {len(blocks)} layers (after batch norm and ReLU, before pooling) for "
                    f"{len(x)} test images. The first block sees colours and edges at full resolution; deeper "
                    "blocks respond to larger parts of the shape at a coarser resolution. Each channel's column "
                    "uses one colour scale, so brightness compares across the images.")
    metrics["activation_map_layers"] = {b: list(maps[b].shape[1:]) for b in blocks}

    # ---- task 3b: saliency at the input and at every block
    saliency = {"input (saliency)": E.Saliency(model).attribute(x).relevance}
    for b in blocks:
        saliency[f"{layer_labels[b]}"] = E.LayerSaliency(model, layer=names[b]).attribute(x).relevance
    fig = plots.attribution_grid(x, saliency, row_labels=row_labels,
                                 title=f"Saliency of the predicted class at different layers ({ctx.dataset})")
    ctx.save_figure(fig, "layer_saliency",
                    "Saliency of the predicted class's logit: the largest |gradient| over channels, taken with "
                    "respect to the input pixels and with respect to each block's activations (then upsampled "
                    "to 32x32). With depth the maps become coarser and cover the object as a whole rather than "
                    "single edges. Each map is scaled to its own maximum.")

    # ---- task 4: activation maximisation, channels of every conv layer and the classes
    search = splits.test.x[:profile["search"]]
    units, check_rows = {}, []
    seed = ctx.seed
    for layer in [f"conv{k}" for k in range(1, depth + 1)]:
        module = names[layer]
        width = dict(model.named_modules())[module].out_channels
        channels = list(range(min(profile["channels"], width)))
        objective = E.channel(module, channels)
        results = {recipe: maximise(model, objective, height, profile["steps"], recipe, seed)
                   for recipe in ("lucid", "naive")}
        best_index, best_value, spread = top_examples(model, module, channels, search)
        units[layer] = unit_rows(channels, results, best_value, spread)
        check_rows += [{**r, "unit": f"{layer} channel {r['unit']}"} for r in units[layer]]
        fig = plot_unit_grid(
            f"{layer} ({width} channels, {height >> (int(layer[4:]) - 1)}x{height >> (int(layer[4:]) - 1)}): "
            f"images that maximise the mean of each channel, {profile['steps']} steps",
            [f"channel {c}\n{results['lucid'][0].scores[i]:.1f} (test {best_value[i]:.1f})"
             for i, c in enumerate(channels)],
            [results["lucid"][0].images, results["naive"][0].images, search[best_index]],
            [RECIPES["lucid"]["label"], RECIPES["naive"]["label"], "test image that\nexcites it most"])
        ctx.save_figure(fig, f"featvis_{layer}",
                        f"Activation maximisation for the first {len(channels)} channels of {layer} (the conv's own "
                        "output, before batch norm and ReLU"
                        + ("; conv1 is a linear 3x3 filter, so the mean over the image is maximised by a flat "
                           "colour: its channels are colour detectors" if layer == "conv1" else "")
                        + "). Top row: the lucid recipe (decorrelated Fourier image, random jitter, scale and "
                        "rotation at every step); middle: plain pixel ascent without regularisers; bottom: the "
                        "test image with the largest mean activation. Column "
                        "titles: the objective of the optimised image (top row) and of that test image.")

    classes = list(range(splits.num_classes))
    objective = E.class_logit(classes)
    results = {recipe: maximise(model, objective, height, profile["steps"], recipe, seed) for recipe in RECIPES}
    best_index, best_value, spread = top_examples(model, None, classes, search)
    units["classes"] = unit_rows(classes, results, best_value, spread,
                                 names=[C.class_name(splits, k) for k in classes])
    check_rows += [{**r, "unit": f"class {r['unit']}"} for r in units["classes"]]
    fig = plot_unit_grid(
        f"Class logits of the small CNN ({ctx.dataset}): the three recipes and the most typical test image, "
        f"{profile['steps']} steps",
        [f"{C.class_name(splits, k)}\n{results['lucid'][0].scores[k]:.1f} (test {best_value[k]:.1f})"
         for k in classes],
        [results[r][0].images for r in RECIPES] + [search[best_index]],
        [RECIPES[r]["label"] for r in RECIPES] + ["test image with\nthe largest logit"])
    ctx.save_figure(fig, "featvis_classes",
                    "Images that maximise each class's logit. Rows: the Fourier parameterisation with random "
                    "transforms (lucid); pixels with the same transforms and a total-variation (frequency) "
                    "penalty; plain pixels without any regulariser; the test image with the largest logit. Column "
                    "titles: the logit of the Fourier image and of that test image.")

    recipe_rows = []
    for recipe in RECIPES:
        result, start, robust = results[recipe]
        recipe_rows.append({"recipe": RECIPES[recipe]["label"],
                            "mean logit, start": round(float(start.mean()), 2),
                            "mean logit, optimised": round(float(result.scores.mean()), 2),
                            "mean logit under random transforms": round(float(robust.mean()), 2),
                            "robust share (%)": round(100 * float(robust.mean() / result.scores.mean()), 1)})
    ctx.table("recipes", recipe_rows,
              f"Class-logit visualisation with three recipes, mean over the {len(classes)} classes: the logit of "
              "the grey start, of the optimised image, and of the optimised image under random shifts, zooms "
              "and rotations. Plain pixel ascent finds a high but fragile logit (an adversarial pattern); the "
              "regularised recipes find patterns that survive the transforms.")
    metrics["recipes"] = recipe_rows

    ctx.save_figure(plot_gains(units, f"Objective before and after gradient ascent (small CNN, {ctx.dataset})"),
                    "objective_gains",
                    "For every visualised unit: the objective (mean channel activation, or class logit) of the grey "
                    "starting image, of the test image that excites the unit most, and of the optimised image "
                    "(Fourier + transforms). Gradient ascent raises every objective far above the start.")
    ctx.table("objective_gains", [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                                  for r in check_rows],
              "Every visualised unit of the small CNN (lucid recipe): objective of the grey start, of the optimised "
              "image, the gain, and the best test image's objective.")
    gains = np.array([r["gain"] for r in check_rows])
    gains_in_std = np.array([r["gain_in_test_std"] for r in check_rows])
    beats = np.array([r["optimised"] > r["best_test_image"] for r in check_rows])
    metrics.update(units=units, min_gain=float(gains.min()), all_gains_positive=bool((gains > 0).all()),
                   min_gain_in_test_std=float(gains_in_std.min()),
                   median_gain_in_test_std=float(np.median(gains_in_std)),
                   share_beating_best_test_image=float(beats.mean()))

    # ---- the ImageNet ResNet-18, if given
    if resnet is not None:
        metrics["resnet18"] = visualise_resnet(ctx, resnet, profile)
    else:
        ctx.note("No --weights given: the activation maximisation ran on the small CNN only. Pass --weights PATH "
                 "(torchvision's ImageNet ResNet-18 state_dict) to add visualisations of ResNet-18's layers and "
                 "classes.")

    ctx.note(f"The small CNN reaches {100 * info['test_accuracy']:.1f} % test accuracy (chance "
             f"{100 * info['chance']:.0f} %; {info['source']}).")
    ctx.note(f"Gradient ascent raised the objective of all {len(gains)} units above the grey start "
             f"(smallest gain {gains.min():.2f}, median {np.median(gains):.2f}; in standard deviations of the "
             f"objective over test images: smallest {gains_in_std.min():.1f}, median {np.median(gains_in_std):.1f}); "
             f"the optimised image beats the best "
             f"of {len(search)} test images for {100 * beats.mean():.0f} % of them.")
    lucid, _, naive = recipe_rows
    ctx.note(f"Class logits under random transforms keep {lucid['robust share (%)']:.0f} % of their value with the "
             f"Fourier recipe and {naive['robust share (%)']:.0f} % with plain pixels: unregularised ascent finds "
             "fragile, adversarial patterns.")
    return metrics


def unit_rows(indices, results, best_value, spread, names=None):
    """Per unit: the objective of the grey start and of the optimised image (lucid recipe),
    the gain, the gain in standard deviations of the objective over test images (comparable
    across layers), the best test image's objective and the naive recipe's."""
    lucid, start, robust = results["lucid"]
    naive = results["naive"][0]
    rows = []
    for i, index in enumerate(indices):
        gain = float(lucid.scores[i] - start[i])
        rows.append({"unit": index if names is None else names[i], "start": float(start[i]),
                     "optimised": float(lucid.scores[i]), "gain": gain,
                     "gain_in_test_std": gain / max(float(spread[i]), 1e-8),
                     "optimised_under_transforms": float(robust[i]), "best_test_image": float(best_value[i]),
                     "naive_pixels": float(naive.scores[i])})
    return rows


def visualise_resnet(ctx, resnet, profile):
    """Channels of layer2..layer4 and a few classes of the ImageNet ResNet-18."""
    size, steps = profile["resnet_size"], profile["resnet_steps"]
    # The same transforms as for the small CNN, without an enlarged canvas (pad=0): the result is
    # scored at the size it was optimised at (a padded 2x2 layer4 map at 64 pixels becomes 3x3,
    # a different objective). Grey fills whatever a shift or rotation brings in, as lucid's padding.
    transforms = RandomTransforms()
    rows, labels, gains = [], [], {}
    channels = list(range(profile["resnet_channels"]))
    classes = list(IMAGENET_CLASSES)[:max(len(channels), 2)]
    ncols = max(len(channels), len(classes))
    blank = torch.full((3, size, size), 1.0)
    objectives = [(f"layer{k}", E.channel(f"net.layer{k}", channels)) for k in (2, 3, 4)]
    objectives.append(("classes", E.class_logit(classes)))
    ctx.log(f"ResNet-18: {len(objectives)} visualisations of {size}x{size} images, {steps} steps each")
    for name, objective in objectives:
        start = E.visualize(resnet, objective, size, steps=0, seed=ctx.seed, transforms=transforms)
        result = E.visualize(resnet, objective, size, steps=steps, seed=ctx.seed, transforms=transforms)
        gain = (result.scores - start.scores).tolist()
        gains[name] = {"start": start.scores.tolist(), "optimised": result.scores.tolist(), "gain": gain}
        images = list(result.images) + [blank] * (ncols - len(result.images))
        rows.append(images)
        labels.append(name if name != "classes" else "class logits")
    titles = [f"channel {c} / {IMAGENET_CLASSES[classes[i]] if i < len(classes) else '-'}" for i, c in
              enumerate(range(ncols))]
    fig = plot_unit_grid(f"ImageNet ResNet-18 ({ctx.args.weights}): Fourier images with transforms, "
                         f"{size}x{size}, {steps} steps", titles, rows, labels, cell=1.9)
    ctx.save_figure(fig, "featvis_resnet18",
                    f"Activation maximisation on the ImageNet ResNet-18: rows layer2 to layer4 (channels "
                    f"{channels} of each block's output) and class logits "
                    f"({', '.join(IMAGENET_CLASSES[k] for k in classes)}); column titles name the channel "
                    "(layer rows) and the class (last row).")
    all_gains = [g for v in gains.values() for g in v["gain"]]
    ctx.note(f"ResNet-18 (--weights {ctx.args.weights}): the objective rose for {sum(g > 0 for g in all_gains)} of "
             f"{len(all_gains)} visualised units (smallest gain {min(all_gains):.2f}).")
    return {"size": size, "steps": steps, "units": gains, "min_gain": min(all_gains),
            "classes": {k: IMAGENET_CLASSES[k] for k in classes}}
