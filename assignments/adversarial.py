"""ITU week 5, task 4: adversarial examples. FGSM and PGD under an L-infinity budget,
untargeted and targeted, against a small CNN trained here.

    data     shapes (10 classes of 32x32 colour shapes on clutter) or CIFAR-10 (--dataset cifar10)
    model    the interpretability drivers' small CNN (``_explain_common``), its normalisation inside:
             it takes images in [0, 1], so eps is in pixel units (8/255: 8 grey levels per pixel)
    attacks  ``reference_torch.explain.fgsm`` (one signed-gradient step) and ``pgd`` (projected steps
             from a random start), untargeted (the true class's loss up) and targeted (a chosen
             wrong class's loss down)
    outputs  accuracy against eps beside random noise of the same size and PGD's images saved as
             8-bit files (a budget under one grey level, 1/255, does not survive that), the targeted
             success rate, examples with the perturbation magnified and the predictions before and after
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch import explain as E
from reference_torch.explain.plots import perturbation_image

from . import _explain_common as C
from . import plots
from .runner import binomial_se, comma_list, positive_int

NAME = "adversarial"
COURSE = "ITU advanced ML"
TASK = "week 5, task 4"
SUMMARY = "FGSM and PGD (L-infinity, untargeted and targeted) on a small CNN: accuracy vs eps, examples"
STATEMENT = """
Attack a trained image classifier with adversarial examples: small changes to the
pixels, at most eps per pixel (an L-infinity budget, in pixel units of [0, 1]; the
normalisation is the model's first layer), chosen to change the prediction. The fast
gradient sign method (FGSM, Goodfellow et al. 2015) takes one step of size eps along the
sign of the gradient of the loss; projected gradient descent (PGD, Madry et al. 2018)
takes several smaller steps from a random point of the budget's ball and projects back
into it after each. Untargeted attacks push the loss of the true class up; targeted
attacks pull the loss of a chosen wrong class down, so that the model predicts that
class. Plot the accuracy against eps for both attacks and the success rate of the
targeted ones, and show examples: the clean image, the perturbation (magnified, it is
invisible at its true size), the adversarial image and the predictions before and after.
How small a budget suffices, and why is PGD stronger than FGSM at the same budget? Mind
that an image file holds whole grey levels: a budget below one grey level (eps < 1/255)
exists only in floating point and does not survive saving the image as an 8-bit PNG.
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True
THREADS = "small"
TORCH = True
# On top of the shared training settings: test images attacked, budgets (grey levels of 255), PGD steps, examples.
PROFILES = {
    "default": {**C.TRAINING, "images": 200, "eps_levels": (0, 0.25, 0.5, 1, 2, 4, 8, 32),
                "pgd_steps": 7, "examples": 5},
    "quick": {**C.QUICK_TRAINING, "images": 96, "eps_levels": (0, 0.25, 2, 8, 32), "pgd_steps": 5, "examples": 3},
}
DATASET_SETTINGS = C.DATASET_SETTINGS
ATTACKS = {"fgsm": "FGSM", "pgd": "PGD"}
UNTARGETED = {**ATTACKS, "pgd_8bit": "PGD 8-bit", "random_noise": "random noise"}  # the attacks, two references
# Slack for "monotone" and "PGD not weaker": one image in a few hundred may go either way
# (FGSM's single big step can overshoot; PGD's random start is random).
TOLERANCE = 0.02
# The examples' budget: the smallest where PGD's accuracy < the first and targeted PGD's hits >= the second.
EXAMPLES_ACCURACY_BELOW, EXAMPLES_HITS_AT_LEAST = 0.2, 0.5


def grey_level(text):
    """A budget in grey levels of 255: 8 is eps = 8/255 in [0, 1] pixel units."""
    level = float(text)
    if not 0 <= level <= 255:
        raise argparse.ArgumentTypeError(f"must be a grey level between 0 and 255, got {text} (8: eps = 8/255)")
    return level


grey_level.__name__ = "grey levels"


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--images", type=positive_int, help="test images attacked for the curves")
    parser.add_argument("--pgd-steps", type=positive_int, help="PGD steps")
    parser.add_argument("--eps", dest="eps_levels", type=comma_list(grey_level), metavar="LEVELS",
                        help="budgets in grey levels of 255, e.g. --eps 0,2,8 (eps = level / 255 in [0, 1] pixel "
                             "units; 0, the clean accuracy, is always added)")


def level_label(level):
    """8 -> '8/255', 0.5 -> '0.5/255', 0 -> '0'."""
    return "0" if level == 0 else f"{level:g}/255"


# ------------------------------------------------------------------------ attacks
def wrong_targets(labels, num_classes, rng):
    """A random class other than the true one for every image (the targeted attacks' goal)."""
    return (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes


def attack_curves(model, x, y, targets, eps_list, pgd_steps, seed):
    """Accuracy (untargeted) and target hit rate (targeted) at every eps, for FGSM and PGD,
    as lists in the order of ``eps_list``; beside them the accuracy under random +-eps noise
    and on PGD's images saved as 8-bit files (the same images, rounded to whole grey levels)."""
    attacks = {"fgsm": E.fgsm, "pgd": partial(E.pgd, steps=pgd_steps, seed=seed)}

    def share(images, labels):  # of the images classified as ``labels``
        with torch.no_grad():
            return float((model(images).argmax(1) == labels).float().mean())

    curves = defaultdict(list)
    for eps in eps_list:
        for name, attack in attacks.items():
            adversarial = x if eps == 0 else attack(model, x, y, eps)
            curves[name].append(share(adversarial, y))
            curves[f"{name}_targeted"].append(share(x if eps == 0 else attack(model, x, targets, eps, targeted=True),
                                                    targets))
            if name == "pgd":
                curves["pgd_8bit"].append(share(E.quantize(adversarial), y))
        curves["random_noise"].append(share(E.random_sign_noise(model, x, y, eps, seed=seed), y))
    return dict(curves)


def display_eps(eps_list, curves):
    """The budget to show examples at and whether it meets EXAMPLES_*: the smallest that does
    (perturbations still small, predictions already changed), else the largest."""
    for eps, accuracy, hits in zip(eps_list, curves["pgd"], curves["pgd_targeted"]):
        if eps > 0 and accuracy < EXAMPLES_ACCURACY_BELOW and hits >= EXAMPLES_HITS_AT_LEAST:
            return eps, True
    return max(eps_list), False


# ------------------------------------------------------------------------ figures
def plot_curves(curves, eps_levels, chance, clean, dataset, n_images, pgd_steps):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    x = np.asarray(eps_levels, dtype=float)
    names = {"fgsm": "FGSM", "pgd": f"PGD ({pgd_steps} steps)"}
    references = {"pgd_8bit": ("PGD, image saved as 8-bit", dict(color="tab:orange", ls="--", lw=1.3)),
                  "random_noise": ("random ±eps noise (not an attack)", dict(color="tab:green", ls="-.", lw=1.3))}
    panels = {"": (f"Untargeted: accuracy on {n_images} {dataset} test images", "accuracy (%)"),
              "_targeted": ("Targeted: images classified as the wanted wrong class", "target success rate (%)")}
    for ax, (suffix, (title, ylabel)) in zip(axes, panels.items()):
        plots.line_plot({name + (", targeted" if suffix else ""): (x, 100 * np.array(curves[a + suffix]))
                         for a, name in names.items()},
                        title, "budget eps (grey levels of 255; L-infinity, pixel space)", ylabel, ax=ax)
        if not suffix:
            for key, (label, style) in references.items():
                ax.plot(x, 100 * np.array(curves[key]), marker=".", label=label, **style)
            ax.axhline(100 * clean, color="0.3", ls=":", lw=1.2, label=f"clean accuracy ({100 * clean:.0f} %)")
        ax.axhline(100 * chance, color="0.5", ls="--", lw=1.2, label=f"chance ({100 * chance:.0f} %)")
        # below one grey level a perturbation exists only in floating point: an 8-bit file rounds it away
        ax.axvline(1, color="black", lw=1, ls=(0, (1, 2)))
        ax.annotate("one grey level (1/255)", (1, 80), xytext=(-3, 0), textcoords="offset points", fontsize=8,
                    ha="right", va="center", rotation=90)
        # eps 0 cannot go on a log axis: a symlog axis is linear below 0.5/255 and logarithmic above
        ax.set_xscale("symlog", linthresh=0.5)
        ax.set_xticks(x, [f"{level:g}" for level in x])
        ax.set(ylim=(-2, 102), xlim=(-0.1, 1.15 * x.max()))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_examples(x, adversarial, eps, describe, dataset):
    """One row per image (numpy, in [0, 1]): clean, then for each attack the magnified
    perturbation and the adversarial image, titles giving the predictions."""
    columns = ["clean"] + [c for name in adversarial for c in (f"{name}\nperturbation", f"{name}\nimage")]
    fig, axes = plt.subplots(len(x), len(columns), figsize=(1.75 * len(columns), 2.3 * len(x) + 0.8), squeeze=False)
    for r in range(len(x)):
        plots.show_image(axes[r, 0], x[r], describe(x[r:r + 1], r), fontsize=8)
        for a, (name, x_adv) in enumerate(adversarial.items()):
            delta = x_adv[r] - x[r]
            plots.show_image(axes[r, 1 + 2 * a], perturbation_image(delta, eps),
                             f"max |change| {255 * float(np.abs(delta).max()):.1f}/255", fontsize=8)
            plots.show_image(axes[r, 2 + 2 * a], x_adv[r], describe(x_adv[r:r + 1], r, name), fontsize=8)
    for c, title in enumerate(columns):
        axes[0, c].annotate(title, (0.5, 1.0), xycoords="axes fraction", xytext=(0, 34),
                            textcoords="offset points", ha="center", va="bottom", fontsize=9, weight="bold")
    fig.suptitle(f"Adversarial examples at eps = {level_label(round(255 * eps, 3))} ({dataset}); perturbations "
                 f"magnified {1 / (2 * eps):.0f}x: grey = unchanged, black/white = -eps/+eps", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    cfg, rng = ctx.config, ctx.rng()
    splits, model, info = C.data_and_model(ctx)
    # the first N test images: the same ones ``C.test_accuracy(..., limit=N)`` scores clean
    count = min(cfg.images, len(splits.test.y))
    y = splits.test.y[:count]
    x, targets = ctx.to_device(splits.test.x[:count]), ctx.to_device(wrong_targets(y, splits.num_classes, rng))
    clean = C.test_accuracy(ctx, model, splits.test, limit=count)
    eps_levels = sorted(set(cfg.eps_levels) | {0})  # eps 0 is the clean accuracy
    eps_list = [level / 255 for level in eps_levels]
    ctx.log(f"attacking {count} test images at eps = {', '.join(level_label(e) for e in eps_levels)}")
    curves = attack_curves(model, x, ctx.to_device(y), targets, eps_list, cfg.pgd_steps, ctx.seed)

    # ---- table and checks
    rows = [{"eps_level": level, "eps": eps, **{f"{a}_accuracy": curves[a][i] for a in UNTARGETED},
             **{f"{a}_targeted_success": curves[f"{a}_targeted"][i] for a in ATTACKS}}
            for i, (level, eps) in enumerate(zip(eps_levels, eps_list))]
    ctx.table("accuracy_vs_eps", rows, f"{count} {ctx.dataset} test images; clean accuracy {100 * clean:.1f} %. "
              "Untargeted: accuracy after the attack. Targeted: share of images the attack pushes into a random wrong "
              f"class chosen per image (at eps 0 the share the model already predicts). PGD: {cfg.pgd_steps} steps "
              "of 2.5 eps / steps from a random start in the ball; 'PGD 8-bit': its images rounded to whole grey "
              "levels, as an 8-bit PNG stores them; 'random noise': every pixel moved by +eps or -eps at random.",
              columns={"eps_level": ("eps (of 255)", "{:g}"), "eps": ("eps (pixel units)", "{:.5f}"),
                       **{f"{a}_accuracy": (f"{n} accuracy (%)", "{:.1%}") for a, n in UNTARGETED.items()},
                       **{f"{a}_targeted_success": (f"{n} targeted success (%)", "{:.1%}")
                          for a, n in ATTACKS.items()}})

    # the largest rise of each attack's accuracy from one eps to the next (0 if it never rises)
    rises = {a: max([0.0] + [later - earlier for earlier, later in zip(curves[a], curves[a][1:])]) for a in ATTACKS}
    pgd_gap = max(p - f for p, f in zip(curves["pgd"], curves["fgsm"]))  # > 0: PGD weaker somewhere
    checks = {
        # both count the same images, only in other ways: equal up to rounding
        "eps0_equals_clean": max(abs(curves[a][0] - clean) for a in ATTACKS) < 0.5 / count,
        **{f"{a}_largest_rise": rise for a, rise in rises.items()},
        **{f"{a}_monotone": rise <= TOLERANCE for a, rise in rises.items()},
        "pgd_minus_fgsm_worst": pgd_gap, "pgd_not_weaker": pgd_gap <= TOLERANCE,
        "falls_at_largest_eps": all(curves[a][-1] < clean for a in ATTACKS),
    }
    for name in (name for name, passed in checks.items() if passed is False):
        ctx.log(f"check failed: {name}")

    # ---- figures
    ctx.save_figure(plot_curves(curves, eps_levels, info["chance"], clean, ctx.dataset, count, cfg.pgd_steps),
                    "accuracy_vs_eps", "Left: accuracy under untargeted FGSM and PGD against the budget eps (in "
                    "grey levels; the axis is linear up to 0.5/255 and logarithmic above), beside PGD's images "
                    "saved as 8-bit files (rounded to whole grey levels) and random +-eps noise of the same size. "
                    "Right: share of images a targeted attack pushes into a randomly chosen wrong class. The "
                    "dotted line marks one grey level (1/255): a smaller budget does not survive an 8-bit file.")

    shown_eps, met = display_eps(eps_list, curves)
    shown = eps_list.index(shown_eps)
    pick = C.pick_examples(ctx, model, splits.test, cfg.examples, rng)
    y_show, t_show = splits.test.y[pick], wrong_targets(splits.test.y[pick], splits.num_classes, rng)
    x_show, pgd_attack = ctx.to_device(splits.test.x[pick]), partial(E.pgd, steps=cfg.pgd_steps, seed=ctx.seed)
    adversarial = {"FGSM": E.fgsm(model, x_show, ctx.to_device(y_show), shown_eps),
                   "PGD": pgd_attack(model, x_show, ctx.to_device(y_show), shown_eps),
                   "PGD targeted": pgd_attack(model, x_show, ctx.to_device(t_show), shown_eps, targeted=True)}

    def describe(image, row, attack=None):
        pred, prob = C.predictions(ctx, model, image)
        said = f"pred: {C.class_name(splits, pred[0])} ({prob[0]:.2f})"
        if attack is None:
            return f"true: {C.class_name(splits, y_show[row])}\n{said}"
        if not attack.endswith("targeted"):
            return f"{said}\n{'fooled' if pred[0] != y_show[row] else 'still right'}"
        return f"target: {C.class_name(splits, t_show[row])}\n{said}, {'hit' if pred[0] == t_show[row] else 'missed'}"

    rule = (f"untargeted PGD leaves fewer than {EXAMPLES_ACCURACY_BELOW:.0%} of the images correct and targeted "
            f"PGD hits at least {EXAMPLES_HITS_AT_LEAST:.0%} of its targets")
    ctx.save_figure(plot_examples(splits.test.x[pick], {k: v.cpu().numpy() for k, v in adversarial.items()},
                                  shown_eps, describe, ctx.dataset), "examples",
                    f"Test images the model classifies correctly, attacked at eps = {level_label(eps_levels[shown])} "
                    + (f"(the smallest budget at which {rule})" if met else f"(the largest budget; at none {rule})")
                    + ". For each attack: the perturbation, magnified so that the budget's edges are black and white, "
                    "and the adversarial image with the prediction (probability in brackets).")

    # ---- notes
    half = next((lv for lv, a in zip(eps_levels, curves["pgd"]) if a <= clean / 2), None)
    top = level_label(eps_levels[-1])
    C.note_accuracy(ctx, info)
    ctx.note(f"On the {count} attacked images the clean accuracy is {100 * clean:.1f} %. At eps = {top} FGSM "
             f"leaves {100 * curves['fgsm'][-1]:.1f} % and PGD {100 * curves['pgd'][-1]:.1f} % of the images "
             "correct; " + (f"PGD halves the accuracy from eps = {level_label(half)} on." if half is not None else
                            "PGD never halves the accuracy in this range.")
             + f" Targeted PGD at eps = {top} makes the model predict the wanted wrong class for "
             f"{100 * curves['pgd_targeted'][-1]:.1f} % of the images (FGSM: "
             f"{100 * curves['fgsm_targeted'][-1]:.1f} %).")
    fgsm_targeted = curves["fgsm_targeted"]
    if fgsm_targeted[-1] < max(fgsm_targeted) - TOLERANCE:
        peak = level_label(eps_levels[int(np.argmax(fgsm_targeted))])
        ctx.note(f"Targeted FGSM succeeds most often at eps = {peak} ({100 * max(fgsm_targeted):.1f} %) and less at "
                 "larger budgets: its single step of size eps follows the gradient at the clean image, which "
                 "describes the loss only nearby, so a large step overshoots. PGD's small steps re-read the gradient "
                 "and keep improving.")
    below = [i for i, lv in enumerate(eps_levels) if 0 < lv < 1]
    if below:
        ctx.note("A budget below one grey level (eps < 1/255) exists only in floating point: saving the adversarial "
                 "image as an 8-bit PNG rounds every pixel to a whole grey level, which erases changes under half a "
                 "level and turns larger ones into a whole level. PGD's accuracy, as computed and after saving: "
                 + ", ".join(f"{100 * curves['pgd'][i]:.1f} % and {100 * curves['pgd_8bit'][i]:.1f} % at eps = "
                             f"{level_label(eps_levels[i])}" for i in below) + f" (clean {100 * clean:.1f} %).")
    # the headline: PGD at the budget of the examples against noise of the same size
    attacked, noisy = curves["pgd"][shown], curves["random_noise"][shown]
    ctx.headline(f"PGD accuracy at eps = {level_label(eps_levels[shown])}", attacked, noisy,
                 "random ±eps noise of the same size", higher_is_better=False,
                 noise=float(np.hypot(binomial_se(attacked, count), binomial_se(noisy, count))))
    if not checks["pgd_not_weaker"]:
        ctx.note(f"PGD was weaker than FGSM at some budget by {100 * pgd_gap:.1f} points: more PGD steps "
                 "(--pgd-steps) should close the gap.")
    return {**C.model_metrics(ctx, info), "attacked_images": count, "clean_accuracy": clean,
            "pgd_steps": cfg.pgd_steps, "eps_levels": eps_levels, "examples_eps": shown_eps, "checks": checks,
            "examples_rule": {"pgd_accuracy_below": EXAMPLES_ACCURACY_BELOW, "targeted_hits_at_least":
                              EXAMPLES_HITS_AT_LEAST, "met": met}, "by_eps": rows, "grey_level": E.GREY_LEVEL}
