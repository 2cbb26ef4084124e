"""The torch drivers transfer_learning and augmentation: a --quick run of each writes its
declared figures, tables and metrics; --resume continues an interrupted run to the same
result and retrains nothing that was finished; training only the last layer leaves every
pretrained weight (and batch-norm statistic) untouched; a bad option or a torchvision
weight file that does not fit fails before anything runs, with a message that says why."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from assignments.__main__ import main  # noqa: E402
from assignments.report import unsupported_numbers  # noqa: E402
from driver_run import (history_rows, quick_run_fixture, resume_finished_run, run_killed, run_quick,  # noqa: E402
                        torchvision_resnet18_file, without_timings)
from reference_torch.train import Trainer  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TIMINGS = ("seconds", "cpu_seconds", "train_seconds", "train_cpu_seconds", "augment_seconds", "pretrain_seconds",
           "pretrain_cpu_seconds", "cpu_seconds_per_epoch",
           "augment_cpu_seconds")


def history(out):
    """history.csv as {run: [row, ...]}, without the wall and CPU times (they differ between runs)."""
    return history_rows(out, TIMINGS)


# ------------------------------------------------------------------ transfer_learning
tl_quick = quick_run_fixture("transfer_learning")


@pytest.mark.slow
def test_transfer_learning_quick(tl_quick):
    out, metrics, manifest = tl_quick
    assert {f["file"] for f in manifest["figures"]} == {"validation_curves.png", "test_accuracy.png"}
    assert metrics["dataset"] == "shapes" and "pretrained_on" in metrics
    # no --weights: pretrained offline on half the classes, transferred to the other half
    assert not set(metrics["source_classes"]) & set(metrics["target_classes"])
    runs = metrics["runs"]
    assert set(runs) == {f"{s}{a}" for s in ("head", "finetune", "finetune_head10", "scratch")
                         for a in ("", "_aug")}
    (table,) = [t for t in manifest["tables"] if t["name"] == "strategies"]
    assert len(table["rows"]) == len(runs)
    histories = history(out)
    tuning = metrics["tuning"]
    assert set(histories) == {"pretrain", *(r["key"] for rows in tuning.values() for r in rows),
                              *(key for key in runs if key.endswith("_aug"))}
    assert len(histories["pretrain"]) == json.loads((out / "config.json").read_text())["settings"]["pretrain_epochs"]
    for key, r in runs.items():
        assert len(r["val_accuracy"]) == len(histories[r["key"]]) == metrics["epochs"]
        assert r["val_accuracy"] == pytest.approx([float(h["val_accuracy"]) for h in histories[r["key"]]])
        assert 1 <= r["best_epoch"] <= metrics["epochs"]
        assert r["best_val_accuracy"] == pytest.approx(max(r["val_accuracy"]))
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert set(r["noisy_test_accuracy"]) == {str(s) for s in metrics["noise_std"]}
        assert (out / "checkpoints" / r["key"] / "best.pt").is_file()
    for key in ("head", "head_aug"):  # a linear probe: the pretrained weights and statistics never move
        assert runs[key]["backbone_max_change"] == 0.0
        assert runs[key]["trainable_parameters"] < runs["finetune"]["trainable_parameters"] / 4
        assert runs[key]["lr_backbone"] is None
    for key in ("finetune", "finetune_head10", "scratch"):
        assert runs[key]["backbone_max_change"] > 0.0
    for key in ("finetune_head10", "finetune_head10_aug"):
        assert runs[key]["lr_head"] == pytest.approx(10 * runs[key]["lr_backbone"])
    assert manifest["notes"] and "No --weights" in manifest["notes"][0]
    assert unsupported_numbers(out) == []  # every number a caption or note quotes is in the metrics or tables


@pytest.mark.slow
def test_transfer_learning_tunes_each_strategys_lr_on_validation(tl_quick):
    """Every strategy tries the quick profile's rates (1 and 3 times --lr, --finetune-lr for
    the fine-tuning strategies' pretrained layers, --scratch-lr); the one with the best
    validation accuracy is kept, tested (the others never see the test set), and used again
    with augmentation."""
    out, metrics, manifest = tl_quick
    tuning, runs = metrics["tuning"], metrics["runs"]
    centre = {"head": 1e-3, "scratch": 1e-3, "finetune": 3e-4, "finetune_head10": 3e-4}  # the quick profile's
    for strategy, rows in tuning.items():
        rates = [r["lr_backbone"] if strategy.startswith("finetune") else r["lr_head"] for r in rows]
        assert rates == pytest.approx([centre[strategy], 3 * centre[strategy]])
        chosen = max(rows, key=lambda r: r["best_val_accuracy"])
        assert runs[strategy]["key"] == chosen["key"] and "test_accuracy" in runs[strategy]
        assert not any("test_accuracy" in r for r in rows)
        assert metrics["tuned_lr"][strategy] == pytest.approx(rates[rows.index(chosen)])
        aug = runs[strategy + "_aug"]
        assert (aug["lr_backbone"], aug["lr_head"]) == (chosen["lr_backbone"], chosen["lr_head"])
    (table,) = [t for t in manifest["tables"] if t["name"] == "tuning"]
    assert sum(row["chosen"] == "yes" for row in table["rows"]) == len(tuning) == 4
    assert manifest["headline"]["baseline"] == runs["scratch"]["test_accuracy"]


@pytest.mark.slow
def test_transfer_learning_resume_continues_an_interrupted_run(tl_quick, tmp_path, monkeypatch):
    """Stop a run in the middle of its third strategy (as a kill would: after some epochs'
    checkpoints), then --resume it: it ends with the same histories and numbers as the run
    that never stopped, and a second --resume of a finished run trains nothing."""
    reference, reference_metrics, _ = tl_quick
    settings = json.loads((reference / "config.json").read_text())["settings"]
    out = tmp_path / "run"
    third_run = settings["pretrain_epochs"] + 2 * settings["epochs"]
    epochs = run_killed(monkeypatch, "transfer_learning", out, third_run + 4)  # epoch 4 of the third run
    # in order: head at 1x and 3x --lr, then head with augmentation at the rate chosen
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["head_aug", "head_lr0.001",
                                                                       "head_lr0.003", "pretrain"]
    metrics, _ = run_quick("transfer_learning", out, "--resume")
    assert epochs[:3] == [3, 4, 5]  # the rest of the third run, then the nine after it
    assert len(epochs) == 3 + 9 * settings["epochs"]
    # the killed run had cached its pretrained CNN, which the resumed run reads: the same weights
    assert metrics["pretrained"].startswith("read from") and reference_metrics["pretrained"] == "pretrained in this run"
    assert history(out) == history(reference)
    assert without_timings(metrics, TIMINGS + ("pretrained",)) == without_timings(reference_metrics,
                                                                                   TIMINGS + ("pretrained",))

    epochs.clear()
    resume_finished_run("transfer_learning", out, TIMINGS)
    assert epochs == []


@pytest.mark.slow
def test_transfer_learning_quick_digits_is_above_chance(tmp_path):
    """digits learns in seconds, so the quick profile must transfer well there, and the
    pretrained features must beat the same network trained from scratch on 10 images
    per class."""
    metrics, _ = run_quick("transfer_learning", tmp_path / "tl", "--dataset", "digits")
    runs = metrics["runs"]
    chance = 1 / len(metrics["target_classes"])
    assert metrics["pretrain_val_accuracy"] > 0.8, metrics["pretrain_val_accuracy"]
    for key in ("head", "finetune_head10", "head_aug"):
        assert runs[key]["test_accuracy"] > chance + 0.3, (key, runs[key]["test_accuracy"])
    best_pretrained = max(runs[key]["test_accuracy"] for key in ("head", "finetune_head10"))
    assert best_pretrained > runs["scratch"]["test_accuracy"], runs
    assert metrics["batch_size"] == 32  # the embedded datasets' batch, not the course's 128


def test_cifar_runs_on_the_course_schedule():
    """The course's experiment (CIFAR) trains 30 epochs at batch 128 with lr 1e-3 on every
    labelled image; the quick profile shortens the epochs and keeps the batch."""
    from assignments import get
    from assignments.runner import settings

    driver = get("transfer_learning")
    for dataset in ("cifar10", "cifar100"):
        _, config = settings(driver, {"dataset": dataset})
        assert (config.epochs, config.batch_size, config.lr, config.per_class) == (30, 128, 1e-3, None)
        _, quick = settings(driver, {"dataset": dataset, "profile": "quick"})
        assert (quick.epochs, quick.batch_size) == (6, 128)


@pytest.mark.parametrize("name, option, value, message", [
    ("transfer_learning", "--strategies", "head,linear", r"--strategies: unknown 'linear'; choose from head,"),
    ("transfer_learning", "--noise-std", "0.1,lots", r"--noise-std: '0.1,lots' is not a comma-separated list"),
    ("transfer_learning", "--noise-std", "0", r"--noise-std: .*must be positive, got 0"),
    ("transfer_learning", "--per-class", "0", r"--per-class: must be at least 1, got 0"),
    ("transfer_learning", "--epochs", "0", r"--epochs: must be at least 1, got 0"),
    ("transfer_learning", "--weights", "absent.pth", r"--weights \S*absent.pth: no weight file there"),
    ("augmentation", "--train-size", "3", r"--train-size must be at least 10 \(one image per class\), got 3"),
    ("augmentation", "--lr", "-1", r"--lr: must be positive, got -1"),
])
def test_bad_options_stop_before_anything_is_written(tmp_path, name, option, value, message):
    out = tmp_path / "out"
    value = str(tmp_path / value) if option == "--weights" else value
    with pytest.raises(SystemExit, match=message) as stop:
        main(["run", name, "--quick", option, value, "--out", str(out)])
    assert "\n" not in str(stop.value)
    assert not out.exists()


def test_head_only_leaves_the_backbone_unchanged():
    """The driver's pieces (reference_torch.transfer), on a ResNet with batch norm: freeze, train, compare."""
    from reference_torch import transfer as tl
    from reference_torch.models import resnet18

    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 4, (16,))
    for strategy in ("head", "finetune_head10"):
        model = tl.Prepared(resnet18(num_classes=4, cifar_stem=True), (0.5,) * 3, (0.25,) * 3)
        conv = model.body.conv1.weight.detach().clone()
        running = model.body.layer1[0].bn1.running_mean.clone()
        fc = model.head.weight.detach().clone()
        groups = tl.configure(model, strategy, lr=1e-2, finetune_lr=1e-2)
        assert [g["lr"] for g in groups] == ([1e-2] if strategy == "head" else [1e-2, 1e-1])
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        Trainer(model, torch.optim.Adam(groups), progress=False, device="cpu").fit(loader, 1)
        assert not torch.equal(model.head.weight, fc)
        frozen = strategy == "head"
        assert torch.equal(model.body.conv1.weight, conv) == frozen
        assert torch.equal(model.body.layer1[0].bn1.running_mean, running) == frozen


def test_wrong_weight_file_fails_clearly(tmp_path):
    wrong_keys = torchvision_resnet18_file(tmp_path / "wrong.pth", **{"fc.weight": None})
    torch.save({**torch.load(wrong_keys, weights_only=True), "classifier.weight": torch.zeros(3)}, wrong_keys)
    out = tmp_path / "out"
    # one line from the front door (an InputError), before anything is written
    with pytest.raises(SystemExit, match=r"^error: [^\n]*do not fit ResNet.*missing keys: fc\.weight"
                                         r".*unexpected keys: classifier\.weight[^\n]*$"):
        main(["run", "transfer_learning", "--quick", "--weights", str(wrong_keys), "--out", str(out)])
    assert not (out / "metrics.json").exists() and not (out / "checkpoints").exists()  # before any training
    cifar_stem = torchvision_resnet18_file(tmp_path / "cifar.pth", **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(SystemExit, match=r"shape mismatches: conv1\.weight: file \(64, 3, 3, 3\)"):
        main(["run", "transfer_learning", "--quick", "--weights", str(cifar_stem), "--out", str(out)])


@pytest.mark.slow
def test_transfer_learning_with_a_torchvision_resnet18_file(tmp_path):
    """The ImageNet path end to end (a randomly initialised file in torchvision's layout,
    small images for speed): grey digits become RGB, the frozen ResNet keeps its
    batch-norm statistics."""
    weights = torchvision_resnet18_file(tmp_path / "resnet18.pth")
    metrics, manifest = run_quick("transfer_learning", tmp_path / "tl", "--dataset", "digits", "--weights",
                                  str(weights), "--image-size", "32", "--strategies", "head",
                                  "--epochs", "2", "--per-class", "4")
    assert metrics["pretrained_on"].startswith("ImageNet") and metrics["image_size"] == 32
    assert metrics["epochs"] == 2 and metrics["per_class"] == 4  # the options given win over the profiles
    assert metrics["source_classes"] == [] and len(metrics["target_classes"]) == 10
    assert set(metrics["runs"]) == {"head", "head_aug"}
    for r in metrics["runs"].values():
        assert r["backbone_max_change"] == 0.0
        assert r["trainable_parameters"] == 512 * 10 + 10
    assert any("resnet18.pth" in note for note in manifest["notes"])


# ------------------------------------------------------------------------ augmentation
aug_quick = quick_run_fixture("augmentation")


@pytest.mark.slow
def test_augmentation_quick(aug_quick):
    out, metrics, manifest = aug_quick
    assert {f["file"] for f in manifest["figures"]} == {
        "augmented_samples.png", "accuracy_vs_growth.png", "time_vs_growth.png", "ablation.png"}
    assert {t["name"] for t in manifest["tables"]} == {"growth", "ablation"}
    base, factors, growth = metrics["train_size"], metrics["factors"], metrics["growth"]
    # the hand-chosen pipeline, RandAugment and TrivialAugment at every factor, each against repeats
    assert set(growth) == {"augmented", "randaugment", "trivialaugment", "repeated"}
    rep = growth["repeated"]
    for runs in growth.values():
        for k in factors:
            assert runs[str(k)]["images"] == k * base
            assert runs[str(k)]["steps"] == rep[str(k)]["steps"]  # the control has the same steps
            assert runs[str(k)]["train_cpu_seconds"] > 0
    top = str(factors[-1])
    assert growth["randaugment"][top]["transforms"] == ["randaugment"]
    # repeats are memorised; augmented copies are harder to fit
    for key in ("augmented", "randaugment", "trivialaugment"):
        assert rep[top]["train_accuracy"] > growth[key][top]["train_accuracy"], key
    assert rep[top]["train_accuracy"] > 0.5
    chance = 0.1
    assert max(r["test_accuracy"] for r in metrics["ablation"]) > chance + 0.04, metrics["ablation"]
    labels = [r["transform"] for r in metrics["ablation"]]
    assert labels[0] == "none" and labels[-1] == "all"
    assert set(metrics["transforms"]) | {"randaugment", "trivialaugment"} <= set(labels)
    assert metrics["best_transform"] in metrics["transforms"]
    best = max(("augmented", "randaugment", "trivialaugment"), key=lambda key: growth[key][top]["test_accuracy"])
    assert manifest["headline"]["value"] == growth[best][top]["test_accuracy"]
    assert manifest["headline"]["baseline"] == rep[top]["test_accuracy"]
    histories = history(out)  # one history per network trained, each the run's epochs long
    assert set(histories) == {"originals_1x"} | {f"{key}_{k}x" for key in growth for k in factors if k > 1} \
        | {f"{t}_{metrics['ablation_factor']}x" for t in metrics["transforms"]}
    assert all(len(rows) == metrics["epochs"] for rows in histories.values())


@pytest.mark.slow
def test_augmentation_resume_of_a_finished_run_trains_nothing(aug_quick):
    resume_finished_run("augmentation", aug_quick[0], TIMINGS)


def test_augmentation_rejects_a_training_set_larger_than_the_data(tmp_path):
    with pytest.raises(SystemExit, match=r"--train-size 99999 is more than the [\d,]+ training images"):
        main(["run", "augmentation", "--quick", "--train-size", "99999", "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_grow_adds_augmented_or_repeated_copies():
    from assignments.augmentation import grow

    x, y = torch.rand(10, 3, 32, 32), torch.arange(10)
    gx, gy, _ = grow(x, y, 4, ["crop", "colour"], seed=0)
    assert gx.shape == (40, 3, 32, 32) and torch.equal(gy, y.repeat(4))
    assert torch.equal(gx[:10], x)  # the originals come first
    assert not torch.equal(gx[10:20], x) and not torch.equal(gx[10:20], gx[20:30])
    assert float(gx.min()) >= 0.0 and float(gx.max()) <= 1.0
    again, _, _ = grow(x, y, 4, ["crop", "colour"], seed=0)
    assert torch.equal(gx, again)  # seeded
    rx, _, _ = grow(x, y, 3, [], seed=0)
    assert all(torch.equal(rx[i * 10:(i + 1) * 10], x) for i in range(3))


@pytest.mark.parametrize("name", ["transfer_learning", "augmentation"])
def test_drivers_declare_the_contract(name):
    from assignments import get

    driver = get(name)
    assert driver.DEFAULT is True and driver.TORCH is True and driver.THREADS == "small"
    assert driver.NAME == name and driver.DATASETS[0] == "shapes"
    for attr in ("COURSE", "TASK", "SUMMARY", "STATEMENT"):
        assert getattr(driver, attr).strip()
    assert np.all([d in ("shapes", "digits", "cifar10", "cifar100") for d in driver.DATASETS])
    assert {"epochs", "batch_size", "lr"} <= set(driver.PROFILES["default"])
    assert set(driver.PROFILES) <= {"default", "quick", "full"}
    assert all(set(p) <= set(driver.PROFILES["default"]) for p in driver.PROFILES.values())
    assert all(set(p) <= set(driver.PROFILES["default"]) for p in getattr(driver, "DATASET_SETTINGS", {}).values())
