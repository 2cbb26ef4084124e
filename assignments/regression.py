"""ITU week 5, task 1: overfitting on 11 points, and three ways to fight it.

Every other point of the toy data is held out: the network trains on x = 0, 0.2, ...,
1.0 and is judged on x = 0.1, 0.3, ..., 0.9, so the held-out points test how it
interpolates between the training points it can memorise. Four variants start from
the same weights and train the same way (full-batch Adam); they differ only in the
regulariser. The fixed settings (penalty 1e-3, dropout 0.1, patience 200) are
textbook values, not tuned on the held-out points, and the run repeats the whole
comparison for several initialisations so that one lucky seed cannot tell the story.
Early stopping is the exception: it *chooses* its epoch on the held-out points, so
its held-out error is an optimistic estimate (with more data one would stop on a
separate validation set).
"""
import matplotlib.pyplot as plt
import numpy as np

import minidl as md
import minidl.data  # noqa: F401
import minidl.optim  # noqa: F401
import minidl.regularization  # noqa: F401
import minidl.train  # noqa: F401

from . import plots
from .runner import positive_int, standard_error

NAME = "regression"
COURSE = "ITU advanced ML"
TASK = "week 5, task 1"
SUMMARY = "1-10-1 MLP on 11 toy points: overfitting vs early stopping, weight decay and dropout"
STATEMENT = """
Fit the toy data (x = 0, 0.1, ..., 1 with noisy targets t) with a neural network with
one hidden layer of 10 units and a linear output. Trained long enough without any
regularisation it passes through every training point and overfits. Compare it with
three regularised fits: (a) early stopping on held-out points, (b) weight decay, a
quadratic penalty on the weights added to the loss, (c) dropout on the hidden layer.
Plot each regressed function on [0, 1] together with the data, and report the training
and held-out error of every variant.
"""
DATASETS = ("toy",)
DEFAULT = True
THREADS = "small"  # 10 hidden units: one BLAS thread beats several on a busy machine
# 2,000 epochs: by then the unregularised network has fitted its 6 points (training MSE 0.0000 at
# seed 0) and its held-out error has levelled off (0.168 at epoch 2,000, 0.169 at 3,000); three
# seeds keep the default run within 40 s of one CPU (each epoch is a step and an evaluation).
PROFILES = {"default": {"epochs": 2000, "seeds": 3}, "quick": {"epochs": 2000, "seeds": 1}}

HIDDEN, LR = 10, 0.01
WEIGHT_DECAY, DROPOUT, PATIENCE = 1e-3, 0.1, 200
VARIANTS = {"none": "no regularisation", "early_stopping": "(a) early stopping",
            "weight_decay": f"(b) weight decay, penalty {WEIGHT_DECAY:g}·Σw²",
            "dropout": f"(c) dropout p={DROPOUT:g} on the hidden layer"}


def add_arguments(parser):
    parser.add_argument("--seeds", type=positive_int,
                        help="initialisations to repeat the comparison with (the figures show the first, --seed)")
    parser.add_argument("--epochs", type=positive_int, help="epochs of full-batch Adam")


def mse(outputs, targets):
    """Plain mean squared error, recorded for every variant (the loss of the weight-decay
    variant also holds the penalty)."""
    return float(np.mean((np.asarray(outputs) - np.asarray(targets)) ** 2))


def make_model(variant):
    # Identity in the dropout's place keeps the layer indices (the state-dict keys) equal
    dropout = md.nn.Dropout(DROPOUT) if variant == "dropout" else md.nn.Identity()
    return md.nn.Sequential(md.nn.Linear(1, HIDDEN), md.nn.Tanh(), dropout, md.nn.Linear(HIDDEN, 1))


def fit_variant(variant, initial_state, train, held_out, epochs):
    """Train one variant from the given initial weights; returns (model, history, stopper)."""
    model = make_model(variant)
    model.load_state_dict(initial_state)
    weights = [p for name, p in model.named_parameters() if name.endswith("weight")]
    if variant == "weight_decay":
        def loss_fn(out, t):
            return md.nn.functional.mse_loss(out, t) + WEIGHT_DECAY * md.regularization.l2_penalty(weights)
    else:
        loss_fn = md.nn.MSELoss()
    stopper = md.train.EarlyStopping("val_mse", mode="min", patience=PATIENCE,
                                     restore_best=True)
    history = md.train.fit(model, loss_fn, md.optim.Adam(model.parameters(), lr=LR),
                           [train], [held_out], epochs=epochs, metrics=(mse,), progress=False,
                           callbacks=[stopper] if variant == "early_stopping" else ())
    return model, history, stopper


def errors(model, x, t):
    return mse(md.train.predict(model, x), t)


# --------------------------------------------------------------------- figures
def plot_fits(fits, data, grid):
    (x_tr, t_tr), (x_ho, t_ho) = data
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True, sharey=True)
    for ax, (variant, fit) in zip(axes.flat, fits.items()):
        if variant != "none":
            ax.plot(grid, fits["none"]["curve"], color="0.6", ls="--", lw=1.2,
                    label="no regularisation (for comparison)")
        ax.plot(grid, fit["curve"], color="C3" if variant == "none" else "C0", lw=2,
                label="fitted function")
        ax.scatter(x_tr, t_tr, color="k", zorder=3, label="training points")
        ax.scatter(x_ho, t_ho, facecolors="white", edgecolors="C1", lw=2, s=60, zorder=3,
                   label="held-out points")
        extra = f", stopped at epoch {fit['best_epoch'] + 1}" if variant == "early_stopping" else ""
        ax.set_title(f"{VARIANTS[variant]}{extra}\ntrain MSE {fit['train_mse']:.4f}, "
                     f"held-out MSE {fit['held_out_mse']:.4f}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("x (input)")
    for ax in axes[:, 0]:
        ax.set_ylabel("t (target)")
    axes[0, 1].legend(fontsize=8, loc="upper left")
    fig.suptitle(f"MLP 1-{HIDDEN}-1 (tanh) fitted to {len(x_tr)} points, judged on "
                 f"{len(x_ho)} held-out points")
    fig.tight_layout()
    return fig


def plot_curves(fits):
    fig = plots.training_curves({VARIANTS[v]: f["history"] for v, f in fits.items()}, metrics=("mse",),
                                title="Error during training (full-batch Adam, one step per epoch)",
                                units={"mse": "mean squared error"}, log=("mse",), separate_validation=True,
                                titles={"mse": "Mean squared error"})
    es = fits["early_stopping"]["best_epoch"] + 1
    fig.axes[1].axvline(es, color="C1", ls=":", label=f"early stopping's epoch ({es})")
    fig.axes[1].legend(fontsize=7)
    fig.axes[0].set_title("Mean squared error, training points (dropout active)")
    fig.axes[1].set_title("Mean squared error, held-out points")
    return fig


def run(ctx):
    x, t = md.data.toy_regression()
    x, t = x.reshape(-1, 1).astype(np.float32), t.reshape(-1, 1).astype(np.float32)
    train, held_out = (x[0::2], t[0::2]), (x[1::2], t[1::2])  # every other point held out
    grid = np.linspace(0, 1, 201, dtype=np.float32).reshape(-1, 1)
    seeds = [ctx.seed + i for i in range(ctx.config.seeds)]

    table = {v: [] for v in VARIANTS}
    shown = {}
    for seed in ctx.progress(seeds, "initialisations"):
        md.manual_seed(seed)
        initial = make_model("none").state_dict()  # every variant starts from these weights
        for variant in VARIANTS:
            model, history, stopper = fit_variant(variant, initial, train, held_out, ctx.config.epochs)
            result = {"train_mse": errors(model, *train), "held_out_mse": errors(model, *held_out),
                      "best_epoch": stopper.best_epoch if variant == "early_stopping" else None}
            table[variant].append(result)
            if seed == seeds[0]:
                shown[variant] = {**result, "history": history.as_dict(),
                                  "curve": md.train.predict(model, grid).ravel()}

    ctx.save_figure(plot_fits(shown, (train, held_out), grid.ravel()), "fits",
                    f"The four fitted functions (seed {seeds[0]}). Without regularisation the "
                    "network bends to pass through every training point and misses the held-out "
                    "points in between; the regularised fits are smoother.")
    ctx.save_figure(plot_curves(shown), "training_curves",
                    "Training and held-out error per epoch: without regularisation the training "
                    "error keeps falling while the held-out error rises again (overfitting); "
                    "early stopping keeps the weights of the best held-out epoch.")
    rows, summary = [], {}
    for variant, results in table.items():
        tr = np.array([r["train_mse"] for r in results])
        ho = np.array([r["held_out_mse"] for r in results])
        wins = sum(r["held_out_mse"] < u["held_out_mse"] for r, u in zip(results, table["none"]))
        summary[variant] = {"train_mse": shown[variant]["train_mse"],
                            "held_out_mse": shown[variant]["held_out_mse"],
                            "train_mse_mean": tr.mean(), "held_out_mse_mean": ho.mean(),
                            "held_out_mse_std": ho.std(), "held_out_beats_none": wins,
                            "best_epoch": shown[variant]["best_epoch"]}
        rows.append({"variant": VARIANTS[variant], "train_mse": shown[variant]["train_mse"],
                     "held_out_mse": shown[variant]["held_out_mse"],
                     "held_out_mse_mean": ho.mean(), "held_out_mse_std": ho.std(),
                     "seeds_better": None if variant == "none" else f"{wins}/{len(seeds)}"})
    ctx.table("errors", rows, "Mean squared error on the 6 training and 5 held-out points. "
                              "Early stopping chooses its epoch on the held-out points, so its "
                              "held-out error is optimistic.",
              columns={"variant": "variant", "train_mse": (f"train MSE (seed {seeds[0]})", "{:.4f}"),
                       "held_out_mse": (f"held-out MSE (seed {seeds[0]})", "{:.4f}"),
                       "held_out_mse_mean": (f"held-out MSE, mean over {len(seeds)} seeds", "{:.4f}"),
                       "held_out_mse_std": ("± std", "{:.4f}"),
                       "seeds_better": "seeds better than no regularisation"})
    for variant, fit in shown.items():
        ctx.history(variant, fit["history"])
    # the headline: weight decay, the regulariser that neither picks its epoch on the held-out
    # points (early stopping) nor draws a noisy fit (dropout); noise, the seeds' paired differences
    gains = np.array([u["held_out_mse"] - r["held_out_mse"] for r, u in zip(table["weight_decay"], table["none"])])
    ctx.headline(f"held-out MSE with weight decay (mean of {len(seeds)} seeds)",
                 summary["weight_decay"]["held_out_mse_mean"], summary["none"]["held_out_mse_mean"],
                 "no regularisation", noise=standard_error(gains),
                 unit="", higher_is_better=False)
    beaten = [VARIANTS[v] for v in VARIANTS if v != "none"
              and summary[v]["held_out_mse"] < summary["none"]["held_out_mse"]]
    ctx.note(f"Held-out MSE without regularisation {summary['none']['held_out_mse']:.3f}; "
             f"lower with {len(beaten)} of 3 regularisers at seed {seeds[0]}, and on average "
             f"over {len(seeds)} initialisations: "
             + ", ".join(f"{VARIANTS[v]} {summary[v]['held_out_mse_mean']:.3f}" for v in VARIANTS)
             + ".")
    return {"seeds": seeds, "epochs": ctx.config.epochs, "hidden": HIDDEN, "lr": LR,
            "weight_decay": WEIGHT_DECAY, "dropout": DROPOUT, "patience": PATIENCE,
            "train_x": train[0].ravel(), "held_out_x": held_out[0].ravel(), "variants": summary}
