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

Callbacks speak one vocabulary with ``reference_torch.train``, whose Trainer takes
these very classes (its Checkpoint differs only in what it writes):

    Callback         hooks on_train_begin(trainer), on_batch_end(trainer, logs),
                     on_epoch_end(trainer, logs), on_train_end(trainer); state_dict()
                     and load_state_dict() give what a resumable checkpoint keeps of it
    EarlyStopping(monitor="val_loss", *, mode="auto", patience=5, min_delta=0.0,
                  restore_best=True)
    Checkpoint(path, monitor="val_loss", *, mode="auto", save_best_only=True)

``trainer`` is what runs the loop (here a ``TrainState``, there the ``Trainer``), with
``model``, ``eval_model`` (the model the validation numbers are measured on: the torch
Trainer's EMA copy when it keeps one), ``optimizer``, ``scheduler``, ``history``,
``epoch``, ``step`` and ``should_stop`` (set it to end training after this epoch).
``logs`` is the epoch's numbers ("loss", metrics, their "val_" twins, "lr"), or after
a batch that batch's {"loss": ...} (0-d tensors in torch, not yet synchronised).
mode "auto" means "min" when the monitor's name contains loss, mse, mae or error,
else "max". Both callbacks record ``best`` and ``best_epoch``; EarlyStopping also
``stopped_epoch``, Checkpoint ``saved_epochs``. Epochs are numbered as each engine's
history numbers them: from 0 here (``history.epochs``), from 1 in the torch Trainer.

Checkpoints are ``.npz`` archives (model arrays under ``model/``, optimiser arrays
under ``optimizer/``, everything else as one JSON string whose arrays are stored
beside it), written through ``minidl.fileio.atomic_open``, so an interrupted save never
leaves a half-written file; they load with ``allow_pickle=False``, so a checkpoint
cannot run code, and a file that is not one is refused in one line.
``fit(..., checkpoint=path)`` saves all that an exact resume needs after every epoch;
``fit(..., resume=path)`` continues bit for bit, as the torch Trainer does.
"""
from __future__ import annotations

import copy
import json
import math
import numbers
from collections import defaultdict

import numpy as np
from tqdm.auto import tqdm

from . import autograd
from .autograd import Tensor
from .errors import BadValueError, CorruptFileError
from .fileio import atomic_open, read_npz

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
    """What callbacks get as ``trainer`` from ``fit``, with the torch Trainer's names:
    the model (also as ``eval_model``), optimiser, scheduler, history, the current
    ``epoch`` (from 0), the global ``step`` and ``epochs``, the number asked for.
    Setting ``should_stop = True`` ends training after this epoch."""

    def __init__(self, model, optimizer, scheduler, history, epochs):
        self.model = self.eval_model = model  # minidl keeps no EMA copy to evaluate
        self.optimizer, self.scheduler = optimizer, scheduler
        self.history, self.epochs = history, epochs
        self.epoch, self.step = 0, 0
        self.should_stop = False


# ------------------------------------------------------------------------ fit
def fit(model, loss_fn, optimizer, train_loader, val_loader=None, epochs=1, scheduler=None,
        callbacks=(), metrics=("accuracy",), progress=True, checkpoint=None, resume=None):
    """Train ``model`` for ``epochs`` epochs and return the ``History``.

    ``loss_fn(outputs, targets)`` returns a scalar Tensor (e.g. nn.CrossEntropyLoss());
    ``metrics`` are names ('accuracy') or functions f(logits, targets) -> float; use
    ``metrics=()`` for regression. Floating inputs are cast to the model's dtype.

    ``checkpoint=path`` writes, after every epoch, all that resuming needs: model,
    optimiser, scheduler, minidl's random generator, the loader's epoch, the history and
    the callbacks' state. ``resume=path`` continues from such a file to ``epochs`` in all,
    so that losses and weights equal those of a run that never stopped, bit for bit (with
    dropout and shuffling); it keeps writing to ``checkpoint`` (by default the same path).
    """
    if not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise BadValueError(f"epochs must be an int >= 0, got {epochs!r}")
    metric_fns = _metric_functions(metrics)
    history = History()
    state = TrainState(model, optimizer, scheduler, history, epochs)
    dtype = _param_dtype(model)
    callbacks = list(callbacks)
    checkpoint = resume if checkpoint is None else checkpoint
    for callback in callbacks:
        callback.on_train_begin(state)
    first = _resume(resume, state, train_loader, callbacks) if resume is not None else 0
    for epoch in range(first, first if state.should_stop else epochs):
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
            if not bar.disable:
                bar.set_postfix(loss=f"{value:.4f}")
            for callback in callbacks:
                callback.on_batch_end(state, {"loss": value})
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
        if not bar.disable:
            tqdm.write(f"epoch {epoch + 1}/{epochs}  {_format(logs)}")
        for callback in callbacks:
            callback.on_epoch_end(state, logs)
        if checkpoint is not None:
            save_checkpoint(model, checkpoint, optimizer, scheduler, epoch=epoch,
                            training=_training_state(state, train_loader, callbacks, epoch + 1))
        if state.should_stop:
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
    """Override any hook. Both engines' loops call them (see the module docstring):
    ``trainer`` is minidl's TrainState or reference_torch's Trainer, ``logs`` a dict."""

    def on_train_begin(self, trainer):
        pass

    def on_batch_end(self, trainer, logs):
        pass

    def on_epoch_end(self, trainer, logs):
        pass

    def on_train_end(self, trainer):
        pass

    def state_dict(self):
        """What a checkpoint keeps of this callback, so that a resumed run goes on as if
        it had never stopped (the torch Trainer saves it; plain data and tensors only)."""
        return {}

    def load_state_dict(self, state):
        pass


# Metrics where smaller is better; anything else (accuracy, f1, ...) is maximised.
_ERROR_WORDS = ("loss", "mse", "mae", "error")


def _mode(monitor, mode):
    if mode == "auto":
        return "min" if any(word in monitor for word in _ERROR_WORDS) else "max"
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min', 'max' or 'auto', got {mode!r}")
    return mode


class _Monitoring(Callback):
    """What EarlyStopping and Checkpoint share: the best value of ``monitor`` so far
    (``best``) and the epoch it came from (``best_epoch``), reset when training begins."""

    def __init__(self, monitor, mode, min_delta):
        self.monitor, self.mode, self.min_delta = monitor, _mode(monitor, mode), abs(min_delta)
        self._reset()

    def _reset(self):
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = None

    def on_train_begin(self, trainer):
        self._reset()

    def _improved(self, trainer, logs):
        """Whether ``logs[monitor]`` beats the best by more than ``min_delta`` (NaN never
        does); if it does, it becomes the best."""
        if self.monitor not in logs:
            hint = "; pass val_loader to fit" if self.monitor.startswith("val_") else ""
            raise KeyError(f"{type(self).__name__} monitors {self.monitor!r}, but the logs hold "
                           f"only {', '.join(logs)}{hint}")
        value = float(logs[self.monitor])
        if math.isnan(value):
            return False
        if self.mode == "min":
            better = value < self.best - self.min_delta
        else:
            better = value > self.best + self.min_delta
        if better:
            self.best, self.best_epoch = value, trainer.epoch
        return better

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]


class EarlyStopping(_Monitoring):
    """Stop when ``monitor`` has not improved (by more than ``min_delta``) for
    ``patience`` epochs in a row; with ``restore_best`` the evaluated model gets back
    the weights of its best epoch when training ends. After training: ``best``,
    ``best_epoch``, ``stopped_epoch`` (None if it never stopped early).

    The arguments after ``monitor`` are keywords: their order differed between the
    engines once, and a silent swap of patience and mode is worse than an error."""

    def __init__(self, monitor="val_loss", *, mode="auto", patience=5, min_delta=0.0,
                 restore_best=True):
        if patience < 1:
            raise ValueError(f"EarlyStopping: patience must be >= 1, got {patience}")
        super().__init__(monitor, mode, min_delta)
        self.patience, self.restore_best = patience, restore_best

    def _reset(self):
        super()._reset()
        self.wait, self.stopped_epoch, self.best_state = 0, None, None

    def on_epoch_end(self, trainer, logs):
        if self._improved(trainer, logs):
            self.wait = 0
            if self.restore_best:
                # a copy: torch's state_dict() holds the live tensors, which training changes
                self.best_state = copy.deepcopy(trainer.eval_model.state_dict())
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stopped_epoch = trainer.epoch
                trainer.should_stop = True

    def on_train_end(self, trainer):
        if self.best_state is not None:
            trainer.eval_model.load_state_dict(self.best_state)

    def state_dict(self):
        return {**super().state_dict(), "wait": self.wait, "stopped_epoch": self.stopped_epoch,
                "best_state": self.best_state}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.wait, self.stopped_epoch, self.best_state = (state["wait"], state["stopped_epoch"],
                                                          state["best_state"])


class Checkpoint(_Monitoring):
    """Save to ``path`` whenever ``monitor`` improves (every epoch with
    ``save_best_only=False``), with the meta ``epoch``, ``monitor``, ``value`` and
    ``logs``. Here the file is an ``.npz`` of the model, optimiser and scheduler (for
    resuming; read it with ``load_checkpoint``); reference_torch's Checkpoint writes
    the evaluated model's weights to a ``.pt`` file. After training: ``best``,
    ``best_epoch``, ``saved_epochs``."""

    def __init__(self, path, monitor="val_loss", *, mode="auto", save_best_only=True):
        super().__init__(monitor, mode, 0.0)
        self.path, self.save_best_only = path, save_best_only

    def _reset(self):
        super()._reset()
        self.saved_epochs = []

    def on_epoch_end(self, trainer, logs):
        if self._improved(trainer, logs) or not self.save_best_only:
            self._save(trainer, {"epoch": trainer.epoch, "monitor": self.monitor,
                                 "value": float(logs[self.monitor]), "logs": dict(logs)})
            self.saved_epochs.append(trainer.epoch)

    def _save(self, trainer, meta):
        """Write the file: the one part that depends on the engine."""
        save_checkpoint(trainer.model, self.path, trainer.optimizer, trainer.scheduler, **meta)

    def state_dict(self):
        return {**super().state_dict(), "saved_epochs": list(self.saved_epochs)}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.saved_epochs = list(state["saved_epochs"])


# ---------------------------------------------------------------- checkpoints
_ARRAY = "__array__"  # in info.json, {"__array__": key} stands for the array stored under key


def _encode(value, arrays, key):
    """``value`` as plain JSON, its arrays moved into ``arrays`` under ``key``-based names.
    Anything JSON cannot hold raises now, at save time, naming where it is."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, np.ndarray):
        arrays[key] = value
        return {_ARRAY: key}
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (str, type(None))):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays, f"{key}/{i}") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, (str, int)) for k in value):
            raise BadValueError(f"checkpoint: {key} has a key that is not a str or int; "
                                "JSON cannot hold it")
        return {str(k): _encode(v, arrays, f"{key}/{k}") for k, v in value.items()}
    raise BadValueError(f"checkpoint: {key} is a {type(value).__name__}, which a checkpoint "
                        "cannot hold (numbers, strings, lists, dicts and arrays only)")


def _decode(value, archive):
    if isinstance(value, dict):
        if set(value) == {_ARRAY}:
            return archive[value[_ARRAY]]
        return {k: _decode(v, archive) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, archive) for v in value]
    return value


def save_checkpoint(model, path, optimizer=None, scheduler=None, training=None, **meta):
    """Write ``model``'s state_dict (and the optimiser's and scheduler's state) to
    ``path`` atomically: ``save_checkpoint(model, "best.npz", opt, epoch=3)``, the
    model first as in ``torch.save(obj, path)`` (the older order, path first, works
    too). ``meta`` (epoch, metrics...) must be numbers, strings, lists, dicts or
    arrays: anything else raises here, not as a None when read back. ``training`` is
    what ``fit(checkpoint=...)`` adds for an exact resume."""
    if not hasattr(model, "state_dict"):  # save_checkpoint(path, model, ...)
        model, path = path, model
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    info = {"format": "minidl checkpoint", "model_keys": list(model.state_dict()),
            "meta": _encode(meta, arrays, "meta")}
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        scalars = {}
        for index, entry in opt_state["state"].items():
            for name, value in entry.items():
                if isinstance(value, np.ndarray):
                    arrays[f"optimizer/{index}/{name}"] = value
                else:
                    scalars.setdefault(str(index), {})[name] = _encode(value, arrays, "optimizer")
        info["optimizer"] = {"param_groups": _encode(opt_state["param_groups"], arrays, "optimizer"),
                             "scalars": scalars, "type": type(optimizer).__name__}
    if scheduler is not None:
        info["scheduler"] = {"type": type(scheduler).__name__,
                             "state": _encode(scheduler.state_dict(), arrays, "scheduler")}
    if training is not None:
        info["training"] = _encode(training, arrays, "training")
    arrays["info.json"] = np.array(json.dumps(info))
    with atomic_open(path, "wb") as f:  # readers see the old file or the new one
        np.savez(f, **arrays)


def _read_checkpoint(path):
    """(info, arrays) of a checkpoint file; one line naming the file for anything else."""
    arrays = read_npz(path, "a minidl checkpoint (.npz)")
    if "info.json" not in arrays:
        raise CorruptFileError(f"{path} is not a checkpoint (no info.json entry); for a plain "
                               "state dict use model.load_state_dict(md.load(path))")
    try:
        info = json.loads(str(arrays["info.json"]))
        info["meta"] = _decode(info["meta"], arrays)
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path}: its info.json is damaged ({exc}); not a readable "
                               "checkpoint") from None
    return info, arrays


def _check_type(path, what, saved, own):
    if saved is not None and saved != type(own).__name__:
        raise BadValueError(f"{path} holds the state of a {saved} {what}, not of a "
                            f"{type(own).__name__}: build the same {what} to load it")


def load_checkpoint(model, path, optimizer=None, scheduler=None, strict=True):
    """Load a checkpoint written by ``save_checkpoint``/``Checkpoint`` into ``model``
    (and ``optimizer``/``scheduler`` when given, to resume). Returns the saved meta
    dict (epoch, monitor, value, logs...). A file that is missing, truncated, corrupt,
    not a checkpoint, pickled, or of another optimiser type raises one line."""
    info, archive = _read_checkpoint(path)
    _restore(path, info, archive, model, optimizer, scheduler, strict)
    return info["meta"]


def _restore(path, info, archive, model, optimizer, scheduler, strict=True):
    model.load_state_dict({k[len("model/"):]: archive[k] for k in archive
                           if k.startswith("model/")}, strict=strict)
    if optimizer is not None:
        if "optimizer" not in info:
            raise BadValueError(f"{path} holds no optimiser state (saved without one)")
        saved = info["optimizer"]
        _check_type(path, "optimiser", saved.get("type"), optimizer)
        state = {int(i): dict(entry) for i, entry in saved["scalars"].items()}
        for key in archive:
            if key.startswith("optimizer/"):
                _, index, name = key.split("/", 2)
                state.setdefault(int(index), {})[name] = archive[key]
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
                  for g in _decode(saved["param_groups"], archive)]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if scheduler is not None:
        if "scheduler" not in info:
            raise BadValueError(f"{path} holds no scheduler state (saved without one)")
        saved = info["scheduler"]
        if "state" not in saved:  # written before the type was recorded
            saved = {"type": None, "state": saved}
        _check_type(path, "scheduler", saved["type"], scheduler)
        scheduler.load_state_dict({k: v for k, v in _decode(saved["state"], archive).items()
                                   if v is not None})


def _training_state(state, train_loader, callbacks, epochs_done):
    """What ``fit(checkpoint=)`` adds so that a resume continues bit for bit."""
    return {"epochs_done": epochs_done, "step": state.step, "history": state.history.as_dict(),
            "rng": autograd.get_rng_state(), "loader_epoch": getattr(train_loader, "epoch", None),
            "callbacks": [c.state_dict() for c in callbacks], "stopped": state.should_stop}


def _resume(path, state, train_loader, callbacks):
    """Restore a ``fit(checkpoint=)`` file into ``state`` (model, optimiser, scheduler, history,
    random generator, loader epoch, callbacks); returns the number of epochs already done."""
    info, archive = _read_checkpoint(path)
    if "training" not in info:
        raise BadValueError(f"{path} was not written by fit(checkpoint=...): it holds no "
                            "training state to resume exactly")
    training = _decode(info["training"], archive)
    if len(training["callbacks"]) != len(callbacks):
        raise BadValueError(f"{path} was saved with {len(training['callbacks'])} callbacks, this "
                            f"fit has {len(callbacks)}: resume with the same callbacks")
    _restore(path, info, archive, state.model, state.optimizer, state.scheduler)
    saved = training["history"]
    for i, epoch in enumerate(saved.pop("epoch")):
        state.history.append(epoch, {k: v[i] for k, v in saved.items()})
    state.step, state.should_stop = training["step"], training["stopped"]
    autograd.set_rng_state(training["rng"])
    if training["loader_epoch"] is not None and hasattr(train_loader, "set_epoch"):
        train_loader.set_epoch(training["loader_epoch"])
    for callback, saved_state in zip(callbacks, training["callbacks"]):
        callback.load_state_dict(saved_state)
    return training["epochs_done"]
