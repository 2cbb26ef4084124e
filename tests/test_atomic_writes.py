"""Every file the packages write goes through ``minidl.fileio``: minidl's checkpoints,
reference_torch's checkpoints, downloads and extracted archives get the umask's
ordinary permissions (not mkstemp's 0600, nor a fixed 0644), and a save that fails
half-way leaves the old file as it was and no temporary file beside it. (The torch
checkpoint's failed save is tested in test_torch_train.py, downloads that fail in
test_data_download.py.)"""
import hashlib
import io
import os
import stat
import tarfile

import numpy as np
import pytest
import torch

import minidl as md
from minidl import train
from minidl.data.download import Remote, download, extract_tar
from reference_torch.checkpoint import load_checkpoint, save_checkpoint

UMASK = 0o027  # not the common 0o022, so that a hard-coded 0o644 fails
FILE_MODE, FOLDER_MODE = 0o640, 0o750


@pytest.fixture
def umask():
    old = os.umask(UMASK)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_minidl_checkpoint_has_the_umask_permissions(tmp_path, umask):
    path = tmp_path / "model.npz"
    train.save_checkpoint(path, md.nn.Linear(2, 3), epoch=0)
    assert mode(path) == FILE_MODE
    assert os.listdir(tmp_path) == ["model.npz"]


class Unpicklable:
    def __reduce__(self):
        raise TypeError("this object cannot be serialised")


def test_failed_minidl_checkpoint_leaves_the_old_file_and_no_temporary(tmp_path):
    model = md.nn.Linear(2, 3)
    path = tmp_path / "model.npz"
    train.save_checkpoint(path, model, epoch=0)
    before = path.read_bytes()
    # np.savez pickles object arrays; this one fails after the weights are written
    model.register_buffer("broken", np.array([Unpicklable()], dtype=object))
    with pytest.raises(TypeError, match="cannot be serialised"):
        train.save_checkpoint(path, model, epoch=1)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.npz"]
    assert train.load_checkpoint(md.nn.Linear(2, 3), path)["epoch"] == 0


def test_torch_checkpoint_has_the_umask_permissions(tmp_path, umask):
    path = tmp_path / "model.pt"
    save_checkpoint({"w": torch.ones(2)}, path)
    assert mode(path) == FILE_MODE
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["model.pt"]


def test_download_and_extraction_have_the_umask_permissions(tmp_path, umask):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("pack/one")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"one"))
    source = tmp_path / "mirror" / "pack.tar.gz"
    source.parent.mkdir()
    source.write_bytes(buffer.getvalue())
    # a file:// address goes through the same urlopen as http://
    remote = Remote("pack.tar.gz", (source.as_uri(),), "md5:" + hashlib.md5(buffer.getvalue()).hexdigest())
    root = tmp_path / "data"
    archive = download(remote, root / "pack.tar.gz", progress=False)
    assert mode(archive) == FILE_MODE and mode(root) == FOLDER_MODE
    folder = extract_tar(archive, root, "pack", ["one"])
    assert mode(folder) == FOLDER_MODE and mode(folder / "one") == FILE_MODE
    assert (folder / "one").read_bytes() == b"one"
    assert sorted(os.listdir(root)) == ["pack", "pack.tar.gz"] and os.listdir(folder) == ["one"]
