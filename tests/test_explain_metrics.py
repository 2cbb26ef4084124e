"""Deletion/insertion curves, mask share and the pointing game, on known answers and on
a tiny CNN trained (in about a second) to detect a bright square, so that the square's
mask is by construction where the evidence is."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minidl.data.shapes import make_shapes
from reference_torch.explain import (Curve, GradCAM, IntegratedGradients, auc, auc_difference, deletion_curve,
                                     deletion_insertion, insertion_curve, mask_share, pointing_game)
from reference_torch.explain.metrics import gaussian_blur, pixel_ranks


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def square_task(n, size=16, side=4, seed=0):
    """Noise images in [0, 0.5]; odd-numbered images (class 1) hold a bright 4x4 square.
    Returns images, labels and the square's mask (drawn for every image, painted on class 1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g) * 0.5
    y = torch.arange(n) % 2
    top, left = torch.randint(0, size - side + 1, (2, n), generator=g)
    rows = torch.arange(size)
    mask = (((rows >= top[:, None]) & (rows < top[:, None] + side))[:, :, None]
            & ((rows >= left[:, None]) & (rows < left[:, None] + side))[:, None, :])
    x = torch.where(mask[:, None] & (y == 1).view(-1, 1, 1, 1), torch.ones_like(x), x)
    return x, y, mask


@pytest.fixture(scope="module")
def detector():
    """A small CNN that detects the square (test accuracy is checked below)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x, y, _ = square_task(512)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        batch = torch.randint(0, 512, (64,))
        loss = F.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def squares():
    """Test images that contain the square, with its mask."""
    x, y, mask = square_task(64, seed=1)
    return x[y == 1][:16], mask[y == 1][:16]


def test_detector_has_learned_the_task(detector):
    x, y, _ = square_task(200, seed=2)
    assert (detector(x).argmax(1) == y).float().mean() > 0.95


# --------------------------------------------------------------------------- deletion and insertion
def test_the_object_mask_deletes_faster_and_inserts_faster_than_a_random_order(detector, squares):
    x, mask = squares
    curves = deletion_insertion(detector, x, mask.float(), target=1)
    assert curves["deletion"].mean_auc < 0.2 < 0.4 < curves["deletion_random"].mean_auc
    assert (curves["deletion"].auc < curves["deletion_random"].auc).all()
    assert curves["insertion"].mean_auc > curves["insertion_random"].mean_auc + 0.1


@pytest.mark.parametrize("method", [GradCAM, IntegratedGradients])
def test_real_attributions_beat_a_random_order_on_a_model_that_uses_the_object(detector, squares, method):
    x, mask = squares
    relevance = method(detector).attribute(x, target=1).relevance
    assert deletion_curve(detector, x, relevance).mean_auc < deletion_curve(detector, x, "random").mean_auc / 2
    assert mask_share(relevance, mask).mean() > 0.5      # the square is 1/16 of the image
    assert pointing_game(relevance, mask).float().mean() > 0.9


def test_curves_start_and_end_where_they_should(detector, squares):
    x, mask = squares
    prob = lambda images: detector(images).softmax(1)[:, 1]
    deletion = deletion_curve(detector, x, mask.float(), target=1, step=10)
    with torch.no_grad():
        torch.testing.assert_close(deletion.scores[:, 0], prob(x))
        torch.testing.assert_close(deletion.scores[:, -1], prob(torch.zeros_like(x)))
        insertion = insertion_curve(detector, x, mask.float(), target=1, step=10)
        torch.testing.assert_close(insertion.scores[:, 0], prob(gaussian_blur(x, 5.0)))
        torch.testing.assert_close(insertion.scores[:, -1], prob(x))
    # 256 pixels in steps of 10: 0, 10, ..., 250 and then all 256
    assert deletion.fractions.tolist() == [i * 10 / 256 for i in range(26)] + [1.0]
    torch.testing.assert_close(deletion.auc, auc(deletion.fractions, deletion.scores).float())


def test_all_steps_run_in_a_few_batched_forward_passes(detector, squares):
    x, mask = squares
    calls = []
    handle = detector.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    try:
        few = deletion_curve(detector, x, mask.float(), batch_size=200)
    finally:
        handle.remove()
    # 16 images x 17 points (a row of 16 pixels per step) = 272 inputs: the logits, then 2 passes
    assert calls == [16, 200, 72]
    many = deletion_curve(detector, x, mask.float(), batch_size=7)
    torch.testing.assert_close(few.scores, many.scores)


def test_the_random_order_is_a_seeded_permutation_and_ties_are_not_broken_by_position():
    ties = torch.zeros(2, 4, 4)
    ranks = pixel_ranks(ties, seed=0)
    assert sorted(ranks[0].flatten().tolist()) == list(range(16))
    assert torch.equal(ranks, pixel_ranks(ties, seed=0)) and not torch.equal(ranks, pixel_ranks(ties, seed=1))
    assert not torch.equal(ranks[0], ranks[1])
    relevance = torch.arange(16.0).view(1, 4, 4)
    assert pixel_ranks(relevance).flatten().tolist() == list(range(15, -1, -1))


def test_auc_is_the_trapezoid_area():
    assert float(auc(torch.tensor([0, 0.5, 1]), torch.tensor([1.0, 1.0, 1.0]))) == 1.0
    assert float(auc(torch.tensor([0, 0.5, 1]), torch.tensor([0.0, 0.5, 1.0]))) == 0.5
    assert float(auc(torch.tensor([0, 0.9, 1]), torch.tensor([1.0, 1.0, 0.0]))) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="from 0 to 1"):
        auc(torch.tensor([0, 0.5]), torch.tensor([1.0, 1.0]))


def test_curve_errors_name_the_problem(detector, squares):
    x, mask = squares
    with pytest.raises(ValueError, match=r"\(B, H, W\) = \(16, 16, 16\).*got \(16, 3, 16, 16\)"):
        deletion_curve(detector, x, x)
    with pytest.raises(ValueError, match="'random', got 'shuffle'"):
        deletion_curve(detector, x, "shuffle")
    with pytest.raises(ValueError, match="step must be a positive"):
        insertion_curve(detector, x, "random", step=0)


# --------------------------------------------------------------------------- object masks
def test_mask_share_counts_positive_mass_inside_the_mask():
    mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    mask[0, :2] = True                               # top half
    relevance = torch.zeros(1, 4, 4)
    relevance[0, 0, 0], relevance[0, 3, 3], relevance[0, 2, 2] = 3.0, 1.0, -4.0
    assert mask_share(relevance, mask).item() == pytest.approx(0.75)
    assert mask_share(relevance, mask, mass="abs").item() == pytest.approx(3 / 8)
    assert torch.isnan(mask_share(torch.zeros(1, 4, 4), mask)).all()
    with pytest.raises(ValueError, match=r"\(B, H, W\), got \(4, 4\)"):
        mask_share(relevance[0], mask[0])


def test_pointing_game_with_and_without_tolerance():
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[:, 2:4, 2:4] = True
    relevance = torch.zeros(2, 6, 6)
    relevance[0, 3, 3] = 1.0                          # on the object
    relevance[1, 3, 4] = 1.0                          # one pixel beside it
    assert pointing_game(relevance, mask).tolist() == [True, False]
    assert pointing_game(relevance, mask, tolerance=1).tolist() == [True, True]


def test_metrics_read_the_shapes_datasets_numpy_masks():
    _, _, masks, _ = make_shapes(6, size=32, seed=0)
    rng = np.random.default_rng(0)
    relevance = masks * 2.0 + rng.random(masks.shape)
    expected = (relevance * masks).sum((1, 2)) / relevance.sum((1, 2))
    np.testing.assert_allclose(mask_share(relevance, masks).numpy(), expected)
    assert pointing_game(relevance, masks).all()
    assert not pointing_game(-relevance, masks).any()


# --------------------------------------------------------------------------- the substrate of deletion
class SquareDetectorThatFearsBlack(nn.Module):
    """Class 1's logit: how bright the brightest 4x4 patch is, minus a heavy penalty on the
    share of black pixels. A stand-in for a CNN that never saw a black pixel: a few of
    them change its prediction wherever they are."""

    def forward(self, x):
        brightness = x.mean(1, keepdim=True)
        square = F.avg_pool2d(brightness, 4, stride=1).flatten(1).max(1).values  # 1 on the square
        black = (brightness < 0.02).float().mean((1, 2, 3))
        logit = 12 * (square - 0.7) - 60 * black
        return torch.stack([torch.zeros_like(logit), logit], 1)


def test_a_blurred_substrate_separates_a_perfect_ranking_from_random_where_black_cannot(squares):
    x, mask = squares
    model = SquareDetectorThatFearsBlack()
    assert (model(x).argmax(1) == 1).all()
    options = dict(target=1, step=16)
    perfect_black = deletion_curve(model, x, mask.float(), **options)
    random_black = deletion_curve(model, x, "random", **options)
    # black pixels: both orders collapse after the first step of 16 pixels, nothing is told apart
    assert random_black.scores[:, 2].max() < 0.05 and random_black.mean_auc < 0.15
    assert perfect_black.mean_auc > random_black.mean_auc - 0.05
    # the blurred copy: removing the square first kills the class at once, a random order slowly
    perfect = deletion_curve(model, x, mask.float(), substrate="blur", **options)
    random = deletion_curve(model, x, "random", substrate="blur", **options)
    assert perfect.mean_auc < 0.1 < 0.3 < random.mean_auc
    difference, se = auc_difference(perfect, random)
    assert difference < -10 * se  # far beyond the noise over these 16 images
    assert perfect.auc_se > 0 and random.auc_se > 0


def test_the_named_substrates_are_where_deletion_ends(detector, squares):
    x, mask = squares
    prob = lambda images: detector(images).softmax(1)[:, 1]
    with torch.no_grad():
        for substrate, end in (("blur", gaussian_blur(x, 5.0)), ("mean", x.mean((2, 3), keepdim=True).expand_as(x)),
                               (0.5, torch.full_like(x, 0.5))):
            curve = deletion_curve(detector, x, mask.float(), target=1, step=64, substrate=substrate)
            torch.testing.assert_close(curve.scores[:, -1], prob(end))
            torch.testing.assert_close(curve.scores[:, 0], prob(x))
    with pytest.raises(ValueError, match="'blur' or 'mean', got 'grey'"):
        deletion_curve(detector, x, mask.float(), substrate="grey")


def test_auc_difference_is_paired_and_its_standard_error_known():
    fractions = torch.tensor([0.0, 1.0], dtype=torch.float64)
    flat = lambda levels: Curve(fractions, torch.tensor(levels)[:, None].repeat(1, 2), torch.tensor(levels),
                                torch.zeros(len(levels)))
    baseline = flat([0.5, 0.1, 0.9, 0.3])
    better = flat([0.4, 0.0, 0.8, 0.1])       # differences -0.1, -0.1, -0.1, -0.2
    mean, se = auc_difference(better, baseline)
    assert mean == pytest.approx(-0.125)
    assert se == pytest.approx(np.std([-0.1, -0.1, -0.1, -0.2], ddof=1) / 2)
    assert baseline.auc_se == pytest.approx(np.std([0.5, 0.1, 0.9, 0.3], ddof=1) / 2)
    with pytest.raises(ValueError, match="same images"):
        auc_difference(better, flat([0.1]))
