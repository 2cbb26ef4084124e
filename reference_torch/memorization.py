"""Memorisation (Zhang et al. 2017) and layer criticality (Zhang, Bengio and Singer 2019).

    x, y = corrupt(train_x, train_y, "labels", share=0.4, num_classes=10, seed=0)
    trainer = Trainer(model, optimizer, callbacks=[EpochCheckpoints("runs/x/ckpt", (0, 1, 2, 5, 10)),
                                                   StopWhenFitted()])
    checkpoints, meta = load_epoch_checkpoints("runs/x/ckpt")     # {epoch: state_dict}
    study = layer_robustness(model, checkpoints, test_loader)     # every layer reset / re-drawn

Part I asks whether a network that generalises has learnt something a network cannot
memorise: ``corrupt`` makes the same training set with partly or fully random labels, or
with its pixels destroyed, one seeded draw fixed for the whole run. Part II asks whether
every layer of a trained network matters equally: ``layer_robustness`` puts one layer at a
time back to an earlier checkpoint (re-initialisation) or draws it afresh from its
initialiser (re-randomisation), keeps every other layer, and measures the test error.
"""
from __future__ import annotations

import copy
import glob
import os
import re
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from minidl.train import Callback

from .checkpoint import load_checkpoint, save_checkpoint
from .models.thin import ThinResNet18
from .train import evaluate

CORRUPTIONS = ("labels", "shuffled_pixels", "random_pixels", "gaussian")


# --------------------------------------------------------------------------- Part I: data
def corrupt(x: np.ndarray, y: np.ndarray, kind: str = "labels", share: float = 0.0, *, num_classes: int,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The images ``x`` (N, C, H, W) and labels ``y`` (N,) with one corruption of the paper,
    drawn from ``seed`` alone (call it once and keep the result: the corrupted set stays
    fixed for the whole run). Returns new arrays; the inputs are not changed.

    - ``"labels"``: ``share`` of the images (exactly ``round(share * N)``, chosen at random)
      get a label drawn uniformly from all ``num_classes`` classes, as in the paper, so
      about ``share * (1 - 1/num_classes)`` of the labels end up different; 0 changes nothing.
    - ``"shuffled_pixels"``: one random permutation of the pixel positions, the same for
      every image (a pixel's channels move together). It is drawn first, so the same seed
      gives the same permutation for any N: the test images can be shuffled alike.
    - ``"random_pixels"``: an independent permutation for each image.
    - ``"gaussian"``: every image replaced by gaussian noise with the per-channel mean and
      standard deviation of ``x``.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; choose one of {', '.join(CORRUPTIONS)}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    rng = np.random.default_rng(seed)
    x, y = np.array(x, copy=True, order="C"), np.array(y, copy=True)
    n, channels = x.shape[:2]
    flat = x.reshape(n, channels, -1)  # (N, C, H*W): a view of the copy
    if kind == "labels":
        chosen = rng.permutation(n)[:int(round(share * n))]
        y[chosen] = rng.integers(0, num_classes, len(chosen))
    elif kind == "shuffled_pixels":
        flat[:] = flat[:, :, rng.permutation(flat.shape[2])]
    elif kind == "random_pixels":
        order = rng.permuted(np.tile(np.arange(flat.shape[2]), (n, 1)), axis=1)  # one row per image
        flat[:] = np.take_along_axis(flat, order[:, None, :], axis=2)
    else:
        mean = x.mean(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        std = x.std(axis=(0, 2, 3), keepdims=True, dtype=np.float64)
        x = (mean + std * rng.standard_normal(x.shape)).astype(x.dtype)
    return x, y


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images: ``hidden`` widths, then the
    output layer; ``dropout`` after each hidden layer (the regularisation study)."""

    def __init__(self, in_features: int, hidden: tuple[int, ...] = (512,), num_classes: int = 10,
                 dropout: float = 0.0) -> None:
        super().__init__()
        widths = (in_features, *hidden)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.output = nn.Linear(widths[-1], num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.hidden:
            x = self.dropout(torch.relu(layer(x)))
        return self.output(x)


def build_network(meta: dict[str, Any], dropout: float = 0.0) -> nn.Module:
    """The network that ``meta`` (plain data, as the checkpoints keep it) describes, drawn
    from its initialiser: ``{"model": "resnet", "num_classes", "widths", "init"}`` is the
    thin ResNet-18, ``{"model": "mlp", "in_shape", "hidden", "num_classes", "init"}`` an MLP.
    ``dropout`` goes before the ResNet's classifier (its weight layers keep their names)."""
    if meta["model"] == "resnet":
        model = ThinResNet18(meta["num_classes"], widths=tuple(meta["widths"]))
        if dropout:
            model.avgpool = nn.Sequential(model.avgpool, nn.Dropout(dropout))
    else:
        model = MLP(int(np.prod(meta["in_shape"])), tuple(meta["hidden"]), meta["num_classes"], dropout)
    return initialize(model, meta["init"])


class StopWhenFitted(Callback):
    """Stop training once an epoch's running training accuracy reaches ``threshold``: every
    batch of that epoch was (almost) classified right, so the training set is fitted."""

    def __init__(self, threshold: float = 1.0, monitor: str = "accuracy") -> None:
        self.threshold, self.monitor = threshold, monitor

    def on_epoch_end(self, trainer, logs):
        if logs[self.monitor] >= self.threshold:
            trainer.should_stop = True


def fitted_step(history: list[dict[str, float]], steps_per_epoch: int, threshold: float = 1.0) -> int | None:
    """Optimisation steps until the epoch whose training accuracy first reached
    ``threshold``; None when no epoch did (the budget ended first)."""
    for row in history:
        if row["accuracy"] >= threshold:
            return int(row["epoch"]) * steps_per_epoch
    return None


# --------------------------------------------------------------------------- checkpoints
CHECKPOINT_NAME = "epoch_{:04d}.pt"


class EpochCheckpoints(Callback):
    """The weights alone (``{"model": state_dict, "epoch", "meta"}``, written atomically,
    read with ``weights_only=True``) at a fixed schedule of epochs, as ``epoch_0000.pt``
    (the initialisation, before the first step), ``epoch_0005.pt``, ... in ``folder``, and at
    the last epoch trained, so that the trained network is always among them. ``meta``
    (plain data) says what was trained, for whoever reads the checkpoints (Part II).
    A resumed run keeps the files already written."""

    def __init__(self, folder: str | os.PathLike, epochs, meta: dict[str, Any] | None = None) -> None:
        self.folder, self.epochs, self.meta = os.fspath(folder), {int(e) for e in epochs}, dict(meta or {})

    def path(self, epoch: int) -> str:
        return os.path.join(self.folder, CHECKPOINT_NAME.format(epoch))

    def _save(self, trainer, overwrite: bool = True) -> None:
        path = self.path(trainer.epoch)
        if trainer.is_main and (overwrite or not os.path.exists(path)):
            save_checkpoint({"model": trainer.model.state_dict(), "epoch": trainer.epoch, "meta": self.meta}, path)

    def on_train_begin(self, trainer):
        if trainer.epoch == 0 and 0 in self.epochs:
            self._save(trainer, overwrite=False)  # a resume must not replace the true initialisation

    def on_epoch_end(self, trainer, logs):
        if trainer.epoch in self.epochs:
            self._save(trainer)

    def on_train_end(self, trainer):
        self._save(trainer, overwrite=False)


def load_epoch_checkpoints(folder: str | os.PathLike) -> tuple[dict[int, dict[str, torch.Tensor]], dict[str, Any]]:
    """``({epoch: state_dict}, meta)`` from the ``epoch_*.pt`` files of ``folder``, in epoch
    order. Raises FileNotFoundError when there are none and ValueError for a file that is
    not such a checkpoint, each with the path in the message."""
    paths = sorted(glob.glob(os.path.join(glob.escape(os.fspath(folder)), "epoch_*.pt")))
    if not paths:
        raise FileNotFoundError(f"no epoch_*.pt checkpoints in {os.fspath(folder)!r}")
    checkpoints, meta = {}, None
    for path in paths:
        try:
            state = load_checkpoint(path)
        except Exception as error:  # a truncated or foreign file: say which one
            raise ValueError(f"{path!r} is not a readable checkpoint ({type(error).__name__})") from None
        if not isinstance(state, dict) or not {"model", "epoch", "meta"} <= set(state):
            raise ValueError(f"{path!r} is not an epoch checkpoint (no model/epoch/meta entries)")
        if meta is not None and state["meta"] != meta:
            raise ValueError(f"{path!r} belongs to another run than the other checkpoints in its folder")
        checkpoints[int(state["epoch"])], meta = state["model"], state["meta"]
    return dict(sorted(checkpoints.items())), meta


# --------------------------------------------------------------------------- Part II: layers
class WeightLayer(NamedTuple):
    path: str    # the module's name in the model ("layer2.0.conv1")
    label: str   # how the figures name it ("stage 2 block 1 conv 1")


def _label(path: str, index: int, count: int) -> str:
    if path == "conv1":
        return "stem conv"
    if path == "fc":
        return "classifier (fc)"
    block = re.fullmatch(r"layer(\d+)\.(\d+)\.(conv(\d+)|downsample)", path)
    if block:
        stage, number, part, conv = block.groups()
        return f"stage {stage} block {int(number) + 1} " + (f"conv {conv}" if conv else "shortcut")
    return "output" if index == count - 1 else f"layer {index + 1}"


def weight_layers(model: nn.Module) -> list[WeightLayer]:
    """Every Conv2d and Linear of ``model`` in forward order (the order of definition),
    named by stage and block for the thin ResNet-18 (stem conv, 16 block convs, 3
    shortcut convs, classifier: 21) and "layer 1", ..., "output" for an MLP."""
    paths = [name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [WeightLayer(p, _label(p, i, len(paths))) for i, p in enumerate(paths)]


def he_init(module: nn.Module) -> None:
    """A convolution's weights from N(0, 2 / fan_in) (Kaiming, for ReLU) and zero biases; any
    other layer keeps torch's default (``reset_parameters``). Why: without batch norm torch's
    default (std 1/sqrt(3 fan_in)) shrinks the signal layer after layer. At initialisation the
    thin ResNet-18's logits had a standard deviation of 0.06 (2.8 with this), and SGD stayed
    on the loss plateau of ln 10 for over 1,000 steps on ``shapes`` (with this, it learnt)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        nn.init.zeros_(module.bias)
    else:
        module.reset_parameters()


INITIALIZERS = {"default": lambda module: module.reset_parameters(), "he": he_init}


def initialize(model: nn.Module, init: str = "default") -> nn.Module:
    """Draw every weight layer of ``model`` from the initialiser ``init`` (INITIALIZERS)."""
    for layer in weight_layers(model):
        INITIALIZERS[init](model.get_submodule(layer.path))
    return model


@torch.no_grad()
def reinitialize(model: nn.Module, path: str, state: dict[str, torch.Tensor]) -> None:
    """Set the layer ``path``'s own tensors to their values in ``state`` (a state_dict,
    e.g. a checkpoint's); every other layer keeps its weights."""
    module = model.get_submodule(path)
    for name, tensor in module.named_parameters(recurse=False):
        key = f"{path}.{name}"
        if key not in state:
            raise KeyError(f"the checkpoint has no {key!r}: it belongs to another network")
        tensor.copy_(state[key])


@torch.no_grad()
def rerandomize(model: nn.Module, path: str, seed: int = 0, init: str = "default") -> None:
    """Draw the layer ``path`` afresh from its own initialiser, the one that built it
    (``init``, a name of INITIALIZERS: "default" is the module's ``reset_parameters``),
    seeded, on a CPU copy so that the draw is the same on every device and the global
    generators are left alone."""
    module = model.get_submodule(path)
    fresh = copy.deepcopy(module).cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        INITIALIZERS[init](fresh)
    for (name, tensor), new in zip(module.named_parameters(recurse=False), fresh.parameters(recurse=False)):
        tensor.copy_(new)


def test_error(model: nn.Module, loader, device: str | torch.device | None = None) -> float:
    """The share of misclassified examples of ``loader``, evaluated batch by batch."""
    return 1.0 - evaluate(model, loader, device=device)["accuracy"]


def layer_robustness(model: nn.Module, checkpoints: dict[int, dict[str, torch.Tensor]], loader, *,
                     seed: int = 0, draws: int = 1, init: str = "default",
                     device: str | torch.device | None = None, progress: Callable = iter) -> dict[str, Any]:
    """Part II's study on ``model`` (the trained network): for every weight layer, the test
    error with that layer reset to each checkpoint (``"reinit"``, layers x checkpoints) and
    with it re-randomised from ``init`` (``"rerandom"``, layers x ``draws`` seeded draws), every other
    layer kept; ``"base"`` is the trained network's error. The model ends as it started."""
    layers = weight_layers(model)
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    base = test_error(model, loader, device)
    reinit = np.zeros((len(layers), len(checkpoints)))
    rerandom = np.zeros((len(layers), draws))
    for i, layer in enumerate(progress(layers)):
        for j, state in enumerate(checkpoints.values()):
            reinitialize(model, layer.path, state)
            reinit[i, j] = test_error(model, loader, device)
        for k in range(draws):
            rerandomize(model, layer.path, seed=seed + 1000 * k + i, init=init)
            rerandom[i, k] = test_error(model, loader, device)
        reinitialize(model, layer.path, trained)
    return {"layers": layers, "epochs": list(checkpoints), "base": base, "reinit": reinit, "rerandom": rerandom}
