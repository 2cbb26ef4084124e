"""KTH advanced DL, ModelBias practical: find the model that learned a shortcut, from its
attributions alone.

    data     shapes (or CIFAR-10 with --dataset cifar10) twice: as it is, and with the
             ModelBias artifact, a small striped patch whose colour encodes the label
             (``minidl.data.add_bias_patch``); the images are otherwise the same
    models   the same small CNN trained twice, on the clean and on the artifact images,
             with the same settings; shown as "model A" and "model B" in an order drawn
             from --seed, so that the analysis cannot use which is which; saved as
             model_A.pt and model_B.pt, the files of the detective task: with
             ``--models A B`` the driver investigates two given models, truth unknown
    verdict  the five attribution methods on artifact test images; the model whose
             attributions put the larger share of their mass on the patch is named the
             biased one; only then is the truth looked up and the verdict checked
    check    accuracy on clean, artifact and misleading-artifact images (a patch of
             another class's colour): the biased model fails without its shortcut
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

import minidl.data
from reference_torch import explain as E
from reference_torch.explain import plots

from . import _explain_common as C
from .runner import small_model_threads

NAME = "model_bias"
COURSE = "KTH advanced DL"
TASK = "ModelBias practical"
SUMMARY = ("two CNNs, one trained with a label-colour artifact: accuracy on clean and artifact images, "
           "attributions of both, and a verdict on which is biased from the attribution mass on the patch")
STATEMENT = """
A dataset can contain a shortcut: here a small striped patch whose colour encodes the
label. A network trained on such images may learn to read the patch instead of the
object, reach a high test accuracy on images that have it, and fail on images that do
not. Train the same CNN twice on the same images, once with the patch and once without.
Pretend not to know which is which ("model A" and "model B") and find the biased one from
its explanations alone: run the attribution methods on images with the patch and measure
which share of each model's relevance falls on the patch, compared with the patch's share
of the pixels. Then check the verdict against the truth and against the accuracies on
clean images, on images with the patch, and on images whose patch shows another class's
colour. Which methods reveal the shortcut most clearly?
"""
DATASETS = ("shapes", "cifar10")
DEFAULT = True

# Training beyond _explain_common.TRAINING (see training_config).
TRAINING = {"quick": dict(n=3000, train_images=2500, epochs=3, batch_size=16)}

METHOD_NAMES = C.ATTRIBUTION_METHODS
SHOWN_METHODS = ("saliency", "Grad-CAM", "integrated gradients")  # in the example figure, per model
PROFILES = {  # examples shown, artifact test images scored, integrated-gradients steps
    "quick": dict(examples=3, scored=24, ig_steps=16),
    "full": dict(examples=4, scored=64, ig_steps=32),
}
MODEL_COLOURS = {"model A": "tab:blue", "model B": "tab:orange"}
PATCH_OUTLINE = "cyan"  # the patch colours are tab10, so none of them is cyan


def add_arguments(parser):
    C.add_model_arguments(parser, checkpoint=False)  # two models: trained here, or --models
    parser.add_argument("--models", nargs=2, default=None, metavar=("A", "B"),
                        help="investigate two model.pt files as model A and model B instead of training "
                             "them, e.g. the model_A.pt and model_B.pt a teacher's run wrote; the driver "
                             "then does not know which one is biased and gives its verdict unchecked")
    parser.add_argument("--scored-images", type=int, default=None,
                        help="artifact test images for the attribution shares (default 64)")


# ------------------------------------------------------------------------ data
def misleading_copy(splits, seed):
    """The clean test images with a patch in the colour of another, random class (the same
    place as their true patch): a model that reads the patch follows the wrong colour."""
    rng = np.random.default_rng(seed)
    y = splits.test.y
    wrong = (y + rng.integers(1, splits.num_classes, len(y))) % splits.num_classes
    x, _ = minidl.data.add_bias_patch(splits.test.x, wrong, seed=seed, avoid=splits.test.mask)
    return x, wrong


def accuracies(model, clean, biased, misleading_x, wrong):
    """Test accuracy on clean, artifact and misleading-artifact images, and how often the
    prediction on a misleading image is the class its patch's colour stands for."""
    pred_misleading, _ = C.predictions(model, misleading_x)
    return {"clean": C.test_accuracy(model, clean.test),
            "artifact": C.test_accuracy(model, biased.test),
            "misleading artifact": float((pred_misleading == clean.test.y).mean()),
            "follows the patch": float((pred_misleading == wrong).mean())}


# ------------------------------------------------------------------------ figures
def plot_examples(x, maps, patch, labels, dataset):
    fig = plots.attribution_grid(
        x, maps, row_labels=labels, outlines=patch, outline_color=PATCH_OUTLINE, outline_image=True,
        signed={key: C.SIGNED[key.split("\n")[1]] for key in maps},
        title=f"Where models A and B look on {dataset} test images with the artifact (cyan square: the "
              "patch whose colour encodes the label;\neach map scaled to its own maximum; red = evidence "
              "for the predicted class, blue = against)")
    return fig


def plot_shares(shares, area_fraction, n_images):
    """Grouped bars: per method, the share of each model's positive relevance on the patch."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    pos = np.arange(len(METHOD_NAMES))
    width = 0.38
    for i, (model, per_method) in enumerate(shares.items()):
        values = 100 * np.array([per_method[m] for m in METHOD_NAMES])
        bars = ax.bar(pos + (i - 0.5) * width, values, width, color=MODEL_COLOURS[model], label=model)
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=1)
    ax.axhline(100 * area_fraction, color="0.3", ls="--", lw=1.2,
               label=f"uniform map ({100 * area_fraction:.1f} %: the patch's share of the pixels)")
    ax.set_xticks(pos, METHOD_NAMES)
    top = max(100 * max(v.values()) for v in shares.values())
    ax.set(title=f"Share of the positive relevance on the artifact patch ({n_images} artifact test images)",
           xlabel="attribution method", ylabel="relevance mass on the patch (%)",
           ylim=(0, min(100, top * 1.2 + 5)))  # room above the tallest bar for its label
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_accuracies(acc, chance, dataset):
    """Grouped bars: accuracy of each model on clean, artifact and misleading-artifact images."""
    kinds = ("clean", "artifact", "misleading artifact")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    pos = np.arange(len(kinds))
    width = 0.38
    for i, (model, values) in enumerate(acc.items()):
        bars = ax.bar(pos + (i - 0.5) * width, [100 * values[k] for k in kinds], width,
                      color=MODEL_COLOURS[model], label=model)
        ax.bar_label(bars, fmt="%.0f", fontsize=8, padding=1)
    ax.axhline(100 * chance, color="0.3", ls="--", lw=1.2, label=f"chance ({100 * chance:.0f} %)")
    ax.set_xticks(pos, ["clean images", "with the artifact", "artifact of another class"])
    ax.set(title=f"Test accuracy of both models ({dataset})", xlabel="test images",
           ylabel="accuracy (%)", ylim=(0, 110))
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------ run
def run(ctx):
    with small_model_threads(ctx):
        return analyse(ctx)


def analyse(ctx):
    profile = C.attribution_profile(ctx, PROFILES)
    clean = C.load_data(ctx, bias=False)
    biased = C.load_data(ctx, bias=True)
    assert np.array_equal(clean.train.y, biased.train.y), "the two datasets must hold the same images"
    area_fraction = float(biased.test.patch_mask.mean())

    letters = ("model A", "model B")
    if ctx.args.models:  # the detective task: two given models, the truth unknown here
        trained_on = None
        models = {letter: C.load_model(path, clean, option="--models")
                  for letter, path in zip(letters, ctx.args.models)}
        infos = {letter: {"source": f"file {path}"} for letter, path in zip(letters, ctx.args.models)}
        ctx.log(f"investigating model A ({ctx.args.models[0]}) and model B ({ctx.args.models[1]})")
    else:
        # Train both, then hide which is which behind a seeded coin flip: from here until the
        # verdict the analysis only sees "model A" and "model B".
        trained = {"clean": C.get_model(ctx, clean, label="model trained on clean images", save_as=None),
                   "artifact": C.get_model(ctx, biased, label="model trained with the artifact", save_as=None)}
        shuffled = ctx.rng(101).permutation(["clean", "artifact"])
        trained_on = {"model A": str(shuffled[0]), "model B": str(shuffled[1])}  # looked at only at the end
        models = {letter: trained[trained_on[letter]][0] for letter in letters}
        infos = {letter: trained[trained_on[letter]][1] for letter in letters}
        for letter in letters:  # the two files a teacher hands out for --models
            C.save_model(models[letter], clean, Path(ctx.out) / f"model_{letter[-1]}.pt")

    misleading_x, wrong = misleading_copy(clean, ctx.seed + 1)
    acc = {letter: accuracies(model, clean, biased, misleading_x, wrong) for letter, model in models.items()}
    chance = 1 / clean.num_classes
    ctx.table("accuracy", [{"model": letter, **{f"{k} (%)": round(100 * v, 1) for k, v in a.items()}}
                           for letter, a in acc.items()],
              f"Test accuracy of both models on the {len(clean.test.y):,} {ctx.dataset} test images: without "
              "the patch (clean), with it (artifact) and with a patch in another class's colour (misleading "
              "artifact); 'follows the patch': how often the prediction on a misleading image is the class "
              f"of the patch's colour. Chance: {100 * chance:.0f} %.")
    ctx.save_figure(plot_accuracies(acc, chance, ctx.dataset), "accuracy",
                    "Accuracy of models A and B on clean test images, on the same images with the artifact "
                    "patch, and with a patch in the colour of another class. A model that reads the patch "
                    "does well only where the patch tells the truth.")

    # --- attributions of both models on artifact test images
    order = ctx.rng(3).permutation(len(biased.test.y))[:profile["scored"]]
    xs = torch.as_tensor(biased.test.x[order])
    patch = torch.as_tensor(biased.test.patch_mask[order])
    has_objects = ctx.dataset == "shapes"  # the object mask survives the patch (it avoids the object)
    objects = torch.as_tensor(biased.test.mask[order]) if has_objects else None
    shares, object_shares, rows = {}, {}, []
    for letter, model in models.items():
        methods = C.attribution_methods(model, biased.in_shape[1], profile["ig_steps"])
        shares[letter], object_shares[letter] = {}, {}
        for name in ctx.progress(METHOD_NAMES, f"attributions of {letter}"):
            relevance = methods[name].attribute(xs).relevance
            shares[letter][name] = float(np.nanmean(E.mask_share(relevance, patch).numpy()))
            row = {"model": letter, "method": name,
                   "on the patch (%)": round(100 * shares[letter][name], 1),
                   "times the patch's pixel share": round(shares[letter][name] / area_fraction, 1)}
            if has_objects:
                object_shares[letter][name] = float(np.nanmean(E.mask_share(relevance, objects).numpy()))
                row["on the object (%)"] = round(100 * object_shares[letter][name], 1)
            rows.append(row)
    ctx.table("attribution_shares", rows,
              f"Share of each model's positive relevance on the artifact patch, mean over {len(order)} artifact "
              f"test images, explaining the predicted class. The patch covers {100 * area_fraction:.1f} % of "
              "the pixels, so a map that ignores it puts about that share there"
              + ("; 'on the object': the share on the shape itself." if has_objects else "."))
    ctx.save_figure(plot_shares(shares, area_fraction, len(order)), "artifact_share",
                    "For each attribution method, the share of each model's positive relevance that lies on "
                    "the artifact patch, against the share a uniform map would put there (dashed).")

    # --- the verdict, from the attribution shares alone
    mean_share = {letter: float(np.mean(list(s.values()))) for letter, s in shares.items()}
    verdict = max(mean_share, key=mean_share.get)
    other = min(mean_share, key=mean_share.get)
    votes = sum(shares[verdict][m] > shares[other][m] for m in METHOD_NAMES)

    # --- the example figure: a few artifact images, three methods per model
    pick = C.pick_examples(models[verdict], biased.test, profile["examples"], ctx.rng(4))
    x = torch.as_tensor(biased.test.x[pick])
    maps = {}
    for letter, model in models.items():
        methods = C.attribution_methods(model, biased.in_shape[1], profile["ig_steps"])
        for name in SHOWN_METHODS:
            maps[f"{letter}\n{name}"] = methods[name].attribute(x).relevance
    predicted = {letter: C.predictions(model, biased.test.x[pick])[0] for letter, model in models.items()}
    labels = [f"true: {C.class_name(biased, biased.test.y[i])}\n"
              + "\n".join(f"{letter[-1]} says: {C.class_name(biased, predicted[letter][j])}" for letter in models)
              for j, i in enumerate(pick)]
    ctx.save_figure(plot_examples(x, maps, biased.test.patch_mask[pick], labels, ctx.dataset), "attributions",
                    f"Saliency, Grad-CAM and integrated gradients of model A and model B on {len(pick)} test "
                    "images with the artifact (cyan square); each model explains its own prediction "
                    "('A says', 'B says'). A map concentrated on the patch gives the shortcut away.")

    # --- only now: the truth (unknown when the models were given with --models)
    gap = {letter: acc[letter]["artifact"] - acc[letter]["clean"] for letter in models}
    rows = [{"model": letter, "mean share on the patch (%)": round(100 * mean_share[letter], 1),
             "verdict": "biased" if letter == verdict else "not biased",
             "artifact - clean accuracy (points)": round(100 * gap[letter], 1)} for letter in models]
    enrichment = mean_share[verdict] / area_fraction
    verdict_note = (f"Verdict from the attributions alone: {verdict} is biased. On artifact images it puts "
                    f"{100 * mean_share[verdict]:.1f} % of its relevance on the patch ({enrichment:.0f}x the "
                    f"patch's {100 * area_fraction:.1f} % of the pixels), {other} {100 * mean_share[other]:.1f} %; "
                    f"{votes} of {len(METHOD_NAMES)} methods agree.")
    caption = (f"The verdict names the model whose attributions put the larger share on the patch (mean over "
               f"the five methods; {votes} of {len(METHOD_NAMES)} methods agree).")
    if trained_on is None:
        truth = clean_letter = correct = None
        ctx.table("verdict", rows, caption + " The models were given, so which one was trained with the "
                  "artifact is not known here.")
        ctx.note(verdict_note)
        ctx.note("The models came from files (--models), so the verdict cannot be checked here. The accuracy "
                 "table is the independent evidence: a model that reads the patch scores far higher with it "
                 f"than without it ({verdict}: {100 * gap[verdict]:+.1f} points, {other}: "
                 f"{100 * gap[other]:+.1f}).")
    else:
        truth = next(letter for letter, kind in trained_on.items() if kind == "artifact")
        clean_letter = next(letter for letter, kind in trained_on.items() if kind == "clean")
        correct = verdict == truth
        for row, letter in zip(rows, models):
            row["trained on"] = ("images with the artifact" if trained_on[letter] == "artifact"
                                 else "clean images")
        ctx.table("verdict", rows, caption + " The 'trained on' column is looked up only after the verdict.")
        ctx.note(verdict_note)
        biased_acc, clean_acc = acc[truth], acc[clean_letter]
        ctx.note(f"Truth: {truth} was trained with the artifact, so the verdict is "
                 f"{'right' if correct else 'WRONG'}. "
                 f"Its accuracy is {100 * biased_acc['artifact']:.1f} % with the patch, "
                 f"{100 * biased_acc['clean']:.1f} % without it and "
                 f"{100 * biased_acc['misleading artifact']:.1f} % with another class's patch (it follows "
                 f"the patch's colour in {100 * biased_acc['follows the patch']:.0f} % of those); the "
                 f"clean-trained model ({clean_letter}): {100 * clean_acc['clean']:.1f} % on clean images, "
                 f"{100 * clean_acc['artifact']:.1f} % with the patch.")

    def model_summary(letter):
        return {"trained_with_artifact": None if trained_on is None else trained_on[letter] == "artifact",
                "accuracy": acc[letter], "artifact_minus_clean_accuracy": gap[letter],
                "patch_share": shares[letter], "mean_patch_share": mean_share[letter],
                "object_share": object_shares[letter] or None,
                "training": {k: v for k, v in infos[letter].items() if k not in ("test_accuracy", "chance")}}

    return {
        "dataset": ctx.dataset, "chance": chance, "scored_images": len(order),
        "patch_area_fraction": area_fraction, "ig_steps": profile["ig_steps"],
        "models": {letter: model_summary(letter) for letter in models},
        "verdict": {"biased_model": verdict, "methods_agreeing": votes,
                    "mean_patch_share": mean_share, "truth": truth, "correct": correct},
        "verdict_correct": correct,
        "biased_model_accuracy_gap": None if truth is None else gap[truth],
        "clean_model_accuracy_gap": None if clean_letter is None else gap[clean_letter],
    }
