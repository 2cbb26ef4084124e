"""Attribution methods on tiny models whose right answer is known in closed form."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reference_torch.explain import (METHODS, GradCAM, InputXGradient, IntegratedGradients, LayerSaliency,
                                     Occlusion, Saliency, SmoothGrad)
from reference_torch.explain.attribution import RULES, integration_points


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def images(b=4, c=3, h=6, w=6, seed=0, dtype=torch.float64):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def linear_model(c=3, h=6, w=6, classes=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, classes)).double()


def cam_model(seed=0):
    """conv -> ReLU -> global average pool -> linear: the CAM architecture (Zhou et al.
    2016), where Grad-CAM's channel weights are exactly linear weights / positions."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 4)).double()


def small_cnn(seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), act(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), act(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).double()


# --------------------------------------------------------------------------- linear model: exact answers
def test_input_x_gradient_is_each_pixels_contribution_on_a_linear_model():
    model, x = linear_model(), images()
    result = InputXGradient(model).attribute(x)
    weights = model[1].weight[result.target].view_as(x)
    torch.testing.assert_close(result.raw, x * weights)
    torch.testing.assert_close(result.relevance, (x * weights).sum(1))
    assert torch.equal(result.target, model(x).argmax(1))


@pytest.mark.parametrize("rule", RULES)
def test_integrated_gradients_is_exact_on_a_linear_model_for_every_rule(rule):
    model, x = linear_model(), images()
    baseline = torch.full((3, 1, 1), 0.25, dtype=torch.float64)
    result = IntegratedGradients(model, n_steps=7, baseline=baseline, rule=rule).attribute(x, target=2)
    torch.testing.assert_close(result.raw, (x - 0.25) * model[1].weight[2].view(3, 6, 6))
    assert result.delta.abs().max() < 1e-10


def test_integration_weights_sum_to_one_and_points_lie_on_the_unit_interval():
    for rule in RULES:
        alphas, weights = integration_points(9, rule)
        assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12), rule
        assert alphas.min() >= 0 and alphas.max() <= 1
    alphas, weights = integration_points(5, "riemann_trapezoid")
    assert alphas.tolist() == [0, 0.25, 0.5, 0.75, 1] and weights.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]


def test_saliency_reduces_the_gradient_over_channels_as_asked():
    model, x = linear_model(), images()
    grad = model[1].weight[1].view(3, 6, 6).expand_as(x)
    by_max = Saliency(model).attribute(x, target=1)
    by_norm = Saliency(model, channel_reduce="l2").attribute(x, target=1)
    torch.testing.assert_close(by_max.raw, grad)
    torch.testing.assert_close(by_max.relevance, grad.abs().amax(1))
    torch.testing.assert_close(by_norm.relevance, grad.norm(dim=1))


def test_occlusion_matches_a_loop_over_patches():
    """Overlapping 3x3 patches with stride 2 on 6x6 images; the last patch of a row hangs
    over the border. A pixel's relevance is the mean probability drop of its patches."""
    model, x = linear_model(), images()
    result = Occlusion(model, patch=3, stride=2, baseline=0.5).attribute(x)
    prob = lambda images: model(images).softmax(1)[torch.arange(len(x)), result.target]
    total, count = torch.zeros(4, 6, 6, dtype=torch.float64), torch.zeros(6, 6, dtype=torch.float64)
    for top in (0, 2, 4):
        for left in (0, 2, 4):
            occluded = x.clone()
            occluded[:, :, top:top + 3, left:left + 3] = 0.5
            drop = prob(x) - prob(occluded)
            torch.testing.assert_close(result.raw[:, top // 2, left // 2], drop)
            total[:, top:top + 3, left:left + 3] += drop[:, None, None]
            count[top:top + 3, left:left + 3] += 1
    torch.testing.assert_close(result.relevance, total / count)


def test_an_image_wide_patch_measures_the_whole_images_evidence():
    model, x = linear_model(), images()
    result = Occlusion(model, patch=6, stride=6).attribute(x)
    probs = model(x).softmax(1)[torch.arange(4), result.target]
    blank = model(torch.zeros_like(x)).softmax(1)[torch.arange(4), result.target]
    assert result.raw.shape == (4, 1, 1)
    torch.testing.assert_close(result.relevance, (probs - blank)[:, None, None].expand(4, 6, 6))


# --------------------------------------------------------------------------- layer methods: exact answers
def test_gradcam_on_the_cam_architecture_is_the_class_activation_map():
    model, x = cam_model(), images()
    result = GradCAM(model, layer="1").attribute(x)
    acts = F.relu(model[0](x))                                  # (B, 5, 6, 6)
    weights = model[4].weight[result.target] / 36               # d logit / d act, the same at every position
    cam = (weights[:, :, None, None] * acts).sum(1)
    torch.testing.assert_close(result.raw, cam)
    torch.testing.assert_close(result.relevance, cam.clamp(min=0))  # same resolution: upsampling is identity
    no_relu = GradCAM(model, layer="1", relu=False).attribute(x)
    torch.testing.assert_close(no_relu.relevance, cam)


def test_gradcam_defaults_to_the_last_conv_and_survives_an_inplace_relu_after_it():
    model = small_cnn()
    inplace = small_cnn()
    inplace[4] = nn.ReLU(inplace=True)  # modifies the hooked conv's output in place
    x = images(h=8, w=8)
    default = GradCAM(model)
    assert default.layer_name == "3"
    torch.testing.assert_close(default.attribute(x).raw, GradCAM(inplace).attribute(x).raw)
    # the raw map is the conv's own output, weighted: negative values survive before the ReLU
    assert (default.attribute(x).raw < 0).any()
    assert not model[3]._forward_hooks  # hooks are removed again


def test_layer_saliency_on_the_cam_architecture_is_the_constant_linear_weight():
    model, x = cam_model(), images()
    result = LayerSaliency(model, layer="1").attribute(x, target=3)
    expected = model[4].weight[3].abs().max() / 36
    assert result.raw.shape == (4, 5, 6, 6)
    torch.testing.assert_close(result.relevance, expected.expand(4, 6, 6))


# --------------------------------------------------------------------------- integrated gradients: completeness
def smooth_cnn(seed=0):
    """Tanh and average pooling: the path integrand is smooth, so quadrature errors
    fall at their textbook rates (1/n^2 for the trapezoid rule)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                          nn.Tanh(), nn.Flatten(), nn.Linear(128, 5)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3)  # logits that move by about one between baseline and image
    return model


def test_integrated_gradients_completeness_on_a_nonlinear_model():
    model, x = smooth_cnn(), images(h=8, w=8)
    coarse = IntegratedGradients(model, n_steps=3).attribute(x)
    fine = IntegratedGradients(model, n_steps=64).attribute(x)
    gained = (fine.logits - model(torch.zeros_like(x))).gather(1, fine.target[:, None])[:, 0]
    assert gained.abs().min() > 0.1
    torch.testing.assert_close(fine.relevance.sum((1, 2)), gained, rtol=0, atol=1e-4)
    torch.testing.assert_close(fine.delta, fine.relevance.sum((1, 2)) - gained)
    assert fine.delta.abs().max() < coarse.delta.abs().min() / 100  # 21x more steps, about 1/n^2
    gauss = IntegratedGradients(model, n_steps=16, rule="gausslegendre").attribute(x)
    assert gauss.delta.abs().max() < 1e-9


# --------------------------------------------------------------------------- batching, state, targets
@pytest.mark.parametrize("name", sorted(METHODS))
def test_internal_batch_size_does_not_change_the_answer(name):
    model, x = small_cnn(), images(b=5, h=8, w=8)
    options = {"integrated_gradients": {"n_steps": 8}, "smoothgrad": {"n_samples": 4},
               "occlusion": {"patch": 4, "stride": 2}}.get(name, {})
    small = METHODS[name](model, batch_size=3, **options).attribute(x, target=[0, 1, 2, 3, 4])
    large = METHODS[name](model, batch_size=1000, **options).attribute(x, target=[0, 1, 2, 3, 4])
    assert small.relevance.shape == (5, 8, 8)
    torch.testing.assert_close(small.relevance, large.relevance)
    torch.testing.assert_close(small.raw, large.raw)


def test_integrated_gradients_runs_all_path_points_in_few_passes():
    model, x = small_cnn(), images(b=6, h=8, w=8)
    calls = []
    model.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    IntegratedGradients(model, n_steps=50, batch_size=128).attribute(x)
    # logits of x, then 300 path points in passes of at most 128, then the baseline's logits
    assert calls == [6, 128, 128, 44, 6]


def test_methods_restore_the_model_and_leave_no_parameter_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()
    model[6].weight.requires_grad_(False)  # one frozen parameter must stay frozen
    running_mean = model[1].running_mean.clone()
    x = images(h=8, w=8)
    for name, method in METHODS.items():
        first = method(model).attribute(x).relevance
        again = method(model).attribute(x).relevance
        torch.testing.assert_close(first, again, msg=f"{name} is not deterministic: dropout was on")
        assert model.training and all(m.training for m in model.modules()), name
        assert all(p.grad is None for p in model.parameters()), name
        assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, True], name
    assert torch.equal(model[1].running_mean, running_mean)


def test_methods_work_inside_no_grad():
    model, x = small_cnn(), images(h=8, w=8)
    with torch.no_grad():
        result = IntegratedGradients(model, n_steps=4).attribute(x)
    assert result.relevance.abs().sum() > 0


def test_targets_default_to_the_prediction_and_can_be_one_or_one_per_image():
    model, x = linear_model(), images()
    predicted = model(x).argmax(1)
    assert torch.equal(Saliency(model).attribute(x).target, predicted)
    assert Saliency(model).attribute(x, target=2).target.tolist() == [2, 2, 2, 2]
    assert Saliency(model).attribute(x, target=torch.tensor([3, 2, 1, 0])).target.tolist() == [3, 2, 1, 0]
    with pytest.raises(ValueError, match=r"target \[7, 7, 7, 7\] is out of range for a model with 4 outputs"):
        Saliency(model).attribute(x, target=7)
    with pytest.raises(ValueError, match="one per image"):
        Saliency(model).attribute(x, target=[0, 1])


def test_smoothgrad_without_noise_is_its_base_method_and_noise_is_seeded():
    model, x = small_cnn(), images(h=8, w=8)
    plain = Saliency(model).attribute(x)
    quiet = SmoothGrad(model, noise_level=0.0, n_samples=3).attribute(x)
    torch.testing.assert_close(quiet.relevance, plain.relevance)
    noisy = SmoothGrad(model, n_samples=3, seed=1).attribute(x)
    assert not torch.allclose(noisy.relevance, plain.relevance)
    torch.testing.assert_close(noisy.relevance, SmoothGrad(model, n_samples=3, seed=1).attribute(x).relevance)
    ig = SmoothGrad(model, method=IntegratedGradients, n_steps=4, n_samples=2).attribute(x)
    assert ig.raw.shape == x.shape


def test_clear_errors():
    model = small_cnn()
    with pytest.raises(ValueError, match=r"\(B, C, H, W\).*x\[None\]"):
        Saliency(model).attribute(images()[0])
    with pytest.raises(ValueError, match="no layer named 'layer4'"):
        GradCAM(model, layer="layer4")
    with pytest.raises(ValueError, match="has no Conv2d"):
        GradCAM(linear_model())
    with pytest.raises(ValueError, match="channel_reduce"):
        Saliency(model, channel_reduce="mean")
    with pytest.raises(ValueError, match=r"stride \(4, 4\) is larger than the patch \(2, 2\)"):
        Occlusion(model, patch=2, stride=4)
    with pytest.raises(ValueError, match="unknown integration rule 'simpson'"):
        IntegratedGradients(model, rule="simpson")
    with pytest.raises(ValueError, match="does not broadcast"):
        IntegratedGradients(model, baseline=torch.zeros(2, 1, 1)).attribute(images(h=8, w=8))
    with pytest.raises(ValueError, match="outputs shape"):
        GradCAM(model, layer="7").attribute(images(h=8, w=8))
