"""KTH advanced DL, explainability practical: five attribution methods side by side on a
trained CNN, judged by deletion/insertion curves against a random pixel order and, on
``shapes``, against the true object masks.

    data     shapes (10 classes of 32x32 colour shapes on clutter, with object masks)
             or CIFAR-10 (--dataset cifar10 --data-dir ...)
    model    a small CNN (conv-BN-ReLU-pool x 3) trained here with the runner's trainer,
             or loaded with --checkpoint (a model.pt of an earlier run)
    methods  occlusion, saliency, gradient x input, Grad-CAM, integrated gradients
             (``reference_torch.explain``), all explaining the predicted class
    scores   deletion and insertion AUCs (Petsiuk et al. 2018) beside the same curves
             for a random pixel order; mask share and pointing game on shapes
"""
from __future__ import annotations

import matplotlib.pyplot as plt

from reference_torch import explain as E
from reference_torch.explain.plots import attribution_grid, curve_panel

from . import _explain_common as C
from . import plots
from .runner import positive_int

NAME = "explanations"
COURSE = "KTH advanced DL"
TASK = "explainability practical"
SUMMARY = ("occlusion, saliency, gradient x input, Grad-CAM and integrated gradients on a trained CNN; "
           "deletion/insertion AUCs vs a random order; mask share and pointing game on shapes")
STATEMENT = """
Train a convolutional network (or load a trained one) and explain its predictions with
five attribution methods: occlusion (slide a grey patch over the image and record how much
the probability of the class drops), saliency (the gradient of the class score with
respect to the pixels), gradient x input, Grad-CAM (the last convolutional layer's
channels weighted by their mean gradient) and integrated gradients (gradients averaged
along a path from a black image to the input). Show the maps side by side on sample
images. Then measure how faithful each map is: delete the pixels in the order of their
relevance and record the probability of the class (deletion: it should fall fast, a low
area under the curve), or insert them into a blurred image (insertion: it should rise
fast, a high area), and compare with a random pixel order. Where the true object is known
(the shapes dataset), also report which share of the relevance lies on the object and how
often the most relevant pixel hits it (the pointing game). Which method is the most
faithful, and do faithfulness and agreement with the object go together?
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True
# On top of the shared training settings: examples shown, test images scored, pixels
# changed per curve step (of 1,024) and integrated-gradients steps. Maps of a model that
# is right more often are easier to read, so this driver trains longer (shapes: about
# 70 % test accuracy after 6 epochs, 64 % after 4).
PROFILES = {
    "default": {**C.TRAINING, "epochs": 6, "examples": 6, "scored": 64, "step": 64, "ig_steps": 32},
    "quick": {**C.QUICK_TRAINING, "epochs": 3, "examples": 3, "scored": 12, "step": 128, "ig_steps": 16},
}
DATASET_SETTINGS = C.DATASET_SETTINGS
RANDOM = "random_order"  # the baseline pixel order, scored beside the methods
LABELS = {**C.METHODS, RANDOM: "random order"}
COLOURS = {"occlusion": "tab:purple", "saliency": "tab:red", "input_x_gradient": "tab:orange",
           "gradcam": "tab:green", "integrated_gradients": "tab:blue", RANDOM: "0.4"}


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--scored-images", dest="scored", type=positive_int,
                        help="test images for the deletion/insertion and mask scores")


# ------------------------------------------------------------------------ figures
def plot_curves(curves, dataset, n_images):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {LABELS[n]: dict(color=COLOURS[n], lw=2.2 if n == RANDOM else 1.6, ls="--" if n == RANDOM else "-")
              for n in COLOURS}
    fractions = curves[RANDOM]["deletion"].fractions
    for ax, kind, title in (
            (axes[0], "deletion", f"Deletion: most relevant pixels set to black first\n(lower is better; "
                                  f"mean over {n_images} {dataset} test images)"),
            (axes[1], "insertion", f"Insertion: most relevant pixels put into a blurred image first\n(higher is "
                                   f"better; mean over {n_images} images)")):
        curve_panel(ax, fractions, {LABELS[n]: c[kind].scores for n, c in curves.items()}, title,
                    "probability of the predicted class", styles)
    fig.tight_layout()
    return fig


def plot_mask_scores(scores, mask_fraction, n_images):
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    random = (f"random ({100 * mask_fraction:.0f} %: the object's share of the pixels)", 100 * mask_fraction)
    for ax, key, title, ylabel in (
            (axes[0], "mask_share", "Share of the positive relevance on the object", "share of relevance mass (%)"),
            (axes[1], "pointing_game", "Pointing game: is the most relevant pixel on the object?",
             "hits (% of images)")):
        plots.bar_chart({C.METHODS[m]: 100 * scores[m][key] for m in C.METHODS}, title, ylabel, ax=ax,
                        fmt="{:.0f}", colors=[COLOURS[m] for m in C.METHODS], baseline=random, xlabel="method",
                        rotation=20, ylim=(0, 105))
    fig.suptitle(f"Agreement with the true object mask ({n_images} shapes test images)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    cfg = ctx.config
    splits, model, info = C.data_and_model(ctx)
    height = splits.in_shape[1]
    methods = C.attribution_methods(model, height, cfg.ig_steps)
    has_masks = splits.test.mask is not None and not splits.options.get("bias")
    rng = ctx.rng()

    # --- side by side on a few images
    pick = C.pick_examples(ctx, model, splits.test, cfg.examples, rng)
    x = ctx.to_device(splits.test.x[pick])
    maps = {C.METHODS[m]: methods[m].attribute(x).relevance for m in ctx.progress(C.METHODS, "methods on examples")}
    last = C.blocks(model, height)[-1]
    fig = attribution_grid(
        x, maps, row_labels=C.prediction_labels(ctx, model, splits, pick),
        outlines=splits.test.mask[pick] if has_masks else None, signed={C.METHODS[m]: C.SIGNED[m] for m in C.METHODS},
        title=f"What the CNN looks at: five explanations of its prediction on {ctx.dataset} test images\n"
              f"(each map scaled to its own maximum; red = evidence for the predicted class, blue = against"
              + ("; green line = the true object" if has_masks else "") + ")")
    # supxlabel, not fig.text: the constrained layout makes room for it below the colour bars
    fig.supxlabel(f"occlusion: drop of the class probability under an {methods['occlusion'].patch[0]}-px black "
                  f"patch; Grad-CAM at {last.name} ({last.relu}, after its ReLU, {last.size}x{last.size});\n"
                  f"integrated gradients from a black image in {cfg.ig_steps} steps", fontsize=8)
    ctx.save_figure(fig, "attributions",
                    "Five attribution maps for the predicted class, one row per test image. Saliency and "
                    "Grad-CAM are never negative (white to red); occlusion, gradient x input and integrated "
                    "gradients are signed (red for the class, blue against it). Every map is scaled to its "
                    "own largest value, so compare places within a map, not colours across maps.")

    # --- faithfulness and masks on more images
    order = rng.permutation(len(splits.test.y))[:cfg.scored]
    xs = ctx.to_device(splits.test.x[order])
    masks = ctx.to_device(splits.test.mask[order]) if has_masks else None
    mask_fraction = float(masks.float().mean()) if has_masks else None
    options = dict(step=cfg.step, seed=ctx.seed)
    curves, scores, ig_gap = {}, {}, None
    for name in ctx.progress([*C.METHODS, RANDOM], "deletion/insertion"):
        result = "random" if name == RANDOM else methods[name].attribute(xs)
        if name == "integrated_gradients":  # completeness: attributions sum to f(x) - f(black)
            gained = result.logits.gather(1, result.target[:, None])[:, 0].abs()
            ig_gap = float((result.delta.abs() / gained.clamp(min=1e-6)).median())
        curves[name] = {"deletion": E.deletion_curve(model, xs, result, **options),
                        "insertion": E.insertion_curve(model, xs, result, **options)}
        scores[name] = {"deletion_auc": curves[name]["deletion"].mean_auc,
                        "insertion_auc": curves[name]["insertion"].mean_auc}
        if has_masks and name == RANDOM:  # a random map puts the object's share of the pixels on it
            scores[name].update(mask_share=mask_fraction, pointing_game=mask_fraction)
        elif has_masks:
            scores[name].update(mask_share=float(E.mask_share(result.relevance, masks).nanmean()),
                                pointing_game=float(E.pointing_game(result.relevance, masks).float().mean()))
    ctx.save_figure(plot_curves(curves, ctx.dataset, len(order)), "deletion_insertion",
                    "Deletion and insertion curves (mean over the scored test images) for each method and "
                    "for a random pixel order (dashed). A faithful map makes the probability fall fast when "
                    "its top pixels are blacked out (low deletion AUC) and rise fast when they are put into "
                    "a blurred copy (high insertion AUC). The AUCs are in the legends and the table.")
    ctx.table("scores", [{"method": LABELS[n], **s} for n, s in scores.items()],
              f"Mean over {len(order)} random {ctx.dataset} test images, explaining the predicted class. "
              "Deletion: probability of the class while the most relevant pixels are set to black, "
              f"{cfg.step} pixels per step; insertion: the same pixels put into a blurred copy. "
              "The last row orders the pixels at random, the baseline every method must beat."
              + (" Mask share: share of the positive relevance on the object; pointing game: share of "
                 "images whose most relevant pixel is on the object; for a random map both equal the "
                 "object's share of the pixels." if has_masks else ""),
              columns={"method": "method", "deletion_auc": ("deletion AUC (lower is better)", "{:.3f}"),
                       "insertion_auc": ("insertion AUC (higher is better)", "{:.3f}"),
                       "mask_share": ("mask share (%)", "{:.1%}"), "pointing_game": ("pointing game (%)", "{:.1%}")})
    if has_masks:
        ctx.save_figure(plot_mask_scores(scores, mask_fraction, len(order)), "mask_scores",
                        "How well each map agrees with the true object (the shape's mask): the share of its "
                        "positive relevance on the object and how often its maximum lies on it, against what "
                        "a random map gets (dashed).")

    deletion = {n: s["deletion_auc"] for n, s in scores.items()}
    best = min(C.METHODS, key=deletion.get)
    beating = [n for n in C.METHODS if deletion[n] < deletion[RANDOM]]
    C.note_accuracy(ctx, info)
    ctx.note(f"Deletion AUC, random order {deletion[RANDOM]:.3f}: "
             + ", ".join(f"{C.METHODS[n]} {deletion[n]:.3f}" for n in C.METHODS)
             + f". Most faithful by deletion: {C.METHODS[best]}; {len(beating)} of {len(C.METHODS)} methods beat "
               "the random order.")
    if has_masks:
        top = max(C.METHODS, key=lambda n: scores[n]["mask_share"])
        ctx.note(f"On the object mask ({100 * mask_fraction:.0f} % of the pixels): {C.METHODS[top]} puts the largest "
                 f"share of its relevance on the object ({100 * scores[top]['mask_share']:.0f} %).")
    ctx.note(f"Integrated gradients with {cfg.ig_steps} steps: the median completeness gap "
             f"|sum of attributions - (f(x) - f(black))| is {100 * ig_gap:.1f} % of the class logit.")
    return {**C.model_metrics(ctx, info),
            "scored_images": len(order), "deletion_step_pixels": cfg.step, "methods": scores,
            "most_faithful_by_deletion": best, "methods_beating_random_deletion": beating,
            "mask_fraction": mask_fraction, "ig_steps": cfg.ig_steps, "ig_median_relative_gap": ig_gap}
