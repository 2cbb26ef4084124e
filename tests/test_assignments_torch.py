"""The torch drivers transfer_learning and augmentation: a --quick run of each writes its
declared figures, tables and metrics; training only the last layer leaves every
pretrained weight (and batch-norm statistic) untouched; a torchvision weight file that
does not fit fails before anything runs, with a message that says why."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from assignments.__main__ import main  # noqa: E402
from driver_run import run_quick, torchvision_resnet18_file  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------ transfer_learning
def test_transfer_learning_quick(tmp_path):
    metrics, manifest = run_quick("transfer_learning", tmp_path / "tl")
    assert {f["file"] for f in manifest["figures"]} == {"validation_curves.png", "test_accuracy.png"}
    assert metrics["dataset"] == "shapes" and "pretrained_on" in metrics
    # no --weights: pretrained offline on half the classes, transferred to the other half
    assert not set(metrics["source_classes"]) & set(metrics["target_classes"])
    runs = metrics["runs"]
    assert set(runs) == {f"{s}{a}" for s in ("head", "finetune", "finetune_head10", "scratch")
                         for a in ("", "_aug")}
    (table,) = [t for t in manifest["tables"] if t["name"] == "strategies"]
    assert len(table["rows"]) == len(runs)
    for key, r in runs.items():
        assert len(r["val_accuracy"]) == metrics["epochs"]
        assert 1 <= r["best_epoch"] <= metrics["epochs"]
        assert r["best_val_accuracy"] == pytest.approx(max(r["val_accuracy"]))
        assert 0.0 <= r["test_accuracy"] <= 1.0
        assert set(r["noisy_test_accuracy"]) == {str(s) for s in metrics["noise_std"]}
    for key in ("head", "head_aug"):  # a linear probe: the pretrained weights never move
        assert runs[key]["backbone_max_change"] == 0.0
        assert runs[key]["backbone_buffer_max_change"] == 0.0
        assert runs[key]["trainable_parameters"] < runs["finetune"]["trainable_parameters"] / 4
    for key in ("finetune", "finetune_head10", "scratch"):
        assert runs[key]["backbone_max_change"] > 0.0
    assert manifest["notes"] and "No --weights" in manifest["notes"][0]


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
    assert metrics["batch_size"] == 32  # the offline profile's, not the course's 128


@pytest.mark.parametrize("option, value, message", [
    ("--strategies", "head,linear", "unknown --strategies linear"),
    ("--noise-std", "0.1,lots", "not a comma-separated list"),
    ("--noise-std", "0", "positive standard deviations"),
    ("--per-class", "0", "--per-class must be at least 1"),
])
def test_transfer_learning_rejects_bad_options(tmp_path, option, value, message):
    with pytest.raises(SystemExit, match=message):
        main(["run", "transfer_learning", "--quick", option, value, "--out", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_head_only_leaves_the_backbone_unchanged():
    """The driver's own pieces, on a ResNet with batch norm: freeze, train, compare."""
    from assignments import transfer_learning as tl
    from reference_torch.models import resnet18
    from reference_torch.train import Trainer

    torch.manual_seed(0)
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 4, (16,))
    for strategy in ("head", "finetune_head10"):
        model = tl.Prepared(tl.reset_head(resnet18(num_classes=10, cifar_stem=True), 4), (0.5,) * 3, (0.25,) * 3)
        conv = model.net.conv1.weight.detach().clone()
        running = model.net.layer1[0].bn1.running_mean.clone()
        fc = model.net.fc.weight.detach().clone()
        groups = tl.configure(model.net, strategy, lr=1e-2, finetune_lr=1e-2)
        step = tl.frozen_backbone_step if strategy == "head" else tl.classification_step
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)
        Trainer(model, torch.optim.Adam(groups), training_step=step, progress=False, device="cpu").fit(loader, 1)
        assert not torch.equal(model.net.fc.weight, fc)
        frozen = strategy == "head"
        assert torch.equal(model.net.conv1.weight, conv) == frozen
        assert torch.equal(model.net.layer1[0].bn1.running_mean, running) == frozen


def test_wrong_weight_file_fails_clearly(tmp_path):
    wrong_keys = torchvision_resnet18_file(tmp_path / "wrong.pth", **{"fc.weight": None})
    torch.save({**torch.load(wrong_keys, weights_only=True), "classifier.weight": torch.zeros(3)}, wrong_keys)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"(?s)do not fit ResNet.*missing keys: fc\.weight"
                                          r".*unexpected keys: classifier\.weight"):
        main(["run", "transfer_learning", "--quick", "--weights", str(wrong_keys), "--out", str(out)])
    assert not (out / "metrics.json").exists()  # failed before any training
    cifar_stem = torchvision_resnet18_file(tmp_path / "cifar.pth", **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(ValueError, match=r"shape mismatches: conv1\.weight: file \(64, 3, 3, 3\)"):
        main(["run", "transfer_learning", "--quick", "--weights", str(cifar_stem), "--out", str(out)])
    with pytest.raises(FileNotFoundError, match="no weight file"):
        main(["run", "transfer_learning", "--quick", "--weights", str(tmp_path / "absent.pth"),
              "--out", str(out)])


def test_transfer_learning_with_atorchvision_resnet18_file(tmp_path):
    """The ImageNet path end to end (a randomly initialised file in torchvision's layout,
    small images for speed): grey digits become RGB, the frozen ResNet keeps its
    batch-norm statistics."""
    weights = torchvision_resnet18_file(tmp_path / "resnet18.pth")
    metrics, manifest = run_quick("transfer_learning", tmp_path / "tl", "--dataset", "digits", "--weights",
                             str(weights), "--image-size", "32", "--strategies", "head",
                             "--epochs", "2", "--per-class", "4")
    assert metrics["pretrained_on"].startswith("ImageNet") and metrics["image_size"] == 32
    assert metrics["batch_size"] == 128 and metrics["epochs"] == 2  # the course's batch, our epochs
    assert metrics["source_classes"] == [] and len(metrics["target_classes"]) == 10
    assert set(metrics["runs"]) == {"head", "head_aug"}
    for r in metrics["runs"].values():
        assert r["backbone_max_change"] == 0.0 and r["backbone_buffer_max_change"] == 0.0
        assert r["trainable_parameters"] == 512 * 10 + 10
    assert any("resnet18.pth" in note for note in manifest["notes"])


# ------------------------------------------------------------------------ augmentation
def test_augmentation_quick(tmp_path):
    metrics, manifest = run_quick("augmentation", tmp_path / "aug")
    assert {f["file"] for f in manifest["figures"]} == {
        "augmented_samples.png", "accuracy_vs_growth.png", "time_vs_growth.png", "ablation.png"}
    assert {t["name"] for t in manifest["tables"]} == {"growth", "ablation"}
    base, factors = metrics["train_size"], metrics["factors"]
    aug, rep = metrics["growth"]["augmented"], metrics["growth"]["repeated"]
    for k in factors:
        assert aug[str(k)]["images"] == rep[str(k)]["images"] == k * base
        assert aug[str(k)]["steps"] == rep[str(k)]["steps"]  # the control has the same steps
        assert aug[str(k)]["train_seconds"] > 0
    top = factors[-1]
    # repeats are memorised; augmented copies are harder to fit
    assert rep[str(top)]["train_accuracy"] > aug[str(top)]["train_accuracy"]
    assert rep[str(top)]["train_accuracy"] > 0.5
    chance = 0.1
    assert max(r["test_accuracy"] for r in metrics["ablation"]) > chance + 0.04, metrics["ablation"]
    labels = [r["transform"] for r in metrics["ablation"]]
    assert labels[0] == "none" and labels[-1] == "all"
    assert set(metrics["transforms"]) <= set(labels)
    assert metrics["best_transform"] in metrics["transforms"]


def test_augmentation_rejects_a_training_set_smaller_than_the_classes(tmp_path):
    with pytest.raises(SystemExit, match="--train-size must be between 10"):
        main(["run", "augmentation", "--quick", "--train-size", "3", "--out", str(tmp_path / "out")])


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
    assert driver.DEFAULT is True
    assert driver.NAME == name and driver.DATASETS[0] == "shapes"
    for attr in ("COURSE", "TASK", "SUMMARY", "STATEMENT"):
        assert getattr(driver, attr).strip()
    assert np.all([d in ("shapes", "digits", "cifar10", "cifar100") for d in driver.DATASETS])
