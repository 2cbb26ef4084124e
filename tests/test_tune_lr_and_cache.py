"""reference_torch.train.tune_lr picks a learning rate on validation data alone;
reference_torch.checkpoint.cached builds a result once per recipe, under a lock that two
processes share, and builds again when the file is damaged or holds another recipe."""
import multiprocessing

import pytest

torch = pytest.importorskip("torch")

from reference_torch.checkpoint import cached  # noqa: E402
from reference_torch.train import Trainer, tune_lr  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_tune_lr_keeps_the_rate_that_learns_on_validation():
    """Real training: a linear model that starts with every answer wrong, on a separable
    problem, learns at lr 0.5 and barely moves at 1e-6, so the search must keep 0.5, and
    return every rate's results in order."""
    torch.manual_seed(0)
    x = torch.randn(256, 2)
    y = (x[:, 0] > 0).long()
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[:192], y[:192]), batch_size=32)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[192:], y[192:]), batch_size=64)

    def train_at(rate):
        model = torch.nn.Linear(2, 2)
        with torch.no_grad():  # class 0 where x0 > 0: wrong everywhere
            model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
            model.bias.zero_()
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=rate), progress=False, device="cpu")
        history = trainer.fit(train, 5, val_loader=val)
        return {"lr": rate, "best_val_accuracy": max(h["val_accuracy"] for h in history)}

    best, results = tune_lr(train_at, [1e-6, 0.5])
    assert [r["lr"] for r in results] == [1e-6, 0.5]
    assert best["lr"] == 0.5 and best["best_val_accuracy"] > 0.9 and results[0]["best_val_accuracy"] < 0.1


def test_tune_lr_ties_go_to_the_earlier_rate_and_min_mode():
    scores = {1e-3: 0.5, 3e-3: 0.7, 1e-2: 0.7}
    best, _ = tune_lr(lambda rate: {"lr": rate, "best_val_accuracy": scores[rate]}, list(scores))
    assert best["lr"] == 3e-3
    best, _ = tune_lr(lambda rate: {"lr": rate, "val_loss": 1 / rate}, [1e-3, 1e-2], monitor="val_loss", mode="min")
    assert best["lr"] == 1e-2
    with pytest.raises(ValueError, match="mode 'max' or 'min'"):
        tune_lr(lambda rate: {}, [1e-3], mode="best")
    with pytest.raises(ValueError, match="at least one rate"):
        tune_lr(lambda rate: {}, [])


def build_counted(log):
    def build():
        with open(log, "a") as f:
            f.write("built\n")
        return {"weights": torch.arange(4.0), "history": [{"epoch": 1, "val_accuracy": 0.5}]}
    return build


def test_cached_builds_once_per_recipe_and_again_when_damaged(tmp_path):
    log = tmp_path / "builds.txt"
    recipe = {"epochs": 4, "widths": (16, 32)}  # a tuple: the file holds it as a list
    first, path, reused = cached(tmp_path / "cache", "net", recipe, build_counted(log))
    assert not reused and path.parent == tmp_path / "cache" and path.name.startswith("net-")
    again, same, reused = cached(tmp_path / "cache", "net", dict(recipe), build_counted(log))
    assert reused and same == path and torch.equal(again["weights"], first["weights"])
    assert again["history"] == first["history"]
    assert log.read_text().count("built") == 1
    _, other, reused = cached(tmp_path / "cache", "net", {**recipe, "epochs": 5}, build_counted(log))
    assert not reused and other != path
    path.write_bytes(b"not a torch file")
    _, _, reused = cached(tmp_path / "cache", "net", recipe, build_counted(log))
    assert not reused and log.read_text().count("built") == 3


def test_cached_reads_through_read_and_builds_again_what_read_refuses(tmp_path):
    log, said = tmp_path / "builds.txt", []

    def read(result):  # what a caller makes of the stored dict; refuses what does not fit
        if result["weights"].shape != (4,):
            raise ValueError("its weights have another shape")
        return result["weights"].sum().item()

    total, path, reused = cached(tmp_path, "net", {"seed": 1}, build_counted(log), read, said.append)
    assert (total, reused, said) == (6.0, False, [])  # 0 + 1 + 2 + 3, read from the fresh build too
    state = torch.load(path, weights_only=True)
    state["result"]["weights"] = torch.ones(3)  # a file that loads but does not fit
    torch.save(state, path)
    total, _, reused = cached(tmp_path, "net", {"seed": 1}, build_counted(log), read, said.append)
    assert (total, reused) == (6.0, False) and log.read_text().count("built") == 2
    assert len(said) == 1 and str(path) in said[0] and "its weights have another shape" in said[0]
    assert cached(tmp_path, "net", {"seed": 1}, build_counted(log), read, said.append)[2]  # rebuilt file reads


def slow_build(log):
    import time
    with open(log, "a") as f:
        f.write("built\n")
    time.sleep(0.5)  # long enough for the other process to reach the lock
    return {"weights": torch.ones(2)}


def build_in_process(folder, log):
    cached(folder, "net", {"seed": 0}, lambda: slow_build(log))


def test_cached_two_processes_build_once(tmp_path):
    log = tmp_path / "builds.txt"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=build_in_process, args=(tmp_path / "cache", log)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert [w.exitcode for w in workers] == [0, 0]
    assert log.read_text().count("built") == 1
