"""UvA DL1 assignment 2 part 2: CLIP's zero-shot classification, prompt templates and their
ensemble, top-1/top-5 accuracy, and the course's ``--test_noise``. With ``--weights`` OpenAI's
CLIP on CIFAR-10/100; offline the mini-CLIP (``reference_torch.mini_clip``) on shapes.
"""
from __future__ import annotations

import numpy as np
import torch

from reference_torch.prompting import PromptCLIP

from . import _clip_common as common
from . import plots
from .runner import binomial_se, comma_list

NAME = "clip_zeroshot"
COURSE = "UvA DL1"
TASK = "assignment 2 part 2 (CLIP zero-shot)"
SUMMARY = "CLIP zero-shot classification: prompt templates, their ensemble, top-5, test noise"
STATEMENT = """
Use CLIP as a zero-shot classifier: write each class name into a text prompt ("This is a
photo of a {}"), encode the prompts once, and label every test image by the prompt whose
text features are closest to its image features. Report top-1 and top-5 test accuracy on
CIFAR-10 and CIFAR-100, show images with their most likely labels, and study the prompt:
how much do other templates, and an ensemble that averages the text features of several,
change the accuracy? How robust is the classifier to gaussian noise (std 0.1) on the
test images? (Offline, without OpenAI's weights, a mini-CLIP trained here on the
embedded shapes images stands in.)
"""
DATASETS = ("shapes", "cifar10", "cifar100")
DEFAULT = True
THREADS = "small"
TORCH = True
TEMPLATES = (common.COURSE_TEMPLATE, "a photo of a {}", "a {}", "a picture of a {}", "a drawing of a {}")
PROFILES = {  # nothing trains here: epochs and lr are unused, batch_size is the scoring batch
    "default": {"epochs": None, "batch_size": 256, "lr": None, "templates": TEMPLATES, "test_noise": 0.1,
                "weights": None, "vocab": None, "test_size": None, "shapes_images": 10000, "needs_weights": None},
    "quick": {"test_size": 300, "shapes_images": 3000},
}
DATASET_SETTINGS = {name: {"needs_weights": name} for name in ("cifar10", "cifar100")}
check = common.check


def add_arguments(parser):
    common.add_arguments(parser)
    parser.add_argument("--templates", type=comma_list(), help="prompt templates, {} for the class name; the "
                        "first is the main one (commas separate them)")


def run(ctx):
    c = ctx.config
    clip, tokenizer, description, splits, classes = common.load_model_and_data(ctx)
    x, y = splits.test.x, splits.test.y
    trainable, frozen = common.parameter_counts(clip)
    ctx.log(f"{trainable:,} trainable and {frozen:,} frozen parameters (zero-shot: nothing trains)")
    size = clip.visual.input_resolution

    def classifier(templates):  # the text features of every class, computed once per classifier
        return PromptCLIP(clip, common.text_features(ctx, clip, tokenizer, classes, templates), image_size=size)

    rows = []
    for template in [*c.templates, "ensemble"]:
        model = classifier(c.templates if template == "ensemble" else [template])
        logits = common.logits_of(ctx, model, x, c.batch_size)
        rows.append({"template": template if template != "ensemble" else f"ensemble of all {len(c.templates)}",
                     "top1": common.accuracy(logits, y), "top5": common.accuracy(logits, y, 5)})
        if template == c.templates[0]:
            main, main_logits = model, logits
    main.noise = (c.test_noise, torch.Generator().manual_seed(ctx.seed))
    noisy = common.logits_of(ctx, main, x, c.batch_size)
    main.noise = None
    metrics = {"model": description, "dataset": ctx.dataset, "classes": classes, "test_images": len(y),
               "image_size": size, "trainable_parameters": trainable, "frozen_parameters": frozen,
               "templates": rows, "template": c.templates[0], "top1": rows[0]["top1"], "top5": rows[0]["top5"],
               "ensemble_top1": rows[-1]["top1"], "test_noise": c.test_noise,
               "noisy_top1": common.accuracy(noisy, y), "noisy_top5": common.accuracy(noisy, y, 5)}
    figures(ctx, x, y, classes, main_logits, rows, metrics)
    return metrics


def figures(ctx, x, y, classes, logits, rows, m):
    chance = 100 / len(classes)
    ctx.table("templates", rows, f"Zero-shot test accuracy of each prompt template and of their ensemble (the "
              f"text features averaged over the templates), {m['test_images']:,} {ctx.dataset} test images.",
              columns={"template": "template", "top1": ("top-1 (%)", "{:.1%}"), "top5": ("top-5 (%)", "{:.1%}")})
    values = {r["template"].replace("ensemble of all", "ensemble,\nall").replace("{}", "{class}"):
              {"top-1": 100 * r["top1"], "top-5": 100 * r["top5"]} for r in rows}
    fig = plots.bar_chart(values, f"Zero-shot accuracy per prompt template ({ctx.dataset})", "test accuracy (%)",
                          chance=chance, unit=" %", xlabel="prompt template", rotation=20, ylim=(0, 105),
                          fmt="{:.0f}", figsize=(9, 4.6))
    fig.axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)  # beside the axes: bars reach 100 %
    ctx.save_figure(fig, "templates", "Top-1 and top-5 zero-shot test accuracy for each prompt template and for "
                    "the ensemble of all of them; the dotted line is chance.")
    probabilities = logits.softmax(1)
    shown = np.random.default_rng(ctx.seed).choice(len(y), min(12, len(y)), replace=False)
    captions = []
    for i in shown:
        top = probabilities[i].topk(3)
        mark = "" if top.indices[0] == y[i] else " (wrong)"
        captions.append(f"true: {classes[y[i]]}{mark}\n" + "\n".join(
            f"{classes[k]} {p:.0%}" for p, k in zip(top.values.tolist(), top.indices.tolist())))
    fig = plots.image_grid(x[shown], f"Zero-shot predictions with \"{m['template']}\": the three most likely "
                           "classes", captions=captions, columns=6, size=1.9)
    fig.set_size_inches(fig.get_size_inches() * (1, 1.3))  # room for four lines of caption
    fig.tight_layout()
    ctx.save_figure(fig, "predictions", "Random test images with their true class and CLIP's three most likely "
                    "classes and probabilities (softmax of the zero-shot logits) under the main template.")
    ctx.headline(f"zero-shot top-1 accuracy (\"{m['template']}\")", m["top1"], 1 / len(classes), "chance",
                 noise=binomial_se(m["top1"], m["test_images"]))
    best = max(rows[:-1], key=lambda r: r["top1"])
    ctx.note(f"Zero-shot with \"{m['template']}\": top-1 {m['top1']:.1%} (standard error "
             f"{binomial_se(m['top1'], m['test_images']):.1%}), top-5 {m['top5']:.1%} on {m['test_images']:,} test "
             f"images (chance {chance:.0f}%).")
    ctx.note(f"Across the {len(rows) - 1} templates the top-1 accuracy ranges from "
             f"{min(r['top1'] for r in rows[:-1]):.1%} to {best['top1']:.1%} (\"{best['template']}\"); the "
             f"ensemble of all of them reaches {m['ensemble_top1']:.1%}.")
    ctx.note(f"Gaussian noise of std {m['test_noise']:g} (after normalisation) changes the top-1 accuracy by "
             f"{100 * (m['noisy_top1'] - m['top1']):+.1f} points, to {m['noisy_top1']:.1%}.")
