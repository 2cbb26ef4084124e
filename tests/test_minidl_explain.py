"""minidl.explain agrees with reference_torch.explain on twin models, and is exact
where the right answer is known in closed form."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import minidl as md
import minidl.models  # noqa: F401  (md.models)
from minidl import explain as mx
from reference_torch import explain as tx
from reference_torch import interop

TOL = dict(rtol=1e-5, atol=1e-10)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def twin_cnns(seed=0):
    """A float64 minidl SmallCNN (conv, batch norm, ReLU, max-pool, x2, linear) on 3x8x8
    images with 5 classes, and its torch twin with the same weights. The batch-norm
    running statistics and affine parameters are made non-trivial, so eval mode matters."""
    md.manual_seed(seed)
    model = md.models.SmallCNN((3, 8, 8), num_classes=5, widths=(4, 6), batch_norm=True).double()
    rng = np.random.default_rng(seed)
    for module in model.modules():
        if isinstance(module, md.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean[...] = rng.normal(0, 0.2, n)
            module.running_var[...] = rng.uniform(0.5, 2.0, n)
            module.weight.data[...] = rng.uniform(0.5, 1.5, n)
            module.bias.data[...] = rng.normal(0, 0.2, n)
    twin = interop.from_minidl(model)
    return model, twin


def images(b=4, c=3, h=8, w=8, seed=1):
    return np.random.default_rng(seed).normal(size=(b, c, h, w))


def linear_model(c=3, h=6, w=6, classes=4, seed=0):
    md.manual_seed(seed)
    return md.nn.Sequential(md.nn.Flatten(), md.nn.Linear(c * h * w, classes)).double()


def assert_same(ours, theirs, check_delta=False):
    """Every field of a minidl Attribution equals the torch one's."""
    np.testing.assert_array_equal(ours.target, theirs.target.numpy())
    np.testing.assert_allclose(ours.logits, theirs.logits.numpy(), **TOL)
    assert ours.relevance.shape == tuple(theirs.relevance.shape)
    np.testing.assert_allclose(ours.relevance, theirs.relevance.numpy(), **TOL)
    np.testing.assert_allclose(ours.raw, theirs.raw.numpy(), **TOL)
    if check_delta:
        np.testing.assert_allclose(ours.delta, theirs.delta.numpy(), rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------- agreement with torch
CASES = {
    "saliency_max": ("Saliency", {}),
    "saliency_l2": ("Saliency", {"channel_reduce": "l2"}),
    "input_x_gradient": ("InputXGradient", {"batch_size": 3}),
    "ig_trapezoid": ("IntegratedGradients", {"n_steps": 8, "batch_size": 5}),
    "ig_middle_mean_baseline": ("IntegratedGradients", {"n_steps": 6, "rule": "riemann_middle",
                                                        "baseline": np.array([0.1, -0.2, 0.3])[:, None, None]}),
    "ig_gausslegendre": ("IntegratedGradients", {"n_steps": 5, "rule": "gausslegendre", "batch_size": 7}),
    "gradcam_last_conv": ("GradCAM", {}),
    "gradcam_first_conv_no_relu": ("GradCAM", {"layer": "body.0", "relu": False, "batch_size": 3}),
    "gradcam_after_pool": ("GradCAM", {"layer": "body.3"}),
    "layer_saliency": ("LayerSaliency", {"layer": "body.4", "channel_reduce": "l2"}),
}


@pytest.mark.parametrize("target", [None, 3, [0, 4, 1, 2]], ids=["predicted", "one", "per_image"])
@pytest.mark.parametrize("case", list(CASES))
def test_every_method_agrees_with_torch_on_a_twin_cnn(case, target):
    name, options = CASES[case]
    model, twin = twin_cnns()
    x = images()
    torch_options = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    ours = getattr(mx, name)(model, **options).attribute(x, target=target)
    theirs = getattr(tx, name)(twin, **torch_options).attribute(torch.from_numpy(x), target=target)
    assert_same(ours, theirs, check_delta=name == "IntegratedGradients")
    if target is None:
        np.testing.assert_array_equal(ours.target, ours.logits.argmax(1))
    assert np.abs(ours.relevance).max() > 0  # a map of zeros would agree with anything


def test_predicted_classes_differ_between_images_so_default_targets_are_really_per_image():
    model, _ = twin_cnns()
    logits = mx.Saliency(model).attribute(images(b=16)).logits
    assert len(set(logits.argmax(1).tolist())) > 1


def torch_noise(seed):
    """Standard-normal draws from torch's generator, in the order torch's SmoothGrad makes them."""
    generator = torch.Generator().manual_seed(seed)
    return lambda shape, dtype: torch.randn(shape, generator=generator, dtype=torch.float64).numpy()


@pytest.mark.parametrize("base, options", [(mx.Saliency, {}), (mx.InputXGradient, {}),
                                           (mx.GradCAM, {"layer": "body.4"})])
def test_smoothgrad_agrees_with_torch_given_torch_noise(base, options):
    model, twin = twin_cnns()
    x = images(b=3)
    ours = mx.SmoothGrad(model, base, n_samples=5, noise_level=0.2, batch_size=4, noise=torch_noise(7),
                         **options).attribute(x, target=[1, 2, 3])
    theirs = tx.SmoothGrad(twin, getattr(tx, base.__name__), n_samples=5, noise_level=0.2, batch_size=4, seed=7,
                           **options).attribute(torch.from_numpy(x), target=[1, 2, 3])
    assert_same(ours, theirs)
    plain = base(model, **options).attribute(x, target=[1, 2, 3])
    assert not np.allclose(ours.relevance, plain.relevance)  # the noise did something


def test_upsampling_matches_torch_interpolate_bilinear_without_aligned_corners():
    rng = np.random.default_rng(0)
    for (h, w), size in [((2, 2), (8, 8)), ((3, 5), (8, 7)), ((7, 7), (3, 4)), ((1, 4), (5, 9)), ((4, 4), (4, 4))]:
        maps = rng.normal(size=(2, h, w))
        expected = F.interpolate(torch.from_numpy(maps)[:, None], size=size, mode="bilinear",
                                 align_corners=False)[:, 0].numpy()
        np.testing.assert_allclose(mx.upsample_bilinear(maps, size), expected, rtol=1e-12, atol=1e-12)


def test_both_engines_share_one_copy_of_the_engine_free_code():
    from reference_torch.explain import _common as tcommon
    from reference_torch.explain import attribution as tattr
    assert tattr.integration_points is mx.integration_points and tattr.RULES is mx.RULES
    assert tattr.CHANNEL_REDUCTIONS is mx.CHANNEL_REDUCTIONS
    assert tcommon.check_batch_size is mx.check_batch_size
    # one table, two array modules: the same numbers from numpy and from torch
    t = images(b=2, c=3, h=4, w=5, seed=3)
    for name in mx.CHANNEL_REDUCTIONS:
        np.testing.assert_allclose(mx.channel_reduction(name)(t),
                                   tattr.channel_reduction(name)(torch.from_numpy(t)).numpy(), rtol=1e-14)
    # one layer lookup: the twins' layers have the same names
    model, twin = twin_cnns()
    assert mx.resolve_layer(model, None)[0] == tcommon.resolve_layer(twin, None)[0] == "body.4"


# --------------------------------------------------------------------------- exact answers
def test_input_x_gradient_is_w_times_x_on_a_linear_model():
    model, x = linear_model(), images(b=4, h=6, w=6)
    result = mx.InputXGradient(model).attribute(x)
    weights = model[1].weight.data[result.target].reshape(x.shape)
    np.testing.assert_allclose(result.raw, x * weights, rtol=1e-12)
    np.testing.assert_allclose(result.relevance, (x * weights).sum(1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("rule", mx.RULES)
def test_integrated_gradients_is_exact_on_a_linear_model_for_every_rule(rule):
    model, x = linear_model(), images(b=4, h=6, w=6)
    result = mx.IntegratedGradients(model, n_steps=5, baseline=np.full((3, 1, 1), 0.25), rule=rule,
                                    batch_size=3).attribute(x, target=2)
    np.testing.assert_allclose(result.raw, (x - 0.25) * model[1].weight.data[2].reshape(3, 6, 6),
                               rtol=1e-10, atol=1e-13)
    assert np.abs(result.delta).max() < 1e-10


def test_saliency_on_a_linear_model_is_the_weight_reduced_over_channels():
    model, x = linear_model(), images(b=2, h=6, w=6)
    w = model[1].weight.data[1].reshape(3, 6, 6)
    by_max = mx.Saliency(model).attribute(x, target=1)
    by_l2 = mx.Saliency(model, channel_reduce="l2").attribute(x, target=1)
    np.testing.assert_allclose(by_max.raw, np.broadcast_to(w, x.shape), rtol=1e-12)
    np.testing.assert_allclose(by_max.relevance[0], np.abs(w).max(0), rtol=1e-12)
    np.testing.assert_allclose(by_l2.relevance[1], np.sqrt((w ** 2).sum(0)), rtol=1e-12)


def test_integrated_gradients_is_complete_on_the_cnn_and_the_gap_shrinks_with_more_steps():
    model, _ = twin_cnns()
    x = images()
    coarse = mx.IntegratedGradients(model, n_steps=3).attribute(x)
    fine = mx.IntegratedGradients(model, n_steps=300, batch_size=256).attribute(x)
    baseline_logits = mx.Saliency(model).attribute(np.zeros_like(x)).logits
    rows = np.arange(len(x))
    gained = fine.logits[rows, fine.target] - baseline_logits[rows, fine.target]
    np.testing.assert_allclose(fine.relevance.sum((1, 2)), gained + fine.delta, rtol=1e-10)
    # ReLU and max-pool make the path's gradient jump, so the gap shrinks like 1/n_steps:
    # 4e-2 at 3 steps, 2e-4 at 300 steps for these images, against logit gains of ~0.1
    assert np.abs(fine.delta).max() < 0.005 * np.abs(gained).max()
    assert np.abs(fine.delta).max() < np.abs(coarse.delta).max() / 20


def test_smoothgrad_noise_has_the_promised_mean_and_spread():
    """SmoothGrad of input x gradient on a linear model is mean_k (x + sigma eps_k) * w, so
    (raw / w - x) / sigma * sqrt(n) is a mean of n standard normals times sqrt(n): N(0, 1)."""
    model, x = linear_model(), images(b=3, h=6, w=6)
    n = 64
    result = mx.SmoothGrad(model, mx.InputXGradient, n_samples=n, noise_level=0.1, seed=3,
                           batch_size=50).attribute(x, target=0)
    w = model[1].weight.data[0].reshape(3, 6, 6)
    sigma = 0.1 * (x.max((1, 2, 3)) - x.min((1, 2, 3)))
    z = (result.raw / w - x) / sigma[:, None, None, None] * np.sqrt(n)
    assert abs(z.mean()) < 0.2 and 0.9 < z.std() < 1.1  # 324 values: both bounds are > 3 standard errors
    again = mx.SmoothGrad(model, mx.InputXGradient, n_samples=n, noise_level=0.1, seed=3).attribute(x, target=0)
    other = mx.SmoothGrad(model, mx.InputXGradient, n_samples=n, noise_level=0.1, seed=4).attribute(x, target=0)
    np.testing.assert_allclose(again.raw, result.raw, rtol=1e-12)  # the seed repeats, whatever batch_size
    assert not np.allclose(other.raw, result.raw)
    quiet = mx.SmoothGrad(model, mx.InputXGradient, n_samples=3, noise_level=0.0).attribute(x, target=0)
    np.testing.assert_allclose(quiet.raw, x * w, rtol=1e-12)


# --------------------------------------------------------------------------- model state, inputs
def test_model_mode_and_parameters_are_restored_and_left_without_gradients():
    model, _ = twin_cnns()
    model.train()
    model.body[1].eval()  # a mixed model: each module's own mode comes back
    running_mean = model.body[1].running_mean.copy()
    x = images()
    for method in (mx.Saliency(model), mx.IntegratedGradients(model, n_steps=4), mx.GradCAM(model),
                   mx.SmoothGrad(model, n_samples=2)):
        method.attribute(x)
        assert model.training and model.body[0].training and not model.body[1].training
        assert all(p.grad is None and p.requires_grad for p in model.parameters())
        assert not any(m._forward_hooks for m in model.modules())  # GradCAM's hook is gone
    np.testing.assert_array_equal(model.body[5].running_mean, twin_cnns()[0].body[5].running_mean)
    np.testing.assert_array_equal(model.body[1].running_mean, running_mean)


def test_results_do_not_depend_on_batch_size_on_grad_mode_or_on_the_input_type():
    model, _ = twin_cnns()
    x = images(b=5)
    reference = mx.IntegratedGradients(model, n_steps=6, batch_size=64).attribute(x)
    one_by_one = mx.IntegratedGradients(model, n_steps=6, batch_size=1).attribute(x)
    with md.no_grad():
        as_tensor = mx.IntegratedGradients(model, n_steps=6, batch_size=4).attribute(md.tensor(x))
    for other in (one_by_one, as_tensor):
        np.testing.assert_allclose(other.raw, reference.raw, rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(other.delta, reference.delta, rtol=1e-8, atol=1e-12)


def test_float32_inputs_on_a_float32_model_stay_float32_and_close_to_float64():
    model64, _ = twin_cnns()
    model32, _ = twin_cnns()
    model32.float()
    x = images()
    for method in (mx.Saliency, mx.GradCAM):
        single = method(model32).attribute(x.astype(np.float32), target=2)
        double = method(model64).attribute(x, target=2)
        assert single.relevance.dtype == np.float32 and single.raw.dtype == np.float32
        np.testing.assert_allclose(single.relevance, double.relevance, rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- bad input
def test_bad_images_raise_value_errors_naming_what_was_given():
    model, _ = twin_cnns()
    with pytest.raises(ValueError, match=r"\(3, 8, 8\)"):
        mx.Saliency(model).attribute(images()[0])
    with pytest.raises(ValueError, match="int64"):
        mx.Saliency(model).attribute(np.zeros((2, 3, 8, 8), dtype=np.int64))
    with pytest.raises(ValueError, match="list"):
        mx.GradCAM(model).attribute([[[[0.0]]]])


@pytest.mark.parametrize("target, shown", [(5, r"\[5, 5, 5, 5\]"), ([0, 1, -1, 2], r"\[0, 1, -1, 2\]"),
                                           ([0, 1], "2 values"), (1.5, "1.5")])
def test_bad_targets_raise_value_errors_naming_the_value(target, shown):
    model, _ = twin_cnns()
    for method in (mx.Saliency(model), mx.IntegratedGradients(model, n_steps=2), mx.GradCAM(model)):
        with pytest.raises(ValueError, match=shown):
            method.attribute(images(), target=target)


def test_bad_settings_raise_value_errors_naming_the_value():
    model, _ = twin_cnns()
    x = images()
    with pytest.raises(ValueError, match="'median'"):
        mx.Saliency(model, channel_reduce="median")
    with pytest.raises(ValueError, match="'simpson'"):
        mx.IntegratedGradients(model, rule="simpson")
    with pytest.raises(ValueError, match="got 1"):
        mx.IntegratedGradients(model, n_steps=1)
    with pytest.raises(ValueError, match="got 0"):
        mx.Saliency(model, batch_size=0)
    with pytest.raises(ValueError, match=r"\(2, 1, 1\)"):
        mx.IntegratedGradients(model, baseline=np.zeros((2, 1, 1))).attribute(x)
    with pytest.raises(ValueError, match="'body.99'"):
        mx.GradCAM(model, layer="body.99")
    with pytest.raises(ValueError, match="'head'"):  # a linear layer has no (h, w) map
        mx.GradCAM(model, layer="head").attribute(x)
    assert not model.head._forward_hooks  # removed also when the method failed
    with pytest.raises(ValueError, match="Conv2d"):
        mx.GradCAM(linear_model())
