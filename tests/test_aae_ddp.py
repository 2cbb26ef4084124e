"""The adversarial autoencoder's Trainer under torchrun (two gloo processes on the CPU):
both of its updates average the gradients over the processes by hand, since its
discriminator step runs outside DistributedDataParallel's forward. The two ranks must
end with the same weights, every part of the model trained, and the global batch's
gradient the same as one process's (the discriminator's prior samples aside, which
each rank draws itself: so the check is on the autoencoder at lambda_ = 1).

The test launches this same file as the torchrun script; the ``__main__`` block is
what each rank runs."""
import gc
import os
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from two_ranks import run_two_ranks  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, N = 16, 64


def train(loader, lambda_):
    from reference_torch.aae import AAETrainer, AdversarialAE, aae_optimizers
    torch.manual_seed(0)
    model = AdversarialAE(z_dim=2)
    trainer = AAETrainer(model, *aae_optimizers(model), lambda_=lambda_, device="cpu", progress=False, seed=3)
    trainer.fit(loader, 1)
    return trainer


def images():
    return torch.rand(N, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.slow
def test_two_ranks_take_the_same_steps_as_one_process(tmp_path):
    run_two_ranks(__file__, tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}_{lam}.pt", weights_only=True) for r in (0, 1) for lam in ("1", "0.5")]
    start = train_start()
    for a, b in ((ranks[0], ranks[2]), (ranks[1], ranks[3])):  # the same lambda_ on both ranks
        for key, value in a.items():
            assert torch.equal(value, b[key]), f"the ranks disagree on {key}"
    for key, value in ranks[1].items():  # lambda_ 0.5: the discriminator and the encoder both moved
        assert not torch.equal(value, start[key]), f"{key} did not train"
    # lambda_ 1: the autoencoder's update is the global batch's, as in one process
    from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
    data = TensorDataset(images(), torch.zeros(N))
    single = train(DataLoader(data, batch_size=GLOBAL_BATCH, drop_last=True,
                              sampler=DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=3)), 1.0)
    for key, value in single.model.state_dict().items():
        if not key.startswith("discriminator"):
            torch.testing.assert_close(value, ranks[0][key], atol=1e-5, rtol=1e-4)


def train_start():
    from reference_torch.aae import AdversarialAE
    torch.manual_seed(0)
    return AdversarialAE(z_dim=2).state_dict()


if __name__ == "__main__":  # one rank, started by torchrun
    sys.path.insert(0, str(REPO))
    from torch.utils.data import DataLoader, TensorDataset

    from reference_torch.distributed import cleanup
    out, rank = Path(sys.argv[1]), int(os.environ["RANK"])
    for lam in (1.0, 0.5):
        loader = DataLoader(TensorDataset(images(), torch.zeros(N)), batch_size=GLOBAL_BATCH // 2,
                            shuffle=True, drop_last=True)
        trainer = train(loader, lam)
        torch.save(trainer.model.state_dict(), out / f"rank{rank}_{lam:g}.pt")
        del trainer
        gc.collect()
    cleanup()
