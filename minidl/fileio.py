"""One way to write a file so that a crash never leaves half of it: write a temporary
file beside the target, flush it to disk, then rename it over the target in one
``os.replace`` (atomic on POSIX and Windows). minidl's checkpoints, reference_torch's
checkpoints, the downloads and the drivers' outputs all write through here.

The file gets ordinary permissions (0666 less the umask, like any file ``open``
creates), not the 0600 that ``tempfile.mkstemp`` gives its files; a failed write
removes its temporary file and leaves the old target as it was.
"""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _umask():
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path, mode="wb", suffix=".tmp"):
    """Open a temporary file for writing (``mode`` "wb" or "w"); on a clean exit it
    replaces ``path``. Parent folders are created.

        with atomic_open("model.npz") as f:
            np.savez(f, **arrays)
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone after the rename; removed after a failure


def write_atomic(path, data):
    """Write ``data`` (str as UTF-8, or bytes) to ``path`` atomically."""
    with atomic_open(path, "w" if isinstance(data, str) else "wb") as f:
        f.write(data)
    return Path(path)
