"""One training loop for every torch driver.

    trainer = Trainer(model, optimizer, scheduler=warmup_cosine(optimizer, total_steps, 500),
                      ema=0.999, callbacks=[EarlyStopping("val_loss"), Checkpoint("runs/x/best.pt")],
                      checkpoint_dir="runs/x")
    history = trainer.fit(train_loader, epochs=30, val_loader=val_loader)

What a step does is pluggable: ``training_step(model, batch, *extra_batches)`` returns
``(loss, {"name": value, ...})`` and the trainer does the rest (autocast, backward,
gradient scaling and clipping, optimiser and scheduler steps, EMA). The default step is
cross-entropy classification on ``(x, y)`` batches. A run that needs more than one
optimiser (an adversarial autoencoder) subclasses Trainer and overrides ``train_step``.

Reproducibility: each loader's order is a function of (seed, epoch) alone, and a
checkpoint holds everything else that changes during training (weights, optimiser,
scheduler, grad scaler, EMA, RNG states, callback states, epoch and step), so a run
resumed from a checkpoint ends with the same weights as one that never stopped.
Under torchrun the model is wrapped in DistributedDataParallel, loaders are sharded
with a DistributedSampler, and only rank 0 prints and writes files.

Callbacks are minidl's, so both engines' loops speak one vocabulary (the whole of it
is in ``minidl.train``'s docstring): ``Callback`` with the hooks ``on_train_begin``,
``on_batch_end``, ``on_epoch_end`` and ``on_train_end``; ``EarlyStopping(monitor,
*, mode, patience, min_delta, restore_best)``; ``Checkpoint(path, monitor, *, mode,
save_best_only)``, with the same defaults in both. Here:

- ``trainer`` is the Trainer: ``model``, ``eval_model`` (the EMA copy when it is the one
  evaluated), ``optimizer``, ``scheduler``, ``history``, ``epoch``, ``step``, ``should_stop``;
- a batch's ``logs`` are its loss and metrics as 0-d tensors on the device (``.item()``
  waits for the GPU: read them only now and then), an epoch's are the history row;
- epochs count from 1 (the ``"epoch"`` of each history row, ``best_epoch``), from 0 in minidl;
- Checkpoint writes ``{"model": eval_model's state_dict, "epoch", "monitor", "value",
  "logs"}`` to a ``.pt`` file, and ``restore_best`` restores ``eval_model``;
- a callback's ``state_dict()`` goes into every checkpoint; on a resume ``on_train_begin``
  runs first, then the checkpoint puts back what it reset.
"""
from __future__ import annotations

import copy
import math
import os
import random
from contextlib import nullcontext
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from minidl import train as minidl_train
from minidl.train import Callback, EarlyStopping  # noqa: F401  (the callbacks of both engines)

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .distributed import all_gather_object, all_reduce_sum, distribute_loader, init_distributed

StepFn = Callable[..., "tuple[Tensor, dict[str, Any]]"]


# --------------------------------------------------------------------------- helpers
def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA (this process's GPU under torchrun), then MPS, then CPU."""
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # under torchrun: this process's GPU
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (model init, dropout, augmentation)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also every CUDA device


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """Move every tensor in a (nested) batch; images (4-d floats) optionally to NHWC."""
    if isinstance(batch, Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    return batch


def _batch_size(batch: Any) -> int:
    """Samples in a batch: the length of its first tensor (used to weight metric means)."""
    if isinstance(batch, Tensor):
        return batch.shape[0]
    items = batch.values() if isinstance(batch, dict) else batch
    for item in items:
        n = _batch_size(item)
        if n:
            return n
    return 0


def _mix(*numbers: int) -> int:
    """One well-spread 63-bit seed from several integers (seed, epoch, loader, restart)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _seed_loader(loader: DataLoader, seed: int, epoch: int) -> None:
    """Make the loader's next pass a function of (seed, epoch) alone.

    A shuffling loader without its own generator draws from the global RNG, so its
    order would depend on everything that ran before; we give it a generator. The
    generator also seeds the worker processes.
    """
    if loader.generator is None:
        loader.generator = torch.Generator()
    if getattr(loader.sampler, "generator", False) is None:  # Random-, SubsetRandom-, WeightedRandomSampler
        loader.sampler.generator = loader.generator
    loader.generator.manual_seed(_mix(seed, epoch))
    if hasattr(loader.sampler, "set_epoch"):  # DistributedSampler shuffles by seed + epoch
        loader.sampler.set_epoch(epoch)


def classification_step(model: nn.Module, batch: Sequence[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Default step: cross-entropy and accuracy on an ``(x, y)`` batch."""
    x, y = batch[0], batch[1]
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, {"accuracy": (logits.argmax(1) == y).float().mean()}


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                  min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ~0 to the base lr, then a cosine decay to ``min_lr_ratio`` x base lr.

    Step it once per optimiser step (the Trainer's default ``scheduler_interval="step"``).
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, "
                         f"got warmup_steps={warmup_steps}, total_steps={total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEMA:
    """Exponential moving average of a model's weights (FixMatch, SimCLR/BYOL-style evaluation).

    After each optimiser step: ``ema = decay * ema + (1 - decay) * weights``. Buffers
    (batch-norm statistics) are copied, since they already are running averages.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        for ema_p, p in zip(self.module.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1.0 - self.decay)
        for ema_b, b in zip(self.module.buffers(), model.buffers()):
            ema_b.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "decay": self.decay, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.decay, self.updates = state["decay"], state["updates"]


# --------------------------------------------------------------------------- callbacks
class Checkpoint(minidl_train.Checkpoint):
    """``minidl.train.Checkpoint`` writing a torch file: ``{"model": the evaluated model's
    state_dict, "epoch", "monitor", "value", "logs"}`` at ``path``, from rank 0 only;
    read it with ``reference_torch.checkpoint.load_checkpoint``."""

    def _save(self, trainer: "Trainer", meta: dict[str, Any]) -> None:
        if trainer.is_main:
            save_checkpoint({"model": trainer.eval_model.state_dict(), **meta}, self.path)


# --------------------------------------------------------------------------- trainer
class Trainer:
    """Runs epochs of ``training_step``; see the module docstring.

    ``scheduler_interval`` is "step" (per optimiser step) or "epoch"; ReduceLROnPlateau is
    stepped each epoch with ``history[-1][plateau_metric]``. ``amp=None`` means "on for
    CUDA": bfloat16 on GPUs that have it (compute capability 8+), else float16 with a
    GradScaler. ``ema`` is a decay (e.g. 0.999) or a ModelEMA; with ``ema_eval`` the EMA
    weights are the ones evaluated. Checkpoints go to ``checkpoint_dir/last.pt`` after each
    epoch and, with ``checkpoint_every_steps``, every that many steps.

    Data order: before every epoch the trainer re-seeds each loader's generator from
    (``seed``, epoch), so the order does not depend on what ran before. Under torchrun
    a loader's ``batch_size`` is per process (the global batch is world_size times it),
    and every rank evaluates the whole validation set, so all ranks see the same metrics
    and callbacks take the same decisions.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                 training_step: StepFn = classification_step, eval_step: StepFn = classification_step,
                 scheduler: Any = None, scheduler_interval: str = "step", plateau_metric: str = "val_loss",
                 device: str | torch.device | None = None, amp: bool | None = None,
                 amp_dtype: torch.dtype | None = None, channels_last: bool = False, compile: bool = False,
                 grad_clip: float | None = None, ema: float | ModelEMA | None = None, ema_eval: bool = True,
                 callbacks: Sequence[Callback] = (), checkpoint_dir: str | os.PathLike | None = None,
                 checkpoint_every_steps: int | None = None, seed: int = 0, progress: bool = True,
                 ddp_kwargs: dict[str, Any] | None = None) -> None:
        if scheduler_interval not in ("step", "epoch"):
            raise ValueError(f"scheduler_interval must be 'step' or 'epoch', got {scheduler_interval!r}")
        self.device = select_device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # NCCL and autocast use the current device
        self.dist = init_distributed(self.device)
        self.is_main = self.dist.is_main
        self.model = model.to(self.device)  # the plain module: saved, evaluated, EMA'd
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.scheduler_interval, self.plateau_metric = scheduler_interval, plateau_metric
        self.training_step, self.eval_step = training_step, eval_step
        self.channels_last, self.grad_clip, self.seed, self.progress = channels_last, grad_clip, seed, progress
        self.callbacks = list(callbacks)
        self.checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
        self.checkpoint_every_steps = checkpoint_every_steps

        self.amp = self.device.type == "cuda" if amp is None else amp
        if amp_dtype is None and self.device.type == "cuda":
            amp_dtype = torch.bfloat16 if torch.cuda.get_device_capability(self.device)[0] >= 8 else torch.float16
        self.amp_dtype = amp_dtype or torch.bfloat16
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)

        if isinstance(ema, ModelEMA):
            ema.module.to(self.device)
        self.ema = ModelEMA(self.model, ema) if isinstance(ema, float) else ema
        self.ema_eval = ema_eval

        # What runs the forward pass in training: DDP (gradient all-reduce) and/or compiled.
        self.train_model: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DistributedDataParallel(self.model, device_ids=ids, **(ddp_kwargs or {}))
        if compile:
            self.train_model = torch.compile(self.train_model)

        self.epoch = 0            # epochs completed
        self.step = 0             # optimiser steps taken
        self.batch_in_epoch = 0   # batches of the current epoch already trained (mid-epoch resume)
        self.history: list[dict[str, float]] = []
        self.should_stop = False
        self._partial: dict[str, Any] = {"sums": {}, "count": 0}
        self._resume_rng: dict[str, Any] | None = None

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None and self.ema_eval else self.model

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp else nullcontext()

    # ---------------------------------------------------------------- one step
    def train_step(self, batch: Any, *extra_batches: Any) -> dict[str, Tensor]:
        """Forward, backward, optimiser/scheduler/EMA update; override for custom optimisation."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, metrics = self.training_step(self.train_model, batch, *extra_batches)
        self.scaler.scale(loss).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return {"loss": loss.detach(),
                **{k: torch.as_tensor(v, device=self.device).detach() for k, v in metrics.items()}}

    # ---------------------------------------------------------------- epochs
    def _cycle(self, loader: DataLoader, index: int) -> Iterator[Any]:
        """An extra loader, restarted (with a fresh, seeded order) whenever it runs out."""
        restart = 0
        while True:
            _seed_loader(loader, self.seed, _mix(self.epoch, index, restart))
            yield from loader
            restart += 1

    def _train_epoch(self, loader: DataLoader, extras: Sequence[DataLoader]) -> dict[str, float]:
        self.train_model.train()
        _seed_loader(loader, self.seed, self.epoch)
        main_it = iter(loader)
        extra_its = [self._cycle(x, i) for i, x in enumerate(extras)]
        # Mid-epoch resume: replay the data order up to where the checkpoint was taken,
        # then put back the RNG state saved at that moment.
        for _ in range(self.batch_in_epoch):
            next(main_it)
            for it in extra_its:
                next(it)
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
            self._resume_rng = None
        sums = {k: torch.tensor(v, device=self.device) for k, v in self._partial["sums"].items()}
        count = self._partial["count"]
        bar = tqdm(total=len(loader), initial=self.batch_in_epoch, desc=f"epoch {self.epoch + 1}",
                   leave=False, disable=None if self.progress and self.is_main else True)
        with bar:
            for batch in main_it:
                extra = [to_device(next(it), self.device, self.channels_last) for it in extra_its]
                batch = to_device(batch, self.device, self.channels_last)
                metrics = self.train_step(batch, *extra)
                self.step += 1
                self.batch_in_epoch += 1
                n = _batch_size(batch)
                for k, v in metrics.items():  # tensors: no GPU sync until the epoch ends
                    sums[k] = sums.get(k, 0.0) + v.float().mean() * n
                count += n
                for cb in self.callbacks:
                    cb.on_batch_end(self, metrics)
                bar.update(1)
                if self.batch_in_epoch % 20 == 1:  # .item() waits for the GPU, so look at the loss only now and then
                    loss = metrics["loss"].item()
                    if not math.isfinite(loss):
                        raise FloatingPointError(f"loss is {loss} at step {self.step} (epoch {self.epoch + 1}); "
                                                 "lower the learning rate or set grad_clip")
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.checkpoint_every_steps and self.step % self.checkpoint_every_steps == 0:
                    self._partial = {"sums": {k: v.item() for k, v in sums.items()}, "count": count}
                    self.save_checkpoint()
        self._partial = {"sums": {}, "count": 0}
        # Average over all samples of all ranks: sum of (mean * n) and sum of n.
        keys = sorted(sums)
        totals = all_reduce_sum(torch.stack([sums[k].float() for k in keys] +
                                            [torch.tensor(float(count), device=self.device)]))
        return {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}

    def fit(self, train_loader: DataLoader, epochs: int, *, val_loader: DataLoader | None = None,
            extra_loaders: Sequence[DataLoader] = (), resume: bool | str | os.PathLike = False
            ) -> list[dict[str, float]]:
        """Train until ``epochs`` epochs are complete (or a callback stops it); returns ``history``.

        ``train_loader`` sets the epoch length; each of ``extra_loaders`` (e.g. FixMatch's
        unlabelled data) gives one batch per step, passed to ``training_step`` after the main
        batch. ``resume=True`` continues from ``checkpoint_dir/last.pt`` if it exists; a path
        resumes from that file.
        """
        path = None
        if resume:
            path = self._last_path() if resume is True else os.fspath(resume)
            if path is None:
                raise ValueError("resume=True needs checkpoint_dir; or pass the checkpoint path as resume=")
        if len(train_loader) == 0:
            raise ValueError("train_loader yields no batches (dataset smaller than batch_size with "
                             "drop_last=True?)")
        for cb in self.callbacks:
            cb.on_train_begin(self)
        # after on_train_begin, so that what the callbacks reset there, the checkpoint puts back
        if path is not None and (os.path.isfile(path) or resume is not True):
            self.load_checkpoint(path)
        train_loader = distribute_loader(train_loader, self.dist, self.seed)
        extra_loaders = [distribute_loader(x, self.dist, self.seed) for x in extra_loaders]
        while self.epoch < epochs and not self.should_stop:
            metrics = {"epoch": self.epoch + 1, **self._train_epoch(train_loader, extra_loaders)}
            if val_loader is not None:
                metrics.update({f"val_{k}": v for k, v in self.evaluate(val_loader).items()})
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            self.history.append(metrics)
            self.epoch += 1
            self.batch_in_epoch = 0
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if self.plateau_metric not in metrics:
                    raise KeyError(f"ReduceLROnPlateau needs {self.plateau_metric!r}, the epoch metrics are "
                                   f"{sorted(metrics)}; set plateau_metric= or pass a val_loader")
                self.scheduler.step(metrics[self.plateau_metric])
            elif self.scheduler is not None and self.scheduler_interval == "epoch":
                self.scheduler.step()
            for cb in self.callbacks:
                cb.on_epoch_end(self, metrics)
            if self.is_main and self.progress:
                tqdm.write(f"epoch {self.epoch}/{epochs}  " +
                           "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "epoch"))
            self.save_checkpoint()
        for cb in self.callbacks:
            cb.on_train_end(self)
        return self.history

    @torch.no_grad()
    def evaluate(self, loader: DataLoader) -> dict[str, float]:
        """Mean of ``eval_step``'s loss and metrics over ``loader``, on the evaluated model."""
        with self.autocast():
            return evaluate(self.eval_model, loader, step=self.eval_step, device=self.device,
                            channels_last=self.channels_last)

    # ---------------------------------------------------------------- checkpoints
    def _last_path(self) -> str | None:
        return None if self.checkpoint_dir is None else os.path.join(self.checkpoint_dir, "last.pt")

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": None if self.ema is None else self.ema.state_dict(),
            "callbacks": [cb.state_dict() for cb in self.callbacks], "history": self.history,
            "epoch": self.epoch, "step": self.step, "batch_in_epoch": self.batch_in_epoch,
            "partial": self._partial, "should_stop": self.should_stop, "seed": self.seed,
            "rng": [get_rng_state()],
        }

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> None:
        """Write the full training state; default ``checkpoint_dir/last.pt``.

        Every rank must call it (each contributes its RNG state); rank 0 alone writes.
        """
        path = path or self._last_path()
        if path is None:
            return
        rng = all_gather_object(get_rng_state())  # per rank: dropout and augmentation differ
        if self.is_main:
            save_checkpoint({**self.state_dict(), "rng": rng}, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        state = load_checkpoint(path, map_location=self.device)
        if len(state["callbacks"]) != len(self.callbacks):
            raise ValueError(f"{os.fspath(path)!r} was written with {len(state['callbacks'])} callbacks, "
                             f"this trainer has {len(self.callbacks)}; resume with the same callbacks")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, obj in (("scheduler", self.scheduler), ("ema", self.ema)):
            if (obj is None) != (state[name] is None):
                raise ValueError(f"{os.fspath(path)!r} {'has' if state[name] is not None else 'has no'} "
                                 f"{name} state but this trainer {'has' if obj is not None else 'has no'} {name}")
            if obj is not None:
                obj.load_state_dict(state[name])
        self.scaler.load_state_dict(state["scaler"])
        for cb, s in zip(self.callbacks, state["callbacks"]):
            cb.load_state_dict(s)
        self.history = state["history"]
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self._partial, self.should_stop, self.seed = state["partial"], state["should_stop"], state["seed"]
        rng = state["rng"]
        rng = rng[self.dist.rank] if len(rng) == self.dist.world_size else rng[0]
        if self.batch_in_epoch:
            self._resume_rng = rng  # restored after the data order is replayed
        else:
            set_rng_state(rng)


# --------------------------------------------------------------------------- functions
def fit(model: nn.Module, train_loader: DataLoader, epochs: int, *,
        optimizer: torch.optim.Optimizer | None = None, lr: float = 0.1, val_loader: DataLoader | None = None,
        extra_loaders: Sequence[DataLoader] = (), resume: bool | str | os.PathLike = False,
        **trainer_kwargs: Any) -> Trainer:
    """Build a Trainer (default SGD, momentum 0.9, ``lr``) and train; returns the trainer
    (its ``history``, ``model`` and ``ema`` are what a driver reads afterwards)."""
    if optimizer is None:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    trainer = Trainer(model, optimizer, **trainer_kwargs)
    trainer.fit(train_loader, epochs, val_loader=val_loader, extra_loaders=extra_loaders, resume=resume)
    return trainer


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, *, step: StepFn | None = None,
             device: str | torch.device | None = None, channels_last: bool = False,
             return_outputs: bool = False) -> dict[str, Any]:
    """Average loss and metrics of ``model`` (in eval mode) over ``loader``.

    By default batches are ``(x, y)`` and the result is ``{"loss", "accuracy"}``; with
    ``return_outputs=True`` also ``"logits"`` (N, C), ``"predictions"`` (N,) and
    ``"targets"`` (N,), on the CPU in loader order. A custom ``step(model, batch) ->
    (loss, metrics)`` gives its own metrics (and cannot return outputs).
    """
    if return_outputs and step is not None:
        raise ValueError("return_outputs=True works with the default classification step only; "
                         "collect outputs inside your own step instead")
    device = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    count, logits_all, targets_all = 0, [], []
    for batch in loader:
        batch = to_device(batch, device, channels_last)
        if step is None:
            logits = model(batch[0])
            loss, metrics = F.cross_entropy(logits.float(), batch[1]), {
                "accuracy": (logits.argmax(1) == batch[1]).float().mean()}
            if return_outputs:
                logits_all.append(logits.float().cpu())
                targets_all.append(batch[1].cpu())
        else:
            loss, metrics = step(model, batch)
        n = _batch_size(batch)
        for k, v in {"loss": loss, **metrics}.items():
            sums[k] = sums.get(k, 0.0) + torch.as_tensor(v).float().mean() * n
        count += n
    model.train(was_training)
    if count == 0:
        raise ValueError("evaluate() got an empty loader; check the dataset and drop_last")
    result: dict[str, Any] = {k: (v / count).item() for k, v in sums.items()}
    if return_outputs:
        result["logits"] = torch.cat(logits_all)
        result["predictions"] = result["logits"].argmax(1)
        result["targets"] = torch.cat(targets_all)
    return result


def tune_lr(train_at: Callable[[float], dict[str, Any]], rates: Sequence[float], *,
            monitor: str = "best_val_accuracy", mode: str = "max") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A learning-rate search on validation data: ``train_at(rate)`` trains one model at each
    of ``rates`` and returns its results, a dict holding ``monitor`` (a validation score).
    Returns (the results of the best rate, every rate's results in the order of ``rates``);
    a tie goes to the earlier rate. Test data must play no part in ``monitor``."""
    if mode not in ("max", "min") or not rates:
        raise ValueError(f"tune_lr needs mode 'max' or 'min' (got {mode!r}) and at least one rate (got {rates!r})")
    results = [train_at(rate) for rate in rates]
    return (max if mode == "max" else min)(results, key=lambda r: r[monitor]), results
