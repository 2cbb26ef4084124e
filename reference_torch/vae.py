"""The variational autoencoder of UvA DL1 assignment 3, part 1, with the course's names.

    imgs = discretize(x)                         # floats in [0, 1] -> 4-bit integers 0..15
    model = VAE(num_filters=32, z_dim=20, lr=1e-3)
    L_rec, L_reg, bpd = model(imgs)              # batch means; bpd is the training loss
    trainer = Trainer(model, model.configure_optimizers(), training_step=vae_step, eval_step=vae_step)

The decoder gives each pixel a categorical distribution over the 16 intensity levels
(logits, (B, 16, 28, 28)); the encoder gives a diagonal Gaussian q(z|x) as
``(mean, log_std)``. The loss is the negative ELBO, reconstruction ``L_rec = -log p(x|z)``
for one sample z plus ``L_reg = KL(q(z|x) || N(0, I))``, summed over the pixels and the
latent dimensions and averaged over the batch; in bits per dimension it is
``elbo_to_bpd``. At zero weights every level has probability 1/16, so L_rec = 784 ln 16,
L_reg = 0 and the bpd is exactly 4: the conventions' check.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .train import Callback

LEVELS = 16  # 4-bit images, as the course discretises MNIST


def discretize(images: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Floats in [0, 1] -> integers 0..levels-1: multiply by 16 and round down, 16 itself
    becoming 15 (the course's 4-bit MNIST)."""
    return (images * levels).long().clamp_(0, levels - 1)


def sample_reparameterize(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A sample of N(mean, std^2), written as mean + std * eps with eps ~ N(0, 1), so that
    the gradient reaches both mean and std."""
    assert not (std < 0).any().item(), ("The reparameterization trick got a negative std as input. "
                                        "Are you sure your input is std and not log_std?")
    return mean + std * torch.randn_like(std)


def KLD(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_std)^2) || N(0, 1)) in closed form, summed over the last
    dimension: 0.5 * sum(exp(2 log_std) + mean^2 - 1 - 2 log_std). One value per example."""
    return 0.5 * torch.sum(torch.exp(2 * log_std) + mean ** 2 - 1 - 2 * log_std, dim=-1)


def elbo_to_bpd(elbo: torch.Tensor, img_shape) -> torch.Tensor:
    """A negative log-likelihood in nats (the negative ELBO) as bits per dimension: times
    log2(e), over the dimensions of one image (C * H * W of ``img_shape`` = (B, C, H, W))."""
    return elbo * math.log2(math.e) / math.prod(img_shape[1:])


class CNNEncoder(nn.Module):
    """(B, C, 28, 28) integer images 0..15 -> (mean, log_std) of q(z|x), each (B, z_dim).
    Three stride-2 convolutions (28 -> 14 -> 7 -> 4), GELU, then one linear layer."""

    def __init__(self, num_input_channels: int = 1, num_filters: int = 32, z_dim: int = 20):
        super().__init__()
        c = num_filters
        self.net = nn.Sequential(
            nn.Conv2d(num_input_channels, c, 3, padding=1, stride=2), nn.GELU(),  # 28 -> 14
            nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.GELU(),  # 14 -> 7
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1, stride=2), nn.GELU(),  # 7 -> 4
            nn.Flatten(),
            nn.Linear(2 * 16 * c, 2 * z_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.float() / (LEVELS - 1) * 2.0 - 1.0  # the integer levels as values in [-1, 1]
        mean, log_std = self.net(x).chunk(2, dim=-1)
        return mean, log_std


class CNNDecoder(nn.Module):
    """(B, z_dim) -> (B, num_input_channels, 28, 28) logits: by default one categorical
    distribution over the 16 levels per pixel of a grey image. The encoder mirrored with
    transposed convolutions (4 -> 7 -> 14 -> 28)."""

    def __init__(self, num_input_channels: int = 16, num_filters: int = 32, z_dim: int = 20):
        super().__init__()
        c = num_filters
        self.linear = nn.Sequential(nn.Linear(z_dim, 2 * 16 * c), nn.GELU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, 3, padding=1, stride=2, output_padding=0), nn.GELU(),  # 4 -> 7
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(2 * c, c, 3, padding=1, stride=2, output_padding=1), nn.GELU(),  # 7 -> 14
            nn.Conv2d(c, c, 3, padding=1), nn.GELU(),
            nn.ConvTranspose2d(c, num_input_channels, 3, padding=1, stride=2, output_padding=1),  # 14 -> 28
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).reshape(len(z), -1, 4, 4)
        return self.net(x)


def expected_image(logits: torch.Tensor) -> torch.Tensor:
    """The mean of each pixel's categorical distribution, (B, 16, H, W) logits -> (B, 1, H, W)
    in [0, 1]: what the decoder "draws" for a code, without sampling noise."""
    levels = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (logits.float().softmax(dim=1) * levels).sum(dim=1, keepdim=True) / (logits.shape[1] - 1)


def he_init(module: nn.Module) -> nn.Module:
    """He (Kaiming) normal weights and zero biases for every convolution and linear layer.
    PyTorch's default draws weights a third as large in variance, so the signal shrinks
    layer by layer: at that start the encoder gave every digit nearly the same mean code
    (variance across images about 0.0005 against a posterior variance of 1), the decoder
    learned to ignore z, and the posterior stayed collapsed for 30 to 40 epochs on the
    embedded digits (seeds 0, 1, 2). From He's start all 20 latents were active after
    1 to 4 epochs."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return module


class VAE(nn.Module):
    """The course's VAE (there a LightningModule; here a plain module the Trainer trains).
    Its encoder and decoder start from ``he_init``."""

    def __init__(self, num_filters: int, z_dim: int, lr: float):
        super().__init__()
        self.hparams = {"num_filters": num_filters, "z_dim": z_dim, "lr": lr}
        self.z_dim, self.lr = z_dim, lr
        self.encoder = he_init(CNNEncoder(z_dim=z_dim, num_filters=num_filters))
        self.decoder = he_init(CNNDecoder(z_dim=z_dim, num_filters=num_filters))

    def forward(self, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Integer images (B, 1, 28, 28), values 0..15 -> the batch means of the
        reconstruction loss, the KL term and the bits per dimension (the training loss)."""
        mean, log_std = self.encoder(imgs)
        z = sample_reparameterize(mean, torch.exp(log_std))
        logits = self.decoder(z)
        # -log p(x|z): cross-entropy of each pixel's level, summed over the pixels
        L_rec = F.cross_entropy(logits, imgs.squeeze(1).long(), reduction="none").sum(dim=(1, 2)).mean()
        L_reg = KLD(mean, log_std).mean()
        bpd = elbo_to_bpd(L_rec + L_reg, imgs.shape)
        return L_rec, L_reg, bpd

    @torch.no_grad()
    def sample(self, batch_size: int) -> torch.Tensor:
        """``batch_size`` images from the model: z ~ N(0, I), then each pixel's level drawn
        from the decoder's categorical distribution. Integers (B, 1, 28, 28), 0..15."""
        z = torch.randn(batch_size, self.z_dim, device=self.device)
        probs = self.decoder(z).float().softmax(dim=1)  # (B, 16, H, W)
        b, k, h, w = probs.shape
        levels = torch.multinomial(probs.permute(0, 2, 3, 1).reshape(-1, k), 1)
        return levels.reshape(b, 1, h, w)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


@torch.no_grad()
def active_units(encoder: CNNEncoder, imgs: torch.Tensor, threshold: float = 0.01) -> int:
    """How many latent dimensions the encoder uses: those whose mean code varies across the
    images with a variance above ``threshold`` (Burda et al. 2016). The others are the
    prior whatever the image ("posterior collapse" when none are left)."""
    means = torch.cat([encoder(part)[0] for part in imgs.split(500)])
    return int((means.var(dim=0) > threshold).sum())


@torch.no_grad()
def per_image_bpd(model: VAE, imgs: torch.Tensor) -> torch.Tensor:
    """The negative ELBO of each image in bits per dimension (one z sample each): what
    ``model(imgs)`` averages, kept per image for a paired comparison."""
    mean, log_std = model.encoder(imgs)
    logits = model.decoder(sample_reparameterize(mean, torch.exp(log_std)))
    L_rec = F.cross_entropy(logits, imgs.squeeze(1).long(), reduction="none").sum(dim=(1, 2))
    return elbo_to_bpd(L_rec + KLD(mean, log_std), imgs.shape)


def marginal_bpd(train_imgs: torch.Tensor, test_imgs: torch.Tensor, levels: int = LEVELS) -> torch.Tensor:
    """Bits per dimension of each test image under the training images' frequency of each
    level at each pixel (add-one smoothed): the best a decoder that ignores z can do
    pixel by pixel, so a VAE whose posterior has collapsed lands near it."""
    counts = F.one_hot(train_imgs.flatten(1), levels).sum(dim=0).float() + 1  # (pixels, levels)
    log_p = (counts / counts.sum(dim=1, keepdim=True)).log()
    nats = -log_p.gather(1, test_imgs.flatten(1).T.long()).sum(dim=0)  # one per test image
    return nats * math.log2(math.e) / test_imgs[0].numel()


def vae_step(model: VAE, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Trainer's training and evaluation step: the bits per dimension as the loss,
    with the two terms of the (negative) ELBO beside it."""
    L_rec, L_reg, bpd = model(batch[0])
    return bpd, {"reconstruction_loss": L_rec, "regularization_loss": L_reg, "bpd": bpd}


@torch.no_grad()
def visualize_manifold(decoder: CNNDecoder, grid_size: int = 20) -> torch.Tensor:
    """The decoder's mean images over a 2-d latent space, as one (H * grid_size, W * grid_size)
    image in [0, 1]. The codes sit at the percentiles 0.5/g, 1.5/g, ..., (g - 0.5)/g of
    N(0, 1) on each axis (through the inverse normal CDF), so each cell covers the same
    prior mass; z_1 grows to the right, z_2 upwards, as on a plot's axes."""
    device = next(decoder.parameters()).device
    percentiles = (torch.arange(grid_size, dtype=torch.float32) + 0.5) / grid_size
    values = torch.distributions.Normal(0.0, 1.0).icdf(percentiles)
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")  # row 0: the largest z_2
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1).to(device)
    images = expected_image(decoder(z))[:, 0].cpu()  # (g * g, H, W)
    h, w = images.shape[1:]
    return images.reshape(grid_size, grid_size, h, w).permute(0, 2, 1, 3).reshape(grid_size * h, grid_size * w)


class SamplesAtEpochs(Callback):
    """Draws ``count`` samples (``model.sample``) from the same seed after each of the given
    epochs, in ``samples`` ({epoch: images}); kept in the checkpoints, so that a resumed
    run still has them. The training's own random stream is left as it was."""

    def __init__(self, epochs, count: int = 10, seed: int = 0):
        self.epochs, self.count, self.seed = sorted(set(epochs)), count, seed
        self.samples: dict[int, torch.Tensor] = {}

    def on_epoch_end(self, trainer, logs):
        if logs["epoch"] in self.epochs:
            with torch.random.fork_rng():
                torch.manual_seed(self.seed)
                self.samples[logs["epoch"]] = trainer.eval_model.sample(self.count).cpu()

    def state_dict(self):
        return {"samples": {str(k): v for k, v in self.samples.items()}}

    def load_state_dict(self, state):
        self.samples = {int(k): v for k, v in state["samples"].items()}


class EvaluateEachEpoch(Callback):
    """Adds ``evaluate(loader)``'s numbers to each epoch's history row as ``<prefix>_<name>``
    (the test bits per dimension after every epoch, beside the validation ones)."""

    def __init__(self, loader, prefix: str = "test"):
        self.loader, self.prefix = loader, prefix

    def on_epoch_end(self, trainer, logs):
        logs.update({f"{self.prefix}_{k}": v for k, v in trainer.evaluate(self.loader).items()})
