"""FGSM and PGD under L-infinity, in pixel space, on models whose best attack is known.

The main model is a brightness classifier: class 1 when an image's mean pixel exceeds
0.5. It is linear, so FGSM is the optimal L-infinity attack on it: adding eps to every
pixel moves the mean by exactly eps, and an image falls when its margin |mean - 0.5| is
below eps. The accuracy under attack is therefore known for every eps.

Below one grey level (1/255) a perturbation does not survive saving as an 8-bit image:
checked on images that lie on the 8-bit grid, and marked on the driver's plot.
"""
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from reference_torch.explain import (Normalize, accuracy_under_attack, fgsm, pgd, quantize, random_sign_noise,
                                     saved_as_8bit)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def brightness_model():
    """logit_1 - logit_0 = 20 (mean pixel - 0.5)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 2)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([-torch.full((48,), 10 / 48), torch.full((48,), 10 / 48)]))
        model[1].bias.copy_(torch.tensor([5.0, -5.0]))
    return model


def brightness_data(n=400, seed=0):
    """Images (n, 3, 4, 4) in [0.2, 0.8] whose means lie 0 to 0.2 from 0.5, margins uniform."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    margin = torch.rand(n, generator=g, dtype=torch.float64) * 0.2
    texture = torch.rand(n, 3, 4, 4, generator=g, dtype=torch.float64) * 0.2 - 0.1
    texture -= texture.mean((1, 2, 3), keepdim=True)     # zero-mean: the image's mean is 0.5 +- margin
    x = 0.5 + (2 * y - 1).view(-1, 1, 1, 1) * margin.view(-1, 1, 1, 1) + texture
    return x, y, margin


def test_normalize_is_a_layer_with_buffers():
    layer = Normalize([0.5, 0.25, 0.0], [0.5, 0.25, 1.0])
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(layer(x)[:, 1], (x[:, 1] - 0.25) / 0.25)
    assert set(layer.state_dict()) == {"mean", "std"} and not list(layer.parameters())
    assert layer.double()(x.double()).dtype == torch.float64
    with pytest.raises(ValueError, match="positive std"):
        Normalize([0.5], [0.0])


def test_fgsm_steps_by_eps_along_the_gradient_sign():
    model = brightness_model()
    x, y, _ = brightness_data(8)
    adv = fgsm(model, x, y, eps=0.05)
    # the loss rises by darkening class 1 and brightening class 0, on every pixel
    torch.testing.assert_close(adv, x + 0.05 * (1 - 2 * y).view(-1, 1, 1, 1).double())
    targeted = fgsm(model, x, torch.ones_like(y), eps=0.05, targeted=True)
    torch.testing.assert_close(targeted, x + 0.05)           # towards class 1: brighter
    assert fgsm(model, torch.ones_like(x), y, eps=0.3).max() == 1  # clamped to the pixel range


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_accuracy_under_attack_falls_with_eps_as_the_margins_predict(attack):
    model = brightness_model()
    x, y, margin = brightness_data()
    eps_list = [0, 0.03, 0.06, 0.1, 0.15, 0.25]
    accuracy = accuracy_under_attack(model, (x, y), attack, eps_list, batch_size=128)
    assert list(accuracy) == eps_list
    for eps in eps_list:  # the optimal attack flips exactly the images with margin below eps
        assert accuracy[eps] == pytest.approx(float((margin > eps).double().mean()), abs=0.01)
    values = list(accuracy.values())
    assert values[0] == 1.0 and values[-1] == 0.0 and values == sorted(values, reverse=True)


def test_a_loader_gives_the_same_accuracy_as_arrays():
    model = brightness_model()
    x, y, _ = brightness_data(100)
    from_arrays = accuracy_under_attack(model, (x.numpy(), y.numpy()), "fgsm", [0, 0.1])
    from_loader = accuracy_under_attack(model, DataLoader(TensorDataset(x, y), batch_size=32), "fgsm", [0, 0.1])
    assert from_arrays == from_loader


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(Normalize([0.5] * 3, [0.25] * 3), nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4))


def test_pgd_stays_in_the_ball_and_pixel_range_and_beats_fgsm():
    model = small_cnn()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)
    eps = 0.03
    adv = pgd(model, x, y, eps, steps=20)
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    loss = lambda images: F.cross_entropy(model(images), y).item()
    assert loss(adv) > loss(fgsm(model, x, y, eps)) > loss(x)
    torch.testing.assert_close(adv, pgd(model, x, y, eps, steps=20))  # seeded random start


def test_targeted_pgd_reaches_the_target_class():
    model = small_cnn()
    x = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    wanted = (model(x).argmax(1) + 1) % 4
    before = (model(x).argmax(1) == wanted).float().mean()
    adv = pgd(model, x, wanted, eps=0.3, steps=30, targeted=True)
    assert before == 0 and (model(adv).argmax(1) == wanted).float().mean() > 0.9


def test_attacks_restore_the_model_and_take_options_through_partial():
    model = small_cnn().train()
    x = torch.rand(4, 3, 8, 8)
    accuracy_under_attack(model, (x, torch.zeros(4, dtype=torch.long)), functools.partial(pgd, steps=2), [0.1])
    assert model.training and all(p.grad is None and p.requires_grad for p in model.parameters())


def test_errors_explain_pixel_space():
    model = brightness_model()
    x, y, _ = brightness_data(4)
    with pytest.raises(ValueError, match="must lie in \\[0, 1\\], got 8.*8 / 255"):
        fgsm(model, x, y, eps=8)
    with pytest.raises(ValueError, match="Normalize"):
        pgd(model, (x - 0.5) / 0.2, y, eps=0.1)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        accuracy_under_attack(model, (x, y), "cw", [0.1])


# --------------------------------------------------------------------------- one grey level
def eight_bit_images(n=16, seed=0):
    """Images as an 8-bit file holds them: whole grey levels of 255, away from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(20, 236, (n, 3, 8, 8), generator=g).double() / 255


def test_saving_as_8bit_erases_a_budget_under_half_a_grey_level():
    model = small_cnn().double()
    x = eight_bit_images()
    y = model(x.float()).argmax(1)
    for eps in (0.25 / 255, 0.45 / 255):  # every pixel rounds back to where it was
        adv = pgd(model, x, y, eps, steps=5)
        assert (adv - x).abs().max() > 0.2 / 255
        assert torch.equal(quantize(adv), x)
    adv = pgd(model, x, y, 3 / 255, steps=5)  # three levels: whole-level changes survive, at most 3
    change = (quantize(adv) - x).abs() * 255
    assert change.max() == pytest.approx(3) and torch.allclose(change, change.round())
    attack = saved_as_8bit(functools.partial(pgd, steps=5))
    torch.testing.assert_close(attack(model, x, y, 0.4 / 255), x)


def test_random_sign_noise_has_the_attacks_norm_and_a_seed():
    x = eight_bit_images()
    y = torch.zeros(len(x), dtype=torch.long)
    noisy = random_sign_noise(None, x, y, 2 / 255, seed=3)
    assert torch.allclose((noisy - x).abs(), torch.full_like(x, 2 / 255))  # no pixel is clamped here
    assert 0.4 < ((noisy - x) > 0).double().mean() < 0.6
    assert torch.equal(noisy, random_sign_noise(None, x, y, 2 / 255, seed=3))
    assert not torch.equal(noisy, random_sign_noise(None, x, y, 2 / 255, seed=4))


def test_the_accuracy_plot_marks_one_grey_level():
    import matplotlib.pyplot as plt

    from assignments.adversarial import plot_curves
    levels = [0, 0.5, 1, 2, 8]
    falling = [0.8, 0.7, 0.5, 0.3, 0.0]
    curves = {key: falling for key in ("fgsm", "pgd", "pgd_8bit", "random_noise", "fgsm_targeted", "pgd_targeted")}
    fig = plot_curves(curves, levels, chance=0.1, clean=0.8, dataset="shapes", n_images=10, pgd_steps=5)
    try:
        for ax in fig.axes:
            verticals = [line for line in ax.get_lines() if list(line.get_xdata()) == [1, 1]]
            assert len(verticals) == 1  # at eps = 1 grey level, on the data's own scale
            assert any("one grey level" in text.get_text() for text in ax.texts)
        left = {line.get_label() for line in fig.axes[0].get_lines()}
        assert {"PGD, image saved as 8-bit", "random ±eps noise (not an attack)"} <= left
    finally:
        plt.close(fig)
