"""The VAE and the adversarial autoencoder (UvA DL1 assignment 3, parts 1 and 2): the
course's conventions, each as a test (zero weights give L_rec = 784 ln 16, L_reg = 0 and
4 bits per dimension; the AAE's losses -ln 0.5 and 0; KLD's closed forms; a constant-0.5
image is 1 bit per dimension), the KL term against a Monte Carlo estimate, the
reparameterisation's moments and gradients, legal samples, both optimisers of the AAE
restored on resume; then the drivers' quick runs: the decoder fed the encoder's mean
beats a random code, and the AAE's discriminator cannot tell the codes from the prior."""
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from driver_run import assert_refused, quick_run_fixture  # noqa: E402
from minidl.data import load_dataset  # noqa: E402
from reference_torch.aae import AAETrainer, AdversarialAE, aae_optimizers  # noqa: E402
from reference_torch.checkpoint import load_checkpoint  # noqa: E402
from reference_torch.vae import (KLD, VAE, CNNDecoder, CNNEncoder, discretize, elbo_to_bpd, marginal_bpd,  # noqa: E402
                                 per_image_bpd, expected_image, sample_reparameterize, visualize_manifold)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def zeroed(model):
    for p in model.parameters():
        p.data.fill_(0.0)
    return model


# ----------------------------------------------------------------------------- KLD
def test_kld_closed_forms():
    one = torch.zeros(1, 1)
    assert KLD(one, one).item() == 0.0  # N(0, 1) against itself
    assert KLD(one + 2, one).item() == pytest.approx(2.0, abs=1e-6)  # mean^2 / 2
    assert KLD(one, one + 1).item() == pytest.approx(2.194528, abs=1e-6)  # (e^2 - 1 - 2) / 2


def test_kld_is_symmetric_in_the_mean_and_sums_over_the_last_dimension():
    torch.manual_seed(42)
    mean, log_std = torch.randn(16, 4), torch.randn(16, 4)
    out = KLD(mean, log_std)
    assert out.shape == (16,)
    assert torch.equal(out, KLD(-mean, log_std))
    per_dimension = sum(KLD(mean[:, i:i + 1], log_std[:, i:i + 1]) for i in range(4))
    torch.testing.assert_close(out, per_dimension)


def test_kld_matches_a_monte_carlo_estimate():
    """E_q[log q(z) - log p(z)] over 400,000 samples of q, by torch.distributions' densities."""
    gen = torch.Generator().manual_seed(0)
    mean, log_std = torch.tensor([[0.7, -1.2, 0.0]]), torch.tensor([[-0.5, 0.3, 0.8]])
    q, p = torch.distributions.Normal(mean, log_std.exp()), torch.distributions.Normal(0.0, 1.0)
    z = mean + log_std.exp() * torch.randn(400_000, 3, generator=gen, dtype=torch.float64)
    estimate = (q.log_prob(z) - p.log_prob(z)).sum(dim=1).mean().item()
    assert KLD(mean, log_std).item() == pytest.approx(estimate, abs=0.01)


# ------------------------------------------------------------------ reparameterisation
def test_reparameterised_samples_have_the_given_mean_and_std():
    torch.manual_seed(42)
    for _ in range(5):
        mean, std = torch.randn(1), torch.randn(1).exp()
        out = sample_reparameterize(mean.expand(40_000), std.expand(40_000))
        assert out.mean().item() == pytest.approx(mean.item(), abs=0.05 * std.item())
        assert out.std().item() == pytest.approx(std.item(), rel=0.03)


def test_reparameterised_samples_carry_gradients_to_mean_and_std():
    torch.manual_seed(42)
    mean = torch.randn(16, 4, requires_grad=True)
    log_std = torch.randn(16, 4, requires_grad=True)
    std = log_std.exp()
    std.retain_grad()
    z = sample_reparameterize(mean, std)
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones(16, 4))  # dz/dmean = 1
    torch.testing.assert_close(std.grad, ((z - mean) / std).detach())  # dz/dstd = the noise
    assert log_std.grad is not None and (log_std.grad != 0).all()
    with pytest.raises(AssertionError, match="negative std"):
        sample_reparameterize(mean, -std)


# ------------------------------------------------------------------------------ bpd
def test_bpd_of_a_constant_half_image_is_one_bit():
    """Every dimension of probability 0.5 costs ln 2 nats, one bit, whatever the shape."""
    rng = np.random.default_rng(42)
    for _ in range(5):
        img = torch.zeros(8, *rng.integers(1, 20, size=3)) + 0.5
        elbo = -torch.log(img).sum(dim=(1, 2, 3))
        torch.testing.assert_close(elbo_to_bpd(elbo, img.shape), torch.ones(8))
    assert elbo_to_bpd(torch.tensor(784 * math.log(16)), (1, 1, 28, 28)).item() == pytest.approx(4.0)


def test_discretize_is_the_courses_four_bits():
    x = torch.tensor([0.0, 1 / 16 - 1e-4, 1 / 16, 0.5, 15 / 16, 1.0])
    assert discretize(x).tolist() == [0, 0, 1, 8, 15, 15]
    assert discretize(x).dtype == torch.int64


# -------------------------------------------------------------------------- the VAE
def test_encoder_and_decoder_shapes():
    torch.manual_seed(42)
    for z_dim in (2, 20, 33):
        mean, log_std = CNNEncoder(z_dim=z_dim)(torch.randint(16, (32, 1, 28, 28)))
        assert mean.shape == log_std.shape == (32, z_dim)
        assert (mean > 0).any() and (mean < 0).any() and (log_std > 0).any() and (log_std < 0).any()
    logits = CNNDecoder(z_dim=20)(torch.randn(64, 20))
    assert logits.shape == (64, 16, 28, 28) and (logits < 0).any()  # logits, not probabilities


def test_vae_at_zero_weights_gives_uniform_levels_and_four_bits():
    torch.manual_seed(42)
    vae = zeroed(VAE(num_filters=32, z_dim=20, lr=1e-3))
    L_rec, L_reg, bpd = vae(torch.randint(0, 16, (4, 1, 28, 28)))
    assert L_rec.shape == L_reg.shape == bpd.shape == ()
    assert L_rec.item() == pytest.approx(-math.log(1 / 16) * 784, abs=1e-2)
    assert L_reg.item() == 0.0
    assert bpd.item() == pytest.approx(4.0, abs=1e-5)


def test_vae_samples_are_legal_images_and_the_optimizer_has_the_lr():
    torch.manual_seed(0)
    vae = VAE(num_filters=8, z_dim=4, lr=3e-4)
    x = vae.sample(5)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 15 and len(x.unique()) > 2
    assert vae.configure_optimizers().param_groups[0]["lr"] == 3e-4


def test_expected_image_and_manifold_order():
    certain = torch.full((1, 16, 2, 2), -50.0)
    certain[:, 15] = 50.0
    assert expected_image(certain).flatten().tolist() == pytest.approx([1.0] * 4)
    assert expected_image(torch.zeros(1, 16, 2, 2)).flatten().tolist() == pytest.approx([0.5] * 4)
    torch.manual_seed(0)
    decoder, g = CNNDecoder(z_dim=2, num_filters=8), 4
    grid = visualize_manifold(decoder, grid_size=g)
    assert grid.shape == (g * 28, g * 28) and 0 <= grid.min() and grid.max() <= 1
    normal = torch.distributions.Normal(0.0, 1.0)
    for row, col in ((0, 0), (3, 1)):  # row 0 holds the largest z_2; column 0 the smallest z_1
        z = torch.stack([normal.icdf(torch.tensor((col + 0.5) / g)), normal.icdf(torch.tensor((g - row - 0.5) / g))])
        probs = decoder(z[None]).softmax(dim=1)
        mean = (probs * torch.arange(16.0).view(1, -1, 1, 1)).sum(dim=1)[0] / 15
        torch.testing.assert_close(grid[28 * row:28 * row + 28, 28 * col:28 * col + 28], mean, atol=1e-5, rtol=0)


# -------------------------------------------------------------------------- the AAE
def test_aae_shapes_and_ranges():
    torch.manual_seed(42)
    aae = AdversarialAE(z_dim=10)
    assert aae.encoder(torch.randn(4, 1, 28, 28)).shape == (4, 10)
    images = aae.decoder(torch.randn(128, 10) * 50)
    assert images.shape == (128, 1, 28, 28) and images.min() >= -1 and images.max() <= 1
    assert aae.discriminator(torch.randn(128, 10)).shape == (128, 1)
    samples = aae.sample(6)
    assert samples.shape == (6, 1, 28, 28) and samples.min() >= -1 and samples.max() <= 1


def test_aae_losses_at_zero_weights():
    aae = zeroed(AdversarialAE(z_dim=10))
    x = torch.zeros(4, 1, 28, 28)
    recon, z = aae(x)
    ae_loss, logs = aae.get_loss_autoencoder(x, recon, z, lambda_=0)  # adversarial only
    assert ae_loss.shape == () and ae_loss.item() == pytest.approx(-math.log(0.5), abs=1e-6)
    assert set(logs) == {"gen_loss", "recon_loss", "ae_loss"}
    ae_loss.backward()
    assert next(aae.encoder.parameters()).grad is not None
    aae.zero_grad()
    recon, z = aae(x)
    ae_loss, _ = aae.get_loss_autoencoder(x, recon, z, lambda_=1)  # reconstruction only
    assert ae_loss.item() == 0.0
    disc_loss, logs = aae.get_loss_discriminator(z)
    assert disc_loss.item() == pytest.approx(-math.log(0.5), abs=1e-6)
    assert logs["loss_real"].item() == pytest.approx(math.log(2)) and logs["accuracy"].item() == 0.5
    disc_loss.backward()
    assert next(aae.discriminator.parameters()).grad is not None


def test_aae_loss_mixes_reconstruction_and_generator_terms():
    torch.manual_seed(1)
    aae = AdversarialAE(z_dim=3)
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    recon, z = aae(x)
    ae_loss, logs = aae.get_loss_autoencoder(x, recon, z, lambda_=0.3)
    mse = ((recon - x) ** 2).mean()
    generator = torch.nn.functional.softplus(-aae.discriminator(z)).mean()  # -log sigmoid(logit)
    torch.testing.assert_close(logs["recon_loss"], mse)
    torch.testing.assert_close(logs["gen_loss"], generator)
    torch.testing.assert_close(ae_loss, 0.3 * mse + 0.7 * generator)


def tiny_aae_run(tmp_path, epochs, resume=False):
    torch.manual_seed(0)
    model = AdversarialAE(z_dim=2)
    x = torch.rand(48, 1, 28, 28) * 2 - 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(48)), batch_size=16,
                                         shuffle=True)
    autoencoder, _ = aae_optimizers(model)
    discriminator = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)  # an optimiser with a state
    trainer = AAETrainer(model, autoencoder, discriminator, lambda_=0.9, device="cpu", progress=False,
                         checkpoint_dir=tmp_path)
    trainer.fit(loader, epochs, resume=resume)
    return trainer


def test_aae_trainer_alternates_and_resumes_both_optimisers(tmp_path):
    """Two epochs in one go end with the same weights (discriminator included) as one epoch
    and a resumed second: the checkpoint holds the discriminator's Adam state too."""
    torch.manual_seed(0)  # the weights tiny_aae_run starts from
    start = {k: v.clone() for k, v in AdversarialAE(z_dim=2).state_dict().items()}
    straight = tiny_aae_run(tmp_path / "straight", 2)
    for part in ("encoder", "decoder", "discriminator"):
        moved = [not torch.equal(v, start[k]) for k, v in straight.model.state_dict().items() if k.startswith(part)]
        assert all(moved), f"the {part} did not train"
    assert {"recon_loss", "gen_loss", "disc_loss", "disc_accuracy"} <= set(straight.history[-1])
    tiny_aae_run(tmp_path / "resumed", 1)
    saved = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert saved["disc_optimizer"]["state"], "no discriminator optimiser state in the checkpoint"
    resumed = tiny_aae_run(tmp_path / "resumed", 2, resume=True)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)


# ------------------------------------------------------------------------ the drivers
vae_quick = quick_run_fixture("vae")


aae_quick = quick_run_fixture("aae")


def settings(out):
    return json.loads((out / "config.json").read_text())["settings"]


@pytest.mark.slow
def test_vae_quick_run(vae_quick):
    out, metrics, manifest = vae_quick
    assert {f["file"] for f in manifest["figures"]} == {"reconstructions.png", "samples.png", "training_curves.png",
                                                       "bpd.png", "manifold.png", "embedding.png"}
    epochs = settings(out)["epochs"]
    assert len(metrics["val_bpd"]) == len(metrics["test_bpd"]) == epochs
    assert all(0 < b < 4 for b in metrics["test_bpd"])  # below the uniform guess after an epoch
    (table,) = manifest["tables"]
    assert len(table["rows"]) == epochs + settings(out)["manifold_epochs"]


@pytest.mark.slow
def test_vae_decoder_fed_the_encoders_mean_beats_a_random_code(vae_quick):
    """From the run's checkpoint: -log p(x|z) of training images is lower with z the
    encoder's mean than with z drawn from the prior, image by image for most of them."""
    out, _, _ = vae_quick
    c = settings(out)
    model = VAE(num_filters=c["num_filters"], z_dim=c["z_dim"], lr=c["lr"])
    model.load_state_dict(load_checkpoint(out / "checkpoints" / f"vae_z{c['z_dim']}" / "last.pt")["model"])
    imgs = discretize(torch.from_numpy(load_dataset("digits", size=28).train.x[:200]))
    with torch.no_grad():
        mean, _ = model.encoder(imgs)
        nll = [torch.nn.functional.cross_entropy(model.decoder(z), imgs[:, 0], reduction="none").sum(dim=(1, 2))
               for z in (mean, torch.randn(mean.shape, generator=torch.Generator().manual_seed(1)))]
    assert (nll[0] < nll[1]).float().mean() > 0.8, (nll[0].mean(), nll[1].mean())


@pytest.mark.slow
def test_aae_quick_run_and_its_discriminator_is_near_chance(aae_quick):
    """The codes match the prior: the trained discriminator, measured afresh on validation
    codes and prior samples, is right about half the time, and the codes spread as the prior."""
    out, metrics, manifest = aae_quick
    assert {f["file"] for f in manifest["figures"]} == {"reconstructions.png", "samples.png", "codes_vs_prior.png",
                                                       "samples_per_lambda.png", "training_curves.png"}
    c = settings(out)
    assert [r["lambda_"] for r in metrics["lambdas"]] == list(c["lambdas"])
    model = AdversarialAE(z_dim=c["z_dim"])
    model.load_state_dict(load_checkpoint(out / "checkpoints" / f"aae_z{c['z_dim']}" / "last.pt")["model"])
    x = torch.from_numpy(load_dataset("digits", size=28).val.x) * 2 - 1
    torch.manual_seed(0)
    with torch.no_grad():
        codes = model.encoder(x)
        _, logs = model.get_loss_discriminator(codes)
    assert 0.3 < logs["accuracy"].item() < 0.7, logs["accuracy"]
    # and not because the discriminator learnt nothing: the codes spread about 0 as N(0, I) does
    assert (codes.mean(dim=0).abs() < 0.75).all() and (0.2 < codes.std(dim=0)).all() and (codes.std(dim=0) < 2).all()


@pytest.mark.parametrize("name, option, value", [
    ("vae", "--z-dim", "0"), ("vae", "--grid-size", "-3"), ("aae", "--lambda", "1.5"), ("aae", "--lambdas", "1,2"),
])
def test_bad_options_stop_before_anything_is_written(tmp_path, name, option, value):
    assert_refused(tmp_path, name, option, value, "--quick")


def test_marginal_bpd_of_a_constant_training_set_by_hand():
    train = torch.full((9, 1, 28, 28), 3)
    test = torch.cat([torch.full((1, 1, 28, 28), 3), torch.full((1, 1, 28, 28), 7)])
    # add-one smoothing: level 3 seen 9 times of 9 + 16 counts, level 7 never (1 of 25)
    expected = torch.tensor([-math.log2(10 / 25), -math.log2(1 / 25)])
    torch.testing.assert_close(marginal_bpd(train, test), expected)


def test_per_image_bpd_of_zero_weights_is_four_bits_each():
    imgs = torch.randint(0, 16, (5, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    bpd = per_image_bpd(zeroed(VAE(num_filters=4, z_dim=3, lr=1e-3)), imgs)
    torch.testing.assert_close(bpd, torch.full((5,), 4.0))


def test_he_init_spreads_the_codes_of_different_digits_apart():
    """PyTorch's default start gives every digit almost the same mean code, where the
    posterior collapsed on the digits for 30 epochs; He's start keeps them apart."""
    from reference_torch.vae import he_init
    imgs = discretize(torch.from_numpy(load_dataset("digits", size=28).test.x[:200]))
    torch.manual_seed(0)
    default = CNNEncoder(num_filters=16, z_dim=20)
    torch.manual_seed(0)
    he = he_init(CNNEncoder(num_filters=16, z_dim=20))
    with torch.no_grad():
        spread = [encoder(imgs)[0].var(dim=0).mean().item() for encoder in (default, he)]
    assert spread[1] > 10 * spread[0], spread
