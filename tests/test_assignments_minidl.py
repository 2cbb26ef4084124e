"""The regression, filters, mlp_numpy and regularization drivers: a --quick run of each
writes its declared figures and sane metrics; and the facts each driver stands on
(filter responses equal scipy's, explicit backprop equals autograd, exact penalties)
checked directly; a bad option stops before any file is written."""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, signal

import minidl as md
import minidl.manual  # noqa: F401
import minidl.models  # noqa: F401
from assignments.__main__ import main
from driver_run import BLOCK_TORCH, assert_refused, run_quick


def _run(name, out, *extra):
    metrics, manifest = run_quick(name, out, *extra, min_png_bytes=20_000)
    assert manifest["notes"]
    return metrics, manifest


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """Each driver's --quick run, once per test module."""
    cache = {}

    def get(name):
        if name not in cache:
            get.folders[name] = tmp_path_factory.mktemp(name)
            cache[name] = _run(name, get.folders[name])
        return cache[name]
    get.folders = {}  # each run's output folder
    return get


def _figures(manifest):
    return {f["file"] for f in manifest["figures"]}


@pytest.mark.parametrize("name, option, value", [("filters", "--images", "0"),
                                                  ("mlp_numpy", "--hidden", "128,x"),
                                                  ("mlp_numpy", "--test-size", "-5"),
                                                  ("regularization", "--seeds", "0"),
                                                  ("regularization", "--dataset", "cifar10")])
def test_a_bad_option_stops_with_one_line_before_any_file(tmp_path, name, option, value):
    assert_refused(tmp_path, name, option, value, "--quick")


# ----------------------------------------------------------------- regression
@pytest.mark.slow
def test_regression_quick(quick):
    metrics, manifest = quick("regression")
    assert _figures(manifest) == {"fits.png", "training_curves.png"}
    variants = metrics["variants"]
    assert set(variants) == {"none", "early_stopping", "weight_decay", "dropout"}
    # every other point held out: 6 training points, 5 held-out ones
    assert np.allclose(metrics["train_x"], [0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert np.allclose(metrics["held_out_x"], [0.1, 0.3, 0.5, 0.7, 0.9])
    # the unregularised network memorises its training points ...
    assert variants["none"]["train_mse"] < 1e-4
    # ... and at the fixed seed every regulariser generalises better
    for name in ("early_stopping", "weight_decay", "dropout"):
        assert variants[name]["held_out_mse"] < variants["none"]["held_out_mse"], (name, variants)
        assert variants[name]["train_mse"] > variants["none"]["train_mse"]
    best = variants["early_stopping"]["best_epoch"]
    assert 0 < best < metrics["epochs"] - 1  # it stopped on the way, not at either end
    headline = manifest["headline"]  # weight decay against no regularisation, lower is better
    assert headline["value"] == variants["weight_decay"]["held_out_mse_mean"]
    assert headline["baseline"] == variants["none"]["held_out_mse_mean"]
    assert headline["verdict"] == "beats the baseline" and not headline["higher_is_better"]


# -------------------------------------------------------------------- filters
@pytest.mark.slow
def test_filters_quick(quick):
    metrics, manifest = quick("filters")
    assert _figures(manifest) == {"responses.png", "kernels.png"}
    assert set(metrics["filters"]) == {"box_blur", "gaussian_blur", "sharpen", "sobel_x",
                                       "sobel_y", "laplacian"}
    assert metrics["images"] == 3  # the quick profile's
    assert metrics["max_abs_diff_vs_scipy"] < 1e-5
    for name in ("sobel_x", "sobel_y", "laplacian"):  # zero-sum kernels: signed responses
        f = metrics["filters"][name]
        assert abs(f["kernel_sum"]) < 1e-12 and f["min_response"] < 0 < f["max_response"]
    # CPU time after a warm-up call: the first filter's no longer holds numba's compilation (2 s)
    assert all(0 <= f["conv2d_cpu_ms"] < 50 for f in metrics["filters"].values()), metrics["filters"]
    assert manifest["headline"]["value"] == metrics["max_abs_diff_vs_scipy"]
    assert manifest["headline"]["verdict"] == "beats the baseline"


def test_filter_responses_equal_scipy():
    from assignments import filters

    rng = np.random.default_rng(0)
    images = rng.random((3, 17, 20)).astype(np.float32)  # not square, not a digit
    for name, (_, kernel, _) in filters.KERNELS.items():
        ours = filters.apply_filter(images, kernel)
        assert ours.shape == images.shape
        r = kernel.shape[0] // 2
        for image, response in zip(images.astype(np.float64), ours):
            by_ndimage = ndimage.correlate(image, kernel, mode="mirror")
            padded = np.pad(image, r, mode="reflect")
            by_signal = signal.correlate2d(padded, kernel, mode="valid")
            np.testing.assert_allclose(response, by_ndimage, atol=2e-6, err_msg=name)
            np.testing.assert_allclose(response, by_signal, atol=2e-6, err_msg=name)
    # a cross-correlation, not a convolution: Sobel x is positive where brightness rises to the right
    ramp = np.tile(np.linspace(0, 1, 9, dtype=np.float32), (9, 1))[None]
    assert (filters.apply_filter(ramp, filters.KERNELS["sobel_x"].kernel)[0, :, 1:-1] > 0).all()


# ------------------------------------------------------------------- mlp_numpy
def test_manual_and_autograd_mlp_same_gradients():
    from assignments.mlp_numpy import manual_state_dict

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(16, 12)), rng.integers(0, 5, 16)
    md.manual_seed(3)
    manual = md.manual.MLP(12, [20, 8], 5)
    model = md.models.MLP(12, [20, 8], 5, activation="elu").double()
    model.load_state_dict(manual_state_dict(manual, model))

    probs = manual.forward(x)
    loss_module = md.manual.CrossEntropyModule()
    loss = loss_module.forward(probs, y)
    manual.backward(loss_module.backward(probs, y))

    logits = model(md.tensor(x))
    auto_loss = md.nn.CrossEntropyLoss()(logits, md.tensor(y))
    auto_loss.backward()
    assert auto_loss.item() == pytest.approx(loss, rel=1e-12)
    np.testing.assert_allclose(md.nn.functional.softmax(logits, dim=1).numpy(), probs, atol=1e-12)
    params = dict(model.named_parameters())
    names = ["body.1", "body.3", "head"]
    for name, layer in zip(names, manual.linear_modules, strict=True):
        np.testing.assert_allclose(params[f"{name}.weight"].grad, layer.grads["weight"], atol=1e-12)
        np.testing.assert_allclose(params[f"{name}.bias"].grad, layer.grads["bias"].ravel(), atol=1e-12)


@pytest.mark.slow
def test_mlp_numpy_quick(quick):
    metrics, manifest = quick("mlp_numpy")
    assert _figures(manifest) == {"curves.png", "confusion_matrix.png", "per_class_scores.png"}
    assert metrics["seed"] == 42 and metrics["hidden"] == [128] and metrics["lr"] == 0.1
    assert metrics["manual_vs_autograd_max_grad_diff"] < 1e-10
    models = metrics["models"]
    twins = {"torch", "torch_bn"} if importlib.util.find_spec("torch") else set()
    assert set(models) == {"numpy", "autograd"} | twins
    for key, m in models.items():
        assert m["accuracy"] > 0.6, (key, m["accuracy"])  # chance is 0.1
        cm = np.array(m["confusion_matrix"])
        assert cm.shape == (10, 10) and np.trace(cm) / cm.sum() == pytest.approx(m["accuracy"])
        for k in ("precision", "recall", "f_beta_0.1", "f_beta_1", "f_beta_10"):
            assert 0 < m[k] <= 1, (key, k)
        assert len(m["history"]["val_accuracy"]) == metrics["epochs"]
    # same start, same batches: the NumPy and autograd MLPs train alike
    np.testing.assert_allclose(models["numpy"]["history"]["loss"],
                               models["autograd"]["history"]["loss"], rtol=1e-4)
    (table,) = manifest["tables"]
    assert len(table["rows"]) == len(models)
    history = (quick.folders["mlp_numpy"] / "history.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in history[1:]} == {"numpy", "autograd"} | twins  # one run each
    # it says that it ran on digits, not on the statement's CIFAR-10, and judges itself against chance
    assert any(note.startswith("Offline data: the embedded digits") for note in manifest["notes"])
    headline, acc = manifest["headline"], models["numpy"]["accuracy"]
    assert (headline["value"], headline["baseline"]) == (acc, 0.1)
    assert headline["noise"] == pytest.approx(np.sqrt(acc * (1 - acc) / 256))  # the quick profile's test images


def test_mlp_numpy_runs_without_torch_and_says_it_skipped_the_twins(tmp_path):
    code = BLOCK_TORCH + f"""
from assignments.__main__ import main
assert main(["run", "mlp_numpy", "--quick", "--epochs", "1", "--out", {str(tmp_path)!r}]) == 0
assert "torch" not in sys.modules
"""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["models"]) == {"numpy", "autograd"}
    notes = json.loads((tmp_path / "manifest.json").read_text())["notes"]
    assert any("twins were skipped" in note for note in notes)


# --------------------------------------------------------------- regularization
@pytest.mark.slow
def test_regularization_quick(quick):
    metrics, manifest = quick("regularization")
    assert _figures(manifest) == {"penalties.png", "weight_histograms.png", "dropout_curves.png"}
    exercise = metrics["exercise"]
    w = np.array([0.2, 0.5, 5, 1, 0.25, 0.75])
    assert exercise["l1"]["value"] == pytest.approx(7.7, abs=1e-12)
    assert exercise["l2"]["value"] == pytest.approx(26.915, abs=1e-12)  # sum of w²
    np.testing.assert_array_equal(exercise["l1"]["gradient"], np.sign(w))
    np.testing.assert_allclose(exercise["l2"]["gradient"], 2 * w)
    small = {k: v["fraction_small"] for k, v in metrics["penalties"].items()}
    assert small["l1"] > 0.2 and small["l1"] > 5 * max(small["l2"], small["none"]), small
    for v in metrics["penalties"].values():
        assert v["val_accuracy"] > 0.6  # chance is 0.1
    runs = metrics["dropout"]["runs"]
    assert {(r["placement"], r["rate"]) for r in runs} == {
        (p, rate) for p in ("layer_1", "layer_2", "both") for rate in (0.1, 0.3, 0.5)}
    assert len(runs) == 9 and min(r["val_accuracy"] for r in runs) > 0.6
    (penalties, dropout) = manifest["tables"]
    assert [(r["placement"], r["rate"]) for r in dropout["rows"]] == [("no dropout", 0.0)] + [
        (p, rate) for p in ("hidden layer 1", "hidden layer 2", "both hidden layers") for rate in (0.1, 0.3, 0.5)]
    assert penalties["rows"][-1] == {"weight": "sum", "l1_term": pytest.approx(7.7),
                                     "l2_term": pytest.approx(26.915)}


@pytest.mark.slow
def test_regularization_judges_each_dropout_gain_against_the_seed_noise(quick):
    """Mean ± standard error over the seeds, from the per-seed curves of history.csv; a gain
    is flagged as beyond the noise only when it exceeds twice the standard error of the
    difference from no dropout."""
    metrics, manifest = quick("regularization")
    final = {}  # run -> the last epoch's validation accuracy
    for line in (quick.folders["regularization"] / "history.csv").read_text().splitlines()[1:]:
        run = line.split(",")[0]
        if run.startswith("dropout_"):
            final[run] = float(line.split(",")[header_index(quick, "val_accuracy")])

    def mean_se(placement, rate):
        values = [v for run, v in final.items() if run.startswith(f"dropout_{placement}_p{rate:g}_seed")]
        assert len(values) == len(metrics["dropout"]["seeds"]) >= 2
        return np.mean(values), np.std(values, ddof=1) / np.sqrt(len(values))

    base, base_se = mean_se("none", 0)
    rows = manifest["tables"][1]["rows"]
    assert rows[0]["val_accuracy"] == pytest.approx(base) and rows[0]["val_accuracy_se"] == pytest.approx(base_se)
    names = {"hidden layer 1": "layer_1", "hidden layer 2": "layer_2", "both hidden layers": "both"}
    for row in rows[1:]:
        mean, se = mean_se(names[row["placement"]], row["rate"])
        assert row["val_accuracy"] == pytest.approx(mean) and row["val_accuracy_se"] == pytest.approx(se)
        assert row["gain"] == pytest.approx(mean - base)
        assert row["beyond_noise"] == ("yes" if abs(mean - base) > 2 * np.hypot(se, base_se) else "no")
    headline = manifest["headline"]
    assert headline["baseline"] == pytest.approx(base) and headline["baseline_label"] == "no dropout"
    assert headline["value"] == pytest.approx(max(r["val_accuracy"] for r in rows[1:]))


def header_index(quick, column):
    header = (quick.folders["regularization"] / "history.csv").read_text().splitlines()[0].split(",")
    return header.index(column)


def test_cpu_threads_sets_every_pool_and_restores_it():
    torch = pytest.importorskip("torch")
    from threadpoolctl import threadpool_info

    from assignments.runner import cpu_threads
    from minidl import threads

    def blas():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    def now():
        return threads.num_threads(), torch.get_num_threads(), blas()

    before = now()
    count = max(before[0], before[1], *before[2]) + 1  # differs from every current setting
    with cpu_threads(count):
        assert threads.num_threads() == count and torch.get_num_threads() == count
        assert set(blas()) == {count}
    assert now() == before
    with cpu_threads(None):  # no policy: everything as it was
        assert now() == before


def test_thread_policy_and_a_bad_threads_option(tmp_path, monkeypatch):
    from assignments import filters, regression
    from assignments.runner import thread_count

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert thread_count(regression, None) == 1  # THREADS = "small" on two cores: one thread
    assert thread_count(regression, 3) == 3  # --threads wins
    assert thread_count(filters, None) is None  # no policy: each library's own
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert thread_count(regression, None) is None
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match="--threads: must be at least 1, got 0"):
        main(["run", "regression", "--threads", "0", "--out", str(out)])
    assert not out.exists()


def test_run_name_help_shows_that_drivers_options_and_profiles(capsys):
    from assignments import cifar_cnn

    with pytest.raises(SystemExit) as done:  # argparse's --help ends the program, successfully
        main(["run", "cifar_cnn", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as one line: argparse wraps the help
    assert "python -m assignments run cifar_cnn" in text and "--threads" in text
    own = argparse.ArgumentParser(add_help=False)
    cifar_cnn.add_arguments(own)
    for action in own._actions:
        assert action.option_strings[0] in text
    # the profiles' values, shown in the option's help (up to the next option)
    shown = text.split("--epochs EPOCHS ", 1)[1].split(" --", 1)[0]
    default, quick = cifar_cnn.PROFILES["default"]["epochs"], cifar_cnn.PROFILES["quick"].get("epochs")
    assert f"[default: {default}" + (f"; quick: {quick}" if quick else "") in shown, shown
