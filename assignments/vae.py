"""UvA DL1 assignment 3, part 1: a variational autoencoder on 4-bit images, in bits per
dimension, and its latent manifold.

The course's model (``reference_torch.vae``: CNNEncoder, CNNDecoder, VAE with KLD,
sample_reparameterize and elbo_to_bpd) trains on the negative ELBO in bits per dimension
with the runner's Trainer; the validation and test bpd are measured after every epoch.
A second VAE with a 2-d latent space shows the manifold (decoded codes on a grid of the
prior's percentiles) and where the encoder puts the test images.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import torch
import torch.nn.functional as F

from reference_torch.vae import (VAE, EvaluateEachEpoch, SamplesAtEpochs, active_units, discretize,
                                 expected_image, marginal_bpd, per_image_bpd, vae_step, visualize_manifold)

from . import plots
from .runner import nonnegative_int, positive_int

NAME = "vae"
COURSE = "UvA DL1"
TASK = "assignment 3, part 1"
SUMMARY = "a VAE on 4-bit digits: bits per dimension, reconstructions, samples, the 2-d latent manifold"
STATEMENT = """
Implement a variational autoencoder with a CNN encoder, giving the mean and log standard
deviation of a Gaussian q(z|x), and a CNN decoder, giving for every pixel a categorical
distribution over the 16 grey levels of 4-bit MNIST. Train it on the negative ELBO, the
reconstruction loss plus the KL divergence of q(z|x) from the prior N(0, I), with the
reparameterisation trick, and report it in bits per dimension on the validation and
test sets (course defaults: z_dim 20, 32 filters, Adam 1e-3, batch 128, 80 epochs).
Show reconstructions, samples from the model at several epochs and the training curves
of both terms. Then train a VAE with a 2-d latent space and plot its data manifold:
decode a grid of latents placed at the percentiles of the prior (through the inverse
normal CDF). (Offline the kit uses the scikit-learn digits at 28x28, or MNIST's own test
images split 8,000 / 2,000 when given with --dataset mnist.)
"""
DATASETS = ("digits", "mnist")
DEFAULT = True
THREADS = "small"
TORCH = True
PROFILES = {
    # digits: 1,077 training images, so a smaller batch gives more steps per epoch; 16 filters
    # (the course's 32 in "full" and on MNIST). From reference_torch.vae.he_init's start all
    # 20 latents were active after 1 to 4 epochs at seeds 0, 1, 2 (from PyTorch's default start
    # the posterior stayed collapsed for 30 to 40 epochs); test bpd 0.955 after 11 epochs at seed 2
    "default": {"epochs": 15, "batch_size": 32, "lr": 1e-3, "z_dim": 20, "num_filters": 16,
                "manifold_epochs": 12, "grid_size": 15},
    "quick": {"epochs": 3, "manifold_epochs": 1, "grid_size": 6},
    "full": {"epochs": 80, "batch_size": 128, "num_filters": 32, "manifold_epochs": 80, "grid_size": 20},
}
DATASET_SETTINGS = {"mnist": {"epochs": 4, "batch_size": 128, "num_filters": 32, "manifold_epochs": 4}}
SHOWN = 10  # images per row of the figures


def add_arguments(parser):
    parser.add_argument("--z-dim", type=positive_int, help="latent dimensions of the main VAE")
    parser.add_argument("--num-filters", type=positive_int, help="channels of the first convolution")
    parser.add_argument("--manifold-epochs", type=nonnegative_int,
                        help="epochs of the 2-d VAE for the manifold and the embedding (0: none)")
    parser.add_argument("--grid-size", type=positive_int, help="latents per axis of the manifold")


def sample_epochs(epochs):
    """About four epochs spread over the run, the first and the last among them."""
    return sorted({1, max(1, epochs // 4), max(1, epochs // 2), epochs})


def train_vae(ctx, label, z_dim, epochs, data):
    torch.manual_seed(ctx.seed)
    model = VAE(num_filters=ctx.config.num_filters, z_dim=z_dim, lr=ctx.config.lr)
    samples = SamplesAtEpochs(sample_epochs(epochs), count=SHOWN, seed=ctx.seed)
    trainer = ctx.trainer(label, model, model.configure_optimizers(), training_step=vae_step,
                          eval_step=vae_step, callbacks=[samples, EvaluateEachEpoch(data["test"])])
    history = ctx.fit(trainer, data["train"], epochs, val_loader=data["val"])
    model.eval()
    return model, history, samples.samples


@torch.no_grad()
def reconstruction_nats(model, imgs, seed):
    """-log p(x|z) per image (nats) with z the encoder's mean, and with z a random prior code."""
    mean, _ = model.encoder(imgs)
    random = torch.randn(mean.shape, generator=torch.Generator().manual_seed(seed)).to(mean.device)
    return [F.cross_entropy(model.decoder(z), imgs[:, 0], reduction="none").sum(dim=(1, 2)).mean().item()
            for z in (mean, random)]


@torch.no_grad()
def plot_reconstructions(model, imgs, dataset):
    mean, log_std = model.encoder(imgs)
    drawn = model.decoder(mean + log_std.exp() * torch.randn_like(mean)).softmax(dim=1)
    drawn = torch.multinomial(drawn.permute(0, 2, 3, 1).reshape(-1, 16), 1).reshape(imgs.shape)
    rows = [imgs.float() / 15, expected_image(model.decoder(mean)), drawn.float() / 15]
    return plots.image_grid(torch.cat(rows).cpu().numpy(), f"Reconstructions of test images ({dataset})",
                            columns=len(imgs), row_labels=["original", "decoder mean,\nz = encoder mean",
                                                           "a sample,\nz ~ q(z|x)"])


def plot_samples(samples, dataset, z_dim):
    epochs = sorted(samples)
    images = torch.cat([samples[e] for e in epochs]).float().numpy() / 15
    return plots.image_grid(images, f"Samples of the VAE during training ({dataset}, z_dim {z_dim}; "
                            "z ~ N(0, I), every pixel drawn)", columns=SHOWN,
                            row_labels=[f"after epoch {e}" for e in epochs])


def plot_bpd(histories, dataset):
    fig, axes = plt.subplots(1, len(histories), figsize=(5.6 * len(histories), 4), squeeze=False)
    for ax, (label, history) in zip(axes[0], histories.items()):
        epochs = [h["epoch"] for h in history]
        series = {part: (epochs, [h[key] for h in history]) for part, key in
                  (("training (during the epoch)", "bpd"), ("validation", "val_bpd"), ("test", "test_bpd"))}
        plots.line_plot(series, f"Bits per dimension, {label} ({dataset})", "epoch", "bits per dimension", ax=ax)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    return fig


def plot_manifold(grid, grid_size, dataset):
    fig, ax = plt.subplots(figsize=(7.5, 7.5))
    plots.show_image(ax, grid.numpy())
    values = torch.distributions.Normal(0.0, 1.0).icdf((torch.arange(grid_size) + 0.5) / grid_size).numpy()
    ticks, step = (np.arange(grid_size) + 0.5) * grid.shape[0] / grid_size, max(1, grid_size // 6)
    ax.set_xticks(ticks[::step], [f"{v:.2f}" for v in values[::step]])
    ax.set_yticks(ticks[::step], [f"{v:.2f}" for v in values[::-1][::step]])
    ax.set(title=f"Manifold of the 2-d VAE ({dataset}): the decoder's mean image\nat the prior's percentiles "
                 f"{0.5 / grid_size:.3f} ... {1 - 0.5 / grid_size:.3f} of each axis",
           xlabel="z_1", ylabel="z_2")
    return fig


def run(ctx):
    c = ctx.config
    splits = ctx.load_dataset(**({"size": 28} if ctx.dataset == "digits" else {}))
    parts = {name: getattr(splits, name) for name in ("train", "val", "test")}
    imgs = {name: discretize(torch.from_numpy(part.x)) for name, part in parts.items()}
    data = {name: ctx.loader(imgs[name], torch.from_numpy(part.y), shuffle=name == "train",
                             batch_size=None if name == "train" else 500) for name, part in parts.items()}
    metrics = {"dataset": ctx.dataset, "images": {k: len(v) for k, v in imgs.items()}, "z_dim": c.z_dim,
               "num_filters": c.num_filters, "epochs": c.epochs, "batch_size": c.batch_size, "lr": c.lr}

    model, history, samples = train_vae(ctx, f"vae_z{c.z_dim}", c.z_dim, c.epochs, data)
    histories = {f"z_dim {c.z_dim}": history}
    shown = ctx.to_device(imgs["test"][:SHOWN])
    ctx.save_figure(plot_reconstructions(model, shown, ctx.dataset), "reconstructions",
                    f"Top: {SHOWN} test images (4 bits); middle: the decoder's mean image for the encoder's mean "
                    "code; bottom: one reconstruction sampled as the model defines it (z from q(z|x), then every "
                    f"pixel's level). z_dim {c.z_dim}, after {c.epochs} epochs.")
    ctx.save_figure(plot_samples(samples, ctx.dataset, c.z_dim), "samples",
                    f"Images sampled from the same prior codes after epochs {', '.join(map(str, sorted(samples)))}.")
    final = history[-1]
    from_mean, from_random = reconstruction_nats(model, ctx.to_device(imgs["train"][:500]), ctx.seed)
    active = active_units(model.encoder, ctx.to_device(imgs["test"]))
    metrics.update(val_bpd=[h["val_bpd"] for h in history], test_bpd=[h["test_bpd"] for h in history],
                   final={k: final[k] for k in ("bpd", "val_bpd", "test_bpd", "test_reconstruction_loss",
                                                "test_regularization_loss")},
                   reconstruction_nats={"encoder_mean": from_mean, "random_code": from_random},
                   active_units=active)
    torch.manual_seed(ctx.seed)
    bpd = torch.cat([per_image_bpd(model, x).cpu() for x in ctx.to_device(imgs["test"]).split(500)])
    marginal = marginal_bpd(imgs["train"], imgs["test"])
    gain = marginal - bpd  # paired over the test images
    ctx.headline("test bits per dimension", bpd.mean().item(), marginal.mean().item(),
                 "per-pixel level frequencies (a decoder that ignores z)",
                 noise=(gain.std() / len(gain) ** 0.5).item(), unit="bpd", higher_is_better=False)
    metrics["marginal_test_bpd"] = marginal.mean().item()
    elbo = final["test_reconstruction_loss"] + final["test_regularization_loss"]
    metrics["test_negative_elbo_nats"] = elbo
    collapsed = "; with so few the posterior has collapsed, every image gets much the same code" if active < 3 else ""
    ctx.note(f"After {c.epochs} epochs the z_dim {c.z_dim} VAE scores {final['val_bpd']:.3f} bits per dimension "
             f"on the validation set and {final['test_bpd']:.3f} on the test set (4 bits is a uniform guess "
             f"over the 16 levels); of the test ELBO's {elbo:.0f} nats per image, "
             f"{final['test_regularization_loss']:.1f} are the KL term, and {active} of the {c.z_dim} latent "
             "dimensions are active (their mean code varies across the test images with a variance above "
             f"0.01){collapsed}. The training images' frequency of each level at each pixel, a model that "
             f"ignores z, gives {marginal.mean():.3f} test bits per dimension. The decoder fed the encoder's mean "
             f"codes {from_mean:.0f} nats of a training image, against {from_random:.0f} for a random prior code.")

    if c.manifold_epochs:
        model2, history2, _ = train_vae(ctx, "vae_z2", 2, c.manifold_epochs, data)
        histories["z_dim 2"] = history2
        ctx.save_figure(plot_manifold(visualize_manifold(model2.decoder, c.grid_size), c.grid_size, ctx.dataset),
                        "manifold", f"The 2-d VAE's decoder (after {c.manifold_epochs} epochs) on a "
                        f"{c.grid_size}x{c.grid_size} grid of codes, spaced evenly in the prior's probability "
                        "(inverse normal CDF), so each cell covers the same prior mass.")
        with torch.no_grad():
            codes = torch.cat([model2.encoder(ctx.to_device(x))[0].cpu() for x in imgs["test"].split(500)])
        fig = plots.scatter_2d(codes.numpy(), parts["test"].y, [str(k) for k in splits.classes],
                               f"Test images in the 2-d latent space ({ctx.dataset})",
                               xlabel="z_1 (encoder mean)", ylabel="z_2 (encoder mean)")
        for axis in (fig.axes[0].xaxis, fig.axes[0].yaxis):  # a latent space has units: compare with the manifold's
            axis.set_major_locator(matplotlib.ticker.AutoLocator())
        ctx.save_figure(fig, "embedding", f"The encoder's mean code of each of the {len(codes):,} test images, "
                        "coloured by its digit (the labels were not used in training); where the codes are sparse, the "
                        "manifold's decoded images are poor.")
        metrics.update(z2_val_bpd=history2[-1]["val_bpd"], z2_test_bpd=history2[-1]["test_bpd"])
        ctx.note(f"With a 2-d latent space the VAE reaches {history2[-1]['test_bpd']:.3f} test bits per dimension "
                 f"after {c.manifold_epochs} epochs, against {final['test_bpd']:.3f} with z_dim {c.z_dim}.")

    ctx.save_figure(plots.training_curves(histories, metrics=("reconstruction_loss", "regularization_loss"),
                                          units={"reconstruction_loss": "-log p(x|z) (nats per image)",
                                                 "regularization_loss": "KL(q(z|x) || p(z)) (nats per image)"},
                                          titles={"reconstruction_loss": "Reconstruction term",
                                                  "regularization_loss": "KL term"}),
                    "training_curves", "The two terms of the negative ELBO per epoch: training (solid, averaged "
                    "while the weights change) and validation (dashed).")
    ctx.save_figure(plot_bpd(histories, ctx.dataset), "bpd",
                    "Bits per dimension after every epoch on the training (averaged during the epoch), "
                    "validation and test images.")
    ctx.table("bpd", [{"z_dim": label.split()[-1], "epoch": h["epoch"], "train_bpd": h["bpd"],
                       "val_bpd": h["val_bpd"], "test_bpd": h["test_bpd"]}
                      for label, rows in histories.items() for h in rows],
              "Bits per dimension per epoch (one z sample per image; 4 is a uniform guess).",
              columns={"z_dim": "z_dim", "epoch": "epoch", "train_bpd": ("training bpd", "{:.3f}"),
                       "val_bpd": ("validation bpd", "{:.3f}"), "test_bpd": ("test bpd", "{:.3f}")})
    return metrics
