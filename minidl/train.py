"""One training loop for every driver: ``fit``, ``evaluate``, ``predict``, callbacks
and checkpoints.

    history = md.train.fit(model, md.nn.CrossEntropyLoss(), opt, train_loader,
                           val_loader, epochs=20, scheduler=sched,
                           callbacks=[md.train.EarlyStopping(patience=3),
                                      md.train.Checkpoint("runs/mlp/best.npz")])
    history["val_accuracy"]          # one value per epoch
    md.train.evaluate(model, test_loader, md.nn.CrossEntropyLoss())   # {'loss': ..., 'accuracy': ...}

A loader is anything that can be iterated over once per epoch and yields (x, y)
batches of ndarrays (or tensors): ``minidl.data.DataLoader``, a list of batches...
Not a generator: it would be empty from the second epoch on.

Per epoch, ``fit`` records the training loss and metrics averaged over samples
(as measured during the epoch, with the weights changing), the validation loss and
metrics with the prefix ``val_`` and the learning rate ``lr`` used, then steps the
scheduler (once per epoch) and calls the callbacks.

Checkpoints are ``.npz`` archives (model arrays under ``model/``, optimiser arrays
under ``optimizer/``, everything else as one JSON string), written to a temporary
file and renamed, so an interrupted save never leaves a half-written file; they
load with ``allow_pickle=False``, so a checkpoint cannot run code.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import tempfile
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from . import autograd
from .autograd import Tensor

__all__ = ["fit", "evaluate", "predict", "History", "TrainState", "Callback", "EarlyStopping",
           "Checkpoint", "save_checkpoint", "load_checkpoint", "accuracy"]


# -------------------------------------------------------------------- metrics
def accuracy(logits, targets):
    """Fraction of correct predictions: argmax over classes for (N, C) scores; for a
    single output per sample (binary logits), the sign."""
    logits, targets = np.asarray(logits), np.asarray(targets)
    if logits.ndim == 2 and logits.shape[1] > 1:
        predicted = logits.argmax(axis=1)
    else:
        predicted = (logits.reshape(len(logits)) > 0).astype(np.int64)
        targets = targets.reshape(len(targets))
    return float(np.mean(predicted == targets))


_METRICS = {"accuracy": accuracy}


def _metric_functions(metrics):
    functions = {}
    for metric in metrics:
        if callable(metric):
            functions[getattr(metric, "__name__", "metric")] = metric
        elif metric in _METRICS:
            functions[metric] = _METRICS[metric]
        else:
            raise ValueError(f"unknown metric {metric!r}; use one of {', '.join(_METRICS)} or a "
                             "function f(logits, targets) -> float")
    return functions


# -------------------------------------------------------------------- helpers
def _param_dtype(model):
    for p in model.parameters():
        return p.dtype
    return np.dtype(autograd.DEFAULT_DTYPE)


def _as_input(x, dtype):
    """A Tensor of the model's floating dtype (integer inputs, e.g. token ids, stay)."""
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    if np.issubdtype(data.dtype, np.floating) and data.dtype != dtype:
        data = data.astype(dtype)
    return Tensor(data)


def _as_target(y, dtype):
    data = y.data if isinstance(y, Tensor) else np.asarray(y)
    if np.issubdtype(data.dtype, np.floating) and data.dtype != dtype:
        data = data.astype(dtype)  # regression / BCE targets in the model's precision
    return data


def _bar(iterable, progress, desc):
    # disable=None: tqdm switches itself off when the output is not a terminal.
    return tqdm(iterable, desc=desc, disable=None if progress else True, leave=False,
                dynamic_ncols=True)


def _format(logs):
    return "  ".join(f"{k} {v:.4g}" for k, v in logs.items())


# -------------------------------------------------------------------- history
class History:
    """Per-epoch logs: ``history["val_loss"]`` is the list of values, ``epochs`` the
    epoch indices (from 0). ``as_dict()`` gives plain lists for metrics.json."""

    def __init__(self):
        self.epochs = []
        self.history = {}

    def append(self, epoch, logs):
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, [float("nan")] * (len(self.epochs) - 1)).append(float(value))
        for key, values in self.history.items():  # a key missing this epoch
            if len(values) < len(self.epochs):
                values.append(float("nan"))

    def __getitem__(self, key):
        if key not in self.history:
            raise KeyError(f"no {key!r} in the history; recorded: {', '.join(self.history)}")
        return self.history[key]

    def __contains__(self, key):
        return key in self.history

    def __len__(self):
        return len(self.epochs)

    def best(self, monitor="val_loss", mode="auto"):
        """(epoch, value) of the best epoch for ``monitor``."""
        values = np.asarray(self[monitor])
        better_is_lower = _mode(monitor, mode) == "min"
        i = int(np.nanargmin(values) if better_is_lower else np.nanargmax(values))
        return self.epochs[i], float(values[i])

    def as_dict(self):
        return {"epoch": list(self.epochs), **{k: list(v) for k, v in self.history.items()}}

    def __repr__(self):
        return f"History({len(self)} epochs: {', '.join(self.history)})"


class TrainState:
    """What callbacks see: the model, optimiser, scheduler, history, the current
    ``epoch`` and its ``logs``, the global ``step`` and the last ``batch_loss``.
    Setting ``stop_training = True`` ends training after this epoch."""

    def __init__(self, model, optimizer, scheduler, history, epochs):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.history, self.epochs = history, epochs
        self.epoch, self.step, self.logs, self.batch_loss = 0, 0, {}, None
        self.stop_training = False


# ------------------------------------------------------------------------ fit
def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs=1, scheduler=None,
        callbacks=(), metrics=("accuracy",), progress=True):
    """Train ``model`` for ``epochs`` epochs and return the ``History``.

    ``loss_fn(outputs, targets)`` returns a scalar Tensor (e.g. nn.CrossEntropyLoss());
    ``metrics`` are names ('accuracy') or functions f(logits, targets) -> float; use
    ``metrics=()`` for regression. Floating inputs are cast to the model's dtype.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    metric_fns = _metric_functions(metrics)
    history = History()
    state = TrainState(model, optimizer, scheduler, history, epochs)
    dtype = _param_dtype(model)
    callbacks = list(callbacks)
    for callback in callbacks:
        callback.on_train_begin(state)
    for epoch in range(epochs):
        state.epoch = epoch
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        totals, count = defaultdict(float), 0
        bar = _bar(train_loader, progress, f"epoch {epoch + 1}/{epochs}")
        for batch, (x, y) in enumerate(bar):
            x, y = _as_input(x, dtype), _as_target(y, dtype)
            out = model(x)
            loss = loss_fn(out, y)
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the training loss became {value} in epoch {epoch + 1}, batch {batch + 1}; "
                    f"lower the learning rate (now {lr}), check the "
                    "inputs for NaN, or find the op with `with md.detect_anomaly():`")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            n = len(x)
            totals["loss"] += value * n
            for name, fn in metric_fns.items():
                totals[name] += fn(out.data, y) * n
            count += n
            state.step += 1
            state.batch_loss = value
            if not bar.disable:
                bar.set_postfix(loss=f"{value:.4f}")
            for callback in callbacks:
                callback.on_batch_end(state)
        if count == 0:
            again = " (a generator is empty after the first epoch: pass a list or a DataLoader)" \
                if epoch > 0 else ""
            raise ValueError(f"train_loader yielded no batches in epoch {epoch + 1}{again}")
        logs = {k: v / count for k, v in totals.items()}
        if val_loader is not None:
            val = evaluate(model, val_loader, loss_fn, metrics=metrics, progress=False)
            logs.update({f"val_{k}": v for k, v in val.items()})
        logs["lr"] = lr
        if scheduler is not None:
            scheduler.step()
        history.append(epoch, logs)
        state.logs = logs
        if not bar.disable:
            tqdm.write(f"epoch {epoch + 1}/{epochs}  {_format(logs)}")
        for callback in callbacks:
            callback.on_epoch_end(state)
        if state.stop_training:
            break
    for callback in callbacks:
        callback.on_train_end(state)
    return history


def evaluate(model, loader, loss_fn=None, metrics=("accuracy",), progress=False):
    """Mean loss (when ``loss_fn`` is given) and metrics over ``loader``, in evaluation
    mode and without recording a graph. The model's mode is restored afterwards."""
    metric_fns = _metric_functions(metrics)
    dtype = _param_dtype(model)
    was_training = model.training
    model.eval()
    totals, count = defaultdict(float), 0
    try:
        with autograd.no_grad():
            for x, y in _bar(loader, progress, "evaluate"):
                x, y = _as_input(x, dtype), _as_target(y, dtype)
                out = model(x)
                n = len(x)
                if loss_fn is not None:
                    totals["loss"] += loss_fn(out, y).item() * n
                for name, fn in metric_fns.items():
                    totals[name] += fn(out.data, y) * n
                count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no batches")
    return {k: v / count for k, v in totals.items()}


def predict(model, x, batch_size=256):
    """The model's outputs (e.g. logits) for all of ``x`` as one ndarray, computed in
    evaluation mode, without a graph, ``batch_size`` samples at a time."""
    data = x.data if isinstance(x, Tensor) else np.asarray(x)
    dtype = _param_dtype(model)
    was_training = model.training
    model.eval()
    outputs = []
    try:
        with autograd.no_grad():
            for start in range(0, len(data), batch_size):
                outputs.append(model(_as_input(data[start:start + batch_size], dtype)).data)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("predict: x is empty")
    return np.concatenate(outputs)


# ------------------------------------------------------------------ callbacks
class Callback:
    """Override any of these; each receives the ``TrainState``."""

    def on_train_begin(self, state):
        pass

    def on_batch_end(self, state):
        pass

    def on_epoch_end(self, state):
        pass

    def on_train_end(self, state):
        pass


# Metrics where smaller is better; anything else (accuracy, f1, ...) is maximised.
_ERROR_WORDS = ("loss", "mse", "mae", "error", "rmse")


def _mode(monitor, mode):
    if mode == "auto":
        return "min" if any(word in monitor for word in _ERROR_WORDS) else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


def _monitored(state, monitor, who):
    if monitor not in state.logs:
        hint = " (pass val_loader to fit)" if monitor.startswith("val_") else ""
        raise KeyError(f"{who} monitors {monitor!r}, but the logs hold only "
                       f"{', '.join(state.logs)}{hint}")
    return state.logs[monitor]


class _Improvement:
    """Tracks the best value of a monitored quantity."""

    def __init__(self, monitor, mode, min_delta):
        self.monitor, self.mode, self.min_delta = monitor, _mode(monitor, mode), abs(min_delta)
        self.best = math.inf if self.mode == "min" else -math.inf

    def improved(self, value):
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs; with ``restore_best`` the model gets back the weights of the
    best epoch at the end. After training: ``best_epoch``, ``best``, ``stopped_epoch``
    (None if it never stopped early)."""

    def __init__(self, monitor="val_loss", patience=5, mode="auto", min_delta=0.0,
                 restore_best=True):
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        self.monitor, self.patience, self.restore_best = monitor, patience, restore_best
        self.mode, self.min_delta = mode, min_delta

    def on_train_begin(self, state):
        self._tracker = _Improvement(self.monitor, self.mode, self.min_delta)
        self.wait, self.best_epoch, self.stopped_epoch = 0, None, None
        self.best_state = None

    @property
    def best(self):
        return self._tracker.best

    def on_epoch_end(self, state):
        value = _monitored(state, self.monitor, "EarlyStopping")
        if self._tracker.improved(value):
            self._tracker.best, self.best_epoch, self.wait = value, state.epoch, 0
            if self.restore_best:
                self.best_state = state.model.state_dict()  # copies
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = state.epoch
                state.stop_training = True

    def on_train_end(self, state):
        last = state.history.epochs[-1] if state.history.epochs else None
        if self.restore_best and self.best_state is not None and last != self.best_epoch:
            state.model.load_state_dict(self.best_state)


class Checkpoint(Callback):
    """Save the model (and optimiser and scheduler, for resuming) to ``path``, an
    ``.npz`` file, whenever ``monitor`` improves (or every epoch when
    ``save_best_only=False``). Load it with ``load_checkpoint``."""

    def __init__(self, path, monitor="val_loss", mode="auto", save_best_only=True):
        self.path, self.monitor, self.mode, self.save_best_only = path, monitor, mode, save_best_only
        self.saved_epochs = []

    def on_train_begin(self, state):
        self._tracker = _Improvement(self.monitor, self.mode, 0.0)

    def on_epoch_end(self, state):
        value = _monitored(state, self.monitor, "Checkpoint")
        improved = self._tracker.improved(value)
        if improved:
            self._tracker.best = value
        if improved or not self.save_best_only:
            save_checkpoint(self.path, state.model, state.optimizer, state.scheduler,
                            epoch=state.epoch, monitor=self.monitor, value=float(value),
                            logs=state.logs)
            self.saved_epochs.append(state.epoch)


# ---------------------------------------------------------------- checkpoints
def _jsonable(value):
    """Plain JSON values, or None for what JSON cannot hold (functions, arrays)."""
    if isinstance(value, (bool, str)) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        items = [_jsonable(v) for v in value]
        return items
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return None


def save_checkpoint(path, model, optimizer=None, scheduler=None, **meta):
    """Write ``model``'s state_dict (and the optimiser's and scheduler's state) to
    ``path`` atomically. ``meta`` (epoch, metrics...) must be JSON-serialisable."""
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    info = {"meta": _jsonable(meta), "model_keys": list(model.state_dict())}
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        scalars = {}
        for index, entry in opt_state["state"].items():
            for name, value in entry.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optimizer/{index}/{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = _jsonable(value)
        info["optimizer"] = {"param_groups": _jsonable(opt_state["param_groups"]),
                             "scalars": scalars, "type": type(optimizer).__name__}
    if scheduler is not None:
        info["scheduler"] = {k: _jsonable(v) for k, v in scheduler.state_dict().items()}
    arrays["info.json"] = np.array(json.dumps(info))
    _atomic_savez(path, arrays)


def _atomic_savez(path, arrays):
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(model, path, optimizer=None, scheduler=None, strict=True):
    """Load a checkpoint written by ``save_checkpoint``/``Checkpoint`` into ``model``
    (and ``optimizer``/``scheduler`` when given, to resume). Returns the saved meta
    dict (epoch, monitor, value, logs...)."""
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        if "info.json" not in archive.files:
            raise ValueError(f"{path} is not a minidl checkpoint (no info.json entry); "
                             "for a plain state_dict archive use model.load_state_dict(np.load(path))")
        info = json.loads(str(archive["info.json"]))
        model.load_state_dict({k[len("model/"):]: archive[k] for k in archive.files
                               if k.startswith("model/")}, strict=strict)
        if optimizer is not None:
            if "optimizer" not in info:
                raise ValueError(f"{path} holds no optimiser state (saved without one)")
            saved = info["optimizer"]
            state = {int(i): dict(entry) for i, entry in saved["scalars"].items()}
            for key in archive.files:
                if key.startswith("optimizer/"):
                    _, index, name = key.split("/", 2)
                    state.setdefault(int(index), {})[name] = archive[key]
            groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
                      for g in saved["param_groups"]]
            optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scheduler is not None:
        if "scheduler" not in info:
            raise ValueError(f"{path} holds no scheduler state (saved without one)")
        scheduler.load_state_dict({k: v for k, v in info["scheduler"].items() if v is not None})
    return info["meta"]
