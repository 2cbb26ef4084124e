"""The regression, filters, mlp_numpy and regularization drivers: a --quick run of each
writes its declared figures and sane metrics; and the facts each driver stands on
(filter responses equal scipy's, explicit backprop equals autograd, exact penalties)
checked directly."""
import numpy as np
import pytest
from scipy import ndimage, signal

import minidl as md
import minidl.manual  # noqa: F401
import minidl.models  # noqa: F401
from assignments.__main__ import main
from driver_run import run_quick


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
            cache[name] = _run(name, tmp_path_factory.mktemp(name))
        return cache[name]
    return get


def _figures(manifest):
    return {f["file"] for f in manifest["figures"]}


# ----------------------------------------------------------------- regression
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


# -------------------------------------------------------------------- filters
def test_filters_quick(quick):
    metrics, manifest = quick("filters")
    assert _figures(manifest) == {"responses.png", "kernels.png"}
    assert set(metrics["filters"]) == {"box blur", "gaussian blur", "sharpen", "Sobel x",
                                       "Sobel y", "Laplacian"}
    assert metrics["max_abs_diff_vs_scipy"] < 1e-5
    for name in ("Sobel x", "Sobel y", "Laplacian"):  # zero-sum kernels: signed responses
        f = metrics["filters"][name]
        assert abs(f["kernel_sum"]) < 1e-12 and f["min_response"] < 0 < f["max_response"]


def test_filter_responses_equal_scipy():
    from assignments import filters

    rng = np.random.default_rng(0)
    images = rng.random((3, 17, 20)).astype(np.float32)  # not square, not a digit
    for name, (kernel, _) in filters.KERNELS.items():
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
    assert (filters.apply_filter(ramp, filters.KERNELS["Sobel x"][0])[0, :, 1:-1] > 0).all()


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


def test_mlp_numpy_quick(quick):
    metrics, manifest = quick("mlp_numpy")
    assert _figures(manifest) == {"curves.png", "confusion_matrix.png", "per_class_scores.png"}
    assert metrics["seed"] == 42 and metrics["hidden"] == [128] and metrics["lr"] == 0.1
    assert metrics["manual_vs_autograd_max_grad_diff"] < 1e-10
    models = metrics["models"]
    assert set(models) == {"numpy", "autograd", "torch", "torch_bn"}
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
    assert len(table["rows"]) == 4


# --------------------------------------------------------------- regularization
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
    accuracies = metrics["dropout"]["val_accuracy"]
    assert len(accuracies) == 9 and min(accuracies.values()) > 0.6
    (penalties, dropout) = manifest["tables"]
    assert [r["dropout on"] for r in dropout["rows"]] == ["layer 1", "layer 2", "both"]


def test_threads_option_sets_every_pool_and_restores_it():
    import torch
    from threadpoolctl import threadpool_info

    from assignments.runner import cpu_threads
    from minidl import kernels

    def blas():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    before = (kernels.num_threads(), torch.get_num_threads(), blas())
    count = max(before[0], before[1], *before[2]) + 1  # differs from every current setting
    with cpu_threads(count):
        assert kernels.num_threads() == count and torch.get_num_threads() == count
        assert set(blas()) == {count}
    assert (kernels.num_threads(), torch.get_num_threads(), blas()) == before
    with pytest.raises(SystemExit, match="--threads must be at least 1, got 0"):
        with cpu_threads(0):
            pass


def test_run_name_help_shows_that_drivers_options(capsys):
    assert main(["run", "cifar_cnn", "--help"]) == 0
    text = capsys.readouterr().out
    assert "python -m assignments run cifar_cnn" in text
    assert "--no-sweep" in text and "--threads" in text
