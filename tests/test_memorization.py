"""reference_torch.memorization (corruption, checkpoints, layer re-initialisation) and the
memorization / layer_criticality drivers on their quick profiles."""
import math
import shutil

import numpy as np
import pytest
import torch

from reference_torch.memorization import (MLP, EpochCheckpoints, corrupt, initialize, layer_robustness,
                                          load_epoch_checkpoints, reinitialize, rerandomize,
                                          weight_layers)
from reference_torch.models import thin_resnet18
from reference_torch.train import Trainer
from assignments.__main__ import main
from driver_run import assert_refused, run_quick


def images(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 3, 8, 8), dtype=np.float32), rng.integers(0, 10, n)


# --------------------------------------------------------------------------- corruption
@pytest.mark.parametrize("share", [0.2, 0.6, 1.0])
def test_label_corruption_replaces_the_stated_share(share):
    x, y = images(5000)
    new_x, new_y = corrupt(x, y, "labels", share, num_classes=10, seed=3)
    # a replaced label is uniform over all 10 classes, so it differs from the old one 9 times in 10
    expected = share * 0.9
    assert abs(np.mean(new_y != y) - expected) < 4 * math.sqrt(expected * (1 - expected) / 5000) + 1e-9
    assert np.array_equal(new_x, x) and set(np.unique(new_y)) <= set(range(10))
    if share == 1.0:  # fully random labels are uniform: each class near a tenth
        assert np.all(np.abs(np.bincount(new_y, minlength=10) / 5000 - 0.1) < 0.02)


def test_corruption_is_fixed_by_its_seed_and_zero_changes_nothing():
    x, y = images()
    first, again, other = (corrupt(x, y, "labels", 0.5, num_classes=10, seed=s)[1] for s in (1, 1, 2))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    same_x, same_y = corrupt(x, y, "labels", 0.0, num_classes=10, seed=1)
    assert np.array_equal(same_x, x) and np.array_equal(same_y, y)
    assert not np.array_equal(corrupt(x, y, "labels", 0.5, num_classes=10, seed=1)[1], y)  # y itself untouched
    assert np.array_equal(y, images()[1])


def test_shuffled_pixels_use_one_permutation_random_pixels_one_per_image():
    n, h = 50, 6
    # every pixel of every image a distinct value, the same in all three channels
    ids = np.arange(n * h * h, dtype=np.float32).reshape(n, 1, h, h)
    x = np.repeat(ids, 3, axis=1)
    y = np.zeros(n, dtype=np.int64)
    for kind in ("shuffled_pixels", "random_pixels"):
        out, out_y = corrupt(x, y, kind, num_classes=10, seed=0)
        assert np.array_equal(out_y, y)
        assert np.array_equal(out[:, 0], out[:, 1]) and np.array_equal(out[:, 0], out[:, 2])  # channels together
        # each image holds exactly its own pixels, rearranged
        assert np.array_equal(np.sort(out.reshape(n, 3, -1), axis=2), x.reshape(n, 3, -1))
        source = (out[:, 0].reshape(n, -1) - ids.reshape(n, -1)[:, :1]).astype(int)  # index each pixel came from
        distinct = {tuple(row) for row in source}
        assert len(distinct) == (1 if kind == "shuffled_pixels" else n), kind
        assert not np.array_equal(source[0], np.arange(h * h))
    # the same seed shuffles other images (the test set) with the same permutation
    small = corrupt(x[:5], y[:5], "shuffled_pixels", num_classes=10, seed=0)[0]
    assert np.array_equal(small, corrupt(x, y, "shuffled_pixels", num_classes=10, seed=0)[0][:5])


def test_gaussian_images_have_the_datasets_mean_and_std():
    x, y = images(2000)
    x[:, 1] = 0.2 + 0.5 * x[:, 1]  # channels with different statistics
    out, _ = corrupt(x, y, "gaussian", num_classes=10, seed=0)
    assert out.shape == x.shape and out.dtype == x.dtype
    for channel in range(3):
        assert abs(out[:, channel].mean() - x[:, channel].mean()) < 0.01
        assert abs(out[:, channel].std() - x[:, channel].std()) < 0.01
        assert abs(np.corrcoef(out[:, channel].ravel(), x[:, channel].ravel())[0, 1]) < 0.01  # no image left


def test_bad_corruption_arguments_are_refused():
    x, y = images(10)
    with pytest.raises(ValueError, match="blur"):
        corrupt(x, y, "blur", num_classes=10)
    with pytest.raises(ValueError, match="1.5"):
        corrupt(x, y, "labels", 1.5, num_classes=10)


# --------------------------------------------------------------------------- layers
def test_the_thin_resnet_has_21_weight_layers_named_by_stage_and_block():
    layers = weight_layers(thin_resnet18())
    labels = [layer.label for layer in layers]
    assert len(layers) == 21 and len(set(labels)) == 21
    assert labels[0] == "stem conv" and labels[-1] == "classifier (fc)"
    assert labels[1:4] == ["stage 1 block 1 conv 1", "stage 1 block 1 conv 2", "stage 1 block 2 conv 1"]
    assert sum("shortcut" in label for label in labels) == 3 and "stage 2 block 1 shortcut" in labels
    assert [layer.label for layer in weight_layers(MLP(64, (256, 256, 256)))] == \
        ["layer 1", "layer 2", "layer 3", "output"]


def test_reinitializing_a_layer():
    torch.manual_seed(0)
    model = thin_resnet18().eval()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # "training": every weight moves
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    final = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 3, 16, 16)
    before = model(x)
    for layer in weight_layers(model):  # from the final checkpoint: nothing changes
        reinitialize(model, layer.path, final)
    assert torch.equal(model(x), before)
    reinitialize(model, "layer2.0.conv1", initial)  # from the initial one: that layer and no other
    for key, value in model.state_dict().items():
        expected = initial[key] if key.startswith("layer2.0.conv1.") else final[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(model(x), before)
    with pytest.raises(KeyError, match="layer2.0.conv1.weight"):
        reinitialize(model, "layer2.0.conv1", {})


def test_rerandomizing_draws_from_the_layers_own_initialiser():
    model = thin_resnet18()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.layer3[0].conv1.weight.mul_(5.0)  # far from the initial scale, as after training
    rerandomize(model, "layer3.0.conv1", seed=7)
    weight = model.layer3[0].conv1.weight
    # torch's default for Conv2d/Linear: kaiming_uniform(a=sqrt(5)), i.e. U(-b, b) with
    # b = 1/sqrt(fan_in), whose standard deviation is b/sqrt(3)
    fan_in = 32 * 3 * 3
    assert abs(weight.std().item() - 1 / math.sqrt(3 * fan_in)) < 0.03 / math.sqrt(3 * fan_in) * 3
    assert weight.abs().max().item() <= 1 / math.sqrt(fan_in)
    assert not torch.equal(weight, trained["layer3.0.conv1.weight"])
    for key, value in model.state_dict().items():  # every other layer untouched
        if not key.startswith("layer3.0.conv1."):
            assert torch.equal(value, trained[key]), key
    again = thin_resnet18()
    rerandomize(again, "layer3.0.conv1", seed=7)
    assert torch.equal(again.layer3[0].conv1.weight, weight)  # seeded


def test_rerandomizing_a_he_initialised_layer_uses_he_again():
    model = initialize(thin_resnet18(), "he")
    fan_in = 16 * 3 * 3
    assert abs(model.layer1[0].conv2.weight.std().item() - math.sqrt(2 / fan_in)) < 0.05 * math.sqrt(2 / fan_in)
    with torch.no_grad():
        model.layer1[0].conv2.weight.mul_(0.1)
        model.layer1[0].conv2.bias.fill_(1.0)
    rerandomize(model, "layer1.0.conv2", seed=3, init="he")
    conv = model.layer1[0].conv2
    assert abs(conv.weight.std().item() - math.sqrt(2 / fan_in)) < 0.05 * math.sqrt(2 / fan_in)
    assert torch.count_nonzero(conv.bias) == 0
    assert abs(model.fc.weight.std().item() - 1 / math.sqrt(3 * 128)) < 0.1 / math.sqrt(3 * 128)  # fc: default


# --------------------------------------------------------------------------- checkpoints
def test_epoch_checkpoints_hold_the_schedule_and_restore_the_network(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 3, (64,))
    model = MLP(16, (8,), num_classes=3)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True)
    saver = EpochCheckpoints(tmp_path / "ckpt", (0, 2), meta={"model": "mlp"})
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu", callbacks=[saver],
                      progress=False)
    trainer.fit(loader, 3)
    checkpoints, meta = load_epoch_checkpoints(tmp_path / "ckpt")
    assert list(checkpoints) == [0, 2, 3] and meta == {"model": "mlp"}  # the schedule and the last epoch
    assert all(torch.equal(checkpoints[0][k], initial[k]) for k in initial)
    assert all(torch.equal(checkpoints[3][k], v) for k, v in model.state_dict().items())
    study = layer_robustness(model, checkpoints, loader)
    assert study["reinit"].shape == (2, 3) and np.allclose(study["reinit"][:, -1], study["base"])
    (tmp_path / "ckpt" / "epoch_0002.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="epoch_0002.pt"):
        load_epoch_checkpoints(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="nothing"):
        load_epoch_checkpoints(tmp_path / "nothing")


# --------------------------------------------------------------------------- the drivers
DIGITS_RUN = ("--dataset", "digits", "--epochs", "30", "--settings", "true,labels_40,random_labels",
              "--regularizers", "weight_decay")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """memorization on the digits (the MLP 3 x 256), quick: its checkpoints feed Part II."""
    out = tmp_path_factory.mktemp("memorization")
    metrics, manifest = run_quick("memorization", out, *DIGITS_RUN)
    return out, metrics, manifest


@pytest.mark.slow
def test_true_labels_are_fitted_in_fewer_steps_than_random_ones(digits_run):
    out, metrics, manifest = digits_run
    true, random = metrics["runs"]["true"], metrics["runs"]["random_labels"]
    assert true["fitted_step"] is not None and true["train_accuracy"] == 1.0
    assert random["fitted_step"] is None or random["fitted_step"] > true["fitted_step"]
    assert true["test_error"] < 0.3 < 0.8 < random["test_error"]  # learnt versus memorised (chance: 0.9)
    assert {f["file"] for f in manifest["figures"]} == {"figure1.png", "regularization.png"}
    kept = sorted(p.name for p in (out / "checkpoints" / "mlp_true").glob("epoch_*.pt"))
    assert kept[0] == "epoch_0000.pt" and len(kept) >= 3
    headline = manifest["headline"]  # memorised: random labels fitted far above chance
    assert headline["label"] == "training accuracy on random labels" and headline["baseline"] == 0.1
    assert headline["value"] == random["train_accuracy"] and headline["verdict"] == "beats the baseline"


@pytest.mark.slow
def test_a_finished_run_resumes_to_the_same_numbers_and_keeps_its_checkpoints(digits_run):
    out, metrics, _ = digits_run
    kept = {p.name: p.read_bytes() for p in (out / "checkpoints" / "mlp_true").glob("epoch_*.pt")}
    again, _ = run_quick("memorization", out, *DIGITS_RUN, "--resume")
    assert again["runs"] == metrics["runs"]
    assert {p.name: p.read_bytes() for p in (out / "checkpoints" / "mlp_true").glob("epoch_*.pt")} == kept


@pytest.mark.slow
def test_layer_criticality_reads_part_one_checkpoints(digits_run, tmp_path):
    folder = digits_run[0] / "checkpoints" / "mlp_true"
    metrics, manifest = run_quick("layer_criticality", tmp_path / "out", "--model", "mlp", "--dataset", "digits",
                                  "--checkpoints", str(folder))
    reinit = np.array(metrics["reinit"])
    assert metrics["layers"] == ["layer 1", "layer 2", "layer 3", "output"] and reinit.shape[0] == 4
    assert np.allclose(reinit[:, -1], metrics["base_error"])  # reset to the trained weights: nothing changes
    assert metrics["base_error"] < 0.3 and reinit.max() > metrics["base_error"]
    assert not any("trained its own" in note for note in manifest["notes"])


@pytest.mark.slow
def test_layer_criticality_finds_memorizations_checkpoints_beside_its_run_folder(digits_run, tmp_path):
    beside = tmp_path / "memorization" / "checkpoints" / "mlp_true"  # as `run --default --out tmp_path` leaves them
    shutil.copytree(digits_run[0] / "checkpoints" / "mlp_true", beside)
    metrics, manifest = run_quick("layer_criticality", tmp_path / "layer_criticality")  # digits, the default
    assert metrics["checkpoints"] == str(beside) and metrics["model"] == "mlp"
    assert not any("trained its own" in note for note in manifest["notes"])
    headline = manifest["headline"]
    assert headline["value"] == pytest.approx(np.mean(metrics["rerandom"])) and headline["noise"] > 0


@pytest.mark.slow
def test_layer_criticality_alone_trains_its_own_resnet_and_maps_21_layers(tmp_path):
    metrics, manifest = run_quick("layer_criticality", tmp_path / "layer_criticality", "--dataset", "shapes")
    assert len(metrics["layers"]) == 21 and np.array(metrics["reinit"]).shape[0] == 21
    assert np.array(metrics["rerandom"]).shape[0] == 21
    assert any("trained its own" in note for note in manifest["notes"])
    assert {f["file"] for f in manifest["figures"]} == {"reinit_heatmaps.png", "critical_layers.png"}


def test_missing_or_tampered_checkpoints_are_one_line(tmp_path):
    message = assert_refused(tmp_path, "layer_criticality", "--checkpoints", str(tmp_path / "nowhere"))
    assert "run memorization" in message.replace("`python -m assignments run memorization`", "run memorization")
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "epoch_0000.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as stop:
        main(["run", "layer_criticality", "--quick", "--checkpoints", str(folder), "--out", str(tmp_path / "o")])
    assert "epoch_0000.pt" in str(stop.value.code) and "\n" not in str(stop.value.code)
    assert_refused(tmp_path, "memorization", "--settings", "true,blur")
