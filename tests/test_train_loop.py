"""md.train: fit/evaluate/predict, history, early stopping with best-weight restore,
atomic npz checkpoints that load without pickle, exact resume, quiet progress."""
import os

import numpy as np
import pytest

import minidl as md
import minidl.nn as nn
import minidl.optim as optim
import minidl.train as train
from batches import Loader


def blobs(n=240, seed=0):
    """Three Gaussian blobs in 2-D: an easy three-class problem."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])
    y = rng.integers(0, 3, n)
    x = centres[y] + 0.6 * rng.standard_normal((n, 2))
    return x.astype(np.float32), y


def model_and_optimizer(seed=0, lr=0.05):
    md.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 3))
    return model, optim.Adam(model.parameters(), lr=lr)


class RecordWeights(train.Callback):
    """A callback keeping a copy of the weights after every epoch."""

    def __init__(self):
        self.states = {}

    def on_epoch_end(self, trainer, logs):
        self.states[trainer.epoch] = trainer.model.state_dict()


def test_fit_records_history_and_learns():
    x, y = blobs()
    model, opt = model_and_optimizer()
    sched = optim.StepLR(opt, step_size=2, gamma=0.5)
    history = train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 32, seed=0),
                        Loader(*blobs(90, seed=1), 64), epochs=6, scheduler=sched, progress=False)
    assert len(history) == 6 and history.epochs == list(range(6))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history["lr"] == [0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125]
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    assert history["val_accuracy"][-1] > 0.9
    # The validation numbers are those evaluate() gives for the final weights.
    final = train.evaluate(model, Loader(*blobs(90, seed=1), 64), nn.CrossEntropyLoss())
    assert final["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-6)
    assert history.best("val_accuracy")[1] == max(history["val_accuracy"])
    assert history.as_dict()["epoch"] == list(range(6))


def test_progress_bar_is_quiet_off_a_terminal(capfd):
    x, y = blobs(64)
    model, opt = model_and_optimizer()
    train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 16), Loader(x, y, 32), epochs=2,
              progress=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_early_stopping_restores_the_best_weights():
    x, y = blobs()
    # Validation labels are shifted by one class: the better the model fits the training
    # data, the worse its validation loss, so the best epoch comes early.
    val = Loader(x[:90], (y[:90] + 1) % 3, 45)
    model, opt = model_and_optimizer()
    recorder = RecordWeights()
    stopper = train.EarlyStopping(monitor="val_loss", patience=2)
    history = train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 16, seed=0), val,
                        epochs=30, callbacks=[recorder, stopper], progress=False)
    assert stopper.stopped_epoch is not None and len(history) < 30
    assert len(history) == stopper.best_epoch + 1 + 2  # stopped after `patience` worse epochs
    assert stopper.best_epoch == history.best("val_loss")[0]
    best = recorder.states[stopper.best_epoch]
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, best[key], err_msg=key)
    assert not np.allclose(recorder.states[len(history) - 1]["0.weight"], best["0.weight"])


def test_early_stopping_on_accuracy_counts_patience():
    x, y = blobs()
    model, opt = model_and_optimizer(lr=0.0)  # nothing changes: accuracy never improves
    stopper = train.EarlyStopping(monitor="accuracy", patience=3, restore_best=False)
    history = train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 64), epochs=10,
                        callbacks=[stopper], progress=False)
    assert len(history) == 4 and stopper.best_epoch == 0 and stopper.stopped_epoch == 3


def test_checkpoint_is_atomic_npz_without_pickle(tmp_path):
    x, y = blobs()
    # 15% of the validation labels are wrong: the validation loss first falls, then
    # rises as the model grows confident, so the best epoch lies in the middle.
    val_y = y[:90].copy()
    val_y[:14] = (val_y[:14] + 1) % 3
    path = tmp_path / "ckpt" / "best.npz"
    model, opt = model_and_optimizer(lr=0.005)
    recorder = RecordWeights()
    checkpoint = train.Checkpoint(path, monitor="val_loss")
    history = train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 32, seed=0),
                        Loader(x[:90], val_y, 45), epochs=8, callbacks=[recorder, checkpoint],
                        progress=False)
    best_epoch = history.best("val_loss")[0]
    assert 0 < best_epoch < 7 and checkpoint.saved_epochs == list(range(best_epoch + 1))
    assert os.listdir(path.parent) == ["best.npz"]  # no temporary files left behind
    with np.load(path, allow_pickle=False) as archive:  # nothing in it needs pickle
        assert all(archive[k].dtype != object for k in archive.files)
        assert "model/0.weight" in archive.files and "optimizer/0/exp_avg" in archive.files
    fresh, _ = model_and_optimizer(seed=99)
    meta = train.load_checkpoint(fresh, path)
    assert meta["epoch"] == best_epoch and meta["monitor"] == "val_loss"
    assert meta["value"] == pytest.approx(history["val_loss"][best_epoch])
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(value, recorder.states[best_epoch][key])
    assert not np.array_equal(model.state_dict()["0.weight"], fresh.state_dict()["0.weight"])


def test_resume_from_checkpoint_equals_training_straight_through(tmp_path):
    x, y = blobs()
    loader = Loader(x, y, 32)  # fixed order, so that epochs do not depend on the past

    def setup():
        model, opt = model_and_optimizer(lr=0.02)
        return model, opt, optim.StepLR(opt, step_size=1, gamma=0.7)

    straight, opt, sched = setup()
    train.fit(straight, nn.CrossEntropyLoss(), opt, loader, epochs=4, scheduler=sched, progress=False)

    path = tmp_path / "last.npz"
    first, opt1, sched1 = setup()
    train.fit(first, nn.CrossEntropyLoss(), opt1, loader, epochs=2, scheduler=sched1,
              callbacks=[train.Checkpoint(path, monitor="loss", save_best_only=False)], progress=False)
    resumed, opt2, sched2 = setup()
    for p in resumed.parameters():
        p.data[...] = 0
    train.load_checkpoint(resumed, path, optimizer=opt2, scheduler=sched2)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.02 * 0.7 ** 2)
    history = train.fit(resumed, nn.CrossEntropyLoss(), opt2, loader, epochs=2, scheduler=sched2,
                        progress=False)
    assert history["lr"][0] == pytest.approx(0.02 * 0.7 ** 2)
    for (key, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=key)


def test_evaluate_and_predict_leave_the_model_as_it_was():
    x, y = blobs(50)
    md.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    scores = train.evaluate(model, Loader(x, y, 20), nn.CrossEntropyLoss())
    assert set(scores) == {"loss", "accuracy"} and model.training
    logits = train.predict(model, x, batch_size=7)
    assert logits.shape == (50, 3) and model.training
    # Evaluation mode (no dropout) and batching do not change the numbers.
    model.eval()
    np.testing.assert_allclose(logits, model(md.Tensor(x)).data, rtol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_inputs_are_cast_to_the_model_dtype():
    x, y = blobs(40)
    model, opt = model_and_optimizer()
    x64 = x.astype(np.float64)
    assert train.predict(model, x64).dtype == np.float32
    train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x64, y, 20), epochs=1, progress=False)
    assert all(p.dtype == np.float32 for p in model.parameters())


def test_regression_with_mse_and_no_metrics():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 3)).astype(np.float32)
    target = (x @ np.array([[1.0], [-2.0], [0.5]]) + 0.3).astype(np.float32)
    md.manual_seed(0)
    model = nn.Linear(3, 1)
    history = train.fit(model, nn.MSELoss(), optim.SGD(model.parameters(), lr=0.1),
                        Loader(x, target, 16), epochs=20, metrics=(), progress=False)
    assert set(history.history) == {"loss", "lr"}
    assert history["loss"][-1] < 1e-3
    np.testing.assert_allclose(model.weight.data, [[1.0, -2.0, 0.5]], atol=0.02)


def test_helpful_errors():
    x, y = blobs(40)
    model, opt = model_and_optimizer()
    with pytest.raises(KeyError, match="pass val_loader"):
        train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 20), epochs=1,
                  callbacks=[train.EarlyStopping()], progress=False)
    batches = ((x[i:i + 20], y[i:i + 20]) for i in range(0, 40, 20))
    with pytest.raises(ValueError, match="generator"):
        train.fit(model, nn.CrossEntropyLoss(), opt, batches, epochs=2, progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x, y, 20), metrics=("f1",))
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(FloatingPointError, match="learning rate"):
        train.fit(model, nn.CrossEntropyLoss(), opt, Loader(bad, y, 20), epochs=1, progress=False)


def test_auto_mode_minimises_error_metrics_and_maximises_scores():
    from minidl.train import _mode
    assert [_mode(m, "auto") for m in ("val_loss", "val_mse", "train_error", "val_accuracy")] == \
        ["min", "min", "min", "max"]
