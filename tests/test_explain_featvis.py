"""Activation maps, the pieces of feature visualisation, and the optimisation itself on a
32-pixel CNN, a linear model with a known best image, and a ResNet-18."""
import pytest
import torch
from torch import nn

from reference_torch.explain import (FourierImage, Normalize, PixelImage, RandomTransforms, activation_maps, capture,
                                     channel, class_logit, dataset_examples, neuron, transform_robustness,
                                     visualize)
from reference_torch.explain.featvis import (class_examples, color_correlation, direction, gradient_x_activation,
                                             neuron_groups, nmf,
                                             strongest_channels, total_variation)
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


def test_class_examples_are_the_clearest_image_of_each_class_not_the_largest_logit():
    """The "images" are their own logits: image 1 has large logits for every class (the
    largest of classes 0 and 2 too), but it is a class-1 image and only by a small margin."""
    logits = torch.tensor([[5.0, 1.0, 0.0], [9.0, 8.5, 9.0], [0.0, 3.0, 0.0], [1.0, 0.0, 2.0], [0.0, 0.0, 4.0]])
    labels = [0, 1, 1, 2, 2]
    index, margin = class_examples(nn.Flatten(), logits[:, :, None, None], labels, [0, 1, 2])
    assert index.tolist() == [0, 2, 4]
    torch.testing.assert_close(margin, torch.tensor([4.0, 3.0, 4.0]))
    with pytest.raises(ValueError, match="no image of class 3"):
        class_examples(nn.Flatten(), logits[:, :, None, None], labels, [3])


def test_a_direction_objective_is_the_projection_on_a_mix_of_channels():
    activation = torch.rand(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    mix = torch.tensor([[1.0, 0, 0, 0], [0, 0.5, 0, 2.0]])
    scores = direction("x", mix)(activation)
    torch.testing.assert_close(scores[0], activation[0, 0].mean())
    torch.testing.assert_close(scores[1], (0.5 * activation[1, 1] + 2 * activation[1, 3]).mean())
    torch.testing.assert_close(direction("x", mix).per_unit(activation)[:, 0], activation[:, 0].mean((1, 2)))
    with pytest.raises(ValueError, match="directions have 4 channels, x has 5"):
        direction("x", mix)(torch.rand(2, 5, 3, 3))


# --------------------------------------------------------------------------- the building blocks
def test_nmf_recovers_known_groups_of_a_low_rank_non_negative_matrix():
    """60 positions x 12 channels made of 3 groups: each position holds one group (with a
    random strength), each group is a different set of 4 channels (with random weights)."""
    g = torch.Generator().manual_seed(0)
    group_of_position = torch.arange(60) % 3
    maps = torch.zeros(60, 3)
    maps[torch.arange(60), group_of_position] = torch.rand(60, generator=g) + 0.5
    directions = torch.zeros(3, 12)
    for k in range(3):
        directions[k, 4 * k:4 * k + 4] = torch.rand(4, generator=g) + 0.2
    matrix = maps @ directions
    w, h = nmf(matrix, 3, steps=1500)
    assert (w >= 0).all() and (h >= 0).all()
    torch.testing.assert_close(h.norm(dim=1), torch.ones(3))
    assert (matrix - w @ h).norm() / matrix.norm() < 1e-3
    cosine = h @ (directions / directions.norm(dim=1, keepdim=True)).T  # (found, true)
    match = cosine.argmax(1)
    assert sorted(match.tolist()) == [0, 1, 2]  # each true group found once: a permutation
    assert (cosine.max(1).values > 0.999).all()
    for found, true in enumerate(match.tolist()):  # and the same positions hold it, up to scale
        ratio = w[:, found][group_of_position == true] / maps[:, true][group_of_position == true]
        assert ratio.std() / ratio.mean() < 1e-2 and w[:, found][group_of_position != true].max() < 1e-2
    with pytest.raises(ValueError, match="non-negative"):
        nmf(matrix - 1, 3)


def pooled_head_cnn():
    """Conv, ReLU, max-pooling and a linear head: gradient x activation at the ReLU is exact."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 5))


def test_gradient_x_activation_before_a_pooled_linear_head_sums_to_the_logit_minus_bias():
    model, x = pooled_head_cnn(), torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    target = [0, 3, 4]
    maps = gradient_x_activation(model, "1", x, target)
    assert maps.shape == (3, 8, 8)
    with torch.no_grad():
        expected = model(x)[torch.arange(3), target] - model[4].bias[target]
    torch.testing.assert_close(maps.sum((1, 2)), expected, atol=1e-5, rtol=1e-5)
    # the maps differ between images: not the head's weights alone
    assert not torch.allclose(maps[0] / maps[0].abs().max(), maps[1] / maps[1].abs().max(), atol=0.1)


def test_neuron_groups_factorise_the_activation_and_share_out_each_logit():
    """The layer's activation is the image itself (a ReLU of a non-negative image), made of
    two known groups: the left half holds channels 0-2, the right half channels 3-5."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    g = torch.Generator().manual_seed(2)
    maps = torch.zeros(2, 8, 8)
    maps[0, :, :4], maps[1, :, 4:] = torch.rand(8, 4, generator=g) + 0.5, torch.rand(8, 4, generator=g) + 0.5
    directions = torch.zeros(2, 6)
    directions[0, :3], directions[1, 3:] = torch.rand(3, generator=g) + 0.2, torch.rand(3, generator=g) + 0.2
    image = torch.einsum("ghw,gc->chw", maps, directions)
    groups = neuron_groups(model, "0", image, groups=2, steps=1500)
    assert groups.maps.shape == (2, 8, 8) and groups.directions.shape == (2, 6) and groups.attribution.shape == (2, 5)
    assert groups.error < 1e-3
    left = int(groups.maps[1, :, :4].sum() > groups.maps[0, :, :4].sum())  # the group found on the left half
    assert groups.maps[left, :, 4:].max() < 1e-2 and groups.maps[1 - left, :, :4].max() < 1e-2
    with torch.no_grad():
        logit_minus_bias = model(image[None])[0] - model[3].bias
        # each group's attribution: the logit of the image holding that group alone
        alone = torch.stack([model(torch.einsum("hw,c->chw", maps[k], directions[k])[None])[0] - model[3].bias
                             for k in range(2)])
    torch.testing.assert_close(groups.attribution.sum(0), logit_minus_bias, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(groups.attribution[[left, 1 - left]], alone, atol=1e-3, rtol=1e-3)


def test_strongest_channels_are_the_largest_at_the_strongest_position():
    activation = torch.zeros(5, 4, 4)
    activation[:, 1, 2] = torch.tensor([0.5, 3.0, 0.0, 2.0, 1.0])  # the position with the largest sum
    activation[0, 3, 3] = 4.0
    position, channels, values = strongest_channels(activation, 3)
    assert position == (1, 2) and channels.tolist() == [1, 3, 4]
    torch.testing.assert_close(values, torch.tensor([3.0, 2.0, 1.0]))
    position, channels, _ = strongest_channels(activation, 1, position=(3, 3))
    assert position == (3, 3) and channels.tolist() == [0]


def test_colours_mixed_as_the_data_let_a_colour_detector_reach_its_saturated_colour():
    """A "red minus the rest" unit is largest on pure red. Shapes-like data (independent,
    saturated colours) have a colour correlation near the identity, which lets the Fourier
    image get there; ImageNet's mixing (greys and browns) keeps it washed out."""
    g = torch.Generator().manual_seed(0)
    colours = (torch.rand(500, 3, 1, 1, generator=g) > 0.5).float() * 0.8 + 0.1  # saturated, independent
    matrix = color_correlation(colours.expand(500, 3, 4, 4))
    torch.testing.assert_close(matrix, torch.eye(3), atol=0.1, rtol=0)
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -1.0, -1.0]).view(1, 3, 1, 1))
        model[0].bias.zero_()
    scores = {name: visualize(model, class_logit(0), size=16, steps=96, lr=0.2, decorrelate=mixing,
                              transforms=None).scores[0] for name, mixing in (("data", matrix), ("imagenet", True))}
    assert scores["data"] > 0.75  # the best possible is 1, pure red; the sigmoid saturates slowly
    assert scores["imagenet"] < scores["data"] - 0.2
