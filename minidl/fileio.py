"""One way to write a file so that a crash never leaves half of it: write a temporary
file beside the target, flush it to disk, then rename it over the target in one
``os.replace`` (atomic on POSIX and Windows). minidl's checkpoints, reference_torch's
checkpoints, the downloads and the drivers' outputs all write through here.

The file gets ordinary permissions (0666 less the umask, like any file ``open``
creates), not the 0600 that ``tempfile.mkstemp`` gives its files; a failed write
removes its temporary file and leaves the old target as it was.

Reading back: ``read_npz`` gives the arrays of an ``.npz`` without unpickling, and a
file that is missing, empty, truncated, corrupt, a pickle or anything but plain arrays
raises one line naming the file and the fault (``minidl.errors.InputError``).
``save(obj, path)`` and ``load(path)`` (``md.save``, ``md.load``) use them for state dicts.
"""
import glob
import os
import pickletools
import signal
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import BadValueError, CorruptFileError, MissingFileError, UnsafePickleError


def _umask():
    mask = os.umask(0)  # the only portable way to read it is to set it and put it back
    os.umask(mask)
    return mask


def _alive(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is someone else's
        return True
    return True


def remove_stale(path, suffix=".tmp"):
    """Remove the temporary files that interrupted writes of ``path`` left behind: those
    whose writing process (its id is in the name) no longer runs."""
    path = Path(path)
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*{suffix}"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextmanager
def _sigterm_unwinds():
    """While a file is written, SIGTERM (a `kill`, a scheduler ending a job) raises
    SystemExit instead of ending the process on the spot, so that the ``finally``
    below still removes the temporary file. Only where Python's default is in place."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def unwind(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def atomic_open(path, mode="wb", suffix=".tmp"):
    """Open a temporary file for writing (``mode`` "wb" or "w"); on a clean exit it
    replaces ``path``. Parent folders are created.

        with atomic_open("model.npz") as f:
            np.savez(f, **arrays)

    The temporary file is ``.<name>.<process id>.<random><suffix>``: removed when the
    write fails or is interrupted (also by SIGTERM), and, should a killed process have
    left one, by the next write of the same name.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path, suffix)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        encoding = None if "b" in mode else "utf-8"
        with _sigterm_unwinds(), os.fdopen(fd, mode, encoding=encoding) as f:
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


@contextmanager
def file_lock(path):
    """Hold an exclusive lock on ``<path>.lock`` while the block runs: two processes that
    build the same cached file (two drivers run side by side) take turns, and the second
    finds the first one's file. POSIX only; elsewhere the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # Windows: no side-by-side runs there
        yield
        return
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ------------------------------------------------------------ reading back, safely
_ZIP, _NPY = b"PK\x03\x04", b"\x93NUMPY"


# What numpy's and torch's own files name: listed after anything else a pickle would load.
_ORDINARY = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
             "numpy.ndarray", "numpy.dtype", "collections.OrderedDict", "torch.", "_codecs.encode")


def pickle_globals(data, limit=3):
    """The ``module.name`` globals a pickle would look up (and could call), found by
    reading its opcodes, never by running them: what a refusal names, the unusual first."""
    found, strings, memo = [], [], {}
    try:
        for opcode, arg, _ in pickletools.genops(data):
            name = opcode.name
            if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
                strings.append(arg)
            elif name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[arg] = strings[-1]
            elif name in ("BINGET", "LONG_BINGET", "GET") and arg in memo:
                strings.append(memo[arg])
            elif name == "GLOBAL":  # protocols 0-3: "module name" in one argument
                found.append(arg.replace(" ", "."))
            elif name == "STACK_GLOBAL" and len(strings) >= 2:  # protocol 4+
                found.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001  (a damaged pickle: report what was read so far)
        pass
    unusual = [n for n in found if not n.startswith(_ORDINARY)]
    ordinary = [n for n in found if n.startswith(_ORDINARY)]
    return list(dict.fromkeys(unusual + ordinary))[:limit]


def refused_pickle(path, data=b"", names=None):
    """The one-line message for a file that holds a pickle, naming what it would load
    (``names``, else the globals found in ``data``)."""
    names = pickle_globals(data) if names is None else names
    named = f" (it would load {', '.join(names)})" if names else ""
    return (f"{path} holds pickled objects: refused{named}; only arrays, tensors and plain "
            "data are read, never code")


def read_npz(path, what="an .npz archive of arrays"):
    """Every array of an ``.npz`` file as a dict, with ``allow_pickle=False``. A missing,
    empty, truncated or corrupt file, a folder, a pickle or an archive holding anything
    but plain arrays raises an ``InputError`` of one line naming the file and the fault."""
    path = Path(path)
    if path.is_dir():
        raise MissingFileError(f"{path} is a folder, not {what}")
    if not path.is_file():
        raise MissingFileError(f"{path} not found: expected {what}")
    with open(path, "rb") as f:
        head = f.read(6)
    if not head:
        raise CorruptFileError(f"{path} is empty: not {what}")
    if head[:1] == b"\x80":  # pickle protocol 2 and up (torch.save, pickle.dump)
        raise UnsafePickleError(refused_pickle(path, path.read_bytes()))
    if head[:4] != _ZIP:
        kind = "a single .npy array" if head == _NPY else "not a zip archive"
        raise CorruptFileError(f"{path} is not {what} ({kind})")
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.namelist()
            damaged = archive.testzip()  # the first member whose CRC is wrong
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CorruptFileError(f"{path} is truncated or damaged ({exc}); it cannot be read as "
                               f"{what}") from None
    if damaged is not None:
        raise CorruptFileError(f"{path} is damaged ({damaged} fails its checksum); write it again")
    others = [m for m in members if not m.endswith(".npy")]
    if others:
        hint = " (a torch .pt file?)" if any(m.endswith(".pkl") for m in others) else ""
        raise CorruptFileError(f"{path} holds {others[0]}, not an array{hint}: not {what}")
    with np.load(path, allow_pickle=False) as archive:
        arrays = {}
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "pickle" not in str(exc):
                    raise CorruptFileError(f"{path}: entry {key}: {exc}") from None
                raise UnsafePickleError(refused_pickle(
                    f"{path} (entry {key}, an array of dtype object)", _npy_pickle(path, key))) from None
    return arrays


def _npy_pickle(path, key):
    """The pickle that follows the header of an object array's .npy member."""
    with zipfile.ZipFile(path) as archive:
        data = archive.read(f"{key}.npy")
    # magic (6 bytes), version (2), header length (2 bytes in version 1, else 4), header
    size = 2 if data[6] == 1 else 4
    return data[8 + size + int.from_bytes(data[8:8 + size], "little"):]


def save(obj, path):
    """``md.save(model.state_dict(), "model.npz")``: torch.save's argument order. ``obj``
    is a dict of names -> arrays, tensors or numbers, written atomically as an ``.npz``.
    For a checkpoint to resume from, use ``md.train.save_checkpoint``."""
    if not isinstance(obj, dict):
        raise BadValueError(f"md.save writes a dict of arrays (a state_dict), got a "
                            f"{type(obj).__name__}; for a training checkpoint use "
                            "md.train.save_checkpoint(model, path, optimizer)")
    arrays = {}
    for key, value in obj.items():
        array = np.asarray(value)
        if not isinstance(key, str) or array.dtype == object:
            raise BadValueError(f"md.save: entry {key!r} is a {type(value).__name__}; md.save writes "
                                "only str names -> arrays, tensors or numbers")
        arrays[key] = array
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def load(path):
    """``md.load("model.npz")``: the dict ``md.save`` wrote (name -> ndarray), for
    ``model.load_state_dict``; never unpickles anything."""
    return read_npz(path, "a state dict saved by md.save")
