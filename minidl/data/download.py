"""Where datasets live, and how a missing file gets there: download, verify, rename.

The data directory is, in order: the ``data_dir`` argument, the environment variable
``MINIDL_DATA_DIR``, then the platform's per-user cache folder for minidl, as
``platformdirs`` knows it (``$XDG_CACHE_HOME/minidl`` or ``~/.cache/minidl`` on Linux,
``~/Library/Caches/minidl`` on macOS, ``%LOCALAPPDATA%\\minidl\\Cache`` on Windows).

A download streams into a temporary file beside its destination
(``minidl.fileio.atomic_open``), checks the length and the official checksum, and
only then renames the file into place. The rename is atomic, so an interrupted or
failed download never leaves a file under the final name, and a file that exists
under its final name was complete when it was written. An archive is extracted the
same way, into a temporary folder that is renamed once every file in it is on disk.

Where the files come from: each dataset's official mirrors, in turn, unless the
environment variable ``MINIDL_MIRRORS`` names others (base addresses, comma-separated,
each holding the files under their own names: a proxy cache, a course's server, a
test's local one). A stalled server cannot hang a download: every network operation
times out after ``TIMEOUT_S`` seconds, and a file that has not arrived after
``MINIDL_DOWNLOAD_DEADLINE`` seconds (default ``DEADLINE_S``) is given up; then the
next mirror is tried. A temporary file is removed whatever happens, SIGTERM included
(``minidl.fileio.atomic_open``).
"""
from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import shutil
import tarfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import platformdirs
from tqdm.auto import tqdm

from ..errors import InputError
from ..fileio import atomic_open

ENV_DATA_DIR = "MINIDL_DATA_DIR"
ENV_MIRRORS = "MINIDL_MIRRORS"
ENV_DEADLINE = "MINIDL_DOWNLOAD_DEADLINE"
TIMEOUT_S = 30  # per network operation, so an offline machine fails fast
DEADLINE_S = 1800  # per file and mirror: 170 MB (CIFAR) at 100 kB/s still arrives
CHUNK = 1 << 16


class DownloadError(InputError, OSError):
    """No mirror gave a complete file with the right checksum."""


class DatasetNotFoundError(InputError, FileNotFoundError):
    """A dataset file is missing and could not (or may not) be downloaded."""


@dataclass(frozen=True)
class Remote:
    """One file of a dataset: its name, where to get it (mirrors in order of
    preference) and its official checksum (``"md5:<hex>"`` or ``"sha256:<hex>"``)."""
    filename: str
    urls: tuple
    checksum: str


def data_root(data_dir=None):
    """The data directory: the argument, then $MINIDL_DATA_DIR, then the user's cache folder."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(ENV_DATA_DIR):
        return Path(os.environ[ENV_DATA_DIR]).expanduser()
    # appauthor=False: no publisher folder above ours on Windows (AppData\Local\minidl\Cache)
    return Path(platformdirs.user_cache_dir("minidl", appauthor=False))


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _split_checksum(checksum):
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("md5", "sha1", "sha256") or not expected:
        raise ValueError(f"checksum {checksum!r}: expected 'md5:<hex>' or 'sha256:<hex>'")
    return algorithm, expected.lower()


def mirror_urls(remote):
    """The addresses to try for ``remote``: $MINIDL_MIRRORS's, when set, else its own."""
    bases = [b.strip() for b in os.environ.get(ENV_MIRRORS, "").split(",") if b.strip()]
    if not bases:
        return tuple(remote.urls)
    return tuple(f"{base.rstrip('/')}/{remote.filename}" for base in bases)


def _deadline():
    text = os.environ.get(ENV_DEADLINE)
    if text is None:
        return DEADLINE_S
    try:
        value = float(text)
    except ValueError:
        value = -1
    if not value > 0:
        raise DownloadError(f"${ENV_DEADLINE}={text!r}: expected a number of seconds > 0")
    return value


def download(remote, dest, progress=True, timeout=TIMEOUT_S, deadline=None):
    """Fetch ``remote`` to the path ``dest``, trying each mirror in turn (see
    ``mirror_urls``), each for at most ``deadline`` seconds (default
    $MINIDL_DOWNLOAD_DEADLINE, else ``DEADLINE_S``) with ``timeout`` per network operation.

    Returns ``dest``. Raises :class:`DownloadError` naming every address tried and
    why it failed. Whatever happens, ``dest`` is either the verified file or absent.
    """
    dest = Path(dest)
    deadline = _deadline() if deadline is None else deadline
    algorithm, expected = _split_checksum(remote.checksum)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create {dest.parent} ({exc}); pass data_dir= a writable "
                            f"folder or set ${ENV_DATA_DIR}") from exc
    if not os.access(dest.parent, os.W_OK):
        raise DownloadError(f"cannot download {remote.filename}: {dest.parent} is not writable; "
                            f"pass data_dir= a writable folder or set ${ENV_DATA_DIR}")
    failures = []
    for url in mirror_urls(remote):
        try:
            _fetch_one(url, dest, algorithm, expected, progress, timeout, deadline)
            return dest
        except (OSError, http.client.HTTPException, ValueError) as exc:  # try the next mirror
            failures.append(f"{url}: {exc}")
    # one line, so that the command line can show it as it is
    raise DownloadError(f"could not download {remote.filename} ({'; '.join(failures)}); download "
                        f"it yourself from one of these addresses and put it at {dest}")


def _fetch_one(url, dest, algorithm, expected, progress, timeout, deadline):
    # Raising inside atomic_open discards the temporary file: dest is never touched.
    give_up = time.monotonic() + deadline
    with atomic_open(dest, "wb", suffix=".part") as out, \
            urllib.request.urlopen(url, timeout=timeout) as response:
        if response.headers.get_content_type() == "text/html":
            raise ValueError("the server sent an HTML page, not the file (a login, error or "
                             "moved-page notice?)")
        digest = hashlib.new(algorithm)
        received = 0
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        bar = tqdm(total=length, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=dest.name, disable=None if progress else True, leave=False)
        with bar:
            while block := response.read1(CHUNK):  # what has arrived, so the deadline is checked
                if time.monotonic() > give_up:
                    raise TimeoutError(f"gave up after {deadline:g} s with {received} bytes "
                                       f"(${ENV_DEADLINE} sets the limit)")
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
        # The connection can close early without an error being raised: check.
        if length is not None and received != length:
            raise ValueError(f"interrupted: received {received} of {length} bytes")
        found = digest.hexdigest()
        if found != expected:
            raise ValueError(f"checksum mismatch: expected {algorithm} {expected}, got {found} "
                             f"({received} bytes); the file is corrupt or not the official one")


def _hint(hint):
    return f" {' '.join(hint.split())}" if hint.strip() else ""  # on the same line


def ensure_file(remote, folder, download_ok=True, hint=""):
    """The path of ``remote.filename`` in ``folder``: there already, or downloaded.

    A file already in place is trusted here (its *structure* is checked by the
    reader); only downloads are checked against the official checksum, because
    re-compressed copies of the right data have other checksums.
    """
    path = Path(folder) / remote.filename
    if path.is_file():
        return path
    if not download_ok:
        raise DatasetNotFoundError(
            f"{remote.filename} not found at {path}. Download it from {mirror_urls(remote)[0]} and "
            f"put it there, or pass download=True (or data_dir=/where/it/is).{_hint(hint)}")
    try:
        return download(remote, path)
    except DownloadError as exc:
        raise DatasetNotFoundError(f"{exc}{_hint(hint)}") from exc


def extract_tar(archive, root, folder, members):
    """Extract ``folder/<member>`` for each name in ``members`` from a .tar.gz into
    ``root/folder``, atomically: into a temporary folder first, renamed when complete.

    Only the expected regular files are read; links, absolute paths and ``..`` in the
    archive are never followed (the archive could be any file found on disk).
    """
    root, archive = Path(root), Path(archive)
    target = root / folder
    # mkdir, not mkdtemp: the folder gets the umask's permissions instead of 0700
    tmp = root / f".{folder}.{secrets.token_hex(8)}.part"
    tmp.mkdir()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in members:
                try:
                    info = tar.getmember(f"{folder}/{name}")
                except KeyError:
                    raise DownloadError(f"{archive} has no {folder}/{name}; delete the archive "
                                        "and download it again") from None
                if not info.isfile():
                    raise DownloadError(f"{archive}: {folder}/{name} is not a regular file")
                # atomic_open for its fsync: the folder is renamed into place only
                # once every file in it is on disk
                with tar.extractfile(info) as src, atomic_open(tmp / name) as dst:
                    shutil.copyfileobj(src, dst)
        if target.exists():  # someone else finished first: keep theirs
            return target
        os.replace(tmp, target)
        return target
    except DownloadError:
        raise
    except (tarfile.TarError, EOFError, OSError) as exc:  # truncated or not a tar.gz
        raise DownloadError(f"{archive} is not a readable .tar.gz ({exc}); delete it and "
                            "download it again") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
