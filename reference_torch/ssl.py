"""Self- and semi-supervised learning on the Trainer's pluggable step: SimCLR and FixMatch.

SimCLR (Chen et al., 2020) learns a representation without labels: two random views
of every image, and the NT-Xent loss asks each view to pick its partner out of the
2N - 1 other views of the batch. The representation is the encoder's output; a
two-layer projection head sits on top during pre-training only. Evaluation freezes
the encoder and fits a linear probe (logistic regression) on its features.

    model = SimCLR(small_encoder(), feature_dim=64)
    step = simclr_step(simclr_augment(32, normalize=norm), temperature=0.5)
    trainer = Trainer(model, optimizer, training_step=step, eval_step=step)

FixMatch (Sohn et al., 2020) uses a few labels and many unlabelled images: the
prediction on a weakly augmented view, where it is confident (>= tau), is the hard
pseudo-label that the strongly augmented view of the same image must predict.

    labelled, unlabelled = balanced_labelled_subset(y, per_class=4, seed=0)
    step = fixmatch_step(weak_augment(32, norm), strong_augment(32, norm), tau=0.95)
    trainer.fit(labelled_loader, epochs, extra_loaders=[unlabelled_loader])

Augmentation runs on the device inside the step, drawing from torch's global RNG,
which the Trainer seeds and saves in its checkpoints (so a resumed run is exact);
pass a seeded ``Compose`` generator for reproducible figures.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import augment as A
from .models import resnet18
from .train import Callback

# --------------------------------------------------------------------------- NT-Xent


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward hands each rank the gradient of its own slice.

    Every rank's loss depends on every rank's embeddings (they are its negatives), so
    the gradient of a slice is the sum over ranks of each loss's gradient with respect
    to it: an all-reduce, then this rank's rows. (A plain ``dist.all_gather`` returns
    tensors without gradient: the negatives would be constants and, as users of several
    reimplementations found, the loss falls while nothing is learned.)
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous().clone()  # summed in place: not autograd's own tensor
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * n:(rank + 1) * n]


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """(every rank's ``x`` stacked in rank order, this rank's first row in it).

    In a single process: ``(x, 0)``. Every rank must pass the same number of rows
    (a DistributedSampler pads the data so that the last batches are equal too).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return x, 0
    return _GatherWithGrad.apply(x), dist.get_rank() * x.shape[0]


def nt_xent_logits(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> tuple[Tensor, Tensor]:
    """The NT-Xent classification problem: (logits (2n, 2N), targets (2n,)).

    Row i is one of this process's 2n views (``z1`` then ``z2``, n each); its columns
    are the cosine similarities / temperature to all 2N views of the global batch
    (every rank's, under DDP), its own column masked to -inf; its target is the
    column of its partner view. n comes from the batch itself, never from a
    configured batch size, so a short last batch is right.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent needs two (n, d) embeddings of one shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    all1, offset = gather_with_grad(z1)
    all2, _ = gather_with_grad(z2)
    total = all1.shape[0]  # N, the global batch
    logits = torch.cat([z1, z2]) @ torch.cat([all1, all2]).T / temperature
    rows = torch.arange(n, device=z1.device) + offset  # this rank's images in the global batch
    own = torch.cat([rows, rows + total])
    targets = torch.cat([rows + total, rows])
    self_mask = F.one_hot(own, 2 * total).bool()
    return logits.masked_fill(self_mask, float("-inf")), targets


def nt_xent(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent: mean over the 2n views of -log softmax(similarities / T)[partner].

    The cross-entropy is a log-sum-exp over the 2N - 1 candidates, stable at any
    temperature; the masked diagonal contributes exp(-inf) = 0.
    """
    logits, targets = nt_xent_logits(z1, z2, temperature)
    return F.cross_entropy(logits, targets)


def similarity_matrix(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> tuple[Tensor, Tensor]:
    """(cosine similarities (2n, 2n), each row's softmax over its 2n - 1 candidates) of
    one batch in one process: what NT-Xent sees, for the figure."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    cosine = z @ z.T
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return cosine, (cosine / temperature).masked_fill(eye, float("-inf")).softmax(1)


# --------------------------------------------------------------------------- SimCLR


def small_encoder(widths: tuple[int, ...] = (16, 32, 64), in_channels: int = 3) -> nn.Sequential:
    """(Conv BN ReLU MaxPool) per width, then global average pooling: (B, widths[-1])."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def resnet18_encoder() -> nn.Module:
    """ResNet-18 with the CIFAR stem (3x3 conv, no max-pool) and no classifier: (B, 512)."""
    model = resnet18(num_classes=10, cifar_stem=True)
    model.fc = nn.Identity()
    return model


class SimCLR(nn.Module):
    """``encoder`` (the representation, ``features(x)``) + two-layer projection head
    (Linear, BatchNorm, ReLU, Linear) that the loss sees (``forward(x)``)."""

    def __init__(self, encoder: nn.Module, feature_dim: int, projection_dim: int = 128,
                 hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or feature_dim
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(feature_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim),
                                  nn.ReLU(inplace=True), nn.Linear(hidden_dim, projection_dim))

    def features(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.encoder(x))


def simclr_augment(size: int, crop_scale: tuple[float, float] = (0.08, 1.0), strength: float = 0.5,
                   blur: bool | None = None, normalize: A.Normalize | None = None, seed: int | None = None,
                   flip: bool = True) -> A.Compose:
    """SimCLR's views: random resized crop, horizontal flip, colour jitter (brightness,
    contrast, saturation 0.8 x ``strength``, hue 0.2 x ``strength``) with probability 0.8,
    grayscale with probability 0.2, and Gaussian blur (kernel 10 % of the side, sigma in
    [0.1, 2], p 0.5) when ``blur``; by default only from 64 pixels up, as SimCLR leaves it
    out on CIFAR's 32. ``flip=False`` where a mirrored image is another thing (digits)."""
    s = strength
    steps = [A.RandomResizedCrop(size, scale=crop_scale)]
    if flip:
        steps.append(A.RandomHorizontalFlip())
    steps += [A.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s, p=0.8), A.RandomGrayscale(0.2)]
    if blur if blur is not None else size >= 64:
        steps.append(A.GaussianBlur(max(3, int(0.1 * size)) // 2 * 2 + 1, sigma=(0.1, 2.0), p=0.5))
    if normalize is not None:
        steps.append(normalize)
    return A.Compose(steps, seed=seed)


def simclr_step(augment: A.Compose, temperature: float = 0.5):
    """A training_step: two views of each image in one forward pass, NT-Xent, and
    ``top1``, how often a view's partner is the most similar of its 2N - 1 candidates."""
    def step(model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x = batch[0]
        z1, z2 = model(torch.cat([augment(x), augment(x)])).chunk(2)
        logits, targets = nt_xent_logits(z1, z2, temperature)
        return F.cross_entropy(logits, targets), {"top1": (logits.argmax(1) == targets).float().mean()}
    return step


@torch.no_grad()
def extract_features(encoder: nn.Module, x: Tensor, batch_size: int = 512,
                     transform=None) -> Tensor:
    """The encoder's features of ``x`` (in eval mode, batch by batch), on the CPU;
    ``transform`` (a Normalize) is applied to each batch on the encoder's device."""
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    out = []
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].to(device)
        out.append(encoder(transform(batch) if transform else batch).float().cpu())
    encoder.train(was_training)
    return torch.cat(out)


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
                 weight_decay: float = 1e-3, max_iter: int = 200) -> dict[str, float]:
    """Logistic regression on frozen features: standardised with the training features'
    mean and std, zero-initialised (so deterministic), fitted by full-batch L-BFGS on
    cross-entropy + ``weight_decay`` x squared weights. Returns train and test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    probe = nn.Linear(train_x.shape[1], num_classes)
    nn.init.zeros_(probe.weight)
    nn.init.zeros_(probe.bias)
    optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(probe(train_x), train_y) + weight_decay * probe.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        return {"train_accuracy": (probe(train_x).argmax(1) == train_y).float().mean().item(),
                "accuracy": (probe(test_x).argmax(1) == test_y).float().mean().item()}


def knn_accuracy(bank_x: Tensor, bank_y: Tensor, query_x: Tensor, query_y: Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.1) -> float:
    """Weighted k-NN on cosine similarity (Wu et al., 2018): each of the k nearest
    neighbours in the bank votes for its class with weight exp(similarity / T)."""
    bank, query = F.normalize(bank_x.float(), dim=1), F.normalize(query_x.float(), dim=1)
    similarity, index = (query @ bank.T).topk(min(k, len(bank)), dim=1)
    votes = torch.zeros(len(query), num_classes).scatter_add_(1, bank_y[index], (similarity / temperature).exp())
    return (votes.argmax(1) == query_y).float().mean().item()


class KNNMonitor(Callback):
    """Adds ``key`` to each epoch's history row: the k-NN accuracy on ``query`` of the
    evaluated model's features, with ``bank`` as the labelled neighbours (both ``(x, y)``
    CPU tensors, normalised as the model expects)."""

    def __init__(self, bank: tuple[Tensor, Tensor], query: tuple[Tensor, Tensor], num_classes: int,
                 k: int = 20, key: str = "val_knn_accuracy") -> None:
        self.bank, self.query, self.num_classes, self.k, self.key = bank, query, num_classes, k, key

    def on_epoch_end(self, trainer, logs) -> None:
        encoder = trainer.eval_model.encoder
        logs[self.key] = knn_accuracy(extract_features(encoder, self.bank[0]), self.bank[1],
                                            extract_features(encoder, self.query[0]), self.query[1],
                                            self.num_classes, self.k)


# --------------------------------------------------------------------------- FixMatch


def balanced_labelled_subset(labels: np.ndarray, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(labelled indices: ``per_class`` of every class, unlabelled indices: the rest),
    both sorted; a function of (labels, per_class, seed) alone, so a resumed run
    rebuilds the same split."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < per_class:
            raise ValueError(f"class {c} has {len(members)} images, fewer than {per_class} labels per class")
        chosen.append(rng.choice(members, per_class, replace=False))
    labelled = np.sort(np.concatenate(chosen))
    return labelled, np.setdiff1d(np.arange(len(labels)), labelled)


def _flip_translate(size: int, flip: bool) -> list:
    # Digits pad with their black background: a reflected border would add strokes.
    translate = A.RandomCrop(padding=round(0.125 * size), padding_mode="reflect" if flip else "constant")
    return [A.RandomHorizontalFlip(), translate] if flip else [translate]


def weak_augment(size: int, normalize: A.Normalize | None = None, seed: int | None = None,
                 flip: bool = True) -> A.Compose:
    """FixMatch's weak view: horizontal flip (``flip=False`` for digits: a mirrored 2 is
    no 2) and a translation by up to 12.5 % of the side (padded random crop)."""
    steps = _flip_translate(size, flip)
    return A.Compose(steps + ([normalize] if normalize is not None else []), seed=seed)


def strong_augment(size: int, normalize: A.Normalize | None = None, seed: int | None = None,
                   num_ops: int = 2, flip: bool = True) -> A.Compose:
    """FixMatch's strong view: the weak one, then RandAugment (``num_ops`` operations of
    FixMatch's 14, ``augment.RANDAUGMENT_OPS``, each at a random magnitude), then Cutout
    of a grey square half the side."""
    steps = _flip_translate(size, flip) + [A.RandAugment(num_ops, magnitude=1.0), A.Cutout(0.5, fill=0.5)]
    return A.Compose(steps + ([normalize] if normalize is not None else []), seed=seed)


def fixmatch_unlabelled_loss(logits_weak: Tensor, logits_strong: Tensor, tau: float
                             ) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, mask, pseudo-labels): the cross-entropy of the strong view's logits
    against the weak view's hard pseudo-label, kept where the weak view's top
    probability is at least ``tau``, averaged over *all* unlabelled images (as the
    paper: fewer confident images, a smaller loss). No gradient flows into the weak view."""
    confidence, pseudo = logits_weak.detach().float().softmax(1).max(1)
    mask = (confidence >= tau).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo


def fixmatch_step(weak: A.Compose, strong: A.Compose, tau: float = 0.95, lambda_u: float = 1.0):
    """A training_step for ``(labelled batch, unlabelled batch)``: supervised cross-entropy
    on the weak view of the labelled images + ``lambda_u`` x the unlabelled loss. All
    three sets of views share one forward pass, so batch norm sees labelled and
    unlabelled images together. The unlabelled batch's labels, when it has them, are
    read only to report how accurate the pseudo-labels are."""
    def step(model: nn.Module, labelled, unlabelled) -> tuple[Tensor, dict[str, Tensor]]:
        x, y, u = labelled[0], labelled[1], unlabelled[0]
        logits = model(torch.cat([weak(x), weak(u), strong(u)]))
        logits_x, logits_weak, logits_strong = logits.split([len(x), len(u), len(u)])
        loss_x = F.cross_entropy(logits_x.float(), y)
        loss_u, mask, pseudo = fixmatch_unlabelled_loss(logits_weak, logits_strong, tau)
        metrics = {"accuracy": (logits_x.argmax(1) == y).float().mean(), "loss_x": loss_x.detach(),
                   "loss_u": loss_u.detach(), "mask_rate": mask.mean()}
        if len(unlabelled) > 1:
            correct = (pseudo == unlabelled[1]).float()
            metrics.update(pseudo_accuracy=correct.mean(), confident_correct=(correct * mask).mean())
        return loss_x + lambda_u * loss_u, metrics
    return step


def supervised_step(augment: A.Compose):
    """A training_step: cross-entropy on augmented labelled images (the labelled-only baseline)."""
    def step(model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch[0], batch[1]
        logits = model(augment(x))
        return F.cross_entropy(logits.float(), y), {"accuracy": (logits.argmax(1) == y).float().mean()}
    return step
