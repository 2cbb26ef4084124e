"""A driver written on the protocol for the runner's own tests: it trains nothing
heavy, records what settings it saw, draws one figure and one table, and keeps a
history. With TORCH_TRAIN set it also trains a two-layer torch model through
ctx.trainer and ctx.fit (the DDP test runs it under torchrun)."""
import os

import numpy as np

from assignments import plots
from assignments.runner import comma_list, positive_int

NAME = "tiny"
COURSE = "tests"
TASK = "the driver protocol"
SUMMARY = "a driver for the runner's tests"
STATEMENT = "Train nothing much; show that the runner does its part."
DATASETS = ("toy", "digits")
DEFAULT = False
TORCH = True
PROFILES = {
    "default": {"epochs": 4, "batch_size": 8, "lr": 0.1, "width": 3, "names": ("a", "b")},
    "quick": {"epochs": 2},
    "full": {"epochs": 6, "width": 5},
}
DATASET_SETTINGS = {"digits": {"width": 7, "epochs": 3}}


def add_arguments(parser):
    parser.add_argument("--width", type=positive_int, help="a setting the profiles hold")
    parser.add_argument("--names", type=comma_list(choices=("a", "b", "c")), help="a list setting")
    parser.add_argument("--extra", default=None, help="an option with its own default, not in the profiles")


def check(config):
    if config.width > 100:
        return f"--width {config.width} is too wide for {config.epochs} epochs; use at most 100"
    return None


def run(ctx):
    history = [{"loss": 1.0 / (e + 1), "val_accuracy": 0.5 + 0.1 * e} for e in range(ctx.config.epochs)]
    ctx.history("model", history)
    ctx.save_figure(plots.training_curves({"model": history}, metrics=("loss",), title="tiny"),
                    "curves", "The loss falls.")
    ctx.table("settings", [{"width": ctx.config.width, "val_accuracy": history[-1]["val_accuracy"]}],
              "What the run saw.", columns={"width": "width", "val_accuracy": ("val accuracy", "{:.1%}")})
    ctx.note("Done.")
    ctx.headline("val accuracy", history[-1]["val_accuracy"], 0.5, "first epoch", noise=0.05)
    metrics = {"config": vars(ctx.config), "dataset": ctx.dataset, "profile": ctx.profile}
    if os.environ.get("TORCH_TRAIN"):
        metrics.update(train_torch(ctx))
    return metrics


def train_torch(ctx):
    import torch
    from torch import nn

    torch.manual_seed(ctx.seed)
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    trainer = ctx.trainer("torch", model, torch.optim.SGD(model.parameters(), lr=ctx.config.lr))
    history = ctx.fit(trainer, ctx.loader(x, y, shuffle=True), val_loader=ctx.loader(x, y))
    first = next(model.parameters())
    return {"world_size": trainer.dist.world_size, "steps": trainer.step, "history": history,
            "weight_sum": float(first.detach().sum()), "device": str(ctx.to_device(x[:1]).device)}
