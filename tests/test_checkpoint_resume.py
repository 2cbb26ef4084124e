"""minidl checkpoints: an exact resume (dropout on), the optimiser's type recorded,
metadata checked at save time, one line for every file that is not a checkpoint,
and no temporary file left by an interrupted save."""
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import minidl as md
from minidl.data import DataLoader
from minidl.errors import CorruptFileError, InputError, MissingFileError, UnsafePickleError
from minidl.train import EarlyStopping, fit, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


class Interrupt(Exception):
    pass


class CrashAt(md.train.Callback):
    def __init__(self, step):
        self.step = step

    def on_batch_end(self, trainer, logs):
        if trainer.step == self.step:
            raise Interrupt


def blobs(n=64, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = (rng.standard_normal((n, 8)) + 2 * np.eye(3, 8)[y]).astype(np.float32)
    return x, y


def setup(model_seed):
    md.manual_seed(model_seed)
    model = md.nn.Sequential(md.nn.Linear(8, 16), md.nn.ReLU(), md.nn.Dropout(0.3), md.nn.Linear(16, 3))
    opt = md.optim.Adam(model.parameters(), lr=0.01)
    return model, opt, md.optim.StepLR(opt, step_size=1, gamma=0.8)


def train(model_seed, checkpoint=None, resume=None, crash_at=None):
    x, y = blobs()
    model, opt, sched = setup(model_seed)
    callbacks = [EarlyStopping(patience=10)]  # its best weights travel in the checkpoint too
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    history = fit(model, md.nn.CrossEntropyLoss(), opt, DataLoader(x, y, batch_size=16, shuffle=True),
                  DataLoader(x, y, batch_size=32), epochs=4, scheduler=sched, callbacks=callbacks,
                  progress=False, checkpoint=checkpoint, resume=resume)
    return model, opt, history


def test_resume_equals_an_uninterrupted_run_bit_for_bit(tmp_path):
    straight, straight_opt, expected = train(0)
    path = tmp_path / "run.npz"
    with pytest.raises(Interrupt):  # 4 batches an epoch: step 7 is in the second epoch
        train(0, checkpoint=path, crash_at=7)
    assert len(md.train._read_checkpoint(path)[0]["training"]["history"]["epoch"]) == 1
    resumed, resumed_opt, history = train(123, resume=path, crash_at=-1)  # other init: all from the file
    assert history.as_dict() == expected.as_dict()
    for key, value in straight.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[key], value, err_msg=key)
    assert resumed_opt.param_groups[0]["lr"] == straight_opt.param_groups[0]["lr"]
    # the comparison can fail: another seed (other dropout masks) gives other losses
    assert train(1)[2].as_dict()["loss"] != expected.as_dict()["loss"]


def test_loading_an_adam_state_into_sgd_raises(tmp_path):
    model, opt, _ = setup(0)
    path = tmp_path / "adam.npz"
    save_checkpoint(model, path, opt, epoch=1)
    sgd = md.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InputError, match="Adam optimiser, not of a SGD"):
        load_checkpoint(model, path, sgd)
    assert load_checkpoint(model, path, md.optim.Adam(model.parameters()))["epoch"] == 1


def test_metadata_json_cannot_hold_raises_at_save_time(tmp_path):
    model, _, _ = setup(0)
    path = tmp_path / "meta.npz"
    with pytest.raises(InputError, match="meta/fn is a builtin_function"):
        save_checkpoint(model, path, fn=print)
    assert not path.exists()
    save_checkpoint(path, model, scores=np.arange(3), note="ok")  # the older argument order
    meta = load_checkpoint(model, path)
    np.testing.assert_array_equal(meta["scores"], [0, 1, 2])
    assert meta["note"] == "ok"


class Payload:
    def __reduce__(self):
        return os.system, ("echo owned",)


def bad_files(tmp_path):
    """(path, what the message must say) for each kind of file that is not a checkpoint."""
    model, opt, _ = setup(0)
    good = tmp_path / "good.npz"
    save_checkpoint(model, good, opt)
    data = good.read_bytes()
    cases = {}

    def write(name, content):
        path = tmp_path / name
        path.write_bytes(content)
        return path

    cases[write("truncated.npz", data[: len(data) // 2])] = "truncated"
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    cases[write("flipped.npz", bytes(flipped))] = "damaged"
    cases[write("empty.npz", b"")] = "empty"
    cases[write("random.npz", np.random.default_rng(0).bytes(500))] = "not a zip"
    cases[write("payload.npz", pickle.dumps(Payload(), protocol=2))] = "pickled objects: refused.*posix.system"
    cases[write("payload4.npz", pickle.dumps(Payload(), protocol=4))] = "refused.*posix.system"
    md.save({"w": np.ones(3)}, tmp_path / "plain.npz")
    cases[tmp_path / "plain.npz"] = "not a checkpoint"
    np.savez(tmp_path / "objects.npz", w=np.array([Payload()], dtype=object))
    cases[tmp_path / "objects.npz"] = "entry w, an array of dtype object.*refused.*posix.system"
    torch.save({"w": torch.ones(2)}, tmp_path / "torch.pt")
    cases[tmp_path / "torch.pt"] = "not an array.*torch"
    cases[tmp_path / "missing.npz"] = "not found"
    (tmp_path / "folder.npz").mkdir()
    cases[tmp_path / "folder.npz"] = "is a folder"
    return model, cases


def test_every_bad_file_gives_one_line_naming_it_and_the_fault(tmp_path):
    model, cases = bad_files(tmp_path)
    for path, expected in cases.items():
        with pytest.raises(InputError, match=expected) as caught:
            load_checkpoint(model, path)
        message = str(caught.value)
        assert "\n" not in message and str(path) in message, message
        assert "allow_pickle" not in message and "unsafely" not in message, message
        assert isinstance(caught.value, (CorruptFileError, MissingFileError, UnsafePickleError))
    with pytest.raises(InputError, match="not a zip"):
        md.load(tmp_path / "random.npz")


def test_a_save_of_a_checkpoint_removes_stale_temporary_files(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".ck.npz.{dead}.abc123.tmp"
    live = tmp_path / f".ck.npz.{os.getpid()}.def456.tmp"  # a write in progress: kept
    other = tmp_path / f".other.npz.{dead}.abc123.tmp"  # another file's: not this save's business
    for path in (stale, live, other):
        path.write_bytes(b"half")
    model, _, _ = setup(0)
    save_checkpoint(model, tmp_path / "ck.npz")
    assert not stale.exists() and live.exists() and other.exists()
    assert zipfile.is_zipfile(tmp_path / "ck.npz")


def test_sigterm_during_a_save_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "ck.npz"
    target.write_bytes(b"old")
    script = (
        "import os, signal, sys\n"
        "from minidl.fileio import atomic_open\n"
        f"with atomic_open({str(target)!r}) as f:\n"
        "    f.write(b'new, half written')\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    f.write(b'never')\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True)
    assert done.returncode == 128 + 15
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ck.npz"]
