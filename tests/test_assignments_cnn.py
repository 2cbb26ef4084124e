"""The cnn_vs_mlp and cifar_cnn drivers: a --quick run of each writes its declared
figures, tables and metrics, with accuracies clearly above chance; a bad option stops
before anything is written. And every driver declares the protocol of runner.py."""
import argparse
import csv
import importlib

import numpy as np
import pytest

import assignments
from assignments.__main__ import main
from assignments.runner import EMBEDDED, PROFILE_NAMES, TORCH_SETTINGS, parser_for, settings
from driver_run import assert_refused, run_quick


def _run(name, tmp_path, *extra):
    out = tmp_path / name
    return (out, *run_quick(name, out, *extra))


def _histories(out):
    """history.csv as {run: [row, ...]}."""
    runs = {}
    with open(out / "history.csv", newline="") as f:
        for row in csv.DictReader(f):
            runs.setdefault(row["run"], []).append(row)
    return runs


def test_cnn_vs_mlp_quick(tmp_path):
    out, metrics, manifest = _run("cnn_vs_mlp", tmp_path)
    files = {f["file"] for f in manifest["figures"]}
    assert files == {"learning_curves.png", "tsne_mlp.png", "tsne_cnn.png"}
    (table,) = [t for t in manifest["tables"] if t["name"] == "comparison"]
    assert [row["model"] for row in table["rows"]] == ["MLP", "CNN"]
    # the CNN shares its weights: far fewer parameters than the MLP
    assert metrics["cnn_parameters"] < metrics["mlp_parameters"] / 3
    histories = _histories(out)
    for model in ("mlp", "cnn"):
        assert metrics[f"{model}_test_accuracy"] > 0.5, metrics  # chance is 0.1
        assert metrics[f"{model}_feature_knn_accuracy"] > 0.4, metrics
        history = histories[model]
        assert len(history) == metrics["epochs"]
        assert float(history[-1]["loss"]) < float(history[0]["loss"])
        assert float(history[-1]["val_accuracy"]) == metrics[f"{model}_val_accuracy"]
    assert manifest["notes"]


def test_cifar_cnn_quick(tmp_path):
    out, metrics, manifest = _run("cifar_cnn", tmp_path)
    files = {f["file"] for f in manifest["figures"]}
    assert files == {"samples.png", "class_distribution.png", "training_curves.png",
                     "confusion_matrix.png", "sweep.png"}
    assert metrics["image_shape"] == [3, 32, 32]
    assert len(metrics["classes"]) == 10
    assert metrics["test_accuracy"] > 0.2, metrics["test_accuracy"]  # chance is 0.1
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (10, 10) and abs(np.trace(cm) / cm.sum() - metrics["test_accuracy"]) < 1e-9
    assert len(metrics["hardest_classes"]) == 3
    assert set(metrics["hardest_classes"]) <= set(metrics["classes"])
    per_class = metrics["per_class_accuracy"]
    assert max(per_class[c] for c in metrics["hardest_classes"]) <= \
        min(v for c, v in per_class.items() if c not in metrics["hardest_classes"])
    assert len(_histories(out)["cnn"]) == metrics["epochs"]
    (sweep,) = [t for t in manifest["tables"] if t["name"] == "sweep"]
    rows = sweep["rows"]
    assert rows[0]["factor"] == "base" and len(rows) >= 3
    assert {row["factor"] for row in rows[1:]} == {"lr", "kernel_size"}  # the quick profile's factors
    for row in rows[1:]:  # one factor away from the base setting: its value is the row's setting
        assert row[row["factor"]] == row["value"]
    assert {"factor", "value"} <= set(metrics["best_setting"])
    assert metrics["best_sweep_val_accuracy"] == max(row["val_accuracy"] for row in rows)


@pytest.mark.parametrize("name, option, value", [("cnn_vs_mlp", "--lr", "-1"),
                                                 ("cnn_vs_mlp", "--batch-size", "0"),
                                                 ("cifar_cnn", "--sweep", "lr,depth"),
                                                 ("cifar_cnn", "--epochs", "0")])
def test_a_bad_option_stops_before_any_file(tmp_path, name, option, value):
    assert_refused(tmp_path, name, option, value)


def test_cifar_cnn_sweep_options_set_the_factors():
    driver = assignments.get("cifar_cnn")

    def config(*argv):
        return settings(driver, vars(parser_for(driver).parse_args(list(argv))))[1]

    assert config("--quick").sweep == ("lr", "kernel_size")
    assert config("--sweep", "widths,lr").sweep == ("widths", "lr")
    assert config("--no-sweep").sweep == ()
    assert config("--dataset", "cifar10").epochs == 6  # its DATASET_SETTINGS
    assert config("--dataset", "cifar10", "--quick").epochs == 4  # the chosen profile wins


@pytest.mark.parametrize("entry", assignments.catalogue(), ids=lambda entry: entry["module"])
def test_drivers_declare_the_contract(entry):
    driver = importlib.import_module(f"assignments.{entry['module']}")
    for attr in ("NAME", "COURSE", "TASK", "SUMMARY", "STATEMENT"):
        assert isinstance(getattr(driver, attr), str) and getattr(driver, attr).strip(), attr
    assert driver.NAME == entry["NAME"]
    assert isinstance(driver.DEFAULT, bool) and driver.DEFAULT == entry["DEFAULT"]
    if driver.NAME in ("cnn_vs_mlp", "cifar_cnn"):
        assert driver.DEFAULT is True
    assert driver.DATASETS and driver.DATASETS[0] in EMBEDDED  # the default runs offline
    assert callable(driver.run)
    assert not hasattr(driver, "experiment"), "run(ctx) is the experiment"
    profiles = driver.PROFILES
    assert {"default", "quick"} <= set(profiles) <= set(PROFILE_NAMES), set(profiles)
    default = profiles["default"]
    for name, profile in profiles.items():  # the others override settings the default holds
        assert set(profile) <= set(default), (name, set(profile) - set(default))
    for dataset, values in getattr(driver, "DATASET_SETTINGS", {}).items():
        assert dataset in driver.DATASETS and set(values) <= set(default), dataset
    if getattr(driver, "TORCH", False):
        assert set(TORCH_SETTINGS) <= set(default), set(TORCH_SETTINGS) - set(default)
    # an option whose value a profile holds has no default of its own
    for action in parser_for(driver)._actions:
        if action.dest in default:
            assert action.default is argparse.SUPPRESS, \
                f"{action.option_strings} has default={action.default!r}"


@pytest.mark.slow
@pytest.mark.parametrize("name, dataset", [("cnn_vs_mlp", "mnist"), ("cifar_cnn", "cifar10")])
def test_quick_runs_on_real_data(tmp_path, shared_data, name, dataset):
    """The real-dataset paths: MNIST (only its test set is shared: the driver splits it)
    and the partial CIFAR-10 folder (data_batch_1 and test_batch)."""
    extra = ["--no-sweep"] if name == "cifar_cnn" else []  # the sweep is tested on shapes
    out, metrics, manifest = _run(name, tmp_path, "--dataset", dataset, "--data-dir", str(shared_data),
                                  *extra)
    assert manifest["dataset"] == dataset
    if name == "cnn_vs_mlp":
        assert any("test set" in note for note in manifest["notes"])  # says how it split MNIST
        assert metrics["cnn_test_accuracy"] > 0.5 and metrics["mlp_test_accuracy"] > 0.5
    else:
        assert metrics["classes"][:2] == ["airplane", "automobile"]
        assert metrics["test_accuracy"] > 0.2
        assert "sweep" not in metrics and "sweep.png" not in {f["file"] for f in manifest["figures"]}
