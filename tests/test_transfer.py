"""reference_torch.transfer: the class split of a source and a target task, and the test
accuracy under gaussian noise (seeded: the same noise for every model)."""
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from reference_torch.transfer import Prepared, class_split, noisy_accuracy  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_class_split_relabels_and_caps():
    y = np.repeat(np.arange(4), 10)  # 10 images of each of 4 classes
    split = SimpleNamespace(x=np.arange(40) * 1.0, y=y)
    x, labels = class_split(split, range(2, 4), per_class=3, rng=np.random.default_rng(0))
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]  # classes 2 and 3, relabelled from 0
    assert np.array_equal(y[x.astype(int)] - 2, labels)  # each image keeps its own label
    x, labels = class_split(split, range(2), size=15)
    assert len(labels) == 15 and set(labels.tolist()) == {0, 1} and np.all(x < 20)


def test_noisy_accuracy_is_seeded_and_noise_hurts():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0.5).long()
    net = SimpleNamespace(body=torch.nn.Flatten(), head=torch.nn.Linear(64, 2))
    with torch.no_grad():  # reads the mean brightness: right on every clean image
        net.head.weight.copy_(torch.tensor([[-1.0], [1.0]]).repeat(1, 64))
        net.head.bias.zero_()
    model = Prepared(net, (0.5,), (0.25,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    clean, small, large = noisy_accuracy(model, loader, (0, 0.1, 20.0), seed=5)
    assert clean > 0.9 and large < clean - 0.2
    assert noisy_accuracy(model, loader, (0, 0.1, 20.0), seed=5) == [clean, small, large]  # the same noise
    assert model.noise is None  # left clean
