"""End to end on real data: scikit-learn's handwritten digits (1797 8×8 images,
shipped with scikit-learn, no download). A minidl MLP trained with md.train.fit
reaches at least 97% test accuracy in seconds, and the same MLP in torch, from the
same initial weights and on the same batches, follows the same loss."""
import time

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import minidl as md
import minidl.nn as nn
import minidl.optim as optim
import minidl.train as train
from batches import Loader

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_one_thread")]

HIDDEN, LR, EPOCHS, BATCH = 128, 3e-3, 20, 32


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel values 0..16 -> 0..1
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


def minidl_mlp(seed=0):
    md.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def torch_twin(md_model):
    model = torch.nn.Sequential(torch.nn.Linear(64, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, 10))
    model.load_state_dict({k: torch.from_numpy(v) for k, v in md_model.state_dict().items()})
    return model


def test_digits_mlp_reaches_97_percent_in_seconds(digits):
    x_train, x_test, y_train, y_test = digits
    model = minidl_mlp()
    opt = optim.Adam(model.parameters(), lr=LR)
    start = time.perf_counter()
    history = train.fit(model, nn.CrossEntropyLoss(), opt, Loader(x_train, y_train, BATCH, seed=0),
                        epochs=EPOCHS, progress=False)
    seconds = time.perf_counter() - start
    accuracy = np.mean(train.predict(model, x_test).argmax(axis=1) == y_test)
    assert accuracy >= 0.97, f"test accuracy {accuracy:.4f} after {EPOCHS} epochs"
    assert history["loss"][-1] < 0.05 * history["loss"][0]
    assert seconds < 30, f"training took {seconds:.1f} s"  # about 1-2 s on a quiet core


def test_torch_twin_follows_the_same_loss(digits):
    x_train, _, y_train, _ = digits
    ours = minidl_mlp(seed=1)
    theirs = torch_twin(ours)
    opt = optim.Adam(ours.parameters(), lr=LR)
    topt = torch.optim.Adam(theirs.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    ours_losses, theirs_losses = [], []
    for epoch in range(2):
        # Two loaders with the same seed: the same batches in the same order.
        for (x, y), (tx, ty) in zip(Loader(x_train, y_train, BATCH, seed=epoch),
                                    Loader(x_train, y_train, BATCH, seed=epoch)):
            loss = loss_fn(ours(md.Tensor(x)), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            ours_losses.append(loss.item())

            tloss = torch.nn.functional.cross_entropy(theirs(torch.from_numpy(tx)), torch.from_numpy(ty))
            topt.zero_grad()
            tloss.backward()
            topt.step()
            theirs_losses.append(tloss.item())
    ours_losses, theirs_losses = np.array(ours_losses), np.array(theirs_losses)
    # float32 in both engines: the first steps agree to 1e-5, and the whole run stays close.
    np.testing.assert_allclose(ours_losses[:10], theirs_losses[:10], rtol=1e-5)
    np.testing.assert_allclose(ours_losses, theirs_losses, rtol=1e-3, atol=1e-4)
    assert ours_losses[-10:].mean() < 0.3 * ours_losses[:10].mean()  # and it did learn
    for (key, value), tvalue in zip(ours.state_dict().items(), theirs.state_dict().values()):
        np.testing.assert_allclose(value, tvalue.numpy(), rtol=1e-3, atol=1e-4, err_msg=key)
