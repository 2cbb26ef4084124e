"""Activation maps, the pieces of feature visualisation, and the optimisation itself on a
32-pixel CNN, a linear model with a known best image, and a ResNet-18."""
import pytest
import torch
from torch import nn

from reference_torch.explain import (FourierImage, Normalize, PixelImage, RandomTransforms, activation_maps, capture,
                                     channel, class_logit, dataset_examples, neuron, transform_robustness,
                                     visualize)
from reference_torch.explain.featvis import total_variation
from reference_torch.models import resnet18


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cnn32():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


# --------------------------------------------------------------------------- activations
def test_activation_maps_are_the_layers_outputs_and_hooks_are_removed():
    model, x = cnn32(), torch.rand(2, 3, 32, 32)
    maps = activation_maps(model, x, ["1", "4"])
    torch.testing.assert_close(maps["1"], model[:2](x))
    torch.testing.assert_close(maps["4"], model[:5](x))
    assert not any(m._forward_hooks for m in model.modules())


def test_a_module_used_twice_is_refused_with_a_hint():
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu)
    with pytest.raises(RuntimeError, match="ran twice.*parent block"):
        activation_maps(model, torch.rand(1, 3, 8, 8), ["1"])


def test_capture_as_leaf_stops_gradients_at_the_layer():
    model, x = cnn32(), torch.rand(2, 3, 32, 32, requires_grad=True)
    with capture(model, ["4"], as_leaf=True) as (record,):
        logits = model(x)
    assert record.value.is_leaf and record.value.requires_grad
    grad, below = torch.autograd.grad(logits[:, 3].sum(), [record.value, x], allow_unused=True)
    assert grad.shape == (2, 32, 16, 16) and below is None


# --------------------------------------------------------------------------- parameterisations and transforms
@pytest.mark.parametrize("param", [PixelImage, FourierImage])
def test_parameterisations_give_images_in_the_unit_range(param):
    image = param(3, 3, (20, 24), generator=torch.Generator().manual_seed(0))
    x = image()
    assert x.shape == (3, 3, 20, 24) and 0 < x.min() and x.max() < 1
    x.sum().backward()
    assert all(p.grad is not None for p in image.parameters())


def test_fourier_images_have_the_same_spread_at_any_size():
    spread = [FourierImage(4, 3, (s, s), sd=1.0, decorrelate=False,
                           generator=torch.Generator().manual_seed(0))().logit().std() for s in (32, 224)]
    assert 0.8 < spread[0] / spread[1] < 1.25
    # and most of the variance is at low frequencies: neighbours are strongly correlated
    x = FourierImage(4, 3, (32, 32), sd=1.0, decorrelate=False, generator=torch.Generator().manual_seed(0))()
    noise = PixelImage(4, 3, (32, 32), sd=1.0, decorrelate=False)()
    assert total_variation(x).mean() < 0.75 * total_variation(noise).mean()


def test_transforms_without_randomness_are_the_identity_and_fill_with_grey():
    x = torch.rand(2, 3, 16, 16)
    same = RandomTransforms(shift=0, scale=(1, 1), degrees=0)(x)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    padded = RandomTransforms(shift=0, scale=(1, 1), degrees=0, pad=0.25)(x)
    assert padded.shape == (2, 3, 24, 24)
    torch.testing.assert_close(padded[:, :, 4:20, 4:20], x, atol=1e-5, rtol=0)
    assert (padded[:, :, :4] == 0.5).all()
    moved = RandomTransforms(shift=0.25, scale=(0.9, 1.1), degrees=10)(x, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.allclose(moved, x)


# --------------------------------------------------------------------------- the optimisation
def test_a_linear_class_logit_is_maximised_by_the_sign_of_its_weights():
    """f(x) = w.x over [0, 1] pixels is largest at x = 1 where w > 0 and 0 elsewhere."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2))
    result = visualize(model, class_logit([0, 1]), size=16, steps=100, lr=0.2, param="pixel", decorrelate=False,
                       transforms=None)
    agree = ((result.images > 0.5) == (model[1].weight.view(2, 3, 16, 16) > 0)).float().mean()
    assert agree > 0.99
    best = model[1].weight.clamp(min=0).sum(1) + model[1].bias
    assert (result.scores > 0.9 * best).all()


def test_channels_of_a_32_pixel_cnn_respond_far_more_than_to_random_images():
    model = cnn32()
    # a conv layer, before its ReLU: a ReLU channel that is off everywhere has no gradient
    result = visualize(model, channel("6", [0, 1, 2, 3]), size=32, steps=64, lr=0.2)
    noise = activation_maps(model, torch.rand(256, 3, 32, 32), ["6"])["6"][:, :4].mean((2, 3))
    assert (result.scores > noise.max(0).values + 10 * noise.std(0)).all()
    assert result.history[-8:].mean() > result.history[:8].mean() + 0.02
    assert result.images.shape == (4, 3, 32, 32) and 0 <= result.images.min() and result.images.max() <= 1


def test_visualize_is_seeded_and_restores_the_model():
    model = cnn32().train()
    first = visualize(model, neuron("4", [5]), size=32, steps=5, seed=3)
    second = visualize(model, neuron("4", [5]), size=32, steps=5, seed=3)
    torch.testing.assert_close(first.images, second.images)
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="index 40 is out of range: 4 has 32 channels"):
        visualize(model, channel("4", 40), size=32, steps=1)


def test_resnet18_channels_can_be_visualised():
    model = nn.Sequential(Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]), resnet18(num_classes=10))
    result = visualize(model, channel("1.layer2.0.conv1", [0, 1]), size=48, steps=6, lr=0.2,
                       transforms=RandomTransforms(pad=0.1))
    assert result.images.shape == (2, 3, 48, 48)
    assert result.history[-3:].mean() > result.history[:3].mean()


# --------------------------------------------------------------------------- what a visualisation is compared with
def test_dataset_examples_find_each_units_best_image():
    # a model whose layer "0" is the image itself and whose logits are the channel means
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    images = torch.rand(7, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    means, centres = images.mean((2, 3)), images[:, :, 2, 2]
    for objective, scores in ((class_logit([2, 0]), means[:, [2, 0]]), (channel("0", [1]), means[:, [1]]),
                              (neuron("0", [0, 2]), centres[:, [0, 2]])):
        best, index, spread = dataset_examples(model, objective, images, batch_size=3)  # batches join
        torch.testing.assert_close(best, scores.max(0).values)
        assert index.tolist() == scores.argmax(0).tolist()
        torch.testing.assert_close(spread, scores.std(0))


def test_transform_robustness_is_seeded_and_keeps_a_flat_images_score():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    flat = torch.full((2, 3, 16, 16), 0.5)  # shifts bring in grey: a grey image stays grey
    torch.testing.assert_close(transform_robustness(model, class_logit([0, 1]), flat), torch.full((2,), 0.5))
    noise = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    first, again = (transform_robustness(model, class_logit([0, 1]), noise, seed=3) for _ in range(2))
    torch.testing.assert_close(first, again)
