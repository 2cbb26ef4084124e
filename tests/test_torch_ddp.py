"""DistributedDataParallel: 2 CPU processes under torchrun (gloo on 127.0.0.1).

The test launches this same file as the torchrun script; the ``__main__`` block below
is what each rank runs. A BN-free model is used, since batch norm computes its
statistics per process and would differ from a single-process run without SyncBN.
"""
import gc
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from two_ranks import run_two_ranks

REPO = Path(__file__).resolve().parents[1]
GLOBAL_BATCH, EPOCHS, N = 16, 2, 64


def dataset():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0].mean((1, 2)) > 0).long()
    return TensorDataset(x, y)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def train(train_loader, checkpoint_dir=None, progress=False):
    from reference_torch.train import Trainer, warmup_cosine
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.3, momentum=0.9)
    trainer = Trainer(net, opt, scheduler=warmup_cosine(opt, 8, 2), seed=7, device="cpu",
                      checkpoint_dir=checkpoint_dir, progress=progress)
    trainer.fit(train_loader, EPOCHS)
    return trainer


@pytest.mark.slow
def test_two_ranks_stay_in_sync_and_match_one_process(tmp_path):
    done = run_two_ranks(__file__, tmp_path)

    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2 and ranks[1]["rank"] == 1
    # DDP all-reduces gradients, so both replicas take identical steps, bit for bit.
    for k, v in ranks[0]["params"].items():
        assert torch.equal(v, ranks[1]["params"][k]), f"ranks disagree on {k}"
    assert ranks[0]["history"] == ranks[1]["history"]  # metrics are averaged over both ranks
    # Only rank 0 writes checkpoints and prints the epoch summaries.
    assert (tmp_path / "ckpt_rank0" / "last.pt").exists() and not (tmp_path / "ckpt_rank1").exists()
    assert done.stdout.count(f"epoch {EPOCHS}/{EPOCHS}") == 1, done.stdout
    checkpoint = torch.load(tmp_path / "ckpt_rank0" / "last.pt", weights_only=True)
    assert checkpoint["step"] == ranks[0]["step"] and len(checkpoint["rng"]) == 2  # each rank's RNG

    # One process with the same global batch, reading the data in the same order
    # (DistributedSampler with one replica shuffles by the same seed + epoch).
    ds = dataset()
    single = train(DataLoader(ds, batch_size=GLOBAL_BATCH, drop_last=True,
                              sampler=DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)))
    assert single.step == ranks[0]["step"] == EPOCHS * N // GLOBAL_BATCH
    start = model().state_dict()
    for k, v in single.model.state_dict().items():
        assert not torch.equal(v, start[k]), f"{k} did not train"
        # Averaging two half-batch gradients equals the full-batch mean up to rounding.
        assert torch.allclose(v, ranks[0]["params"][k], atol=1e-5, rtol=1e-4), k
    for a, b in zip(single.history, ranks[0]["history"]):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-5 for k in a)


if __name__ == "__main__":  # one rank, started by torchrun
    sys.path.insert(0, str(REPO))
    from reference_torch.distributed import cleanup

    out = Path(sys.argv[1])
    rank = int(os.environ["RANK"])
    # A plain shuffling loader with the per-process batch; the Trainer shards it.
    loader = DataLoader(dataset(), batch_size=GLOBAL_BATCH // 2, shuffle=True, drop_last=True)
    trainer = train(loader, checkpoint_dir=out / f"ckpt_rank{rank}", progress=True)
    torch.save({"params": trainer.model.state_dict(), "history": trainer.history, "step": trainer.step,
                "rank": trainer.dist.rank, "world_size": trainer.dist.world_size}, out / f"rank{rank}.pt")
    del trainer  # the DDP wrapper holds the process group: free it before the group goes
    gc.collect()
    cleanup()
