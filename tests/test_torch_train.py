"""The torch trainer: learning, exact resume, callbacks, EMA, schedules, evaluate."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reference_torch.augment import Compose, RandomCrop, RandomHorizontalFlip
from reference_torch.checkpoint import load_checkpoint, save_checkpoint
from reference_torch.train import (Callback, Checkpoint, EarlyStopping, ModelEMA, Trainer,
                                   classification_step, evaluate, fit, select_device, warmup_cosine)

HAS_CUDA = torch.cuda.is_available()


def blobs(n=96, seed=0, size=8):
    """Three classes of tiny images whose mean colour tells the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 3, size, size, generator=g) * 0.5
    x[torch.arange(n), y] += 0.5
    return x, y


def tiny_net(seed=0, dropout=0.2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(dropout),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def loader(x, y, batch_size=16, shuffle=True):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle)


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fit_learns_and_records_history():
    x, y = blobs()
    model = tiny_net(dropout=0.0)
    trainer = fit(model, loader(x, y), epochs=8, lr=0.5, val_loader=loader(x, y, shuffle=False),
                  progress=False, device="cpu")
    h = trainer.history
    assert [e["epoch"] for e in h] == list(range(1, 9))
    assert set(h[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert h[-1]["loss"] < 0.5 * h[0]["loss"]
    assert h[-1]["val_accuracy"] > 0.9


# ---------------------------------------------------------------- exact resume
class Interrupt(Exception):
    pass


class StopAtStep(Callback):
    """Simulates a crash: raises after optimiser step ``at`` (None: never)."""

    def __init__(self, at=None):
        self.at = at

    def on_batch_end(self, trainer, logs):
        if trainer.step == self.at:
            raise Interrupt


AUG = Compose([RandomCrop(padding=2), RandomHorizontalFlip()])


def augmenting_step(model, batch, extra):
    """Uses the global RNG (augmentation, dropout) and an extra loader, as FixMatch will."""
    x, y = batch
    loss = F.cross_entropy(model(AUG(x)), y) + 0.1 * model(AUG(extra[0])).logsumexp(1).mean()
    return loss, {"accuracy": (model(x).argmax(1) == y).float().mean()}


def make_trainer(tmp_path, crash_at=None, model_seed=0, every=None):
    model = tiny_net(model_seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=1e-4)
    return Trainer(model, opt, training_step=augmenting_step, scheduler=warmup_cosine(opt, 18, 4),
                   ema=0.9, callbacks=[StopAtStep(crash_at), EarlyStopping("val_loss", patience=10)],
                   checkpoint_dir=tmp_path, checkpoint_every_steps=every, seed=3, progress=False,
                   device="cpu")


@pytest.mark.parametrize("crash_at, every", [(7, None), (9, 4)], ids=["epoch-boundary", "mid-epoch"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, crash_at, every):
    # 6 steps per epoch (96 / 16), 3 epochs; the extra loader (40 / 16 -> 3 batches) cycles.
    x, y = blobs()
    ux, _ = blobs(40, seed=1)

    def run(trainer):
        return trainer.fit(loader(x, y), 3, val_loader=loader(x, y, shuffle=False),
                           extra_loaders=[DataLoader(TensorDataset(ux), batch_size=16, shuffle=True)],
                           resume=True)

    straight = make_trainer(tmp_path / "a", every=every)
    run(straight)

    crashed = make_trainer(tmp_path / "b", crash_at=crash_at, every=every)
    with pytest.raises(Interrupt):
        run(crashed)
    saved = load_checkpoint(tmp_path / "b" / "last.pt")
    # Epoch boundary: the crash at step 7 loses step 7, last.pt is from the end of epoch 1.
    # Mid-epoch (a checkpoint every 4 steps): the crash at step 9 loses step 9, last.pt is
    # from step 8, 2 batches into epoch 2.
    assert (saved["step"], saved["batch_in_epoch"]) == ((6, 0) if every is None else (8, 2))

    resumed = make_trainer(tmp_path / "b", model_seed=123, every=every)  # different init: all from the file
    history = run(resumed)

    for a, b in [(straight.model, resumed.model), (straight.ema.module, resumed.ema.module)]:
        pa, pb = params(a), params(b)
        assert all(torch.equal(pa[k], pb[k]) for k in pa), "weights differ after resume"
    assert history == straight.history
    assert resumed.step == straight.step == 18
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["momentum_buffer"], sb[i]["momentum_buffer"]) for i in sa)


def test_checkpoint_is_plain_data_and_written_atomically(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"w": torch.ones(2), "epoch": 1}, path)
    with pytest.raises(Exception):  # a lambda cannot be saved: the old file must survive
        save_checkpoint({"w": torch.zeros(2), "fn": lambda: 0}, path)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ck.pt"], "a temporary file was left behind"

    # Trainer checkpoints hold only what weights_only=True accepts.
    x, y = blobs(32)
    t = Trainer(tiny_net(), torch.optim.Adam(tiny_net().parameters()), checkpoint_dir=tmp_path / "t",
                progress=False, device="cpu")
    t.fit(loader(x, y), 1)
    state = torch.load(tmp_path / "t" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["step"] == 2


# ---------------------------------------------------------------- callbacks
def test_early_stopping_stops_after_patience_epochs():
    x, y = blobs(32)
    model = tiny_net(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing changes, so nothing improves
    trainer = Trainer(model, opt, callbacks=[EarlyStopping("val_loss", patience=2)], progress=False,
                      device="cpu")
    history = trainer.fit(loader(x, y), 10, val_loader=loader(x, y, shuffle=False))
    assert len(history) == 3 and trainer.should_stop


def test_missing_monitor_metric_is_named():
    x, y = blobs(32)
    model = tiny_net()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      callbacks=[EarlyStopping("val_loss")], progress=False, device="cpu")
    with pytest.raises(KeyError, match="val_loss"):
        trainer.fit(loader(x, y), 1)  # no val_loader, so no val_loss


class Snapshots(Callback):
    def __init__(self):
        self.weights = {}

    def on_epoch_end(self, trainer, logs):
        self.weights[int(logs["epoch"])] = params(trainer.eval_model)


def test_checkpoint_keeps_the_best_epoch(tmp_path):
    x, y = blobs()
    vx, vy = blobs(48, seed=5)
    model = tiny_net()
    snaps, best = Snapshots(), Checkpoint(tmp_path / "best.pt", monitor="val_loss")
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.9),
                      callbacks=[snaps, best], progress=False, device="cpu")
    history = trainer.fit(loader(x, y), 6, val_loader=loader(vx, vy, shuffle=False))
    losses = [e["val_loss"] for e in history]
    assert best.best == min(losses)
    assert best.best_epoch == 1 + losses.index(min(losses))
    saved = torch.load(tmp_path / "best.pt", weights_only=True)
    assert (saved["epoch"], saved["monitor"], saved["value"]) == (best.best_epoch, "val_loss", best.best)
    assert all(torch.equal(saved["model"][k], v) for k, v in snaps.weights[best.best_epoch].items())


def test_early_stopping_restores_the_best_epochs_weights():
    x, y = blobs()
    # Validation labels shifted by one class: the better the fit, the worse the validation
    # loss, so the best epoch is an early one and restoring it changes the weights.
    vx, vy = x[:48], (y[:48] + 1) % 3
    model = tiny_net()
    snaps, stopper = Snapshots(), EarlyStopping("val_loss", patience=6)  # never stops: 6 epochs
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.8, momentum=0.9),
                      callbacks=[snaps, stopper], progress=False, device="cpu")
    history = trainer.fit(loader(x, y), 6, val_loader=loader(vx, vy, shuffle=False))
    losses = [e["val_loss"] for e in history]
    assert stopper.best_epoch == 1 + losses.index(min(losses)) != 6, "the last epoch must not be the best"
    assert stopper.stopped_epoch is None and not trainer.should_stop
    final = params(model)
    assert all(torch.equal(final[k], v) for k, v in snaps.weights[stopper.best_epoch].items())
    assert not torch.equal(final["0.weight"], snaps.weights[6]["0.weight"])


# ---------------------------------------------------------------- pluggable steps
def test_extra_loaders_are_zipped_and_cycled():
    x, y = blobs(64)
    ux = torch.arange(24, dtype=torch.float32).view(24, 1)  # 3 batches of 8, main has 4 per epoch
    seen = []

    def step(model, batch, extra):
        seen.append(extra[0].flatten().long().tolist())
        return F.cross_entropy(model(batch[0]), batch[1]), {}

    model = tiny_net()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), training_step=step,
                      progress=False, device="cpu")
    trainer.fit(loader(x, y), 2, extra_loaders=[DataLoader(TensorDataset(ux), batch_size=8, shuffle=True)])
    assert len(seen) == 8 and all(len(b) == 8 for b in seen)
    for epoch in (seen[:4], seen[4:]):  # the first 3 batches of each epoch cover the extra data once
        assert sorted(sum(epoch[:3], [])) == list(range(24))
    assert seen[:4] != seen[4:], "each epoch should reshuffle the extra loader"


def test_frozen_backbone_only_head_changes():
    x, y = blobs(32)
    model = tiny_net(dropout=0.0)
    head = model[-1]
    for p in model.parameters():
        p.requires_grad_(head.weight is p or head.bias is p)
    before = params(model)
    fit(model, loader(x, y), 2, optimizer=torch.optim.SGD(head.parameters(), lr=0.5), progress=False,
        device="cpu")
    after = params(model)
    assert torch.equal(before["0.weight"], after["0.weight"])
    assert not torch.equal(before["5.weight"], after["5.weight"])


class TwoOptimisers(Trainer):
    """The subclass hook for runs that step two optimisers (e.g. an adversarial autoencoder)."""

    def __init__(self, model, opt_a, opt_b, **kw):
        super().__init__(model, opt_a, **kw)
        self.opt_b = opt_b

    def train_step(self, batch):
        x, y = batch
        for opt, part in ((self.optimizer, self.model[0]), (self.opt_b, self.model[-1])):
            opt.zero_grad()
            loss = F.cross_entropy(self.model(x), y)
            loss.backward()
            opt.step()
        return {"loss": loss.detach()}


def test_train_step_can_be_overridden():
    x, y = blobs(32)
    model = tiny_net(dropout=0.0)
    before = params(model)
    t = TwoOptimisers(model, torch.optim.SGD(model[0].parameters(), lr=0.1),
                      torch.optim.SGD(model[-1].parameters(), lr=0.1), progress=False, device="cpu")
    history = t.fit(loader(x, y), 1)
    assert set(history[0]) == {"epoch", "loss", "lr"}
    after = params(model)
    assert not torch.equal(before["0.weight"], after["0.weight"])
    assert not torch.equal(before["5.weight"], after["5.weight"])


def test_diverging_loss_is_reported():
    x, y = blobs(32)
    model = tiny_net()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      training_step=lambda m, b: (classification_step(m, b)[0] * math.nan, {}),
                      progress=False, device="cpu")
    with pytest.raises(FloatingPointError, match="loss is nan"):
        trainer.fit(loader(x, y), 1)


# ---------------------------------------------------------------- evaluate, EMA, schedule
def test_evaluate_returns_consistent_outputs():
    x, y = blobs(40)
    model = tiny_net()
    out = evaluate(model, loader(x, y, batch_size=16, shuffle=False), return_outputs=True)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert torch.allclose(out["logits"], logits, atol=1e-6)
    assert torch.equal(out["targets"], y) and torch.equal(out["predictions"], logits.argmax(1))
    assert out["accuracy"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)  # uneven last batch
    assert model.training is False  # left as it was
    with pytest.raises(ValueError, match="return_outputs"):
        evaluate(model, loader(x, y), step=classification_step, return_outputs=True)


def test_model_ema_update_rule():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.75)
    old = params(ema.module)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    model(torch.randn(4, 3))  # changes the BN running statistics
    ema.update(model)
    new, cur = params(ema.module), params(model)
    assert torch.allclose(new["0.weight"], 0.75 * old["0.weight"] + 0.25 * cur["0.weight"])
    assert torch.equal(new["1.running_mean"], cur["1.running_mean"])  # buffers are copied
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_warmup_cosine_shape():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55)  # half way down the cosine: (1 + 0.1) / 2
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    with pytest.raises(ValueError, match="warmup_steps=20"):
        warmup_cosine(opt, total_steps=10, warmup_steps=20)


def test_device_selection():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device().type == ("cuda" if HAS_CUDA else select_device().type)
    if not HAS_CUDA and not torch.backends.mps.is_available():
        assert select_device() == torch.device("cpu")


def test_channels_last_matches_default_layout():
    x, y = blobs(32)
    results = []
    for cl in (False, True):
        model = tiny_net(dropout=0.0)
        fit(model, loader(x, y, shuffle=False), 2, lr=0.3, channels_last=cl, progress=False, device="cpu")
        results.append(params(model))
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-5) for k in results[0])


# ---------------------------------------------------------------- GPU paths
@pytest.mark.gpu
@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16])
def test_amp_on_cuda_trains(amp_dtype):
    if amp_dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bfloat16 needs compute capability 8+")
    x, y = blobs()
    model = tiny_net(dropout=0.0)
    trainer = fit(model, loader(x, y), 6, lr=0.5, amp=True, amp_dtype=amp_dtype, channels_last=True,
                  progress=False, device="cuda")
    assert trainer.scaler.is_enabled() == (amp_dtype == torch.float16)
    assert next(model.parameters()).device.type == "cuda"
    assert trainer.history[-1]["loss"] < trainer.history[0]["loss"]
    assert trainer.evaluate(loader(x, y, shuffle=False))["accuracy"] > 0.8


@pytest.mark.gpu
def test_compile_on_cuda_matches_eager():
    x, y = blobs()
    results = []
    for compiled in (False, True):
        model = tiny_net(dropout=0.0)
        fit(model, loader(x, y, shuffle=False), 2, lr=0.3, compile=compiled, amp=False, progress=False,
            device="cuda")
        results.append(params(model))
    assert all(torch.allclose(results[0][k], results[1][k], atol=1e-4) for k in results[0])
