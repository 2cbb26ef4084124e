"""A small minidl CNN end to end: it learns scikit-learn's digits (>= 98% test
accuracy) and real MNIST (>= 97% on 2,000 held-out test images after training on
8,000; skipped when the data is absent), and the same network in torch with the
same weights gives the same logits and the same gradient for every parameter,
with batch norm in training and in evaluation mode."""
import gzip
import os
import pathlib
import time

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

import minidl as md
import minidl.optim
import minidl.nn.functional as F
from minidl import nn, threads

REPO = pathlib.Path(__file__).resolve().parents[1]


def cnn_class(lib):
    """conv-(bn)-relu-pool twice, then a linear classifier, written once for ``minidl.nn`` and
    ``torch.nn``: the same code builds both twins, with the same names, so state dicts line up."""
    class CNN(lib.Module):
        def __init__(self, size, widths=(16, 32), batch_norm=False, **dtype):
            super().__init__()
            self.conv1 = lib.Conv2d(1, widths[0], 3, padding=1, **dtype)
            self.bn1 = lib.BatchNorm2d(widths[0], **dtype) if batch_norm else None
            self.conv2 = lib.Conv2d(widths[0], widths[1], 3, padding=1, **dtype)
            self.bn2 = lib.BatchNorm2d(widths[1], **dtype) if batch_norm else None
            self.pool = lib.MaxPool2d(2)
            self.fc = lib.Linear(widths[1] * (size // 4) ** 2, 10, **dtype)

        def forward(self, x):
            for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
                x = conv(x)
                if bn is not None:
                    x = bn(x)
                x = self.pool(x.relu())
            return self.fc(x.reshape(x.shape[0], -1))
    return CNN


CNN, TorchCNN = cnn_class(nn), cnn_class(torch.nn)


def train(model, x, y, epochs, lr, batch_size=64, seed=0):
    """Adam on shuffled minibatches; x (N, 1, H, W) float32, y (N,) int.

    The convolutions use minidl's threads (threads.num_threads()); the other
    GEMMs (the linear layer) run with BLAS single-threaded here, because on a
    machine shared with other jobs multi-threaded BLAS makes such tiny products
    up to 500 times slower (see minidl/threads.py), and this test's duration
    should not depend on the neighbours."""
    opt = md.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    model.train()
    threads.num_threads()  # fix minidl's thread count before limiting BLAS
    with threadpool_limits(1, user_api="blas"):
        for _ in range(epochs):
            order = rng.permutation(len(x))
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad()
                F.cross_entropy(model(md.Tensor(x[idx])), y[idx]).backward()
                opt.step()
    return model


def accuracy(model, x, y, batch_size=500):
    model.eval()
    with md.no_grad():
        predictions = np.concatenate([model(md.Tensor(x[i:i + batch_size])).data.argmax(axis=1)
                                      for i in range(0, len(x), batch_size)])
    return float((predictions == y).mean())


# --------------------------------------------------------------------- digits


def test_small_cnn_learns_sklearn_digits():
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8) in [0, 1]
    x = (x - x.mean()) / x.std()
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    train_idx, test_idx = order[:1400], order[1400:]
    md.manual_seed(0)
    model = train(CNN(8, widths=(16, 32)), x[train_idx], y[train_idx], epochs=15, lr=3e-3)
    acc = accuracy(model, x[test_idx], y[test_idx])
    print(f"digits test accuracy {acc:.4f}")
    assert acc >= 0.98


# ---------------------------------------------------------------------- MNIST


def shared_data_dir():
    return pathlib.Path(os.environ.get("MINIDL_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_mnist_test_set(data_dir):
    """The 10,000 MNIST test images as float (N, 1, 28, 28) in [0, 1] and labels;
    minidl.data's loader when it exists, else a plain IDX reader."""
    try:
        from minidl.data import load_mnist
    except ImportError:
        load_mnist = None
    if load_mnist is not None:
        images, labels = load_mnist(data_dir, split="test")
        images = np.asarray(images, dtype=np.float32)
        if images.max() > 1.5:
            images = images / 255.0
        return images.reshape(-1, 1, 28, 28), np.asarray(labels, dtype=np.int64)
    folder = pathlib.Path(data_dir) / "mnist"
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz") as f:
        raw = f.read()
    images = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(folder / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), dtype=np.uint8, offset=8)
    return images.astype(np.float32) / 255.0, labels.astype(np.int64)


def mnist_split():
    data_dir = shared_data_dir()
    if not (data_dir / "mnist" / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST not found under {data_dir} (set MINIDL_SHARED_DATA)")
    images, labels = load_mnist_test_set(data_dir)
    images = (images - 0.1307) / 0.3081  # MNIST's usual normalisation
    return (images[:8000], labels[:8000]), (images[8000:], labels[8000:])


def test_small_cnn_reaches_97_percent_on_real_mnist():
    (x_train, y_train), (x_test, y_test) = mnist_split()
    md.manual_seed(0)
    start = time.perf_counter()
    model = train(CNN(28), x_train, y_train, epochs=2, lr=2e-3)
    acc = accuracy(model, x_test, y_test)
    print(f"MNIST: trained on 8,000 in {time.perf_counter() - start:.1f} s; "
          f"test accuracy on the other 2,000: {acc:.4f}")
    assert acc >= 0.97


# --------------------------------------------------- twin model, same gradients


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("batch_norm", [True, False], ids=["bn", "no-bn"])
def test_twin_torch_cnn_gives_same_logits_and_gradients(mode, batch_norm):
    torch.manual_seed(0)
    theirs = TorchCNN(12, widths=(4, 6), batch_norm=batch_norm).double()
    mine = CNN(12, widths=(4, 6), batch_norm=batch_norm, dtype=np.float64)
    state = theirs.state_dict()
    if batch_norm:  # non-trivial running statistics and affine parameters for eval mode
        rng = np.random.default_rng(1)
        for key in state:
            if key.startswith("bn") and not key.endswith("num_batches_tracked"):
                low = 0.5 if key.endswith(("running_var", "weight")) else -0.5
                state[key] = torch.tensor(rng.uniform(low, low + 1, state[key].shape))
        theirs.load_state_dict(state)
    mine.load_state_dict({k: v.numpy() for k, v in state.items()})
    assert list(mine.state_dict()) == list(state)
    getattr(mine, mode)()
    getattr(theirs, mode)()

    x = np.random.default_rng(2).standard_normal((5, 1, 12, 12))
    target = np.array([0, 3, 9, 3, 7])
    mine_logits = mine(md.Tensor(x))
    their_logits = theirs(torch.tensor(x))
    np.testing.assert_allclose(mine_logits.data, their_logits.detach().numpy(), rtol=1e-5,
                               atol=1e-8)
    F.cross_entropy(mine_logits, target).backward()
    torch.nn.functional.cross_entropy(their_logits, torch.tensor(target)).backward()
    their_params = dict(theirs.named_parameters())
    names = [name for name, _ in mine.named_parameters()]
    assert names == list(their_params)
    for name, p in mine.named_parameters():
        np.testing.assert_allclose(p.grad, their_params[name].grad.numpy(), rtol=1e-5,
                                   atol=1e-8, err_msg=name)
    for name, value in theirs.state_dict().items():  # running statistics moved alike
        np.testing.assert_allclose(mine.state_dict()[name], value.numpy(), rtol=1e-10,
                                   err_msg=name)
