"""Readers for the two on-disk formats of the real datasets, strict about structure.

* IDX (MNIST, Fashion-MNIST): a 4-byte magic number (two zero bytes, a type code,
  the number of dimensions), one big-endian uint32 per dimension, then the values.
  Gzip-compressed or not. Wrong magic numbers and wrong lengths are errors that say
  what was expected and what was found.
* CIFAR "python version" batches: pickled dicts of numpy arrays and lists. Pickle
  can run any function named in the file, so they are read with an unpickler that
  allows exactly what those files contain and refuses everything else unrun.
"""
from __future__ import annotations

import gzip
import pickle
import zlib
from pathlib import Path

import numpy as np

from ..errors import CorruptFileError, UnsafePickleError

IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------- IDX
def read_bytes(path):
    """The file's content, decompressed if it is gzip (detected by its first bytes)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:  # bad CRC, cut short, not deflate
        raise CorruptFileError(f"{path}: damaged gzip data ({exc}); delete the file and "
                               "download it again") from exc


def read_idx(path, expected_magic=None):
    """An IDX file as a numpy array of the shape its header declares."""
    path = Path(path)
    raw = read_bytes(path)
    if len(raw) < 4:
        raise CorruptFileError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if expected_magic is not None and magic != expected_magic:
        raise CorruptFileError(f"{path}: magic number {magic} (0x{magic:08x}), expected "
                               f"{expected_magic} (0x{expected_magic:08x}); not this kind of IDX file")
    code, ndim = raw[2], raw[3]
    if raw[:2] != b"\0\0" or code not in _IDX_TYPES or ndim == 0:
        raise CorruptFileError(f"{path}: magic number 0x{magic:08x} is not an IDX header")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(f"{path}: truncated inside the header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[code])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise CorruptFileError(f"{path}: {what}: the header declares shape {shape}, so expected "
                               f"{expected} bytes (uncompressed), found {len(raw)}")
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # native byte order, and writable


# --------------------------------------------------------------------------- CIFAR pickles
# numpy's own array-rebuilding function, found without importing the private module
# (numpy.core in numpy 1, numpy._core in numpy 2; the files name either).
_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]


def _reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"array subtype {subtype!r} refused; only numpy.ndarray")
    return _RECONSTRUCT(subtype, shape, dtype)


def _dtype(spec, *args):
    """numpy.dtype, for plain numbers only: an object dtype would let the file hold
    arbitrary Python objects."""
    dtype = np.dtype(spec)
    if dtype.kind not in "biuf":
        raise UnsafePickleError(f"dtype {dtype} refused; CIFAR files hold only numbers")
    return np.dtype(spec, *args)


def _latin1_bytes(text, encoding="latin1"):
    """_codecs.encode, as a Python 3 pickle (protocol 2) rebuilds bytes: str -> bytes
    in latin1 only, so the name lets nothing else through."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused; "
                                "only the latin1 bytes of a Python 3 pickle")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,  # bytes in a CIFAR batch re-pickled by Python 3
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Only numpy array reconstruction, dtypes and plain containers (dict, list,
    str, bytes, numbers: these need no lookup at all). Every other global a pickle
    names -- the only way a pickle can call code -- is refused before it is called.
    A subclass for another format sets ``allowed`` and ``format_contains``."""
    allowed = _ALLOWED
    format_contains = ("CIFAR batches contain only numpy arrays and plain containers, so this file "
                       "is not an official CIFAR batch")

    def find_class(self, module, name):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing {module}.{name}: {self.format_contains}") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent id: not part of the CIFAR format")


def _plain_keys(value):
    """Python 2 pickles give str or bytes keys depending on the encoding: make them str."""
    if isinstance(value, dict):
        return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in value.items()}
    return value


def read_cifar_pickle(path):
    """A CIFAR batch or meta file as a dict with str keys, loaded without running code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            # latin1: how Python 2 byte strings (keys, label names, array data) arrive
            content = RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, MemoryError) as exc:
        raise CorruptFileError(f"{path}: not a readable CIFAR pickle ({type(exc).__name__}: "
                               f"{exc}); the file is truncated or corrupted, delete it and "
                               "download it again") from exc
    if not isinstance(content, dict):
        raise CorruptFileError(f"{path}: expected a pickled dict, found {type(content).__name__}")
    return _plain_keys(content)
