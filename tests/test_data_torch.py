"""reference_torch.data: torch Dataset/DataLoader over the numpy arrays of minidl.data."""
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from minidl.data import ArrayDataset
from reference_torch.data import TorchArrayDataset, make_loader, to_tensors
from reference_torch.distributed import DistInfo, distribute_loader


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    return rng.random((37, 3, 4, 4)).astype(np.float32), np.arange(37, dtype=np.int64)


def all_labels(loader):
    return torch.cat([yb for _, yb in loader]).tolist()


def test_dataset_shares_memory_and_indexes_rows(arrays):
    x, y = arrays
    ds = TorchArrayDataset(x, y)
    assert len(ds) == 37
    xi, yi = ds[5]
    assert torch.equal(xi, torch.from_numpy(x[5])) and yi.item() == 5
    x[5, 0, 0, 0] = 42.0  # no copy was made
    assert ds[5][0][0, 0, 0].item() == 42.0
    with pytest.raises(ValueError, match="different lengths"):
        TorchArrayDataset(x, y[:-1])


def test_loader_in_order_and_batched(arrays):
    x, y = arrays
    loader = make_loader(x, y, batch_size=10)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [10, 10, 10, 7]
    xb, yb = batches[0]
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.shape == (10, 3, 4, 4)
    assert torch.equal(xb, torch.from_numpy(x[:10]))
    assert all_labels(loader) == list(range(37))
    assert not loader.pin_memory or torch.cuda.is_available()


def test_loader_shuffle_is_seeded(arrays):
    x, y = arrays
    a = make_loader(x, y, batch_size=8, shuffle=True, seed=3)
    b = make_loader(x, y, batch_size=8, shuffle=True, seed=3)
    first = all_labels(a)
    assert first == all_labels(b) and sorted(first) == list(range(37)) and first != list(range(37))
    assert all_labels(a) != first  # the generator moves on: a new order next epoch
    assert all_labels(make_loader(x, y, batch_size=8, shuffle=True, seed=4)) != first
    dropped = make_loader(x, y, batch_size=8, shuffle=True, drop_last=True)
    assert len(dropped) == 4 and len(all_labels(dropped)) == 32


def test_batch_transform_on_inputs_only(arrays):
    x, y = arrays
    loader = make_loader(x, y, batch_size=16, transform=lambda xb: xb * 0 - 1)
    for xb, yb in loader:
        assert (xb == -1).all()
    assert all_labels(loader) == list(range(37))


def test_from_minidl_split_and_to_tensors(arrays):
    x, y = arrays
    split = ArrayDataset(x, y)
    assert all_labels(make_loader(split, batch_size=5)) == list(range(37))
    tx, ty = to_tensors(split)
    assert tx.data_ptr() == torch.from_numpy(x).data_ptr()  # shared, not copied
    assert ty.dtype == torch.int64 and ty.shape == (37,)


def test_distributed_sampler_gives_each_rank_its_share(arrays):
    x, y = arrays
    shares = []
    for rank in range(2):
        def sampler(dataset, rank=rank):  # built by make_loader on its own dataset
            return DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=1)
        loader = make_loader(x, y, batch_size=4, sampler=sampler)
        loader.sampler.set_epoch(0)
        shares.append(all_labels(loader))
    assert len(shares[0]) == len(shares[1]) == 19  # 37 padded to 38, split in two
    assert set(shares[0]) | set(shares[1]) == set(range(37))
    with pytest.raises(ValueError, match="shuffle=True with a sampler"):
        make_loader(x, y, shuffle=True, sampler=DistributedSampler(TorchArrayDataset(x, y), 2, 0))


def test_distribute_loader_rebuilds_ours_per_rank(arrays):
    """The Trainer shards a plain loader with reference_torch.distributed.distribute_loader."""
    x, y = arrays
    plain = make_loader(x, y, batch_size=5, shuffle=True, seed=0, transform=lambda xb: xb + 1)
    shards = [distribute_loader(plain, DistInfo(rank=r, world_size=2), seed=0) for r in range(2)]
    assert all(isinstance(s.sampler, DistributedSampler) and s.sampler.shuffle for s in shards)
    seen = [all_labels(s) for s in shards]
    assert len(set(seen[0]) & set(seen[1])) <= 1  # 37 padded to 38: one index twice
    assert set(seen[0]) | set(seen[1]) == set(range(37))
    xb, _ = next(iter(shards[0]))
    assert xb.min() >= 1  # the batch transform travels with the collate function


def test_worker_processes(arrays):
    x, y = arrays
    loader = make_loader(x, y, batch_size=10, num_workers=1)
    assert all_labels(loader) == list(range(37))
