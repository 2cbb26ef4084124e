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

import numpy as np

import minidl.data
from reference_torch import explain as E
from reference_torch.explain.plots import attribution_grid

from . import _explain_common as C
from . import plots
from .runner import binomial_se, positive_int

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
THREADS = "small"
TORCH = True
# On top of the shared training settings: examples shown, artifact test images scored and
# integrated-gradients steps. The quick models train on more images in smaller batches
# than the other drivers' so that the artifact model learns its shortcut in seconds.
PROFILES = {
    "default": {**C.TRAINING, "examples": 4, "scored": 64, "ig_steps": 32},
    "quick": {**C.QUICK_TRAINING, "shapes_images": 3000, "train_images": 2500, "epochs": 3, "batch_size": 16,
              "examples": 3, "scored": 24, "ig_steps": 16},
}
DATASET_SETTINGS = C.DATASET_SETTINGS
MODELS = {"model_a": "model A", "model_b": "model B"}
SHOWN_METHODS = ("saliency", "gradcam", "integrated_gradients")  # in the example figure, per model
MODEL_COLOURS = ("tab:blue", "tab:orange")
PATCH_OUTLINE = "cyan"  # the patch colours are tab10, so none of them is cyan
KINDS = {"clean": "clean images", "artifact": "with the artifact", "misleading_artifact": "artifact of another class"}


def add_arguments(parser):
    C.add_model_arguments(parser, checkpoint=False)  # two models: trained here, or --models
    parser.add_argument("--models", nargs=2, type=C.model_file, default=None, metavar=("A", "B"),
                        help="investigate two model.pt files as model A and model B instead of training "
                             "them, e.g. the model_A.pt and model_B.pt a teacher's run wrote; the driver "
                             "then does not know which one is biased and gives its verdict unchecked")
    parser.add_argument("--scored-images", dest="scored", type=positive_int,
                        help="artifact test images for the attribution shares")


# ------------------------------------------------------------------------ data
def misleading_copy(splits, seed):
    """The clean test images with a patch in the colour of another, random class (the same
    place as their true patch): a model that reads the patch follows the wrong colour."""
    rng = np.random.default_rng(seed)
    y = splits.test.y
    wrong = (y + rng.integers(1, splits.num_classes, len(y))) % splits.num_classes
    x, _ = minidl.data.add_bias_patch(splits.test.x, wrong, seed=seed, avoid=splits.test.mask)
    return x, wrong


def accuracies(ctx, model, clean, biased, misleading_x, wrong):
    """Test accuracy on clean, artifact and misleading-artifact images, and how often the
    prediction on a misleading image is the class its patch's colour stands for."""
    pred_misleading, _ = C.predictions(ctx, model, misleading_x)
    return {"clean": C.test_accuracy(ctx, model, clean.test), "artifact": C.test_accuracy(ctx, model, biased.test),
            "misleading_artifact": float((pred_misleading == clean.test.y).mean()),
            "follows_patch": float((pred_misleading == wrong).mean())}


def grouped_bars(values, title, ylabel, baseline, **options):
    """Both models' bars side by side for each group: ``values[group][model key]`` as fractions."""
    percent = {group: {MODELS[k]: 100 * v for k, v in per_model.items()} for group, per_model in values.items()}
    return plots.bar_chart(percent, title, ylabel, fmt="{:.0f}", colors=MODEL_COLOURS,
                           baseline=(baseline[0], 100 * baseline[1]), figsize=(9, 4.2), **options)


def trained_models(ctx, clean, biased):
    """Both models, trained here or read from --models, as {key: model}, with their
    training info and which images each was trained on (None for given models)."""
    if ctx.config.models:  # the detective task: two given models, the truth unknown here
        models = {k: C.load_model(ctx, path, clean, option="--models") for k, path in zip(MODELS, ctx.config.models)}
        ctx.log(f"investigating model A ({ctx.config.models[0]}) and model B ({ctx.config.models[1]})")
        return models, {k: {"source": f"file {path}"} for k, path in zip(MODELS, ctx.config.models)}, None
    # Train both, then hide which is which behind a seeded coin flip: from here until the
    # verdict the analysis only sees "model A" and "model B".
    trained = {kind: C.get_model(ctx, splits, f"{kind}_model", save_as=None)
               for kind, splits in (("clean", clean), ("artifact", biased))}
    trained_on = dict(zip(MODELS, map(str, ctx.rng(101).permutation(["clean", "artifact"]))))
    models = {k: trained[trained_on[k]][0] for k in MODELS}
    for k, model in models.items():  # the two files a teacher hands out for --models
        C.save_model(ctx, model, clean, ctx.out / f"model_{MODELS[k][-1]}.pt")
    return models, {k: trained[trained_on[k]][1] for k in MODELS}, trained_on


# ------------------------------------------------------------------------ run
def run(ctx):
    cfg = ctx.config
    clean, biased = C.load_data(ctx, bias=False), C.load_data(ctx, bias=True)
    assert np.array_equal(clean.train.y, biased.train.y), "the two datasets must hold the same images"
    area_fraction = float(biased.test.patch_mask.mean())
    models, infos, trained_on = trained_models(ctx, clean, biased)

    misleading_x, wrong = misleading_copy(clean, ctx.seed + 1)
    acc = {k: accuracies(ctx, model, clean, biased, misleading_x, wrong) for k, model in models.items()}
    chance = 1 / clean.num_classes
    percent = {k: (f"accuracy, {label} (%)", "{:.1%}") for k, label in KINDS.items()}
    ctx.table("accuracy", [{"model": MODELS[k], **a} for k, a in acc.items()],
              f"Test accuracy of both models on the {len(clean.test.y):,} {ctx.dataset} test images: without "
              "the patch (clean), with it (artifact) and with a patch in another class's colour (misleading "
              "artifact); 'follows the patch': how often the prediction on a misleading image is the class "
              f"of the patch's colour. Chance: {100 * chance:.0f} %.",
              columns={"model": "model", **percent, "follows_patch": ("follows the patch (%)", "{:.1%}")})
    ctx.save_figure(grouped_bars({KINDS[kind]: {k: acc[k][kind] for k in MODELS} for kind in KINDS},
                                 f"Test accuracy of both models ({ctx.dataset})", "accuracy (%)",
                                 (f"chance ({100 * chance:.0f} %)", chance), xlabel="test images", ylim=(0, 110)),
                    "accuracy",
                    "Accuracy of models A and B on clean test images, on the same images with the artifact "
                    "patch, and with a patch in the colour of another class. A model that reads the patch "
                    "does well only where the patch tells the truth.")

    # --- attributions of both models on artifact test images
    order = ctx.rng(3).permutation(len(biased.test.y))[:cfg.scored]
    xs, patch = ctx.to_device(biased.test.x[order]), ctx.to_device(biased.test.patch_mask[order])
    has_objects = ctx.dataset == "shapes"  # the object mask survives the patch (it avoids the object)
    objects = ctx.to_device(biased.test.mask[order]) if has_objects else None
    shares, object_shares, rows = {k: {} for k in MODELS}, {k: {} for k in MODELS}, []
    for k, model in models.items():
        methods = C.attribution_methods(model, biased.in_shape[1], cfg.ig_steps)
        for name in ctx.progress(C.METHODS, f"attributions of {MODELS[k]}"):
            relevance = methods[name].attribute(xs).relevance
            shares[k][name] = float(E.mask_share(relevance, patch).nanmean())
            row = {"model": MODELS[k], "method": C.METHODS[name], "patch_share": shares[k][name],
                   "patch_enrichment": shares[k][name] / area_fraction}
            if has_objects:
                object_shares[k][name] = row["object_share"] = float(E.mask_share(relevance, objects).nanmean())
            rows.append(row)
    ctx.table("attribution_shares", rows,
              f"Share of each model's positive relevance on the artifact patch, mean over {len(order)} artifact "
              f"test images, explaining the predicted class. The patch covers {100 * area_fraction:.1f} % of "
              "the pixels, so a map that ignores it puts about that share there"
              + ("; 'on the object': the share on the shape itself." if has_objects else "."),
              columns={"model": "model", "method": "method", "patch_share": ("on the patch (%)", "{:.1%}"),
                       "patch_enrichment": ("times the patch's pixel share", "{:.1f}"),
                       "object_share": ("on the object (%)", "{:.1%}")})
    ctx.save_figure(grouped_bars({C.METHODS[m]: {k: shares[k][m] for k in MODELS} for m in C.METHODS},
                                 f"Share of the positive relevance on the artifact patch ({len(order)} artifact "
                                 "test images)", "relevance mass on the patch (%)",
                                 (f"uniform map ({100 * area_fraction:.1f} %: the patch's share of the pixels)",
                                  area_fraction), xlabel="attribution method"),
                    "artifact_share",
                    "For each attribution method, the share of each model's positive relevance that lies on "
                    "the artifact patch, against the share a uniform map would put there (dashed).")

    # --- the verdict, from the attribution shares alone
    mean_share = {k: float(np.mean(list(s.values()))) for k, s in shares.items()}
    verdict = max(mean_share, key=mean_share.get)
    other = min(mean_share, key=mean_share.get)
    votes = sum(shares[verdict][m] > shares[other][m] for m in C.METHODS)

    # --- the example figure: a few artifact images, three methods per model
    pick = C.pick_examples(ctx, models[verdict], biased.test, cfg.examples, ctx.rng(4))
    x = ctx.to_device(biased.test.x[pick])
    maps, signed = {}, {}
    for k, model in models.items():
        methods = C.attribution_methods(model, biased.in_shape[1], cfg.ig_steps)
        for name in SHOWN_METHODS:
            column = f"{MODELS[k]}\n{C.METHODS[name]}"
            maps[column], signed[column] = methods[name].attribute(x).relevance, C.SIGNED[name]
    predicted = {k: C.predictions(ctx, model, biased.test.x[pick])[0] for k, model in models.items()}
    labels = [f"true: {C.class_name(biased, biased.test.y[i])}\n"
              + "\n".join(f"{MODELS[k][-1]} says: {C.class_name(biased, predicted[k][j])}" for k in MODELS)
              for j, i in enumerate(pick)]
    fig = attribution_grid(x, maps, row_labels=labels, outlines=biased.test.patch_mask[pick], signed=signed,
                           outline_color=PATCH_OUTLINE, outline_image=True,
                           title=f"Where models A and B look on {ctx.dataset} test images with the artifact (cyan "
                                 "square: the patch whose colour encodes the label;\neach map scaled to its own "
                                 "maximum; red = evidence for the predicted class, blue = against)")
    ctx.save_figure(fig, "attributions",
                    f"Saliency, Grad-CAM and integrated gradients of model A and model B on {len(pick)} test "
                    "images with the artifact (cyan square); each model explains its own prediction "
                    "('A says', 'B says'). A map concentrated on the patch gives the shortcut away.")

    # --- only now: the truth (unknown when the models were given with --models)
    gap = {k: acc[k]["artifact"] - acc[k]["clean"] for k in MODELS}
    rows = [{"model": MODELS[k], "mean_patch_share": mean_share[k], "verdict": "biased" if k == verdict
             else "not biased", "accuracy_gap": gap[k]} for k in MODELS]
    columns = {"model": "model", "mean_patch_share": ("mean share on the patch (%)", "{:.1%}"), "verdict": "verdict",
               "accuracy_gap": ("artifact minus clean accuracy (% points)", "{:+.1%}")}
    ctx.note(f"Verdict from the attributions alone: {MODELS[verdict]} is biased. On artifact images it puts "
             f"{100 * mean_share[verdict]:.1f} % of its relevance on the patch "
             f"({mean_share[verdict] / area_fraction:.0f}x the patch's {100 * area_fraction:.1f} % of the pixels), "
             f"{MODELS[other]} {100 * mean_share[other]:.1f} %; {votes} of {len(C.METHODS)} methods agree.")
    caption = (f"The verdict names the model whose attributions put the larger share on the patch (mean over "
               f"the five methods; {votes} of {len(C.METHODS)} methods agree).")
    if trained_on is None:
        truth = clean_key = correct = None
        ctx.table("verdict", rows, caption + " The models were given, so which one was trained with the "
                  "artifact is not known here.", columns=columns)
        ctx.note("The models came from files (--models), so the verdict cannot be checked here. The accuracy "
                 "table is the independent evidence: a model that reads the patch scores far higher with it "
                 f"than without it ({MODELS[verdict]}: {100 * gap[verdict]:+.1f} points, {MODELS[other]}: "
                 f"{100 * gap[other]:+.1f}).")
    else:
        truth = next(k for k, kind in trained_on.items() if kind == "artifact")
        clean_key = next(k for k, kind in trained_on.items() if kind == "clean")
        correct = verdict == truth
        for row, k in zip(rows, MODELS):
            row["trained_on"] = "images with the artifact" if trained_on[k] == "artifact" else "clean images"
        ctx.table("verdict", rows, caption + " The 'trained on' column is looked up only after the verdict.",
                  columns={**columns, "trained_on": "trained on"})
        biased_acc, clean_acc = acc[truth], acc[clean_key]
        ctx.note(f"Truth: {MODELS[truth]} was trained with the artifact, so the verdict is "
                 f"{'right' if correct else 'WRONG'}. Its accuracy is {100 * biased_acc['artifact']:.1f} % with the "
                 f"patch, {100 * biased_acc['clean']:.1f} % without it and "
                 f"{100 * biased_acc['misleading_artifact']:.1f} % with another class's patch (it follows "
                 f"the patch's colour in {100 * biased_acc['follows_patch']:.0f} % of those); the "
                 f"clean-trained model ({MODELS[clean_key]}): {100 * clean_acc['clean']:.1f} % on clean images, "
                 f"{100 * clean_acc['artifact']:.1f} % with the patch.")

    # the headline: on counter-examples (a patch of another class) the shortcut misleads the biased model
    if truth is not None:
        biased_key, unbiased_key, names = truth, clean_key, ("clean-trained model", "the artifact-trained model")
    else:  # given models: as the verdict judged them
        biased_key, unbiased_key, names = verdict, other, ("model judged not biased", "the model judged biased")
    n_test = len(clean.test.y)
    ctx.headline(f"accuracy on counter-examples (another class's patch), {names[0]}",
                 acc[unbiased_key]["misleading_artifact"], acc[biased_key]["misleading_artifact"], names[1],
                 noise=sum(binomial_se(acc[k]["misleading_artifact"], n_test) ** 2
                           for k in (biased_key, unbiased_key)) ** 0.5)

    def summary(k):
        return {"trained_with_artifact": None if trained_on is None else trained_on[k] == "artifact",
                "accuracy": acc[k], "artifact_minus_clean_accuracy": gap[k], "patch_share": shares[k],
                "mean_patch_share": mean_share[k], "object_share": object_shares[k] or None,
                "training": {key: v for key, v in infos[k].items() if key not in ("test_accuracy", "chance")}}

    return {"dataset": ctx.dataset, "chance": chance, "scored_images": len(order),
            "patch_area_fraction": area_fraction, "ig_steps": cfg.ig_steps,
            "models": {k: summary(k) for k in MODELS},
            "verdict": {"biased_model": verdict, "methods_agreeing": votes, "mean_patch_share": mean_share,
                        "truth": truth, "correct": correct},
            "verdict_correct": correct,
            "biased_model_accuracy_gap": None if truth is None else gap[truth],
            "clean_model_accuracy_gap": None if clean_key is None else gap[clean_key]}
