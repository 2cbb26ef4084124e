"""minidl.fileio, through which every checkpoint, download and run output is written:
the file has the umask's permissions, and a write that fails leaves the old file as it
was and no temporary file beside it."""
import os
import stat

import pytest

from minidl.fileio import atomic_open, write_atomic


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_written_file_has_the_umasks_permissions(tmp_path, umask_022):
    path = write_atomic(tmp_path / "sub" / "metrics.json", "{}")
    assert path.read_text() == "{}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE(write_atomic(tmp_path / "b.bin", b"\x00\x01").stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_atomic(tmp_path / "model.npz", b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_open(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w', got 'a'"):
        with atomic_open(tmp_path / "x", "a"):
            pass


def test_file_lock_makes_a_second_process_wait_for_the_first(tmp_path):
    import subprocess
    import sys
    import time
    from minidl.fileio import file_lock
    target = tmp_path / "cache.pt"
    other = (f"import time; from minidl.fileio import file_lock\n"
             f"with file_lock({str(target)!r}): print(time.time(), flush=True)")
    with file_lock(target):
        child = subprocess.Popen([sys.executable, "-c", other], stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)
        released = time.time()
    entered = float(child.communicate(timeout=30)[0])
    assert entered >= released  # the child got the lock only once this process let it go
