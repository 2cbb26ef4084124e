"""reference_torch.ssl: NT-Xent against a direct loop over the 2N views (full and short
batches, temperatures down to where a naive exp overflows), aligned views below shuffled
ones, and under DDP (2 gloo processes under torchrun, this file as the script) the same
loss and gradients as one process with the global batch; FixMatch's unlabelled loss at
the two ends of tau, its balanced reproducible labelled subset, and its views.

The ``__main__`` block at the end is what each torchrun rank runs."""
import gc
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from reference_torch import ssl  # noqa: E402
from two_ranks import run_two_ranks  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PER_RANK, DIM = 3, 6  # the gloo test: 2 ranks x 3 images, 6-d inputs


def loop_nt_xent(z1, z2, temperature):
    """NT-Xent written out: for each of the 2N views, -log of exp(sim to its partner / T)
    over the sum of exp(sim / T) to every other view, in float64 Python arithmetic."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    views, n = len(z), len(z1)
    total = 0.0
    for i in range(views):
        sims = [float(z[i] @ z[k]) / temperature for k in range(views)]
        top = max(s for k, s in enumerate(sims) if k != i)  # subtracted for float64's sake at small T
        denominator = sum(math.exp(s - top) for k, s in enumerate(sims) if k != i)
        total += -(sims[(i + n) % views] - top - math.log(denominator))
    return total / views


@pytest.mark.parametrize("n", [8, 5, 1])  # a full batch, a short last batch, a single image
def test_nt_xent_matches_the_loop(n):
    g = torch.Generator().manual_seed(n)
    z1, z2 = torch.randn(n, 4, generator=g), torch.randn(n, 4, generator=g)
    assert ssl.nt_xent(z1, z2, 0.5).item() == pytest.approx(loop_nt_xent(z1, z2, 0.5), rel=1e-5)
    logits, targets = ssl.nt_xent_logits(z1, z2, 0.5)
    assert logits.shape == (2 * n, 2 * n) and torch.isinf(logits.diagonal()).all()
    assert targets.tolist() == list(range(n, 2 * n)) + list(range(n))


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.07, 1e-3])
def test_temperature_scaling_is_exact_and_stable(temperature):
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(6, 5, generator=g)
    z2 = z1 + 0.3 * torch.randn(6, 5, generator=g)
    loss = ssl.nt_xent(z1, z2, temperature)
    assert torch.isfinite(loss)  # at T = 1e-3, exp(similarity / T) alone overflows float32
    assert loss.item() == pytest.approx(loop_nt_xent(z1, z2, temperature), rel=1e-4, abs=1e-4)


def test_aligned_views_score_lower_than_shuffled():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(32, 16, generator=g)
    aligned = z1 + 0.1 * torch.randn(32, 16, generator=g)
    shuffled = aligned[torch.randperm(32, generator=g)]
    assert ssl.nt_xent(z1, aligned, 0.5) < ssl.nt_xent(z1, shuffled, 0.5) - 1.0
    # The lowest possible loss at T: partners identical, every other pair orthogonal.
    eye = torch.eye(8)
    assert ssl.nt_xent(eye, eye, 0.5).item() == pytest.approx(-math.log(math.e ** 2 / (math.e ** 2 + 14)), rel=1e-6)


def global_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2 * PER_RANK, DIM, generator=g), torch.randn(2 * PER_RANK, DIM, generator=g)


def encoder():
    torch.manual_seed(0)
    return nn.Linear(DIM, 4)


@pytest.mark.slow
def test_two_gloo_ranks_equal_one_process_with_the_global_batch(tmp_path):
    run_two_ranks(__file__, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]

    x1, x2 = global_batch()
    model = encoder()
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = ssl.nt_xent(z1, z2, 0.5)
    loss.backward()
    for rank in ranks:
        assert rank["loss"] == pytest.approx(loss.item(), rel=1e-6)
        for name, p in model.named_parameters():  # DDP averaged the two ranks' gradients
            assert torch.allclose(rank["grads"][name], p.grad, atol=1e-6), name
    # Each rank alone (its 3 images only, no gathered negatives) is a different loss:
    # what the gloo run would have matched without the all-gather.
    halves = [ssl.nt_xent(z1[r * PER_RANK:(r + 1) * PER_RANK], z2[r * PER_RANK:(r + 1) * PER_RANK], 0.5)
              for r in (0, 1)]
    assert abs(sum(h.item() for h in halves) / 2 - loss.item()) > 0.05


# --------------------------------------------------------------------------- FixMatch
def test_unlabelled_loss_is_zero_below_tau_and_plain_cross_entropy_at_tau_zero():
    g = torch.Generator().manual_seed(3)
    weak = (0.1 * torch.randn(16, 10, generator=g)).requires_grad_()  # top probability about 0.12
    strong = torch.randn(16, 10, generator=g, requires_grad=True)
    loss, mask, _ = ssl.fixmatch_unlabelled_loss(weak, strong, tau=0.95)
    assert loss.item() == 0.0 and mask.sum().item() == 0
    loss, mask, pseudo = ssl.fixmatch_unlabelled_loss(weak, strong, tau=0.0)
    assert mask.all() and torch.equal(pseudo, weak.argmax(1))
    assert loss.item() == pytest.approx(F.cross_entropy(strong, weak.argmax(1)).item(), rel=1e-6)
    loss.backward()
    assert weak.grad is None and strong.grad is not None  # the pseudo-label is a fixed target
    # In between, the mean runs over all images: only the confident ones add to it.
    confident = torch.zeros(4, 10)
    confident[0, 3] = 20.0  # one confident image of four
    loss, mask, _ = ssl.fixmatch_unlabelled_loss(confident, torch.zeros(4, 10), tau=0.95)
    assert mask.tolist() == [1, 0, 0, 0] and loss.item() == pytest.approx(math.log(10) / 4, rel=1e-6)


def test_labelled_subset_is_balanced_reproducible_and_disjoint():
    y = np.random.default_rng(0).integers(0, 5, size=300)
    labelled, unlabelled = ssl.balanced_labelled_subset(y, per_class=4, seed=1)
    assert np.bincount(y[labelled]).tolist() == [4] * 5
    assert np.array_equal(labelled, ssl.balanced_labelled_subset(y, 4, seed=1)[0])
    assert not np.array_equal(labelled, ssl.balanced_labelled_subset(y, 4, seed=2)[0])
    assert sorted(np.concatenate([labelled, unlabelled]).tolist()) == list(range(300))
    with pytest.raises(ValueError, match="fewer than 100"):
        ssl.balanced_labelled_subset(y, per_class=100, seed=1)


def test_weak_and_strong_views_differ_and_share_the_label():
    from minidl.data import make_shapes
    images, labels, _, _ = make_shapes(8, size=32, seed=0)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # uint8 NHWC -> floats NCHW
    weak, strong = ssl.weak_augment(32, seed=0)(x), ssl.strong_augment(32, seed=0)(x)
    assert weak.shape == strong.shape == x.shape
    per_image = (weak - strong).abs().flatten(1).mean(1)
    assert (per_image > 0.01).all()  # every image's strong view differs from its weak view
    # Both views go through one forward pass in the order of the unlabelled batch, and the
    # strong view of image i is scored against the weak view's prediction for image i.
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        def forward(self, inputs):
            seen.append(inputs)
            # Confident logits that depend on the image: the class of its brightest channel.
            return 50.0 * self.scale * F.one_hot(inputs.mean((2, 3)).argmax(1), 10).float()

    step = ssl.fixmatch_step(lambda v: v, lambda v: v.flip(2), tau=0.5)
    y = torch.as_tensor(labels).long()
    loss, metrics = step(Recorder(), (x[:2], y[:2]), (x, y))
    inputs = seen[0]
    assert len(inputs) == 2 + 2 * len(x)
    assert torch.equal(inputs[2:10], x) and torch.equal(inputs[10:], x.flip(2))
    # A vertical flip keeps each image's brightest channel: every pseudo-label holds,
    # so the unlabelled loss is (almost) zero; mispairing the views would make it large.
    assert metrics["mask_rate"].item() == 1.0 and metrics["loss_u"].item() < 1e-6


# --------------------------------------------------------------------------- the drivers
@pytest.fixture(scope="module")
def simclr_run(tmp_path_factory):
    from driver_run import quick_run_in
    return quick_run_in(tmp_path_factory, "simclr")


@pytest.fixture(scope="module")
def fixmatch_run(tmp_path_factory):
    from driver_run import quick_run_in
    return quick_run_in(tmp_path_factory, "fixmatch")


@pytest.mark.slow
def test_simclr_quick_run_beats_the_random_encoder(simclr_run):
    out, metrics, manifest = simclr_run
    assert {f["file"] for f in manifest["figures"]} >= {"similarity_matrix.png", "pretraining.png",
                                                        "label_budget.png", "tsne.png"}
    assert metrics["final_loss"] < math.log(2 * 128 - 1) - 0.3  # below chance: uniform over 255 candidates
    # Similarity and contrast: positive pairs end up closer than the other pairs, far more than before.
    assert metrics["positive_minus_negative_cosine_after"] > metrics["positive_minus_negative_cosine_before"] + 0.2
    assert [row["budget"] for row in metrics["budgets"]] == [0.01, 1.0]
    # At the fewest labels (one per class) the SimCLR features beat the random encoder's by more
    # than two standard errors of a difference of two accuracies on the 360 test images.
    fewest = metrics["budgets"][0]
    noise = math.sqrt(2 * fewest["random"] * (1 - fewest["random"]) / 360)
    assert fewest["simclr"] > fewest["random"] + 2 * noise, fewest
    assert manifest["headline"]["value"] == fewest["simclr"] and manifest["headline"]["baseline"] == fewest["random"]


@pytest.mark.slow
def test_fixmatch_quick_run_beats_labelled_only(fixmatch_run):
    out, metrics, manifest = fixmatch_run
    assert {f["file"] for f in manifest["figures"]} == {"views.png", "training.png", "tau_sweep.png"}
    assert metrics["fixmatch_accuracy"] > metrics["labelled_only_accuracy"] + 0.02
    assert manifest["headline"]["baseline"] == metrics["labelled_only_accuracy"]
    assert metrics["labels"] == 10 * metrics["per_class"] and 0 < metrics["mask_rate"] <= 1
    # The labelled subset is the seeded one: the same as reference_torch builds from the seed.
    import minidl.data
    y = minidl.data.load_dataset("digits", size=28, seed=0).train.y
    assert metrics["labelled_indices"] == ssl.balanced_labelled_subset(y, metrics["per_class"], 0)[0][:20].tolist()


# (driver, the epoch call that is killed, the epoch the resumed run starts from): SimCLR in its
# third pre-training epoch; FixMatch after the 4 labelled-only epochs, in its second.
@pytest.mark.slow
@pytest.mark.parametrize("name, stop_at, resumed_from", [("simclr", 3, 2), ("fixmatch", 6, 1)])
def test_an_interrupted_run_resumed_ends_as_the_uninterrupted_one(name, stop_at, resumed_from, request, tmp_path,
                                                                   monkeypatch):
    """Stop a quick run at an epoch (SimCLR: the third of pre-training; FixMatch: the second
    of its FixMatch run, after the labelled-only one), as a kill would, then --resume it:
    the same histories and metrics as the run that never stopped (the augmentations' random
    stream, the loaders' order and the labelled subset all come back), and the epochs
    already finished are not trained again."""
    from driver_run import history_rows, run_killed, run_quick

    reference, reference_metrics, _ = request.getfixturevalue(f"{name}_run")
    out = tmp_path / "run"
    epochs = run_killed(monkeypatch, name, out, stop_at)
    metrics, _ = run_quick(name, out, "--resume")
    assert epochs[0] == resumed_from  # where it stopped: nothing finished is trained again
    assert history_rows(out) == history_rows(reference)  # these drivers write no times into it
    assert metrics == reference_metrics


def test_bad_options_stop_with_one_line(tmp_path):
    from driver_run import assert_refused

    from assignments.__main__ import main
    assert_refused(tmp_path, "simclr", "--budgets", "0.1,0")
    assert_refused(tmp_path, "fixmatch", "--taus", "0.5,1.5")
    assert_refused(tmp_path, "fixmatch", "--ema", "1")
    with pytest.raises(SystemExit, match="--per-class 500 is too many for digits"):
        main(["run", "fixmatch", "--quick", "--per-class", "500", "--out", str(tmp_path / "many")])


if __name__ == "__main__":  # one rank, started by torchrun: NT-Xent under DDP
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    out = Path(sys.argv[1])
    dist.init_process_group("gloo", init_method="env://")
    rank = dist.get_rank()
    x1, x2 = (x[rank * PER_RANK:(rank + 1) * PER_RANK] for x in global_batch())
    model = DistributedDataParallel(encoder())
    z1, z2 = model(torch.cat([x1, x2])).chunk(2)
    loss = ssl.nt_xent(z1, z2, 0.5)
    loss.backward()
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.save({"loss": mean_loss.item() / dist.get_world_size(),
                "grads": {k: p.grad for k, p in model.module.named_parameters()}}, out / f"rank{rank}.pt")
    del model
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
