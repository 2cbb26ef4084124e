"""The cnn_vs_mlp and cifar_cnn drivers: a --quick run of each writes its declared
figures, tables and metrics, with accuracies clearly above chance."""
import numpy as np
import pytest

from driver_run import run_quick


def _run(name, tmp_path, *extra):
    out = tmp_path / name
    return (out, *run_quick(name, out, *extra))


def test_cnn_vs_mlp_quick(tmp_path):
    out, metrics, manifest = _run("cnn_vs_mlp", tmp_path)
    files = {f["file"] for f in manifest["figures"]}
    assert files == {"learning_curves.png", "tsne_mlp.png", "tsne_cnn.png"}
    (table,) = [t for t in manifest["tables"] if t["name"] == "comparison"]
    assert [row["model"] for row in table["rows"]] == ["MLP", "CNN"]
    # the CNN shares its weights: far fewer parameters than the MLP
    assert metrics["cnn_parameters"] < metrics["mlp_parameters"] / 3
    for model in ("mlp", "cnn"):
        assert metrics[f"{model}_test_accuracy"] > 0.5, metrics  # chance is 0.1
        assert metrics[f"{model}_feature_knn_accuracy"] > 0.4, metrics
        history = metrics[f"{model}_history"]
        assert len(history["loss"]) == metrics["epochs"]
        assert history["loss"][-1] < history["loss"][0]
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
    (sweep,) = [t for t in manifest["tables"] if t["name"] == "sweep"]
    assert sweep["rows"][0]["factor"] == "base" and len(sweep["rows"]) >= 3
    assert {"factor", "value"} <= set(metrics["best_setting"])
    assert metrics["best_sweep_val_accuracy"] * 100 == max(r["val accuracy (%)"] for r in sweep["rows"])


@pytest.mark.parametrize("name", ["cnn_vs_mlp", "cifar_cnn"])
def test_drivers_declare_the_contract(name):
    from assignments import get

    driver = get(name)
    assert driver.DEFAULT is True
    assert driver.NAME == name and driver.DATASETS[0] in ("digits", "shapes")
    for attr in ("COURSE", "TASK", "SUMMARY", "STATEMENT"):
        assert getattr(driver, attr).strip()


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
