"""Interpretability assignment, ITU week 5, tasks 3 and 4: what a CNN computes inside.

    data      shapes (10 classes of 32x32 colour shapes on clutter) or CIFAR-10
              (--dataset cifar10 --data-dir ...)
    model     the interpretability drivers' small CNN (``_explain_common``), trained here
              or loaded with --checkpoint; with --weights also an ImageNet ResNet-18
    outputs   activation maps; gradients and gradient x activation at each layer;
              activation maximisation (``reference_torch.explain.featvis``) of channels
              and classes beside the test image that excites each unit most; a semantic
              dictionary and neuron groups (NMF) with their attribution to the classes

``featvis`` scales every transform with the image size (lucent's 8-pixel jitter wipes out
a 32-pixel image) and mixes colours by the training images' own colour correlation.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from reference_torch import explain as E
from reference_torch.explain.plots import attribution_grid

from . import _explain_common as C
from . import _featvis as V
from .runner import binomial_se, positive_int

NAME = "feature_visualization"
COURSE = "interpretability assignment (ITU advanced ML)"
TASK = "week 5, tasks 3 and 4"
SUMMARY = ("activation maps, saliency at several layers, activation maximisation of channels and classes "
           "(Fourier images, transforms), a semantic dictionary and neuron groups on a small CNN; "
           "ResNet-18 with --weights")
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
Does the optimised image excite its unit more than any real image does? Finally, combine
these into the views of "The Building Blocks of Interpretability" (Olah et al. 2018):
a semantic dictionary (the channels most active at one position of an image, each shown
by its visualisation) and neuron groups (a non-negative matrix factorisation of a
layer's activations into a few groups, each shown as a map over the image and as a
visualisation, with its attribution to the class logits).
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True
# On top of the shared training settings: test images shown, channels per activation-map layer and
# visualised per layer, ascent steps, the ResNet's, its image size and channels per layer, the
# test images searched for each unit's top example, the semantic dictionary's channels and images,
# and the neuron groups.
PROFILES = {
    "default": {**C.TRAINING, "examples": 3, "map_channels": 4, "channels": 8, "steps": 160, "resnet_steps": 96,
                "resnet_size": 128, "resnet_channels": 4, "search": 1000, "dictionary": 6,
                "dictionary_images": 2, "groups": 4},
    "quick": {**C.QUICK_TRAINING, "examples": 2, "map_channels": 3, "channels": 3, "steps": 48, "resnet_steps": 12,
              "resnet_size": 64, "resnet_channels": 2, "search": 300, "dictionary": 3, "dictionary_images": 1,
              "groups": 3},
}
DATASET_SETTINGS = C.DATASET_SETTINGS
# The three ways of making an image that the figures compare: label, arguments of featvis.visualize
# ("data": the colours mixed by the training images' colour correlation)
RECIPES = OrderedDict(
    lucid=("Fourier + transforms", dict(param="fourier", decorrelate="data", transforms=E.RandomTransforms())),
    pixel_regularised=("pixels + transforms + TV", dict(param="pixel", decorrelate="data",
                                                        transforms=E.RandomTransforms(), tv_weight=0.5)),
    naive=("pixels, no regulariser", dict(param="pixel", decorrelate=False, transforms=None)),
)
NUMBERS = ("start", "optimised", "best_test_image", "gain", "gain_in_test_std", "optimised_under_transforms",
           "naive_pixels")  # the numbers of the per-unit table


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--weights", type=C.resnet18_weights_file, default=None, metavar="PATH",
                        help="ImageNet ResNet-18 weights in torchvision's format (torch.save(model.state_dict(), "
                             "PATH)); adds its feature visualisations (about two minutes more on one CPU core)")
    parser.add_argument("--channels", type=positive_int, help="channels visualised per layer of the small CNN")
    parser.add_argument("--steps", type=positive_int, help="gradient-ascent steps per visualisation of the small CNN")


# ------------------------------------------------------------------------ activation maximisation
def recipe(name, colours):  # the arguments of featvis.visualize for one recipe
    options = RECIPES[name][1]
    return {**options, "decorrelate": colours} if options["decorrelate"] == "data" else dict(options)


def maximise(ctx, model, objective, size, colours, name="lucid", steps=None):
    """Visualise ``objective`` with one recipe: the Visualization, the objective of the grey
    start (0 steps, same seed) and that of the result under random transforms."""
    start = E.visualize(model, objective, size, steps=0, seed=ctx.seed, **recipe(name, colours))
    result = E.visualize(model, objective, size, steps=steps or ctx.config.steps, seed=ctx.seed,
                         **recipe(name, colours))
    return result, start.scores, E.transform_robustness(model, objective, result.images, ctx.seed + 1)


def visualise_units(ctx, model, objective, recipes, search, names, colours, labels=None):
    """``objective`` maximised with each recipe, beside the test images of ``search`` that
    excite its units most (for classes, given ``labels``: the class's own clearest image,
    the largest margin). Returns the results by recipe, a row of numbers per unit, and the
    rows of its ``unit_grid``: one per recipe (unit ``names`` over the first), the test images."""
    results = {r: maximise(ctx, model, objective, tuple(search.shape[-2:]), colours, r) for r in recipes}
    best_value, best_index, spread = E.dataset_examples(model, objective, search)
    (lucid, start, robust), naive = results["lucid"], results["naive"][0]
    gain, layer = lucid.scores - start, objective.layer is not None
    shown = best_index if layer else E.class_examples(model, search, labels, objective.indices)[0]
    with torch.no_grad():  # the objective of each shown test image
        shown_value = E.featvis.objective_value(model, objective, ctx.to_device(search[shown]))
    rows = [{"unit": objective.indices[i] if layer else names[i], "start": float(start[i]),
             "optimised": float(lucid.scores[i]), "gain": float(gain[i]),
             "gain_in_test_std": float(gain[i] / spread[i].clamp(min=1e-8)),  # comparable across layers
             "optimised_under_transforms": float(robust[i]), "best_test_image": float(best_value[i]),
             "best_test_index": int(best_index[i]), "naive_pixels": float(naive.scores[i]),
             "beats": bool(lucid.scores[i] > best_value[i]), "start_beats": bool(start[i] > best_value[i]),
             "shown_test_index": int(shown[i]), "shown_test_value": float(shown_value[i])}
            for i in range(len(names))]
    grid = [(RECIPES[r][0], v.images, v.scores, None if i else names) for i, (r, (v, *_)) in enumerate(results.items())]
    test = "test image that\nexcites it most" if layer else "clearest test\nimage of the class\n(largest margin)"
    return results, rows, grid + [(test, search[shown.cpu().numpy()], shown_value, None)]


# ------------------------------------------------------------------------ run
def run(ctx):
    cfg = ctx.config
    resnet = V.load_resnet(ctx) if cfg.weights else None  # a bad file fails before training
    splits, model, info = C.data_and_model(ctx)
    blocks = C.blocks(model, splits.in_shape[1])
    colours = E.color_correlation(splits.train.x[:2000]) if splits.in_shape[0] == 3 else False
    names = [C.class_name(splits, k) for k in range(splits.num_classes)]

    # ---- task 3a: activation maps of every block for a few test images
    pick = C.pick_examples(ctx, model, splits.test, cfg.examples, ctx.rng())
    x, row_labels = ctx.to_device(splits.test.x[pick]), C.prediction_labels(ctx, model, splits, pick)
    acts = E.activation_maps(model, x, [b.relu for b in blocks])
    maps = {b.name: acts[b.relu] for b in blocks}
    shown = {name: sorted(act.flatten(2).mean(2).std(0).argsort(descending=True)[:cfg.map_channels].tolist())
             for name, act in maps.items()}  # the channels whose mean activation differs most between the images
    ctx.save_figure(V.plot_activation_maps(splits.test.x[pick], maps, shown, row_labels, ctx.dataset),
                    "activation_maps",
                    f"Activation maps of {len(blocks)} layers (after batch norm and ReLU, before pooling) for {len(x)} "
                    "test images: the first block sees colours and edges at full resolution, deeper ones larger parts "
                    "at a coarser one. One colour scale per column: brightness compares across the images.")

    # ---- task 3b: the gradient at the input and at every block, and gradient x activation
    saliency = V.layer_maps(ctx, model, blocks, splits.test.x[pick])
    ctx.save_figure(attribution_grid(x, saliency, row_labels=row_labels, cell=1.55, outlines=(
        splits.test.mask[pick] if splits.test.mask is not None else None), title="Gradient of the predicted "
        f"class's logit at different layers ({ctx.dataset})"), "layer_saliency",
                    "Left: saliency, the largest |gradient| of the predicted class's logit over channels, with respect "
                    "to the input pixels and to each block's activations (upsampled). The deepest block's gradient is "
                    "the linear head's weights routed through max-pooling: it depends on the image only through which "
                    "position of each pooling window wins. Right: gradient x activation summed over channels, what "
                    "each position adds to the logit (red raises it, blue lowers it); at the deepest block it sums to "
                    "the logit minus its bias. Each map is scaled to its own largest |value|"
                    + ("; green line: the object." if splits.test.mask is not None else "."))
    on_object = None
    if splits.test.mask is not None:  # how much of each map's (positive) mass lies on the object
        many = V.layer_maps(ctx, model, blocks, splits.test.x[:200])
        on_object = {key.replace("\n", " "): float(E.mask_share(m.cpu(), splits.test.mask[:200]).nanmean())
                     for key, m in many.items()}
        on_object["object's share of the image"] = float(splits.test.mask[:200].mean())
        ctx.note("Share of each map's positive mass on the object, mean over 200 test images: "
                 + ", ".join(f"{key} {100 * v:.0f} %" for key, v in on_object.items()) + ".")

    # ---- task 4: activation maximisation, channels of every conv layer and the classes
    search, labels, units = splits.test.x[:cfg.search], splits.test.y[:cfg.search], {}
    for b in blocks:
        channels = list(range(min(cfg.channels, b.channels)))
        _, units[b.conv_name], rows = visualise_units(ctx, model, E.channel(b.conv, channels), ("lucid", "naive"),
                                                      search, [f"channel {c}" for c in channels], colours)
        beats = sum(r["beats"] for r in units[b.conv_name])
        ctx.save_figure(V.unit_grid(f"{b.conv_name} ({b.channels} channels, {b.size}x{b.size}): images that maximise "
                                  f"the mean of each channel, {cfg.steps} steps", rows), f"featvis_{b.conv_name}",
                        f"Activation maximisation for the first {len(channels)} channels of {b.conv_name} (the "
                        "conv's own output, before batch norm and ReLU"
                        + ("; a linear 3x3 filter, so the mean over the image is maximised by a flat colour: its "
                           "channels are colour detectors" if b.number == 1 else "")
                        + "). Rows: the lucid recipe (Fourier image with the training images' colour correlation, "
                        "random jitter, scale and rotation at every step), plain pixel ascent, and the test image with "
                        f"the largest mean activation. Above each image: its objective. The lucid image beats the best "
                        f"of {len(search)} test images for {beats} of {len(channels)} channels.")
    results, units["classes"], rows = visualise_units(ctx, model, E.class_logit(range(len(names))), tuple(RECIPES),
                                                      search, names, colours, labels)
    beats = sum(r["beats"] for r in units["classes"])
    ctx.save_figure(V.unit_grid(f"Class logits of the small CNN ({ctx.dataset}): the three recipes and the clearest "
                              f"test image of each class, {cfg.steps} steps", rows, fmt="{:.1f}"), "featvis_classes",
                    "Images that maximise each class's logit. Rows: the three recipes (lucid; pixels with its "
                    "transforms and a total-variation penalty; plain pixels) and, of the class's own test images, the "
                    "one with the largest margin (its logit minus the largest other). Above each image: its logit. "
                    f"The lucid image's logit beats that of every one of {len(search)} test images for {beats} of "
                    f"{len(names)} classes.")
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
    every_unit = [{"layer": key, **row} for key, rows in units.items() for row in rows]
    ctx.table("objective_gains", [{k: row[k] for k in ("layer", "unit", *NUMBERS, "beats")} for row in every_unit],
              f"Per unit of the small CNN, its objective for the grey start, for the lucid image (also under random "
              f"transforms) and for the best of {len(search)} test images, the gain over the start (also in standard "
              "deviations over the test images), plain pixel ascent, and whether the lucid image beats that test "
              "image.",
              columns={"layer": "layer", "unit": "unit", **{key: (key.replace("_", " "), "{:.3f}") for key in NUMBERS},
                       "beats": "beats the best test image"})

    # ---- week 5, task 3: the building blocks of interpretability, at the last block
    metrics = {**C.model_metrics(ctx, info), "steps": cfg.steps, "map_share_on_object": on_object,
               "activation_map_layers": {name: list(a.shape[1:]) for name, a in maps.items()},
               "recipes": recipes, "units": units,
               **building_blocks(ctx, model, x[:cfg.dictionary_images], blocks[-1], colours, names, row_labels)}
    gains, in_std, beats, start_beats = (np.array([r[key] for r in every_unit])
                                         for key in ("gain", "gain_in_test_std", "beats", "start_beats"))
    metrics.update(min_gain=float(gains.min()), median_gain=float(np.median(gains)),
                   all_gains_positive=bool((gains > 0).all()),
                   min_gain_in_test_std=float(in_std.min()), median_gain_in_test_std=float(np.median(in_std)),
                   share_beating_best_test_image=float(beats.mean()), units_beating_best_test_image=int(beats.sum()),
                   share_of_starts_beating_best_test_image=float(start_beats.mean()))
    if resnet is None:
        ctx.note("No --weights given: the activation maximisation ran on the small CNN only; --weights PATH "
                 "(torchvision's ImageNet ResNet-18 state_dict) adds ResNet-18's layers and classes.")
    else:
        metrics["resnet18"] = V.visualise_resnet(ctx, resnet)
    C.note_accuracy(ctx, info, "The small CNN")
    ctx.note(f"Gradient ascent raised the objective of {int((gains > 0).sum())} of {len(gains)} units above the grey "
             f"start (smallest gain {gains.min():.2f}, median {np.median(gains):.2f}; in standard deviations of the "
             f"objective over test images: smallest {in_std.min():.1f}, median {np.median(in_std):.1f}); the "
             f"optimised image beats the best of {len(search)} test images for {int(beats.sum())} of {len(beats)}.")
    lucid, _, naive = recipes
    ctx.note(f"Class logits under random transforms keep {100 * lucid['robust_share']:.0f} % of their value with the "
             f"Fourier recipe and {100 * naive['robust_share']:.0f} % with plain pixels: unregularised ascent finds "
             "fragile, adversarial patterns.")
    ctx.headline(f"units whose optimised image beats the best of {len(search)} test images", float(beats.mean()),
                 float(start_beats.mean()), "the grey start image",
                 noise=binomial_se(float(beats.mean()), len(beats)) * 2 ** 0.5)
    return metrics


def building_blocks(ctx, model, x, block, colours, names, row_labels):
    """Olah et al. (2018) at ``block``'s ReLU: a semantic dictionary for each image of ``x``
    and neuron groups of the first, each with its visualisation (the lucid recipe on the
    activation before the ReLU, where a grey start has a gradient)."""
    cfg, size = ctx.config, tuple(x.shape[-2:])
    layers = [name for name, _ in model.named_modules()]
    before_relu = layers[layers.index(block.relu) - 1]
    dictionaries, visuals = [], []
    for act in E.activation_maps(model, x, [block.relu])[block.relu]:
        position, channels, values = E.strongest_channels(act, cfg.dictionary)
        visuals.append(E.visualize(model, E.channel(before_relu, channels.tolist()), size, steps=cfg.steps,
                                   seed=ctx.seed, **recipe("lucid", colours)))
        dictionaries.append({"position": list(position), "channels": channels.tolist(), "activations": values.tolist(),
                             "visualisation_scores": visuals[-1].scores.tolist()})
    title = f"Semantic dictionary at {block.name}: the {cfg.dictionary} channels most active at the marked position"
    ctx.save_figure(V.plot_semantic_dictionary(x, dictionaries, visuals, block, [r.split("\n")[0] for r in row_labels],
                                               title), "semantic_dictionary",
                    f"For each image, the position of {block.name}'s map (after its ReLU) where the activations' sum "
                    f"is largest (yellow square, the pixels it covers), and the {cfg.dictionary} channels most active "
                    "there: each shown by its activation-maximisation image (lucid recipe), with its activation at "
                    "that position.")
    groups = E.neuron_groups(model, block.relu, x[0], groups=cfg.groups, seed=ctx.seed)
    visual = E.visualize(model, E.direction(before_relu, groups.directions), size, steps=cfg.steps, seed=ctx.seed,
                         **recipe("lucid", colours))
    with torch.no_grad():
        logits = (model(x[:1])[0] - model.net.head.bias).cpu()
    ctx.save_figure(V.plot_neuron_groups(x[0], groups, visual, names, f"Neuron groups of {block.name} for one image "
                                         f"({row_labels[0].splitlines()[0]})"), "neuron_groups",
                    f"A non-negative matrix factorisation of {block.name}'s activations (after its ReLU) over the "
                    f"image's {block.size}x{block.size} positions into {cfg.groups} groups of channels. Top: where "
                    "each group is active (darker: stronger); bottom: its visualisation (lucid recipe, the activation "
                    "before the ReLU projected on the group's mix of channels); right: what each group adds to each "
                    "class logit (gradient x activation with the activation replaced by the group's part, summed over "
                    "positions).")
    missed = float((groups.attribution.sum(0) - logits).abs().max())
    ctx.note(f"Neuron groups: {cfg.groups} groups rebuild {block.name}'s activations with relative error "
             f"{groups.error:.2f} (the best {cfg.groups}-term factorisation, the SVD's, {groups.best_error:.2f}): "
             f"the activations hold more than {cfg.groups} patterns. So the groups' attributions add up to each logit "
             f"minus its bias only within {missed:.2f} (those logits reach {float(logits.abs().max()):.1f}).")
    return {"semantic_dictionary": dictionaries,
            "neuron_groups": {"error": groups.error, "best_error": groups.best_error,
                              "attribution": groups.attribution.tolist(),
                              "logit_minus_bias": logits.tolist(), "largest_missed": missed,
                              "visualisation_scores": visual.scores.tolist()}}
