"""minidl's fit and reference_torch's Trainer speak one vocabulary: the same callback
classes, arguments and defaults, and the same hooks, called in the same order."""
import inspect

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import minidl as md
from minidl import train as md_train
from reference_torch import train as torch_train

pytestmark = pytest.mark.usefixtures("torch_one_thread")

HOOKS = ["on_train_begin", "on_batch_end", "on_epoch_end", "on_train_end"]


def test_the_callbacks_are_the_same_classes_with_the_same_arguments():
    assert torch_train.Callback is md_train.Callback
    assert torch_train.EarlyStopping is md_train.EarlyStopping
    assert issubclass(torch_train.Checkpoint, md_train.Checkpoint)
    assert inspect.signature(torch_train.Checkpoint) == inspect.signature(md_train.Checkpoint)
    hooks = [name for name in vars(md_train.Callback) if name.startswith("on_")]
    assert hooks == HOOKS
    stopping = inspect.signature(md_train.EarlyStopping).parameters
    assert [(p.name, p.default) for p in stopping.values()] == [
        ("monitor", "val_loss"), ("mode", "auto"), ("patience", 5), ("min_delta", 0.0), ("restore_best", True)]
    with pytest.raises(TypeError):  # only monitor is positional: no silent swap of patience and mode
        md_train.EarlyStopping("val_loss", 3)


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("val_mse", "min"), ("mae", "min"),
                                           ("val_error", "min"), ("val_accuracy", "max"), ("f1", "max")])
def test_auto_mode_minimises_errors_and_maximises_the_rest(monitor, mode):
    assert md_train.EarlyStopping(monitor).mode == mode
    assert torch_train.Checkpoint("unused.pt", monitor).mode == mode


class HookLog(md_train.Callback):
    """Records which hook ran, with the loss seen in the logs where there are logs."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append("on_train_begin")

    def on_batch_end(self, trainer, logs):
        assert "loss" in logs
        self.calls.append("on_batch_end")

    def on_epoch_end(self, trainer, logs):
        assert {"loss", "lr"} <= set(logs)
        self.calls.append("on_epoch_end")

    def on_train_end(self, trainer):
        self.calls.append("on_train_end")


def test_both_loops_call_the_hooks_in_the_same_order():
    x = np.random.default_rng(0).normal(size=(8, 2)).astype(np.float32)
    y = np.arange(8) % 2
    expected = ["on_train_begin"] + (["on_batch_end"] * 2 + ["on_epoch_end"]) * 3 + ["on_train_end"]

    md.manual_seed(0)
    md_model = md.nn.Linear(2, 2)
    md_log = HookLog()
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    md_train.fit(md_model, md.nn.CrossEntropyLoss(), md.optim.SGD(md_model.parameters(), lr=0.1),
                 batches, epochs=3, callbacks=[md_log], progress=False)

    torch_model = torch.nn.Linear(2, 2)
    torch_log = HookLog()
    loader = DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4)
    torch_train.Trainer(torch_model, torch.optim.SGD(torch_model.parameters(), lr=0.1), callbacks=[torch_log],
                        progress=False, device="cpu").fit(loader, 3)

    assert md_log.calls == torch_log.calls == expected


def test_should_stop_ends_both_loops_after_the_epoch():
    class StopAfterFirstEpoch(md_train.Callback):
        def on_epoch_end(self, trainer, logs):
            trainer.should_stop = True

    x = np.zeros((4, 2), np.float32)
    y = np.zeros(4, np.int64)
    md_model = md.nn.Linear(2, 2)
    history = md_train.fit(md_model, md.nn.CrossEntropyLoss(), md.optim.SGD(md_model.parameters(), lr=0.1),
                           [(x, y)], epochs=5, callbacks=[StopAfterFirstEpoch()], progress=False)
    torch_model = torch.nn.Linear(2, 2)
    trainer = torch_train.Trainer(torch_model, torch.optim.SGD(torch_model.parameters(), lr=0.1),
                                  callbacks=[StopAfterFirstEpoch()], progress=False, device="cpu")
    rows = trainer.fit(DataLoader(TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=4), 5)
    assert len(history) == len(rows) == 1
