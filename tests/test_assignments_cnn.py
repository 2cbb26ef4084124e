"""The cnn_vs_mlp and cifar_cnn drivers: a --quick run of each writes its declared
figures, tables and metrics, with accuracies clearly above chance; a bad option stops
before anything is written. And every driver declares the protocol of runner.py."""
import argparse
import importlib
import json

import numpy as np
import pytest

import matplotlib.pyplot as plt
import minidl as md

import assignments
from assignments.__main__ import main
from assignments.report import unsupported_numbers
from assignments.runner import EMBEDDED, PROFILE_NAMES, TORCH_SETTINGS, parser_for, settings
from driver_run import assert_refused, history_rows, run_quick


def _run(name, tmp_path, *extra):
    out = tmp_path / name
    return (out, *run_quick(name, out, *extra))


@pytest.mark.slow
def test_cnn_vs_mlp_quick(tmp_path):
    out, metrics, manifest = _run("cnn_vs_mlp", tmp_path)
    files = {f["file"] for f in manifest["figures"]}
    assert files == {"accuracy_vs_parameters.png", "learning_curves.png", "tsne_mlp.png", "tsne_cnn.png"}
    (table,) = [t for t in manifest["tables"] if t["name"] == "comparison"]
    assert [row["model"] for row in table["rows"]] == ["MLP", "CNN"]
    histories = history_rows(out)
    for model in ("mlp", "cnn"):
        assert metrics[f"{model}_test_accuracy"] > 0.5, metrics  # chance is 0.1
        assert metrics[f"{model}_feature_knn_accuracy"] > 0.4, metrics
        history = histories[model]
        assert len(history) == metrics["epochs"]
        assert float(history[-1]["loss"]) < float(history[0]["loss"])
        assert float(history[-1]["val_accuracy"]) == metrics[f"{model}_val_accuracy"]
        # the t-SNE embeds the penultimate layer: the hidden layer both models end in
        assert metrics[f"{model}_tsne_input_size"] == metrics[f"{model}_feature_size"] == 64
    # CNN against MLP on the same 360 digits test images: the difference is the images only the
    # CNN gets right less those only the MLP gets right, and its noise is the paired standard
    # error of the per-image differences (+1, -1 on those images, 0 elsewhere)
    n, cnn_only, mlp_only = 360, metrics["only_cnn_correct"], metrics["only_mlp_correct"]
    gap = metrics["cnn_test_accuracy"] - metrics["mlp_test_accuracy"]
    assert gap == pytest.approx((cnn_only - mlp_only) / n)
    headline = manifest["headline"]
    assert headline["value"] == metrics["cnn_test_accuracy"] and headline["baseline"] == metrics["mlp_test_accuracy"]
    assert headline["noise"] == pytest.approx(np.sqrt((cnn_only + mlp_only - n * gap ** 2) / (n - 1) / n))
    assert headline["verdict"] == ("does not beat the baseline" if gap <= 0 else
                                   "within noise" if gap <= 2 * headline["noise"] else "beats the baseline")
    assert any("standard error of the difference" in note for note in manifest["notes"])
    # accuracy against parameters: several widths of each model, more parameters with each width
    curve = metrics["accuracy_vs_parameters"]
    assert set(curve) == {"MLP", "CNN"}
    for points in curve.values():
        widths, parameters = [p["width"] for p in points], [p["parameters"] for p in points]
        assert len(points) >= 2 and widths == sorted(widths)
        assert all(a < b for a, b in zip(parameters, parameters[1:])), parameters
        for p in points:
            assert p["test_se"] == pytest.approx(np.sqrt(p["test_accuracy"] * (1 - p["test_accuracy"]) / 360))
    assert [p["parameters"] for p in curve["MLP"]] == [784 * w + w + w * 64 + 64 + 650 for w in (32, 128)]


def test_cnn_vs_mlp_the_cnns_penultimate_layer_is_its_hidden_layer_not_the_conv_maps():
    from assignments import cnn_vs_mlp

    md.manual_seed(0)
    x = md.tensor(np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32))
    for name in ("MLP", "CNN"):
        net = cnn_vs_mlp.model(name, 4, (1, 28, 28), 10)
        assert net.body(x).shape == (3, cnn_vs_mlp.HIDDEN) and net(x).shape == (3, 10)
    # the CNN's conv maps (8 channels of 7x7 after two poolings) feed its hidden layer
    assert net.body[0](x).shape == (3, 8 * 7 * 7)


@pytest.mark.slow
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
    assert len(history_rows(out)["cnn"]) == metrics["epochs"]
    (sweep,) = [t for t in manifest["tables"] if t["name"] == "sweep"]
    rows = metrics["sweep"]  # the table shows a selection of their keys
    assert [row["setting"] for row in sweep["rows"]] == [row["setting"] for row in rows]
    assert [(row["factor"], row["value"]) for row in rows] == [("base", None), ("depth", 2), ("depth", 4)]
    base = rows[0]
    for row in rows[1:]:  # conv stages, the channels doubling from the base's first
        assert len(row["widths"]) == row["value"] and row["widths"][0] == base["widths"][0]
        assert row["lr"] == base["lr"] and row["setting"] == f"depth={row['value']}"
    assert rows[2]["parameters"] > base["parameters"]
    # every setting trains the same epochs on the same images, shrunk to 16x16 (a convergence budget)
    epochs = json.loads((out / "config.json").read_text())["settings"]["sweep_epochs"]
    assert metrics["sweep_epochs"] == epochs and metrics["sweep_image_shape"] == [3, 16, 16]
    assert metrics["sweep_train_images"] == 600
    histories = history_rows(out)
    n_val = sum(metrics["class_counts"]["validation"])
    for row in rows:
        curve = [float(r["val_accuracy"]) for r in histories["sweep_" + row["setting"].replace("=", "_")]]
        assert len(curve) == epochs and row["val_accuracy"] == pytest.approx(curve[-1])
        # its change over the last epoch and over the last quarter of the epochs: the plateau
        assert row["last_epoch_gain"] == pytest.approx(curve[-1] - curve[-2])
        assert row["late_gain"] == pytest.approx(curve[-1] - curve[-1 - epochs // 4])
        acc = row["val_accuracy"]
        assert row["val_se"] == pytest.approx(np.sqrt(acc * (1 - acc) / n_val))
    for row in rows[1:]:  # its difference from the base, against the binomial noise of two accuracies
        assert row["vs_base"] == pytest.approx(row["val_accuracy"] - base["val_accuracy"])
        assert row["diff_se"] == pytest.approx(np.hypot(row["val_se"], base["val_se"]))
        assert row["beyond_noise"] == (abs(row["vs_base"]) > 2 * row["diff_se"])
    assert {"factor", "value"} <= set(metrics["best_setting"])
    assert metrics["best_sweep_val_accuracy"] == max(row["val_accuracy"] for row in rows)
    # the confusion matrix counts images: its rows sum to the test set's class counts
    assert cm.sum(axis=1).tolist() == metrics["class_counts"]["test"]
    headline = manifest["headline"]
    assert headline["value"] == metrics["test_accuracy"] and headline["baseline"] == 0.1
    n_test = sum(metrics["class_counts"]["test"])
    acc = metrics["test_accuracy"]
    assert headline["noise"] == pytest.approx(np.sqrt(acc * (1 - acc) / n_test))
    val = [float(r["val_accuracy"]) for r in histories["cnn"]]
    assert metrics["late_val_gain"] == pytest.approx(val[-1] - val[-2])  # 4 epochs: a quarter is one
    assert unsupported_numbers(out) == []  # every number a caption or note quotes was measured


@pytest.mark.slow
def test_cifar_cnn_full_sweep_reuses_the_main_model_as_its_base(tmp_path):
    """--profile full gives every setting the main model's budget: the main model's run
    is then the base setting, not trained a second time."""
    replay = tmp_path / "config.json"  # full, on a tiny budget
    replay.write_text(json.dumps({"driver": "cifar_cnn", "profile": "full", "settings": {
        "images": 600, "train_images": 400, "epochs": 2, "sweep": ["width"]}}))
    out = tmp_path / "out"
    assert main(["run", "cifar_cnn", "--config", str(replay), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    histories = history_rows(out)
    rows = metrics["sweep"]
    assert [row["setting"] for row in rows] == ["base", "width=0.5", "width=1.5"]
    assert [row["widths"] for row in rows] == [[8, 16, 32], [4, 8, 16], [12, 24, 48]]
    assert metrics["sweep_image_shape"] == [3, 32, 32] and metrics["sweep_train_images"] == 400
    assert histories["sweep_base"] == histories["cnn"]  # every column but the run's name
    assert rows[0]["seconds"] == metrics["train_seconds"]
    assert rows[0]["val_accuracy"] == metrics["final_val_accuracy"]
    assert all(len(histories["sweep_" + row["setting"].replace("=", "_")]) == 2 for row in rows)


def test_cifar_cnn_pool_averages_blocks():
    from assignments.cifar_cnn import pool

    x = np.arange(2 * 1 * 4 * 4, dtype=np.float32).reshape(2, 1, 4, 4)
    shrunk = pool(x, 2)
    assert shrunk.shape == (2, 1, 2, 2) and shrunk.dtype == np.float32
    assert shrunk[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]  # (0 + 1 + 4 + 5) / 4, ...
    assert pool(x, 1) is x


def test_confusion_matrix_cells_hold_counts_and_row_shares():
    """The one confusion-matrix plot of every driver: each non-empty cell shows its count
    and its share of the row, the colour is that share."""
    from assignments import plots

    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 5]])
    fig = plots.confusion_matrix(cm, ["a", "b", "c"], "test")
    ax = fig.axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(["8\n80%", "2\n20%", "1\n25%", "3\n75%", "5\n100%"])
    np.testing.assert_allclose(ax.images[0].get_array(), [[80, 20, 0], [25, 75, 0], [0, 0, 100]])
    plt.close(fig)


@pytest.mark.parametrize("name, option, value", [("cnn_vs_mlp", "--lr", "-1"),
                                                 ("cnn_vs_mlp", "--batch-size", "0"),
                                                 ("cifar_cnn", "--sweep", "lr,height"),
                                                 ("cifar_cnn", "--epochs", "0")])
def test_a_bad_option_stops_before_any_file(tmp_path, name, option, value):
    assert_refused(tmp_path, name, option, value)



@pytest.mark.parametrize("pool", [3, 4])
def test_cifar_cnn_refuses_a_replayed_sweep_pool_it_cannot_use(tmp_path, pool):
    """A hand-edited config.json: 3 does not divide 32 pixels, 4 leaves depth 4 nothing to pool."""
    (tmp_path / "config.json").write_text(json.dumps({"driver": "cifar_cnn", "settings": {"sweep_pool": pool}}))
    with pytest.raises(SystemExit) as stop:
        main(["run", "cifar_cnn", "--config", str(tmp_path / "config.json"), "--out", str(tmp_path / "out")])
    assert f"sweep_pool {pool}" in str(stop.value.code) and not (tmp_path / "out").exists()

def test_cifar_cnn_sweep_options_set_the_factors():
    driver = assignments.get("cifar_cnn")

    def config(*argv):
        return settings(driver, vars(parser_for(driver).parse_args(list(argv))))[1]

    assert config("--quick").sweep == ("depth",)
    assert config().sweep == ("depth", "width") and config("--profile", "full").sweep_epochs is None
    assert config("--sweep", "width,lr").sweep == ("width", "lr")
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
