"""ITU week 5, task 4: adversarial examples. FGSM and PGD under an L-infinity budget,
untargeted and targeted, against a small CNN trained here.

    data     shapes (10 classes of 32x32 colour shapes on clutter) or CIFAR-10
             (--dataset cifar10 --data-dir ...)
    model    the interpretability drivers' small CNN with its normalisation inside
             (``_explain_common``): it takes images in [0, 1], so the budget eps is in
             pixel units (eps = 8/255: every pixel may move by 8 grey levels)
    attacks  ``reference_torch.explain.fgsm`` (one signed-gradient step) and ``pgd``
             (several projected steps from a random start), each untargeted (push the
             true class's loss up) and targeted (pull a chosen wrong class's loss down)
    outputs  accuracy against eps for both attacks, the targeted success rate against
             eps, and example images with the perturbation magnified and the
             predictions before and after
"""
from __future__ import annotations

from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch

from reference_torch import explain as E
from reference_torch.explain import plots

from . import _explain_common as C
from .runner import small_model_threads

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
How small a budget suffices, and why is PGD stronger than FGSM at the same budget?
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True

# Per profile: test images attacked, budgets (in grey levels of 255), PGD steps, examples shown.
PROFILES = {
    "quick": dict(images=96, eps_levels=(0, 2, 8, 32), pgd_steps=5, examples=3),
    "full": dict(images=300, eps_levels=(0, 0.5, 1, 2, 4, 8, 16, 32), pgd_steps=10, examples=5),
}
COLOURS = {"FGSM": "tab:orange", "PGD": "tab:red"}
# Slack for "monotone" and "PGD not weaker": one image in a few hundred may go either way
# (FGSM's single big step can overshoot; PGD's random start is random).
TOLERANCE = 0.02


def add_arguments(parser):
    C.add_model_arguments(parser)
    parser.add_argument("--images", type=int, default=None,
                        help="test images attacked for the curves (default 300; quick 96)")
    parser.add_argument("--pgd-steps", type=int, default=None, help="PGD steps (default 10; quick 5)")
    parser.add_argument("--eps", type=float, nargs="+", default=None, metavar="LEVELS",
                        help="budgets in grey levels of 255, e.g. --eps 0 2 8 (default 0 0.5 1 2 4 8 16 32); "
                             "each must lie in [0, 255] (eps = level / 255 in [0, 1] pixel units)")


def profile_for(ctx):
    """The profile, with the command line's --images, --pgd-steps and --eps checked and applied."""
    profile = dict(PROFILES["quick" if ctx.quick else "full"])
    args = ctx.args
    if args.images is not None:
        if args.images < 1:
            raise SystemExit(f"{NAME}: --images must be at least 1, got {args.images}")
        profile["images"] = args.images
    if args.pgd_steps is not None:
        if args.pgd_steps < 1:
            raise SystemExit(f"{NAME}: --pgd-steps must be at least 1, got {args.pgd_steps}")
        profile["pgd_steps"] = args.pgd_steps
    if args.eps is not None:
        bad = [e for e in args.eps if not 0 <= e <= 255]
        if bad:
            raise SystemExit(f"{NAME}: --eps takes budgets in grey levels between 0 and 255, got {bad} "
                             "(8 means eps = 8/255 in [0, 1] pixel units)")
        profile["eps_levels"] = tuple(sorted(set(args.eps) | {0}))  # eps 0 is the clean accuracy
    return profile


def level_label(level):
    """8 -> '8/255', 0.5 -> '0.5/255', 0 -> '0'."""
    return "0" if level == 0 else f"{level:g}/255"


# ------------------------------------------------------------------------ attacks
def wrong_targets(labels, num_classes, rng):
    """A random class other than the true one for every image (the targeted attacks' goal)."""
    return (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes


def attack_curves(model, x, y, targets, eps_list, pgd_steps, seed):
    """Accuracy (untargeted) and target hit rate (targeted) at every eps, for FGSM and PGD.

    A targeted attack's 'accuracy' against the wanted labels is its success rate, so the
    same ``accuracy_under_attack`` measures both."""
    attacks = {"FGSM": E.fgsm, "PGD": partial(E.pgd, steps=pgd_steps, seed=seed)}
    curves = {}
    for name, attack in attacks.items():
        curves[name] = E.accuracy_under_attack(model, (x, y), attack, eps_list)
        curves[f"{name} targeted"] = E.accuracy_under_attack(model, (x, targets),
                                                             partial(attack, targeted=True), eps_list)
    return curves


def display_eps(eps_list, curves):
    """The budget to show examples at: the smallest where untargeted PGD leaves under 20 % of
    the images correct and targeted PGD hits its target for at least half (perturbations still
    small, predictions already changed), else the largest."""
    for eps in eps_list:
        if eps > 0 and curves["PGD"][eps] < 0.2 and curves["PGD targeted"][eps] >= 0.5:
            return eps
    return max(eps_list)


# ------------------------------------------------------------------------ figures
def plot_curves(curves, eps_levels, chance, clean, dataset, n_images, pgd_steps):
    fig, (ax_acc, ax_hit) = plt.subplots(1, 2, figsize=(12, 4.4))
    # eps 0 cannot go on a log axis: a symlog axis is linear below 0.5/255 and logarithmic above
    x = np.asarray(eps_levels, dtype=float)
    for name in ("FGSM", "PGD"):
        label = name if name == "FGSM" else f"PGD ({pgd_steps} steps)"
        ax_acc.plot(x, 100 * np.array(list(curves[name].values())), "-o", color=COLOURS[name], label=label)
        ax_hit.plot(x, 100 * np.array(list(curves[f"{name} targeted"].values())), "-o", color=COLOURS[name],
                    label=f"{label}, targeted")
    ax_acc.axhline(100 * clean, color="0.3", ls=":", lw=1.2, label=f"clean accuracy ({100 * clean:.0f} %)")
    ax_acc.axhline(100 * chance, color="0.5", ls="--", lw=1.2, label=f"chance ({100 * chance:.0f} %)")
    ax_hit.axhline(100 * chance, color="0.5", ls="--", lw=1.2, label=f"chance ({100 * chance:.0f} %)")
    ax_acc.set(title=f"Untargeted: accuracy on {n_images} {dataset} test images", ylabel="accuracy (%)")
    ax_hit.set(title="Targeted: images classified as the wanted wrong class", ylabel="target success rate (%)")
    for ax in (ax_acc, ax_hit):
        ax.set_xscale("symlog", linthresh=0.5)
        ax.set_xticks(x, [f"{level:g}" for level in x])
        ax.set(xlabel="budget eps (grey levels of 255; L-infinity, pixel space)", ylim=(-2, 102),
               xlim=(-0.1, 1.15 * x.max()))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_examples(x, adversarial, eps, describe, dataset):
    """One row per image: clean, then for each attack the magnified perturbation and the
    adversarial image, titles giving the predictions."""
    columns = ["clean"] + [c for name in adversarial for c in (f"{name}\nperturbation", f"{name}\nimage")]
    rows = len(x)
    fig, axes = plt.subplots(rows, len(columns), figsize=(1.75 * len(columns), 2.0 * rows + 0.8),
                             squeeze=False)
    for r in range(rows):
        plots.show_image(axes[r, 0], x[r], describe(x[r:r + 1], r), fontsize=8)
        for a, (name, x_adv) in enumerate(adversarial.items()):
            delta = x_adv[r] - x[r]
            axes[r, 1 + 2 * a].imshow(plots.image_for_display(plots.perturbation_image(delta, eps)),
                                      cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            axes[r, 1 + 2 * a].set_xticks([])
            axes[r, 1 + 2 * a].set_yticks([])
            axes[r, 1 + 2 * a].set_title(f"max |change| {255 * float(delta.abs().max()):.1f}/255", fontsize=8)
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
    profile = profile_for(ctx)
    splits = C.load_data(ctx)
    with small_model_threads(ctx):
        return attack_model(ctx, splits, profile)


def attack_model(ctx, splits, profile):
    model, info = C.get_model(ctx, splits)
    rng = ctx.rng()
    # the first N test images: the same ones ``C.test_accuracy(..., limit=N)`` scores clean
    count = min(profile["images"], len(splits.test.y))
    x = torch.as_tensor(splits.test.x[:count])
    y = torch.as_tensor(splits.test.y[:count]).long()
    targets = torch.as_tensor(wrong_targets(splits.test.y[:count], splits.num_classes, rng)).long()
    clean = C.test_accuracy(model, splits.test, limit=count)
    eps_levels = profile["eps_levels"]
    eps_list = [level / 255 for level in eps_levels]
    ctx.log(f"attacking {count} test images at eps = {', '.join(level_label(e) for e in eps_levels)}")
    curves = attack_curves(model, x, y, targets, eps_list, profile["pgd_steps"], ctx.seed)

    # ---- table and checks
    rows = []
    for level, eps in zip(eps_levels, eps_list):
        rows.append({"eps (of 255)": level, "eps (pixel units)": round(eps, 5),
                     "FGSM accuracy (%)": round(100 * curves["FGSM"][eps], 1),
                     "PGD accuracy (%)": round(100 * curves["PGD"][eps], 1),
                     "FGSM targeted success (%)": round(100 * curves["FGSM targeted"][eps], 1),
                     "PGD targeted success (%)": round(100 * curves["PGD targeted"][eps], 1)})
    ctx.table("accuracy_vs_eps", rows,
              f"{count} {ctx.dataset} test images; clean accuracy {100 * clean:.1f} %. Untargeted: accuracy "
              "after the attack. Targeted: share of images the attack pushes into a random wrong class chosen "
              f"per image (at eps 0 the share the model already predicts). PGD: {profile['pgd_steps']} steps of "
              "2.5 eps / steps from a random start in the ball.")

    def drops(curve):  # largest rise of accuracy from one eps to the next (0 if it never rises)
        values = [curve[e] for e in eps_list]
        return max([0.0] + [b - a for a, b in zip(values, values[1:])])

    pgd_gap = max(curves["PGD"][e] - curves["FGSM"][e] for e in eps_list)  # > 0: PGD weaker somewhere
    largest = eps_list[-1]
    checks = {
        # both count the same images, only in other ways: equal up to rounding
        "eps0_equals_clean": max(abs(curves[n][0.0] - clean) for n in ("FGSM", "PGD")) < 0.5 / count,
        "fgsm_largest_rise": drops(curves["FGSM"]), "pgd_largest_rise": drops(curves["PGD"]),
        "fgsm_monotone": drops(curves["FGSM"]) <= TOLERANCE, "pgd_monotone": drops(curves["PGD"]) <= TOLERANCE,
        "pgd_minus_fgsm_worst": pgd_gap, "pgd_not_weaker": pgd_gap <= TOLERANCE,
        "falls_at_largest_eps": curves["PGD"][largest] < clean and curves["FGSM"][largest] < clean,
    }
    for name, passed in checks.items():
        if isinstance(passed, bool) and not passed:
            ctx.log(f"check failed: {name}")

    # ---- figures
    ctx.save_figure(plot_curves(curves, eps_levels, info["chance"], clean, ctx.dataset, count,
                                profile["pgd_steps"]), "accuracy_vs_eps",
                    "Left: accuracy under untargeted FGSM and PGD against the budget eps (in grey levels; the "
                    "axis is linear up to 0.5/255 and logarithmic above). Right: share of images a targeted "
                    "attack pushes into a randomly chosen wrong class. PGD's several projected steps find "
                    "stronger perturbations than FGSM's single step at the same budget.")

    shown_eps = display_eps(eps_list, curves)
    pick = C.pick_examples(model, splits.test, profile["examples"], rng)
    x_show = torch.as_tensor(splits.test.x[pick])
    y_show = torch.as_tensor(splits.test.y[pick]).long()
    t_show = torch.as_tensor(wrong_targets(splits.test.y[pick], splits.num_classes, rng)).long()
    pgd_attack = partial(E.pgd, steps=profile["pgd_steps"], seed=ctx.seed)
    adversarial = {"FGSM": E.fgsm(model, x_show, y_show, shown_eps),
                   "PGD": pgd_attack(model, x_show, y_show, shown_eps),
                   "PGD targeted": pgd_attack(model, x_show, t_show, shown_eps, targeted=True)}

    def describe(image, row, attack=None):
        pred, prob = C.predictions(model, image.numpy())
        name = C.class_name(splits, pred[0])
        if attack is None:
            return f"true: {C.class_name(splits, y_show[row])}\npred: {name} ({prob[0]:.2f})"
        if attack.endswith("targeted"):
            hit = "hit" if pred[0] == t_show[row] else "missed"
            return f"target: {C.class_name(splits, t_show[row])}\npred: {name} ({prob[0]:.2f}), {hit}"
        flipped = "fooled" if pred[0] != y_show[row] else "still right"
        return f"pred: {name} ({prob[0]:.2f})\n{flipped}"

    ctx.save_figure(plot_examples(x_show, adversarial, shown_eps, describe, ctx.dataset), "examples",
                    f"Test images the model classifies correctly, attacked at eps = "
                    f"{level_label(round(255 * shown_eps, 3))} (the smallest budget at which untargeted PGD "
                    "leaves fewer than 20 % of the images correct and targeted PGD hits at least half of its "
                    "targets). For each attack: the perturbation, magnified so that "
                    "the budget's edges are black and white, and the adversarial image with the prediction "
                    "(probability in brackets). The adversarial images look like the clean ones.")

    # ---- notes
    half = next((lv for lv, e in zip(eps_levels, eps_list) if curves["PGD"][e] <= clean / 2), None)
    ctx.note(f"The CNN reaches {100 * info['test_accuracy']:.1f} % test accuracy (chance "
             f"{100 * info['chance']:.0f} %; {info['source']}); on the {count} attacked images "
             f"{100 * clean:.1f} %.")
    ctx.note(f"At eps = {level_label(eps_levels[-1])} FGSM leaves {100 * curves['FGSM'][largest]:.1f} % and PGD "
             f"{100 * curves['PGD'][largest]:.1f} % of the images correct; "
             + (f"PGD halves the accuracy from eps = {level_label(half)} on." if half is not None else
                "PGD never halves the accuracy in this range."))
    ctx.note(f"Targeted PGD at eps = {level_label(eps_levels[-1])} makes the model predict the wanted wrong "
             f"class for {100 * curves['PGD targeted'][largest]:.1f} % of the images (FGSM: "
             f"{100 * curves['FGSM targeted'][largest]:.1f} %).")
    fgsm_targeted = [curves["FGSM targeted"][e] for e in eps_list]
    if fgsm_targeted[-1] < max(fgsm_targeted) - TOLERANCE:
        peak = eps_levels[int(np.argmax(fgsm_targeted))]
        ctx.note(f"Targeted FGSM succeeds most often at eps = {level_label(peak)} "
                 f"({100 * max(fgsm_targeted):.1f} %) and less at larger budgets: its single step of size eps "
                 "follows the gradient at the clean image, which describes the loss only nearby, so a large "
                 "step overshoots. PGD's small steps re-read the gradient and keep improving.")
    if not checks["pgd_not_weaker"]:
        ctx.note(f"PGD was weaker than FGSM at some budget by {100 * pgd_gap:.1f} points: more PGD steps "
                 "(--pgd-steps) should close the gap.")

    def by_level(curve):
        return {level_label(level): curve[eps] for level, eps in zip(eps_levels, eps_list)}

    return {
        "dataset": ctx.dataset, "model": info, "test_accuracy": info["test_accuracy"], "chance": info["chance"],
        "attacked_images": count, "clean_accuracy": clean, "pgd_steps": profile["pgd_steps"],
        "eps_levels": list(eps_levels), "eps": eps_list,
        "accuracy": {"fgsm": by_level(curves["FGSM"]), "pgd": by_level(curves["PGD"])},
        "targeted_success": {"fgsm": by_level(curves["FGSM targeted"]), "pgd": by_level(curves["PGD targeted"])},
        "examples_eps": shown_eps, "checks": checks, "table": rows,
    }
