"""ITU week 4, task 3: L1 and L2 penalties and dropout.

Three parts: the penalties of the exercise's six weights and their gradients, by hand
and by autograd; the weights of an MLP trained with an L1 penalty, an L2 penalty and
neither (L1 drives most weights to zero, L2 only shrinks them); and dropout on one
hidden layer at a time and on both, at three rates, repeated over a few seeds because
on a validation set of 360 images one image is 0.3 percentage points.
"""
import matplotlib.pyplot as plt
import numpy as np

import minidl as md
import minidl.data  # noqa: F401
import minidl.models  # noqa: F401
import minidl.optim  # noqa: F401
import minidl.regularization  # noqa: F401
import minidl.train  # noqa: F401

from .runner import beyond_noise, binomial_se, positive_int, standard_error

NAME = "regularization"
COURSE = "ITU advanced ML"
TASK = "week 4, task 3"
SUMMARY = "L1/L2 penalties and their gradients, weight histograms, dropout per layer and rate"
STATEMENT = """
(1) Compute the L1 and L2 penalties of the weights 0.2, 0.5, 5, 1, 0.25 and 0.75 and
their gradients with respect to each weight. (2) Train the same network with an L1
penalty, with an L2 penalty and with neither, and compare histograms of the trained
weights: which penalty makes the network sparse, and why? (3) Add dropout to one
hidden layer at a time and to all of them, with rates 0.1, 0.3 and 0.5, and compare
the validation accuracies in a table and as curves.
"""
DATASETS = ("digits", "mnist", "fashion_mnist")
DEFAULT = True
THREADS = "small"  # small matrices: one BLAS thread beats several that fight over a busy machine's cores
PROFILES = {"default": {"epochs": 24, "seeds": 3, "train_size": None, "val_size": None},
            # all of digits (1,077 train, 360 val images), a few batches of the others
            "quick": {"epochs": 4, "seeds": 2, "train_size": 1100, "val_size": 500}}
DATASET_SETTINGS = {"mnist": {"epochs": 10, "seeds": 2}, "fashion_mnist": {"epochs": 10, "seeds": 2}}

EXERCISE_WEIGHTS = np.array([0.2, 0.5, 5.0, 1.0, 0.25, 0.75])
HIDDEN = (256, 128)
PENALTY = 1e-3  # lambda of both penalties: loss + lambda * penalty(weights)
RATES = (0.1, 0.3, 0.5)
PLACEMENTS = {  # where the dropout goes: its label, and the rates of the two hidden layers for a rate p
    "layer_1": ("hidden layer 1", lambda p: [p, 0.0]),
    "layer_2": ("hidden layer 2", lambda p: [0.0, p]),
    "both": ("both hidden layers", lambda p: p),
}
SMALL = 1e-3  # |w| below this counts as zero in the sparsity figures
DROPOUT_COLUMNS = {"placement": "dropout on", "rate": "p", "val_accuracy": ("val accuracy (%)", "{:.1%}"),
                   "val_accuracy_se": ("± s.e.", "{:.1%}"), "gain": ("gain over no dropout (points)", "{:+.1%}"),
                   "gain_se": ("± s.e.", "{:.1%}"), "beyond_noise": "beyond the noise (> 2 s.e.)"}


def add_arguments(parser):
    parser.add_argument("--epochs", type=positive_int, help="epochs per run")
    parser.add_argument("--seeds", type=positive_int, help="seeds per dropout setting")
    for part in ("train", "val"):
        parser.add_argument(f"--{part}-size", type=positive_int,
                            help=f"images kept of the {part} split, drawn at random (None: all)")


# ---------------------------------------------------------------- part 1
def penalties_of_exercise():
    """L1 and L2 penalties of the six weights and their gradients, by autograd."""
    result = {}
    for name, penalty in (("l1", md.regularization.l1_penalty), ("l2", md.regularization.l2_penalty)):
        w = md.tensor(EXERCISE_WEIGHTS, requires_grad=True)  # float64, as given
        value = penalty(w)
        value.backward()
        result[name] = {"value": float(value.item()), "gradient": w.grad.copy()}
    return result


def plot_penalties(result):
    w = np.linspace(-5.5, 5.5, 441)
    fig, (ax_p, ax_g) = plt.subplots(1, 2, figsize=(11, 4))
    ax_p.plot(w, np.abs(w), color="C0", label="L1: |w|")
    ax_p.plot(w, w ** 2, color="C1", label="L2: w²")
    ax_g.plot(w, np.sign(w), color="C0", label="L1: d|w|/dw = sign(w)")
    ax_g.plot(w, 2 * w, color="C1", label="L2: dw²/dw = 2w")
    for key, colour, marker in (("l1", "C0", "o"), ("l2", "C1", "s")):
        terms = np.abs(EXERCISE_WEIGHTS) if key == "l1" else EXERCISE_WEIGHTS ** 2
        ax_p.scatter(EXERCISE_WEIGHTS, terms, color=colour, marker=marker, zorder=3)
        ax_g.scatter(EXERCISE_WEIGHTS, result[key]["gradient"], color=colour, marker=marker,
                     zorder=3, label=f"the exercise's weights ({key.upper()}, autograd)")
    ax_p.set(title=f"Penalty per weight; sums over the exercise's weights: "
                   f"L1 {result['l1']['value']:.6g}, L2 {result['l2']['value']:.6g}",
             xlabel="weight w", ylabel="penalty term", ylim=(-0.5, 12))
    ax_g.set(title="Gradient of the penalty: L1 pushes every weight with the same force,\n"
                   "L2 pushes in proportion to the weight (small weights hardly at all)",
             xlabel="weight w", ylabel="gradient", ylim=(-11.5, 11.5))
    for ax in (ax_p, ax_g):
        ax.axhline(0, color="0.5", lw=0.8)
        ax.axvline(0, color="0.5", lw=0.8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center" if ax is ax_p else "upper left")
        ax.title.set_fontsize(10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------ parts 2 and 3
def load(ctx):
    """Flattened, normalised train and val arrays, as many as --train-size and --val-size keep."""
    splits = ctx.load_dataset()
    out = {}
    for part in ("train", "val"):
        d = getattr(splits, part)
        x, y = splits.normalize(d.x).reshape(len(d.x), -1), d.y
        size = getattr(ctx.config, f"{part}_size")
        if size and size < len(y):
            keep = ctx.rng(1).permutation(len(y))[:size]
            x, y = x[keep], y[keep]
        out[part] = (x, y)
    return out, splits.num_classes


def train_mlp(data, n_classes, epochs, seed, dropout=0.0, penalty=None):
    """One MLP (ReLU, SGD with momentum); ``penalty`` is None, 'l1' or 'l2'."""
    md.manual_seed(seed)
    model = md.models.MLP(data["train"][0].shape[1], HIDDEN, n_classes, dropout=dropout)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    cross_entropy = md.nn.CrossEntropyLoss()
    term = {"l1": md.regularization.l1_penalty, "l2": md.regularization.l2_penalty}.get(penalty)

    def loss_fn(out, y):
        loss = cross_entropy(out, y)
        return loss if term is None else loss + PENALTY * term(weights)

    history = md.train.fit(
        model, loss_fn, md.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        md.data.DataLoader(*data["train"], batch_size=64, shuffle=True, seed=seed),
        md.data.DataLoader(*data["val"], batch_size=1000), epochs=epochs, progress=False)
    return model, history


def plot_histograms(weights, accuracy):
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True, sharey=True)
    limit = max(np.abs(w).max() for w in weights.values())
    bins = np.linspace(-limit, limit, 121)
    colours = {"none": "0.4", "l2": "C1", "l1": "C0"}
    titles = {"none": "no penalty", "l2": f"L2 penalty, λ={PENALTY:g}", "l1": f"L1 penalty, λ={PENALTY:g}"}
    for ax, key in zip(axes, ("none", "l2", "l1")):
        w = weights[key]
        ax.hist(w, bins=bins, color=colours[key])
        ax.set_yscale("log")
        ax.set_title(f"{titles[key]}\n{100 * np.mean(np.abs(w) < SMALL):.0f} % of weights with "
                     f"|w| < {SMALL:g}; val acc {100 * accuracy[key]:.1f} %", fontsize=10)
        ax.set_xlabel("weight value")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("number of weights (log scale)")
    fig.suptitle(f"All {len(weights['none']):,} weights of the MLP {list(HIDDEN)} after training")
    fig.tight_layout()
    return fig


def plot_mean_and_band(ax, accuracy, colour, label, alpha=0.15):
    """The mean over the seeds (the rows of ``accuracy``) in per cent, in a band of ±1 standard error."""
    epochs, mean = np.arange(1, accuracy.shape[1] + 1), 100 * accuracy.mean(0)
    ax.plot(epochs, mean, color=colour, label=label)
    if len(accuracy) > 1:
        se = 100 * accuracy.std(0, ddof=1) / np.sqrt(len(accuracy))
        ax.fill_between(epochs, mean - se, mean + se, color=colour, alpha=alpha, lw=0)


def plot_dropout(curves, baseline):
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
    colours = plt.get_cmap("viridis")(np.linspace(0.15, 0.85, len(RATES)))
    for ax, (placement, (label, _)) in zip(axes, PLACEMENTS.items()):
        plot_mean_and_band(ax, baseline, "k", "no dropout", alpha=0.08)
        for rate, colour in zip(RATES, colours):
            plot_mean_and_band(ax, curves[placement, rate], colour, f"p = {rate:g}")
        ax.set(title=f"dropout on {label}", xlabel="epoch")
        ax.grid(alpha=0.3)
    # the axis starts where the runs are after their first two epochs (5th percentile), not at their start
    low = min(np.percentile(c[:, 2:], 5) if c.shape[1] > 2 else c.min() for c in (baseline, *curves.values()))
    axes[0].set_ylim(max(0, 100 * low - 1), 100)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[-1].legend(fontsize=9, loc="lower right")
    seeds = baseline.shape[0]
    fig.suptitle(f"Validation accuracy per epoch, MLP {list(HIDDEN)}"
                 + (f" (mean over {seeds} seeds; band: ±1 standard error)" if seeds > 1 else ""))
    fig.tight_layout()
    return fig


def dropout_rows(baseline, curves):
    """One row per setting, no dropout first: the last epoch's validation accuracy over the
    seeds, and its gain over no dropout with the standard error of that difference."""
    base, base_se = baseline[:, -1].mean(), standard_error(baseline[:, -1])
    rows = [{"placement": "no dropout", "rate": 0.0, "val_accuracy": base, "val_accuracy_se": base_se}]
    for (placement, rate), acc in curves.items():
        se = standard_error(acc[:, -1])
        gain, gain_se = acc[:, -1].mean() - base, None if se is None else float(np.hypot(se, base_se))
        rows.append({"placement": PLACEMENTS[placement][0], "rate": rate, "val_accuracy": acc[:, -1].mean(),
                     "val_accuracy_se": se, "gain": gain, "gain_se": gain_se,
                     "beyond_noise": "n/a" if gain_se is None else "yes" if beyond_noise(gain, gain_se) else "no"})
    return rows


# ------------------------------------------------------------------------- run
def run(ctx):
    config = ctx.config
    metrics = {"dataset": ctx.dataset, "hidden": HIDDEN, "penalty_lambda": PENALTY, **vars(config)}

    # (1) the exercise's weights
    exercise = penalties_of_exercise()
    metrics["exercise"] = {"weights": EXERCISE_WEIGHTS, **exercise}
    l1, l2 = exercise["l1"], exercise["l2"]
    ctx.table("penalties", [{"weight": w, "l1_term": abs(w), "l2_term": w * w, "l1_gradient": g1, "l2_gradient": g2}
                            for w, g1, g2 in zip(EXERCISE_WEIGHTS, l1["gradient"], l2["gradient"])]
              + [{"weight": "sum", "l1_term": l1["value"], "l2_term": l2["value"]}],
              "The exercise's weights: L1 = sum |w|, L2 = sum w² (no factor 1/2), and their "
              "gradients by autograd: sign(w) and 2w.",
              columns={"weight": "weight w", "l1_term": ("|w|", "{:.6g}"), "l2_term": ("w²", "{:.6g}"),
                       "l1_gradient": ("dL1/dw", "{:g}"), "l2_gradient": ("dL2/dw", "{:g}")})
    ctx.save_figure(plot_penalties(exercise), "penalties",
                    "The two penalties and their gradients, with the exercise's six weights.")
    ctx.note(f"Exercise: L1 = {l1['value']:.6g}, L2 = {l2['value']:.6g}; gradients sign(w) = "
             f"{l1['gradient'].tolist()} and 2w = {l2['gradient'].tolist()}.")

    data, n_classes = load(ctx)
    ctx.log(f"{ctx.dataset}: {len(data['train'][1])} train / {len(data['val'][1])} val images; "
            f"{config.epochs} epochs per run, {config.seeds} seed(s) per dropout setting")

    # (2) L1, L2, neither: the weights afterwards
    weights, accuracy = {}, {}
    for penalty in ctx.progress(("none", "l2", "l1"), "penalties"):
        model, history = train_mlp(data, n_classes, config.epochs, ctx.seed,
                                   penalty=None if penalty == "none" else penalty)
        ctx.history(f"penalty_{penalty}", history.as_dict())
        weights[penalty] = np.concatenate([p.data.ravel() for name, p in model.named_parameters()
                                           if name.endswith("weight")])
        accuracy[penalty] = history["val_accuracy"][-1]
    metrics["penalties"] = {k: {"val_accuracy": accuracy[k],
                                "fraction_small": float(np.mean(np.abs(w) < SMALL)),
                                "mean_abs_weight": float(np.abs(w).mean())} for k, w in weights.items()}
    ctx.save_figure(plot_histograms(weights, accuracy), "weight_histograms",
                    "Histograms of all weights after training. The L1 penalty's constant pull "
                    "drives most weights to (nearly) zero: a sparse network. The L2 penalty's "
                    "pull fades as a weight shrinks, so weights get smaller but few reach zero.")

    # (3) dropout on one layer at a time and on both, three rates, a few seeds
    seeds = [ctx.seed + i for i in range(config.seeds)]
    settings = [(None, 0.0)] + [(placement, rate) for placement in PLACEMENTS for rate in RATES]
    curves = {}
    for placement, rate in ctx.progress(settings, "dropout settings"):
        runs = []
        for seed in seeds:
            dropout = 0.0 if placement is None else PLACEMENTS[placement][1](rate)
            history = train_mlp(data, n_classes, config.epochs, seed, dropout=dropout)[1]
            ctx.history(f"dropout_{placement or 'none'}_p{rate:g}_seed{seed}", history.as_dict())
            runs.append(history["val_accuracy"])
        curves[placement, rate] = np.array(runs)  # (seeds, epochs)
    baseline = curves.pop((None, 0.0))
    ctx.save_figure(plot_dropout(curves, baseline), "dropout_curves",
                    "Validation accuracy per epoch with dropout after hidden layer 1, hidden "
                    "layer 2 or both, at three rates, against no dropout"
                    + (f"; lines: mean over {len(seeds)} seeds, bands: ±1 standard error." if len(seeds) > 1 else "."))

    rows = dropout_rows(baseline, curves)
    ctx.table("dropout", rows, "Validation accuracy after the last epoch with dropout of rate p, and its gain "
              "over no dropout (" + (f"mean ± standard error over {len(seeds)} seeds; a gain within twice the "
              "standard error of the difference is flagged as noise)." if len(seeds) > 1 else "one seed: no "
              "noise estimate, run --seeds 3)."), columns=DROPOUT_COLUMNS)
    metrics["dropout"] = {"seeds": seeds, "baseline_val_accuracy": baseline[:, -1].mean(),
                          "baseline_val_accuracy_se": standard_error(baseline[:, -1]),
                          "baseline_curve": baseline.mean(0),
                          "runs": [{"placement": placement, "rate": rate, **{k: row[k] for k in (
                                    "val_accuracy", "val_accuracy_se", "gain", "gain_se", "beyond_noise")},
                                    "val_accuracy_std": acc[:, -1].std(), "curve": acc.mean(0)}
                                   for ((placement, rate), acc), row in zip(curves.items(), rows[1:])]}
    best, base = max(metrics["dropout"]["runs"], key=lambda r: r["val_accuracy"]), baseline[:, -1].mean()
    setting, val_images = f"p = {best['rate']:g} on {PLACEMENTS[best['placement']][0]}", len(data["val"][1])
    metrics["dropout"]["val_images"] = val_images
    small = {k: f"{v['fraction_small']:.0%}" for k, v in metrics["penalties"].items()}
    ctx.note(f"L1 leaves {small['l1']} of the weights below {SMALL:g} in magnitude, L2 {small['l2']}, "
             f"no penalty {small['none']}.")
    ctx.headline(f"val accuracy, best dropout ({setting})", best["val_accuracy"], base, "no dropout",
                 noise=best["gain_se"] if len(seeds) > 1 else None)
    if len(seeds) > 1:
        beyond = [r for r in rows[1:] if r["beyond_noise"] == "yes"]
        listed = ": " + ", ".join(f"{r['placement']} p = {r['rate']:g} ({100 * r['gain']:+.1f})" for r in beyond)
        ctx.note(f"Dropout: the best setting, {setting}, reaches {best['val_accuracy']:.1%} validation accuracy "
                 f"against {base:.1%} without ({100 * best['gain']:+.1f} ± {100 * best['gain_se']:.1f} points over "
                 f"{len(seeds)} seeds). {len(beyond)} of the {len(rows) - 1} settings differ from no dropout by more "
                 f"than twice the standard error of the difference{listed if beyond else ''}; the others are within "
                 "the noise. That noise is the seeds' only: every run is scored on the same "
                 f"{val_images} validation images, and on other images of that size one accuracy has a binomial "
                 f"standard error of {binomial_se(best['val_accuracy'], val_images):.1%}. The best of nine settings "
                 "is also picked on those images, which flatters it.")
    else:
        ctx.note(f"Dropout: best setting {setting} with {best['val_accuracy']:.1%} validation accuracy against "
                 f"{base:.1%} without (one seed: no noise estimate).")
    return metrics
