"""UvA DL1 assignment 3, part 2: an adversarial autoencoder.

The course's model (``reference_torch.aae``: ConvEncoder, ConvDecoder, Discriminator,
AdversarialAE) trains with alternating updates, the autoencoder's optimiser then the
discriminator's, through ``AAETrainer`` (the runner's Trainer with a second optimiser,
both kept in its checkpoints). A main run at the course's settings gives reconstructions
and samples from the prior; runs with a 2-d latent space at several lambda_ show how the
weight of the adversarial term pulls the codes onto the prior.
"""
from __future__ import annotations

import sys

import matplotlib.pyplot as plt
import torch

from reference_torch.aae import AAETrainer, AdversarialAE, aae_optimizers

from . import plots
from .runner import comma_list, fraction, positive_float, positive_int

NAME = "aae"
COURSE = "UvA DL1"
TASK = "assignment 3, part 2"
SUMMARY = "an adversarial autoencoder: reconstructions, samples from the prior, 2-d codes against the prior per lambda_"
STATEMENT = """
Implement an adversarial autoencoder: a convolutional encoder and decoder (tanh output,
images in [-1, 1]) and a discriminator on the latent codes, which learns to tell samples
of the prior N(0, I) from the encoder's codes while the encoder learns to fool it.
Train with two optimisers in alternation: the autoencoder on lambda_ times the
reconstruction (MSE) loss plus (1 - lambda_) times the generator loss, then the
discriminator on the same codes (course defaults: z_dim 8, lambda_ 0.995, Adam with
learning rates 1e-3 for the autoencoder and 5e-3 for the discriminator, batch 64).
Show reconstructions and images decoded from prior samples; with a 2-d latent space,
plot the codes of the test images against samples of the prior, for several lambda_.
(Offline the kit uses the scikit-learn digits at 28x28, or MNIST's own test images split
8,000 / 2,000 when given with --dataset mnist.)
"""
DATASETS = ("digits", "mnist")
DEFAULT = True
THREADS = "small"
TORCH = True
PROFILES = {
    # digits: 1,077 training images. Batch 32 and an autoencoder lr of 3e-3 for more progress
    # per step: at the course's 1e-3 the reconstructions stayed the average digit for the first
    # 150 steps (measured: validation MSE 0.094 after 100 steps, 0.070 after 200; 3e-3: 0.055).
    # The lambda_ runs keep the main run's z_dim here (the main run is the one at its lambda_):
    # 2-d AAEs stayed on the average digit, or lost their decoder, within 8 epochs.
    "default": {"epochs": 7, "batch_size": 32, "lr": 3e-3, "disc_lr": 5e-3, "z_dim": 8, "lambda_": 0.995,
                "lambdas": (1.0, 0.995, 0.9), "lambda_epochs": 5, "lambda_z_dim": 8},
    "quick": {"epochs": 5, "lambdas": (0.9,), "lambda_epochs": 1},
    "full": {"epochs": 100, "batch_size": 64, "lr": 1e-3, "lambdas": (1.0, 0.995, 0.9, 0.5), "lambda_epochs": 40,
             "lambda_z_dim": 2},
}
DATASET_SETTINGS = {"mnist": {"epochs": 5, "batch_size": 64, "lr": 1e-3, "lambda_epochs": 3, "lambda_z_dim": 2}}
SHOWN = 10  # images per row of the figures
COURSE_MSE = 0.05  # the reconstruction error the course asks to reach


def add_arguments(parser):
    parser.add_argument("--z-dim", type=positive_int, help="latent dimensions of the main run")
    parser.add_argument("--lambda", dest="lambda_", type=fraction,
                        help="weight of the reconstruction loss in the main run (1: reconstruction only)")
    parser.add_argument("--lambdas", type=comma_list(fraction), help="lambda_ values of the 2-d runs")
    parser.add_argument("--lambda-epochs", type=positive_int, help="epochs of each lambda_ run")
    parser.add_argument("--lambda-z-dim", type=positive_int,
                        help="latent dimensions of the lambda_ runs (the course: 2; the figure shows z_1 and z_2)")
    parser.add_argument("--disc-lr", type=positive_float, help="learning rate of the discriminator")


def train_aae(ctx, label, z_dim, lambda_, epochs, data):
    """One AAE trained for ``epochs`` (checkpointed under ``label``, so --resume continues
    it); returns the model, its history and its test numbers."""
    torch.manual_seed(ctx.seed)
    model = AdversarialAE(z_dim=z_dim)
    # ctx.trainer's settings (device, AMP, seed, checkpoints), for the Trainer with two optimisers
    trainer = AAETrainer(model, *aae_optimizers(model, ctx.config.lr, ctx.config.disc_lr), lambda_=lambda_,
                         device=ctx.device, amp=ctx.config.amp, seed=ctx.seed,
                         checkpoint_dir=ctx.out / "checkpoints" / label, progress=ctx.is_main and sys.stderr.isatty())
    trainer.label = label
    history = ctx.fit(trainer, data["train"], epochs, val_loader=data["val"])
    model.eval()
    return model, history, trainer.evaluate(data["test"])


def as_shown(images):
    """[-1, 1] images as [0, 1] arrays for the figures."""
    return ((images.float().cpu() + 1) / 2).numpy()


@torch.no_grad()
def encode(model, x, batch=500):
    return torch.cat([model.encoder(part) for part in x.split(batch)]).cpu()


def plot_codes(runs, prior, labels, classes, dataset):
    """One panel per lambda_: the test images' codes by digit over samples of the prior."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 5), squeeze=False)
    for ax, (lambda_, run) in zip(axes[0], runs.items()):
        ax.scatter(prior[:, 0], prior[:, 1], s=6, color="0.75", label="prior sample")
        plots.scatter_2d(run["codes"].numpy(), labels, classes,
                         f"lambda_ = {lambda_:g}: discriminator accuracy {run['test']['disc_accuracy']:.0%}",
                         ax=ax, xlabel="z_1", ylabel="z_2")
        ax.set_xticks([-3, 0, 3])
        ax.set_yticks([-3, 0, 3])
    fig.suptitle(f"Codes of the test images (coloured by digit) against N(0, I) samples (grey), {dataset}")
    fig.tight_layout()
    return fig


def run(ctx):
    c = ctx.config
    splits = ctx.load_dataset(**({"size": 28} if ctx.dataset == "digits" else {}))
    parts = {name: getattr(splits, name) for name in ("train", "val", "test")}
    images = {name: torch.from_numpy(part.x) * 2 - 1 for name, part in parts.items()}  # [0, 1] -> [-1, 1]
    data = {name: ctx.loader(images[name], torch.from_numpy(part.y), shuffle=name == "train",
                             batch_size=None if name == "train" else 500) for name, part in parts.items()}
    metrics = {"dataset": ctx.dataset, "images": {k: len(v) for k, v in images.items()}, "z_dim": c.z_dim,
               "lambda_": c.lambda_, "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr,
               "disc_lr": c.disc_lr}

    model, history, test = train_aae(ctx, f"aae_z{c.z_dim}", c.z_dim, c.lambda_, c.epochs, data)
    histories = {f"main (z_dim {c.z_dim}, lambda_ {c.lambda_:g})": history}
    shown = ctx.to_device(images["test"][:SHOWN])
    with torch.no_grad():
        recon, _ = model(shown)
    ctx.save_figure(plots.image_grid(as_shown(torch.cat([shown, recon])),
                                     f"Reconstructions of test images ({ctx.dataset}, z_dim {c.z_dim})",
                                     columns=SHOWN, row_labels=["original", "reconstruction"]),
                    "reconstructions", f"Test images (top) and the AAE's reconstructions (bottom), z_dim {c.z_dim}, "
                    f"lambda_ {c.lambda_:g}, after {c.epochs} epochs; test MSE {test['recon_loss']:.4f} "
                    "(on the [-1, 1] scale).")
    torch.manual_seed(ctx.seed)
    ctx.save_figure(plots.image_grid(as_shown(model.sample(3 * SHOWN)), f"Images decoded from the prior "
                                     f"({ctx.dataset}, z_dim {c.z_dim}, lambda_ {c.lambda_:g})", columns=SHOWN),
                    "samples", f"{3 * SHOWN} codes drawn from N(0, I) and decoded.")
    # the baseline: the training set's mean image for every test image, what an AAE that ignores its codes draws
    with torch.no_grad():
        errors = torch.cat([((model(x)[0].cpu() - x.cpu()) ** 2).mean(dim=(1, 2, 3)) for x in
                            ctx.to_device(images["test"]).split(500)])
    mean_image_errors = ((images["train"].mean(0) - images["test"]) ** 2).mean(dim=(1, 2, 3))
    difference = mean_image_errors - errors  # paired over the test images
    ctx.headline("test reconstruction MSE", errors.mean().item(), mean_image_errors.mean().item(),
                 "the mean training image", noise=(difference.std() / len(difference) ** 0.5).item(),
                 unit="MSE", higher_is_better=False)
    metrics.update(test_recon_loss=test["recon_loss"], test_disc_accuracy=test["disc_accuracy"],
                   prior_samples_shown=3 * SHOWN, discriminator_chance=0.5, course_target_mse=COURSE_MSE,
                   mean_image_recon_loss=mean_image_errors.mean().item(),
                   history={k: [h[k] for h in history] for k in ("recon_loss", "val_recon_loss", "disc_accuracy")})
    ctx.note(f"After {c.epochs} epochs (z_dim {c.z_dim}, lambda_ {c.lambda_:g}) the test reconstruction MSE is "
             f"{test['recon_loss']:.4f} ({'below' if test['recon_loss'] < COURSE_MSE else 'not yet below'} the "
             f"course's {COURSE_MSE}) and the discriminator tells the test codes from prior samples "
             f"{test['disc_accuracy']:.0%} of the time (50 % is chance: the codes look like the prior to it).")

    runs, z = {}, c.lambda_z_dim
    for lambda_ in ctx.progress(c.lambdas, "lambda_ runs"):
        if (z, lambda_, c.lambda_epochs) == (c.z_dim, c.lambda_, c.epochs):
            model2, test2 = model, test  # the main run
        else:
            model2, history2, test2 = train_aae(ctx, f"aae_z{z}_lambda{lambda_:g}", z, lambda_, c.lambda_epochs, data)
            histories[f"lambda_ {lambda_:g} run (z_dim {z})"] = history2
        torch.manual_seed(ctx.seed)
        runs[lambda_] = {"codes": encode(model2, ctx.to_device(images["test"])), "test": test2,
                         "samples": model2.sample(SHOWN).cpu()}
    if runs:
        prior = torch.randn(len(images["test"]), z, generator=torch.Generator().manual_seed(ctx.seed))
        classes = [str(k) for k in splits.classes]
        shown_dims = "the codes" if z == 2 else f"the first two of the {z} coordinates of the codes"
        ctx.save_figure(plot_codes(runs, prior.numpy(), parts["test"].y, classes, ctx.dataset), "codes_vs_prior",
                        f"For each lambda_ (z_dim {z}), {shown_dims} of the {len(prior):,} test images over "
                        "as many samples of the prior N(0, I). With lambda_ = 1 nothing pulls the codes onto the "
                        "prior; a smaller lambda_ gives the adversarial term more weight.")
        ctx.save_figure(plots.image_grid(as_shown(torch.cat([r["samples"] for r in runs.values()])),
                                         f"Images decoded from prior samples, z_dim {z} ({ctx.dataset})",
                                         columns=SHOWN, row_labels=[f"lambda_ {k:g}" for k in runs]),
                        "samples_per_lambda", "Each row decodes the same N(0, I) codes with the AAE of one "
                        "lambda_: where the codes do not cover the prior, its samples fall outside what the "
                        "decoder learned.")
        rows = [{"lambda_": k, "test_recon_loss": r["test"]["recon_loss"],
                 "test_disc_accuracy": r["test"]["disc_accuracy"], "code_mean": r["codes"].mean(0).norm().item(),
                 "code_std": r["codes"].std(0).mean().item()} for k, r in runs.items()]
        ctx.table("lambdas", rows, f"AAEs with z_dim {z}, one per lambda_: test reconstruction MSE, the "
                  "discriminator's accuracy on test codes against prior samples, and the codes' statistics "
                  "(the prior has mean 0 and standard deviation 1 per dimension).",
                  columns={"lambda_": "lambda_", "test_recon_loss": ("test MSE", "{:.4f}"),
                           "test_disc_accuracy": ("discriminator accuracy", "{:.1%}"),
                           "code_mean": ("|mean of the codes|", "{:.2f}"), "code_std": ("std of the codes", "{:.2f}")})
        metrics["lambdas"] = rows
        ctx.note(f"z_dim {z}, test codes against the prior: " + "; ".join(
            f"lambda_ {r['lambda_']:g}: discriminator accuracy {r['test_disc_accuracy']:.0%}, code std "
            f"{r['code_std']:.2f}, MSE {r['test_recon_loss']:.4f}" for r in rows) + ".")
    ctx.save_figure(plots.training_curves(histories, metrics=("recon_loss", "disc_accuracy"), chance=0.5,
                                          units={"recon_loss": "MSE ([-1, 1] images)"},
                                          titles={"recon_loss": "Reconstruction loss",
                                                  "disc_accuracy": "Discriminator accuracy"}),
                    "training_curves", "Reconstruction MSE and the discriminator's accuracy per epoch: training "
                    "(solid, averaged over the epoch's batches) and validation (dashed).")
    return metrics
