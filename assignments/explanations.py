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
from .runner import beyond_noise, positive_int

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
images. Then measure how faithful each map is: replace the pixels by those of a blurred
copy in the order of their relevance and record the probability of the class (deletion:
it should fall fast, a low area under the curve), or put them into the blurred copy
(insertion: it should rise fast, a high area), and compare with a random pixel order,
over enough images to tell a difference from noise. Where the true object is known (the
shapes dataset), also report which share of the relevance lies on the object and how
often the most relevant pixel hits it (the pointing game). Which method is the most
faithful, and do faithfulness and agreement with the object go together?
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True
# On top of the shared training settings (the same model as the other interpretability
# drivers', trained once and cached): examples shown, test images scored, pixels changed
# per curve step (of 1,024: 33 points per curve) and integrated-gradients steps. On 80
# images the standard error of a method's paired AUC difference to the random order is
# about 0.012 (measured: 0.010-0.016 on 100 images), a tenth of the differences seen.
PROFILES = {
    "default": {**C.TRAINING, "examples": 6, "scored": 80, "step": 32, "ig_steps": 32},
    "quick": {**C.QUICK_TRAINING, "epochs": 3, "examples": 3, "scored": 12, "step": 64, "ig_steps": 16},
}
SUBSTRATE = "blur"  # where deleted pixels go: the blurred copy insertion starts from (see run)
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
            (axes[0], "deletion", f"Deletion: most relevant pixels replaced by a blurred copy first\n(lower is "
                                  f"better; mean over {n_images} {dataset} test images)"),
            (axes[1], "insertion", f"Insertion: most relevant pixels put into the blurred copy first\n(higher is "
                                   f"better; mean over {n_images} images)")):
        curve_panel(ax, fractions, {LABELS[n]: c[kind].scores for n, c in curves.items()}, title,
                    "probability of the predicted class", styles)
    fig.tight_layout()
    return fig


def plot_differences(differences, n_images):
    """Each method's AUC minus the random order's (paired, per image), ± one standard error."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, kind, title, better in ((axes[0], "deletion", "Deletion AUC minus random order's", "below 0"),
                                    (axes[1], "insertion", "Insertion AUC minus random order's", "above 0")):
        plots.bar_chart({C.METHODS[m]: differences[m][kind][0] for m in C.METHODS}, f"{title} (better: {better})",
                        "AUC difference (mean over images)", ax=ax, fmt="{:+.3f}",
                        errors={C.METHODS[m]: differences[m][kind][1] for m in C.METHODS},
                        colors=[COLOURS[m] for m in C.METHODS], xlabel="method", rotation=20)
        low = min(differences[m][kind][0] - differences[m][kind][1] for m in C.METHODS)
        high = max(differences[m][kind][0] + differences[m][kind][1] for m in C.METHODS)
        ax.set_ylim(min(0, low) * 1.3 - 0.01, max(0, high) * 1.3 + 0.01)
        ax.axhline(0, color="0.3", lw=1)
    fig.suptitle(f"Faithfulness against a random pixel order ({n_images} test images; error bars: one standard "
                 "error of the paired difference)")
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


def describe_difference(difference):
    """'-0.012 ± 0.003, beyond noise': a paired difference and whether it exceeds two standard errors."""
    mean, se = difference
    return f"{mean:+.3f} ± {se:.3f}" + (", beyond noise" if beyond_noise(mean, se) else ", within noise")


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
    fig.supxlabel(f"occlusion: drop of the class probability under an {methods['occlusion'].patch[0]}-px grey "
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
    for name in ctx.progress([RANDOM, *C.METHODS], "deletion/insertion"):
        result = "random" if name == RANDOM else methods[name].attribute(xs)
        if name == "integrated_gradients":  # completeness: attributions sum to f(x) - f(black)
            gained = result.logits.gather(1, result.target[:, None])[:, 0].abs()
            ig_gap = float((result.delta.abs() / gained.clamp(min=1e-6)).median())
        curves[name] = {"deletion": E.deletion_curve(model, xs, result, substrate=SUBSTRATE, **options),
                        "insertion": E.insertion_curve(model, xs, result, **options)}
        scores[name] = {f"{kind}_{key}": getattr(curve, attribute) for kind, curve in curves[name].items()
                        for key, attribute in (("auc", "mean_auc"), ("se", "auc_se"))}
        if has_masks and name == RANDOM:  # a random map puts the object's share of the pixels on it
            scores[name].update(mask_share=mask_fraction, pointing_game=mask_fraction)
        elif has_masks:
            scores[name].update(mask_share=float(E.mask_share(result.relevance, masks).nanmean()),
                                pointing_game=float(E.pointing_game(result.relevance, masks).float().mean()))
    scores = {name: scores[name] for name in [*C.METHODS, RANDOM]}  # the random order last
    # each method against the random order on the same images: the paired difference of the AUCs
    differences = {m: {kind: E.auc_difference(curves[m][kind], curves[RANDOM][kind]) for kind in curves[m]}
                   for m in C.METHODS}
    for m in C.METHODS:
        scores[m].update(deletion_vs_random=differences[m]["deletion"][0],
                         deletion_vs_random_se=differences[m]["deletion"][1])
    n = len(order)
    ctx.save_figure(plot_curves(curves, ctx.dataset, n), "deletion_insertion",
                    f"Deletion and insertion curves (mean over {n} test images) for each method and for a random "
                    "pixel order (dashed). A faithful map makes the probability fall fast when its top pixels are "
                    "replaced by those of a blurred copy (low deletion AUC) and rise fast when they are put into "
                    "the blurred copy (high insertion AUC). Legends: AUC, mean ± standard error over the images.")
    ctx.save_figure(plot_differences(differences, n), "faithfulness_vs_random",
                    "Each method's deletion AUC (left) and insertion AUC (right) minus the random order's on the "
                    f"same images, mean over {n} images, error bars one standard error of that paired "
                    "difference. A bar more than two error bars from 0 is a difference beyond noise.")
    auc_column = {"deletion": "deletion AUC (lower is better)", "insertion": "insertion AUC (higher is better)"}
    ctx.table("scores", [{"method": LABELS[name], **s} for name, s in scores.items()],
              f"Mean over {n} random {ctx.dataset} test images, explaining the predicted class, ± its standard "
              f"error over the images. Deletion: probability of the class while the most relevant pixels are "
              f"replaced by those of a blurred copy (gaussian, sigma 5 px), {cfg.step} pixels per step; "
              "insertion: the same pixels put into the blurred copy. The last row orders the pixels at random, "
              "the baseline every method must beat; 'vs random': the paired difference to it on the same images."
              + (" Mask share: share of the positive relevance on the object; pointing game: share of "
                 "images whose most relevant pixel is on the object; for a random map both equal the "
                 "object's share of the pixels." if has_masks else ""),
              columns={"method": "method",
                       **{k: v for kind, label in auc_column.items()
                          for k, v in ((f"{kind}_auc", (label, "{:.3f}")), (f"{kind}_se", ("± s.e.", "{:.3f}")))},
                       "deletion_vs_random": ("deletion AUC vs random", "{:+.3f}"),
                       "deletion_vs_random_se": ("± s.e.", "{:.3f}"),
                       "mask_share": ("mask share (%)", "{:.1%}"), "pointing_game": ("pointing game (%)", "{:.1%}")})
    if has_masks:
        ctx.save_figure(plot_mask_scores(scores, mask_fraction, n), "mask_scores",
                        "How well each map agrees with the true object (the shape's mask): the share of its "
                        "positive relevance on the object and how often its maximum lies on it, against what "
                        "a random map gets (dashed).")

    deletion = {name: s["deletion_auc"] for name, s in scores.items()}
    best, runner_up = sorted(C.METHODS, key=deletion.get)[:2]
    beating = [m for m in C.METHODS if differences[m]["deletion"][0] < -2 * differences[m]["deletion"][1]]
    C.note_accuracy(ctx, info)
    ctx.note(f"Deletion AUC (mean over {n} images; pixels to a blurred copy), random order "
             f"{deletion[RANDOM]:.3f}; each method minus the random order, ± one standard error: "
             + "; ".join(f"{C.METHODS[m]} {describe_difference(differences[m]['deletion'])}" for m in C.METHODS)
             + f". {len(beating)} of {len(C.METHODS)} methods delete faster than the random order by more than two "
               "standard errors.")
    between = E.auc_difference(curves[best]["deletion"], curves[runner_up]["deletion"])
    ctx.note(f"Most faithful by deletion: {C.METHODS[best]}; against the next, {C.METHODS[runner_up]}, its deletion "
             f"AUC differs by {describe_difference(between)} (picked as the best of five on these images, so a small "
             "lead is weaker evidence than its standard error suggests).")
    ctx.headline(f"deletion AUC, {C.METHODS[best]}", deletion[best], deletion[RANDOM], "random pixel order",
                 noise=differences[best]["deletion"][1], unit="", higher_is_better=False)
    if has_masks:
        top = max(C.METHODS, key=lambda m: scores[m]["mask_share"])
        ctx.note(f"On the object mask ({100 * mask_fraction:.0f} % of the pixels): {C.METHODS[top]} puts the largest "
                 f"share of its relevance on the object ({100 * scores[top]['mask_share']:.0f} %).")
    ctx.note(f"Integrated gradients with {cfg.ig_steps} steps: the median completeness gap "
             f"|sum of attributions - (f(x) - f(black))| is {100 * ig_gap:.1f} % of the class logit.")
    return {**C.model_metrics(ctx, info),
            "scored_images": n, "deletion_step_pixels": cfg.step, "deletion_substrate": SUBSTRATE,
            "methods": scores, "differences_to_random": differences, "most_faithful_by_deletion": best,
            "best_minus_runner_up_deletion": between, "methods_beating_random_deletion": beating,
            "mask_fraction": mask_fraction, "ig_steps": cfg.ig_steps, "ig_median_relative_gap": ig_gap}
