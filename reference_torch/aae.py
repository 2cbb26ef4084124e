"""The adversarial autoencoder of UvA DL1 assignment 3, part 2, with the course's names.

    model = AdversarialAE(z_dim=8)
    recon_x, z = model(x)                                        # x: (B, 1, 28, 28) in [-1, 1]
    ae_loss, logs = model.get_loss_autoencoder(x, recon_x, z, lambda_=0.995)
    disc_loss, logs = model.get_loss_discriminator(z.detach())
    trainer = AAETrainer(model, *aae_optimizers(model, 1e-3, 5e-3), lambda_=0.995)

An autoencoder whose codes are pushed towards a prior, N(0, I), by a discriminator on
the codes instead of a KL term: the discriminator learns to tell prior samples ("real")
from the encoder's codes ("fake"), and the encoder, as the generator, learns to fool
it. ``lambda_`` weighs the two aims of the autoencoder: lambda_ * reconstruction (MSE)
+ (1 - lambda_) * generator loss. Once the codes look like prior samples, decoding
z ~ N(0, I) gives images (``sample``). At zero weights the decoder outputs 0 (tanh(0))
and the discriminator a logit of 0, so the generator and discriminator losses are
-ln 0.5 and a zero image is reconstructed exactly: the course's checks.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint
from .distributed import all_reduce_sum
from .train import Trainer


class ConvEncoder(nn.Module):
    """(B, 1, 28, 28) images in [-1, 1] -> codes (B, z_dim): three stride-2 convolutions
    (28 -> 14 -> 7 -> 4) with ReLU, then one linear layer."""

    def __init__(self, z_dim: int, num_filters: int = 32):
        super().__init__()
        c = num_filters
        self.net = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, stride=2), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2), nn.ReLU(),  # 14 -> 7
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * c, 2 * c, 3, padding=1, stride=2), nn.ReLU(),  # 7 -> 4
            nn.Flatten(),
            nn.Linear(2 * 16 * c, z_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class ConvDecoder(nn.Module):
    """Codes (B, z_dim) -> images (B, 1, 28, 28) in [-1, 1] (tanh): the encoder mirrored
    with transposed convolutions (4 -> 7 -> 14 -> 28)."""

    def __init__(self, z_dim: int, num_filters: int = 32):
        super().__init__()
        c = num_filters
        self.linear = nn.Sequential(nn.Linear(z_dim, 2 * 16 * c), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(2 * c, 2 * c, 3, padding=1, stride=2, output_padding=0), nn.ReLU(),  # 4 -> 7
            nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 3, padding=1, stride=2, output_padding=1), nn.ReLU(),  # 7 -> 14
            nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 3, padding=1, stride=2, output_padding=1),  # 14 -> 28
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.linear(z).reshape(len(z), -1, 4, 4))


class Discriminator(nn.Module):
    """Codes (B, z_dim) -> logits (B, 1): > 0 says "a sample of the prior" (real), < 0 "an
    encoder's code" (fake). Three linear layers, 512 hidden units, LeakyReLU(0.2), no
    sigmoid (the losses take logits)."""

    def __init__(self, z_dim: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(z_dim, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden), nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


class AdversarialAE(nn.Module):
    def __init__(self, z_dim: int = 8):
        super().__init__()
        self.z_dim = z_dim
        self.encoder = ConvEncoder(z_dim)
        self.decoder = ConvDecoder(z_dim)
        self.discriminator = Discriminator(z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, 1, 28, 28) -> (their reconstructions, their codes (B, z_dim))."""
        z = self.encoder(x)
        return self.decoder(z), z

    def get_loss_autoencoder(self, x, recon_x, z_fake, lambda_=1):
        """lambda_ * MSE(recon_x, x) + (1 - lambda_) * the generator loss, which is the
        discriminator's cross-entropy when the encoder's codes are labelled real (the
        non-saturating form: the encoder gains by making D(z_fake) say "real")."""
        recon_loss = F.mse_loss(recon_x, x)
        logits = self.discriminator(z_fake)
        gen_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
        ae_loss = lambda_ * recon_loss + (1 - lambda_) * gen_loss
        logging_dict = {"gen_loss": gen_loss, "recon_loss": recon_loss, "ae_loss": ae_loss}
        return ae_loss, logging_dict

    def get_loss_discriminator(self, z_fake):
        """The mean of the cross-entropies on prior samples labelled real and on the
        encoder's codes labelled fake, and how often the discriminator is right (0.5 is
        chance: the codes cannot be told from the prior)."""
        z_real = torch.randn_like(z_fake)
        logits_real, logits_fake = self.discriminator(z_real), self.discriminator(z_fake)
        loss_real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
        loss_fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
        disc_loss = (loss_real + loss_fake) / 2
        # "real" where the probability sigmoid(logit) is at least 0.5: a logit of 0 is half right
        accuracy = torch.cat([logits_real >= 0, logits_fake < 0]).float().mean()
        logging_dict = {"disc_loss": disc_loss, "loss_real": loss_real, "loss_fake": loss_fake,
                        "accuracy": accuracy}
        return disc_loss, logging_dict

    @torch.no_grad()
    def sample(self, batch_size):
        """``batch_size`` images (B, 1, 28, 28) in [-1, 1], decoded from z ~ N(0, I)."""
        return self.decoder(torch.randn(batch_size, self.z_dim, device=self.device))

    @property
    def device(self) -> torch.device:
        return self.encoder.device


def aae_optimizers(model: AdversarialAE, ae_lr: float = 1e-3, d_lr: float = 5e-3):
    """The course's suggestion: Adam with beta1 0.5 (less momentum to overshoot with in a
    moving game) for the encoder and decoder, plain SGD for the discriminator. With Adam
    the discriminator won too easily here: its confident logits gave the generator term
    gradients that tossed the codes about (measured on digits: accuracy 0.8 to 0.97 and
    codes with a spread near 0 over 6 epochs)."""
    autoencoder = list(model.encoder.parameters()) + list(model.decoder.parameters())
    return (torch.optim.Adam(autoencoder, lr=ae_lr, betas=(0.5, 0.999)),
            torch.optim.SGD(model.discriminator.parameters(), lr=d_lr))


def aae_eval_step(model: AdversarialAE, batch):
    """Validation: the reconstruction error, and the discriminator's accuracy on the
    encoder's codes against as many prior samples."""
    recon_x, z = model(batch[0])
    _, disc = model.get_loss_discriminator(z)
    recon_loss = F.mse_loss(recon_x, batch[0])
    return recon_loss, {"recon_loss": recon_loss, "disc_accuracy": disc["accuracy"]}


class AAETrainer(Trainer):
    """The Trainer with the course's alternating updates, one of each per batch: the
    autoencoder (``optimizer``) on ``get_loss_autoencoder``, then the discriminator
    (``disc_optimizer``) on the same codes, detached so that its step does not move the
    encoder. Checkpoints hold both optimisers.

    Under torchrun the gradients are averaged over the processes by hand after each of
    the two backward passes: DistributedDataParallel expects one forward and one
    backward per step through the wrapped module, and the discriminator's update runs
    outside the model's forward. DDP's wrapper is still built first, for the one thing
    it does here: copy rank 0's initial weights to every rank."""

    def __init__(self, model: AdversarialAE, optimizer, disc_optimizer, *, lambda_: float = 1.0, **options):
        if not 0 <= lambda_ <= 1:
            raise ValueError(f"lambda_ must be between 0 and 1, got {lambda_}")
        options.setdefault("eval_step", aae_eval_step)
        super().__init__(model, optimizer, **options)
        self.train_model = self.model  # the plain module: both losses are the model's methods
        self.disc_optimizer, self.lambda_ = disc_optimizer, lambda_

    def _average_gradients(self, optimizer) -> None:
        """The mean of every process's gradient, so that all take the same step."""
        if self.dist.enabled:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        all_reduce_sum(p.grad).div_(self.dist.world_size)

    def train_step(self, batch, *extra_batches):
        x = batch[0]
        with self.autocast():
            recon_x, z_fake = self.model(x)
            ae_loss, ae_logs = self.model.get_loss_autoencoder(x, recon_x, z_fake, self.lambda_)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(ae_loss).backward()
        self._average_gradients(self.optimizer)
        self.scaler.step(self.optimizer)
        with self.autocast():
            disc_loss, disc_logs = self.model.get_loss_discriminator(z_fake.detach())
        self.disc_optimizer.zero_grad(set_to_none=True)  # also drops what ae_loss left on D
        self.scaler.scale(disc_loss).backward()
        self._average_gradients(self.disc_optimizer)
        self.scaler.step(self.disc_optimizer)
        self.scaler.update()
        logs = {"loss": ae_loss, "recon_loss": ae_logs["recon_loss"], "gen_loss": ae_logs["gen_loss"],
                "disc_loss": disc_loss, "loss_real": disc_logs["loss_real"], "loss_fake": disc_logs["loss_fake"],
                "disc_accuracy": disc_logs["accuracy"]}
        return {k: v.detach().float() for k, v in logs.items()}

    def state_dict(self):
        return {**super().state_dict(), "disc_optimizer": self.disc_optimizer.state_dict()}

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        super().load_checkpoint(path)
        state = load_checkpoint(path, map_location=self.device)
        if "disc_optimizer" not in state:
            raise ValueError(f"{os.fspath(path)!r} holds no discriminator optimiser: not an AAETrainer checkpoint")
        self.disc_optimizer.load_state_dict(state["disc_optimizer"])
