"""Agreement with captum (tests only: the library never imports captum).

Same model, same inputs, same targets. Where the two differ by design, the test states
the difference exactly:
  * Saliency: captum returns |gradient| per channel; ours keeps the sign in ``raw`` and
    reduces channels (max |gradient|) in ``relevance``.
  * GradCAM: captum's LayerGradCam has no ReLU by default and stays at the layer's
    resolution; ours is captum's map with ReLU, upsampled bilinearly.
  * IntegratedGradients, trapezoid rule: captum weighs the n points with 1/n (halved at
    the ends), which sums to (n-1)/n, so its attributions are (n-1)/n of ours; ours
    (1/(n-1)) satisfies completeness. The other rules agree.
  * Occlusion: captum scores the model's output; ours the target's probability, so
    captum is given a softmax model. Channels are occluded together in both.
"""
import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

from reference_torch.explain import GradCAM, InputXGradient, IntegratedGradients, Occlusion, Saliency  # noqa: E402


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).double().eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


TARGET = [0, 3, 1, 4]


def test_saliency(model, x):
    ours = Saliency(model).attribute(x, target=TARGET)
    theirs = captum_attr.Saliency(model).attribute(x.clone().requires_grad_(), target=TARGET, abs=True)
    torch.testing.assert_close(ours.raw.abs(), theirs)
    torch.testing.assert_close(ours.relevance, theirs.amax(1))


def test_input_x_gradient(model, x):
    ours = InputXGradient(model).attribute(x, target=TARGET)
    theirs = captum_attr.InputXGradient(model).attribute(x.clone().requires_grad_(), target=TARGET)
    torch.testing.assert_close(ours.raw, theirs)
    torch.testing.assert_close(ours.relevance, theirs.sum(1))


@pytest.mark.parametrize("rule", ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"])
def test_integrated_gradients(model, x, rule):
    baseline = torch.full_like(x, 0.3)
    ours = IntegratedGradients(model, n_steps=12, baseline=0.3, rule=rule, batch_size=16).attribute(x, TARGET)
    theirs = captum_attr.IntegratedGradients(model).attribute(x, baselines=baseline, target=TARGET, n_steps=12,
                                                              method=rule, internal_batch_size=16)
    torch.testing.assert_close(ours.raw, theirs)


def test_integrated_gradients_trapezoid_differs_by_captums_step_weights(model, x):
    n = 12
    ours = IntegratedGradients(model, n_steps=n, rule="riemann_trapezoid").attribute(x, TARGET)
    theirs = captum_attr.IntegratedGradients(model).attribute(x, target=TARGET, n_steps=n, method="riemann_trapezoid")
    torch.testing.assert_close(theirs, ours.raw * (n - 1) / n)
    # on a linear model the integral is exact, so the missing 1/n shows as a completeness gap
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(300, 5)).double()
    ours = IntegratedGradients(linear, n_steps=n, rule="riemann_trapezoid").attribute(x, TARGET)
    _, their_delta = captum_attr.IntegratedGradients(linear).attribute(
        x, target=TARGET, n_steps=n, method="riemann_trapezoid", return_convergence_delta=True)
    gained = ours.relevance.sum((1, 2))
    assert ours.delta.abs().max() < 1e-12
    torch.testing.assert_close(their_delta, -gained / n)


@pytest.mark.parametrize("patch, stride", [(4, 2), (3, 3), (5, 4)])
def test_occlusion(model, x, patch, stride):
    probabilities = lambda images: model(images).softmax(1)
    ours = Occlusion(model, patch=patch, stride=stride, baseline=0.0).attribute(x, target=TARGET)
    theirs = captum_attr.Occlusion(probabilities).attribute(
        x, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride), baselines=0.0, target=TARGET)
    for c in range(3):  # the patch covers all channels, so captum's channels are equal
        torch.testing.assert_close(ours.relevance.float(), theirs[:, c])  # captum divides in float32


def test_gradcam(model, x):
    layer = model[3]
    ours = GradCAM(model, layer=layer).attribute(x, target=TARGET)
    plain = captum_attr.LayerGradCam(model, layer).attribute(x, target=TARGET)
    torch.testing.assert_close(ours.raw, plain[:, 0])  # captum's default: no ReLU, layer resolution
    with_relu = captum_attr.LayerGradCam(model, layer).attribute(x, target=TARGET, relu_attributions=True)
    upsampled = captum_attr.LayerAttribution.interpolate(with_relu, (10, 10), interpolate_mode="bilinear")
    torch.testing.assert_close(ours.relevance, upsampled[:, 0])
    assert (plain < 0).any()  # so the ReLU made a real difference here
