"""The interpretability drivers adversarial and feature_visualization: a --quick run of
each writes its declared figures, tables and metrics; the attack curves behave as attacks
must (eps 0 is the clean accuracy, the largest budget lowers it, PGD is never weaker than
FGSM); every visualised unit's objective rises above its grey start and is judged against
the best test image's; each class is shown by a test image of its own; a ResNet-18 weight
file that does not fit fails before any training; a bad option value stops with one line
before any file is written."""
import json
import re

import pytest

torch = pytest.importorskip("torch")

import minidl.data  # noqa: E402

from assignments.__main__ import main  # noqa: E402
from driver_run import run_quick, torchvision_resnet18_file  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


# ------------------------------------------------------------------ adversarial
@pytest.mark.slow
def test_adversarial_quick(tmp_path):
    metrics, manifest = run_quick("adversarial", tmp_path / "adv")
    assert {f["file"] for f in manifest["figures"]} == {"accuracy_vs_eps.png", "examples.png"}
    assert [t["name"] for t in manifest["tables"]] == ["accuracy_vs_eps"]
    assert metrics["test_accuracy"] > metrics["chance"]
    rows = metrics["by_eps"]
    assert [r["eps_level"] for r in rows] == metrics["eps_levels"] == [0, 0.25, 2, 8, 32]
    assert [r["eps"] for r in rows] == pytest.approx([level / 255 for level in metrics["eps_levels"]])
    clean, count = metrics["clean_accuracy"], metrics["attacked_images"]
    for attack in ("fgsm", "pgd"):
        accuracy = [r[f"{attack}_accuracy"] for r in rows]
        assert accuracy[0] == pytest.approx(clean, abs=0.5 / count)  # eps 0: no attack at all
        assert accuracy[-1] < clean  # the largest budget (32/255) must hurt
        assert all(0 <= a <= 1 for a in accuracy)
    for row in rows:  # PGD is FGSM's first step repeated and projected: never (much) weaker
        assert row["pgd_accuracy"] <= row["fgsm_accuracy"] + 0.02, row
    assert rows[-1]["pgd_targeted_success"] > rows[0]["pgd_targeted_success"] + 0.3  # reaches the wanted class
    assert metrics["checks"]["eps0_equals_clean"] and metrics["checks"]["falls_at_largest_eps"]
    # a quarter of a grey level does not survive saving as 8-bit: those images are the clean ones
    assert rows[1]["pgd_8bit_accuracy"] == pytest.approx(clean, abs=0.5 / count)
    assert rows[-1]["pgd_8bit_accuracy"] < clean and rows[-1]["random_noise_accuracy"] > rows[-1]["pgd_accuracy"]
    assert manifest["headline"]["baseline_label"].startswith("random")


@pytest.mark.parametrize("name, option, value, says", [
    ("adversarial", "--eps", "2,300", "grey level between 0 and 255, got 300"),
    ("adversarial", "--pgd-steps", "0", "at least 1"),
    ("feature_visualization", "--channels", "0", "at least 1"),
    ("feature_visualization", "--weights", "absent.pth", "no such file"),
])
def test_bad_option_value_stops_before_any_file(tmp_path, name, option, value, says):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        main(["run", name, "--quick", "--out", str(out), option, value])
    message = str(stop.value)
    assert "\n" not in message and option in message and value in message and says in message, message
    assert not out.exists()


# ------------------------------------------------------------------ feature_visualization
@pytest.mark.slow
def test_feature_visualization_quick(tmp_path):
    metrics, manifest = run_quick("feature_visualization", tmp_path / "fv")
    layers = ["conv1", "conv2", "conv3"]
    assert {f["file"] for f in manifest["figures"]} == {
        "activation_maps.png", "layer_saliency.png", "featvis_classes.png", "semantic_dictionary.png",
        "neuron_groups.png", *(f"featvis_{layer}.png" for layer in layers)}
    assert {t["name"] for t in manifest["tables"]} == {"recipes", "objective_gains"}
    assert len(metrics["activation_map_layers"]) >= 2
    assert set(metrics["units"]) == {*layers, "classes"}
    assert len(metrics["units"]["classes"]) == 10
    for group, units in metrics["units"].items():
        for unit in units:  # gradient ascent must raise every objective above its grey start
            assert unit["gain"] > 0, (group, unit)
            assert unit["optimised"] == pytest.approx(unit["start"] + unit["gain"])
            # each optimised value is judged against the best test image's, and that one is the best
            assert unit["beats"] == (unit["optimised"] > unit["best_test_image"]), (group, unit)
            assert unit["shown_test_value"] <= unit["best_test_image"] + 1e-5, (group, unit)
    every_unit = [u for units in metrics["units"].values() for u in units]
    assert metrics["units_beating_best_test_image"] == sum(u["beats"] for u in every_unit)
    assert metrics["share_beating_best_test_image"] == pytest.approx(
        metrics["units_beating_best_test_image"] / len(every_unit))
    headline = manifest["headline"]
    assert headline["value"] == pytest.approx(metrics["share_beating_best_test_image"])
    assert headline["baseline"] == pytest.approx(metrics["share_of_starts_beating_best_test_image"])
    # each caption's count of units beating the best test image is the metrics' count
    captions = {f["file"]: f["caption"] for f in manifest["figures"]}
    for group in layers + ["classes"]:
        count = re.search(r"for (\d+) of (\d+) (channels|classes)", captions[f"featvis_{group}.png"])
        assert count, captions[f"featvis_{group}.png"]
        units = metrics["units"][group]
        assert (int(count[1]), int(count[2])) == (sum(u["beats"] for u in units), len(units))
    # the test image shown for each class is one of that class, a different one for every class
    config = json.loads((tmp_path / "fv" / "config.json").read_text())
    test = minidl.data.load_dataset("shapes", seed=config["seed"], n=config["settings"]["shapes_images"]).test
    shown = [u["shown_test_index"] for u in metrics["units"]["classes"]]
    assert [int(test.y[i]) for i in shown] == list(range(10))
    assert len(set(shown)) == 10
    lucid, _, naive = metrics["recipes"]  # regularised images keep more of their logit under jitter
    assert lucid["robust_share"] > naive["robust_share"]
    # the building blocks: a semantic dictionary of distinct channels, strongest first; neuron groups
    for entry in metrics["semantic_dictionary"]:
        assert len(set(entry["channels"])) == len(entry["channels"]) == 3
        assert entry["activations"] == sorted(entry["activations"], reverse=True) and entry["activations"][0] > 0
    groups = metrics["neuron_groups"]
    assert len(groups["attribution"]) == 3 and len(groups["attribution"][0]) == 10
    assert groups["best_error"] - 1e-6 <= groups["error"] < 1
    assert set(metrics["map_share_on_object"]) >= {"input: |gradient|", "block3: gradient x activation"}
    assert any("No --weights" in note for note in manifest["notes"])


def test_feature_visualization_wrong_weights_fail_before_training(tmp_path):
    out = tmp_path / "fv"
    wrong = torchvision_resnet18_file(tmp_path / "wrong.pth", **{"fc.weight": None})
    with pytest.raises(SystemExit, match=r"--weights: .*do not fit ResNet.*missing keys: fc\.weight"):
        main(["run", "feature_visualization", "--quick", "--weights", str(wrong), "--out", str(out)])
    cifar_stem = torchvision_resnet18_file(tmp_path / "cifar.pth", **{"conv1.weight": torch.zeros(64, 3, 3, 3)})
    with pytest.raises(SystemExit, match=r"shape mismatches: conv1\.weight"):
        main(["run", "feature_visualization", "--quick", "--weights", str(cifar_stem), "--out", str(out)])
    assert not (out / "model.pt").exists() and not (out / "metrics.json").exists()  # nothing trained


@pytest.mark.slow
def test_feature_visualization_with_resnet_weights(tmp_path):
    """A (randomly initialised) torchvision-format file: the ResNet-18 part runs and its
    objectives rise too."""
    weights = torchvision_resnet18_file(tmp_path / "resnet18.pth")
    metrics, manifest = run_quick("feature_visualization", tmp_path / "fv", "--weights", str(weights),
                             "--channels", "2")
    assert "featvis_resnet18.png" in {f["file"] for f in manifest["figures"]}
    resnet = metrics["resnet18"]
    assert set(resnet["units"]) == {"layer2", "layer3", "layer4", "classes"}
    assert resnet["min_gain"] > 0
    assert not any("No --weights" in note for note in manifest["notes"])


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["adversarial", "feature_visualization"])
def test_runs_on_cuda(tmp_path, name):
    """On a GPU the model trains, is attacked and visualised there: every batch the driver
    builds must reach it through ctx.to_device (CPU tensors fed to a CUDA model fail)."""
    metrics, _ = run_quick(name, tmp_path / name, "--device", "cuda")
    assert metrics["test_accuracy"] > metrics["chance"]
