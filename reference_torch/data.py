"""numpy arrays (from ``minidl.data``) -> torch ``Dataset`` and ``DataLoader``.

    from minidl.data import load_dataset
    from reference_torch.data import make_loader

    splits = load_dataset("shapes")
    train = make_loader(splits.train, batch_size=128, shuffle=True, seed=0)
    for xb, yb in train:                      # float32 (B, 3, 32, 32), int64 (B,)
        ...

No torchvision: the arrays already are tensors-to-be. Tensors share memory with the
numpy arrays (``torch.from_numpy``), so wrapping a dataset copies nothing. Batches
come out pinned when CUDA is available, so ``.to(device, non_blocking=True)`` overlaps
the copy with compute. Under torchrun, pass ``sampler=DistributedSampler`` (the class,
or an instance built on ``TorchArrayDataset``) and each process reads its own share.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate


def _as_tensor(array):
    if isinstance(array, torch.Tensor):
        return array
    array = np.ascontiguousarray(array)  # a no-op for the usual contiguous arrays
    if not array.flags.writeable:  # torch tensors are always writable: do not alias
        array = array.copy()
    return torch.from_numpy(array)


class TorchArrayDataset(Dataset):
    """Aligned arrays (numpy or torch, same first dimension) as a map-style Dataset:
    ``ds[i]`` is the tuple of the i-th rows. ``transform`` (optional) is applied to the
    first array's row (the input) of each example."""

    def __init__(self, *arrays, transform=None):
        if len(arrays) == 1 and hasattr(arrays[0], "x") and hasattr(arrays[0], "y"):
            arrays = (arrays[0].x, arrays[0].y)  # a minidl ArrayDataset
        if not arrays:
            raise ValueError("TorchArrayDataset needs at least one array")
        self.tensors = tuple(_as_tensor(a) for a in arrays)
        lengths = [len(t) for t in self.tensors]
        if len(set(lengths)) != 1:
            raise ValueError(f"TorchArrayDataset: arrays of different lengths {lengths}")
        self.transform = transform

    def __len__(self):
        return len(self.tensors[0])

    def __getitem__(self, index):
        row = [t[index] for t in self.tensors]
        if self.transform is not None:
            row[0] = self.transform(row[0])
        return tuple(row)

    def __getitems__(self, indices):
        """A whole batch in one indexing operation per array, instead of one per row
        (the DataLoader calls this when it exists)."""
        if self.transform is not None:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.long)
        columns = [t[index] for t in self.tensors]
        return list(zip(*columns))


class BatchTransform:
    """Collate a batch, then apply ``transform`` to its first tensor (the inputs).
    A class rather than a closure so that worker processes can pickle it."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, rows):
        batch = list(default_collate(rows))
        batch[0] = self.transform(batch[0])
        return tuple(batch)


def make_loader(*arrays, batch_size=128, shuffle=False, seed=0, drop_last=False, num_workers=0,
                transform=None, sampler=None):
    """A torch DataLoader over numpy arrays, a minidl ``ArrayDataset`` or a Dataset.

    shuffle      a new order every epoch from a generator seeded with ``seed`` (the
                 Trainer reseeds ``loader.generator`` per epoch for exact resumption)
    transform    applied to each collated batch of inputs (B, C, H, W) on the CPU, e.g.
                 a ``reference_torch.augment.Compose``; runs in the workers if any
    sampler      a Sampler, or a callable that builds one from the dataset (such as the
                 ``DistributedSampler`` class); it then decides the order, so leave
                 ``shuffle`` False and let the sampler shuffle
    """
    if len(arrays) == 1 and isinstance(arrays[0], Dataset):
        dataset = arrays[0]
    else:
        dataset = TorchArrayDataset(*arrays)
    if sampler is not None and not isinstance(sampler, Sampler) and callable(sampler):
        sampler = sampler(dataset)
    if sampler is not None and shuffle:
        raise ValueError("make_loader: shuffle=True with a sampler; the sampler sets the order "
                         "(DistributedSampler shuffles by itself), so pass shuffle=False")
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last,
        num_workers=num_workers, collate_fn=BatchTransform(transform) if transform else None,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed) if shuffle else None,
        persistent_workers=num_workers > 0)


def to_tensors(split, device=None):
    """``(x, y)`` of a minidl ``ArrayDataset`` as torch tensors (sharing memory on
    the CPU), moved to ``device`` when given."""
    x, y = _as_tensor(split.x), _as_tensor(split.y)
    if device is not None:
        x, y = x.to(device), y.to(device)
    return x, y
