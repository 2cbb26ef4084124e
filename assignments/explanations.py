"""KTH advanced DL, explainability practical: five attribution methods side by side on a
trained CNN, judged by deletion/insertion curves against a random pixel order and, on
``shapes``, against the true object masks.

    data     shapes (10 classes of 32x32 colour shapes on clutter, with object masks)
             or CIFAR-10 (--dataset cifar10 --data-dir ...)
    model    a small CNN (conv-BN-ReLU-pool x 3) trained here with reference_torch's
             Trainer, or loaded with --checkpoint (a model.pt of an earlier run)
    methods  occlusion, saliency, gradient x input, Grad-CAM, integrated gradients
             (``reference_torch.explain``), all explaining the predicted class
    scores   deletion and insertion AUCs (Petsiuk et al. 2018) beside the same curves
             for a random pixel order; mask share and pointing game on shapes
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch import explain as E
from reference_torch.explain import plots

from . import _explain_common as C
from .runner import small_model_threads

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

# Training beyond _explain_common.TRAINING: maps of a model that is right more often are
# easier to read (shapes: about 70 % test accuracy after 6 epochs, 64 % after 4).
TRAINING = {"quick": dict(epochs=3), "shapes": dict(epochs=6)}
METHOD_NAMES = C.ATTRIBUTION_METHODS
PROFILES = {  # examples shown, images scored, pixels changed per curve step (of 1,024), IG steps
    "quick": dict(examples=3, scored=12, step=128, ig_steps=16),
    "full": dict(examples=6, scored=64, step=64, ig_steps=32),
}
COLOURS = {"occlusion": "tab:purple", "saliency": "tab:red", "gradient x input": "tab:orange",
           "Grad-CAM": "tab:green", "integrated gradients": "tab:blue", "random order": "0.4"}


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--scored-images", type=int, default=None,
                        help="test images for the deletion/insertion and mask scores (default 64)")


# ------------------------------------------------------------------------ figures
def plot_examples(x, maps, labels, masks, dataset, layer_info):
    fig = plots.attribution_grid(
        x, {n: maps[n] for n in METHOD_NAMES}, row_labels=labels, outlines=masks,
        signed=C.SIGNED,
        title=f"What the CNN looks at: five explanations of its prediction on {dataset} test images\n"
              f"(each map scaled to its own maximum; red = evidence for the predicted class, blue = against"
              + ("; green line = the true object" if masks is not None else "") + ")")
    # supxlabel, not fig.text: the constrained layout makes room for it below the colour bars
    fig.supxlabel(f"occlusion: drop of the class probability under an {layer_info['patch']}-px black patch; "
                  f"Grad-CAM at {layer_info['gradcam']};\nintegrated gradients from a black image in "
                  f"{layer_info['ig_steps']} steps", fontsize=8)
    return fig


def plot_curves(curves, dataset, n_images):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
    styles = {n: dict(color=COLOURS[n], lw=2.2 if n == "random order" else 1.6,
                      ls="--" if n == "random order" else "-") for n in COLOURS}
    fractions = curves["random order"]["deletion"].fractions
    plots.curve_panel(axes[0], fractions, {n: c["deletion"].scores for n, c in curves.items()},
                      f"Deletion: most relevant pixels set to black first\n(lower is better; "
                      f"mean over {n_images} {dataset} test images)", "probability of the predicted class",
                      styles)
    plots.curve_panel(axes[1], fractions, {n: c["insertion"].scores for n, c in curves.items()},
                      f"Insertion: most relevant pixels put into a blurred image first\n(higher is better; "
                      f"mean over {n_images} images)", "probability of the predicted class", styles)
    fig.tight_layout()
    return fig


def plot_mask_scores(rows, mask_fraction, n_images):
    names = [r["method"] for r in rows]
    share = [r["mask share"] for r in rows]
    hits = [r["pointing game"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    pos = np.arange(len(names))
    for ax, values, title, ylabel in (
            (axes[0], share, "Share of the positive relevance on the object", "share of relevance mass (%)"),
            (axes[1], hits, "Pointing game: is the most relevant pixel on the object?", "hits (% of images)")):
        ax.bar(pos, 100 * np.asarray(values), color=[COLOURS[n] for n in names])
        ax.axhline(100 * mask_fraction, color="0.3", ls="--", lw=1.2,
                   label=f"random ({100 * mask_fraction:.0f} %: the object's share of the pixels)")
        ax.set_xticks(pos, names, rotation=20, ha="right")
        ax.set(title=title, ylabel=ylabel, ylim=(0, 105), xlabel="method")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
        for p, v in zip(pos, values):
            ax.text(p, 100 * v + 1.5, f"{100 * v:.0f}", ha="center", fontsize=8)
    fig.suptitle(f"Agreement with the true object mask ({n_images} shapes test images)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    with small_model_threads(ctx):
        return analyse(ctx)


def analyse(ctx):
    profile = C.attribution_profile(ctx, PROFILES)
    splits = C.load_data(ctx)
    model, info = C.get_model(ctx, splits)
    layers = C.layer_names(model)
    last_block = C.last_block(model)
    height = splits.in_shape[1]
    methods = C.attribution_methods(model, height, profile["ig_steps"])
    has_masks = splits.test.mask is not None and splits.options.get("bias") is False
    rng = ctx.rng()

    # --- side by side on a few images
    pick = C.pick_examples(model, splits.test, profile["examples"], rng)
    x = torch.as_tensor(splits.test.x[pick])
    maps = {}
    for name in ctx.progress(METHOD_NAMES, "methods on examples"):
        maps[name] = methods[name].attribute(x).relevance
    pred, prob = C.predictions(model, splits.test.x[pick])
    labels = [f"true: {C.class_name(splits, splits.test.y[i])}\npred: {C.class_name(splits, p)}\n(p = {q:.2f})"
              for i, p, q in zip(pick, pred, prob)]
    cam_size = height // 2 ** (int(last_block[5:]) - 1)  # every block before it halves the image
    layer_info = {"patch": methods["occlusion"].patch[0], "ig_steps": profile["ig_steps"],
                  "gradcam": f"{last_block} ({layers[last_block]}, after its ReLU, {cam_size}x{cam_size})"}
    ctx.save_figure(plot_examples(x, maps, labels, splits.test.mask[pick] if has_masks else None,
                                  ctx.dataset, layer_info), "attributions",
                    "Five attribution maps for the predicted class, one row per test image. Saliency and "
                    "Grad-CAM are never negative (white to red); occlusion, gradient x input and integrated "
                    "gradients are signed (red for the class, blue against it). Every map is scaled to its "
                    "own largest value, so compare places within a map, not colours across maps.")

    # --- faithfulness and masks on more images
    order = rng.permutation(len(splits.test.y))[:profile["scored"]]
    xs = torch.as_tensor(splits.test.x[order])
    curve_options = dict(step=profile["step"], seed=ctx.seed)
    curves, relevance, ig_gap = {}, {}, None
    for name in ctx.progress(METHOD_NAMES, "deletion/insertion"):
        result = methods[name].attribute(xs)
        relevance[name] = result.relevance
        if result.delta is not None:
            gained = (result.logits.gather(1, result.target[:, None])[:, 0]).abs()
            ig_gap = float((result.delta.abs() / gained.clamp(min=1e-6)).median())
        curves[name] = {"deletion": E.deletion_curve(model, xs, result.relevance, **curve_options),
                        "insertion": E.insertion_curve(model, xs, result.relevance, **curve_options)}
    curves["random order"] = {"deletion": E.deletion_curve(model, xs, "random", **curve_options),
                              "insertion": E.insertion_curve(model, xs, "random", **curve_options)}
    ctx.save_figure(plot_curves(curves, ctx.dataset, len(order)), "deletion_insertion",
                    "Deletion and insertion curves (mean over the scored test images) for each method and "
                    "for a random pixel order (dashed). A faithful map makes the probability fall fast when "
                    "its top pixels are blacked out (low deletion AUC) and rise fast when they are put into "
                    "a blurred copy (high insertion AUC). The AUCs are in the legends and the table.")

    def auc(name, kind):
        return curves[name][kind].mean_auc

    rows, metrics_methods = [], {}
    mask_fraction = None
    if has_masks:
        masks = torch.as_tensor(splits.test.mask[order])
        mask_fraction = float(masks.float().mean())
    for name in (*METHOD_NAMES, "random order"):
        row = {"method": name, "deletion AUC (lower better)": round(auc(name, "deletion"), 4),
               "insertion AUC (higher better)": round(auc(name, "insertion"), 4)}
        entry = {"deletion_auc": auc(name, "deletion"), "insertion_auc": auc(name, "insertion")}
        if has_masks:
            if name == "random order":
                share = hits = mask_fraction
            else:
                share = float(np.nanmean(E.mask_share(relevance[name], masks).numpy()))
                hits = float(E.pointing_game(relevance[name], masks).float().mean())
            row.update({"mask share": round(share, 4), "pointing game": round(hits, 4)})
            entry.update(mask_share=share, pointing_game=hits)
        rows.append(row)
        metrics_methods[name] = entry
    ctx.table("scores", rows,
              f"Mean over {len(order)} random {ctx.dataset} test images, explaining the predicted class. "
              "Deletion: probability of the class while the most relevant pixels are set to black, "
              f"{profile['step']} pixels per step; insertion: the same pixels put into a blurred copy. "
              "The last row orders the pixels at random, the baseline every method must beat."
              + (" Mask share: share of the positive relevance on the object; pointing game: share of "
                 "images whose most relevant pixel is on the object; for a random map both equal the "
                 "object's share of the pixels." if has_masks else ""))
    if has_masks:
        ctx.save_figure(plot_mask_scores(rows[:-1], mask_fraction, len(order)), "mask_scores",
                        "How well each map agrees with the true object (the shape's mask): the share of its "
                        "positive relevance on the object and how often its maximum lies on it, against what "
                        "a random map gets (dashed).")

    random_del = auc("random order", "deletion")
    best = min(METHOD_NAMES, key=lambda n: auc(n, "deletion"))
    beating = [n for n in METHOD_NAMES if auc(n, "deletion") < random_del]
    ctx.note(f"The CNN reaches {100 * info['test_accuracy']:.1f} % test accuracy (chance "
             f"{100 * info['chance']:.0f} %; {info['source']}).")
    ctx.note(f"Deletion AUC, random order {random_del:.3f}: " +
             ", ".join(f"{n} {auc(n, 'deletion'):.3f}" for n in METHOD_NAMES) +
             f". Most faithful by deletion: {best}; {len(beating)} of {len(METHOD_NAMES)} methods beat the "
             f"random order.")
    if has_masks:
        top = max(METHOD_NAMES, key=lambda n: metrics_methods[n]["mask_share"])
        ctx.note(f"On the object mask ({100 * mask_fraction:.0f} % of the pixels): {top} puts the largest share "
                 f"of its relevance on the object ({100 * metrics_methods[top]['mask_share']:.0f} %).")
    if ig_gap is not None:
        ctx.note(f"Integrated gradients with {profile['ig_steps']} steps: the median completeness gap "
                 f"|sum of attributions - (f(x) - f(black))| is {100 * ig_gap:.1f} % of the class logit.")

    return {
        "dataset": ctx.dataset, "model": info, "test_accuracy": info["test_accuracy"], "chance": info["chance"],
        "scored_images": len(order), "deletion_step_pixels": profile["step"],
        "methods": metrics_methods,
        "deletion_auc": {n: m["deletion_auc"] for n, m in metrics_methods.items()},
        "insertion_auc": {n: m["insertion_auc"] for n, m in metrics_methods.items()},
        "deletion_auc_random": random_del, "insertion_auc_random": auc("random order", "insertion"),
        "most_faithful_by_deletion": best, "methods_beating_random_deletion": beating,
        "mask_fraction": mask_fraction, "ig_steps": profile["ig_steps"], "ig_median_relative_gap": ig_gap,
    }
