"""Checkpoint files: written atomically, read back with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` can read it without unpickling arbitrary
objects. RNG states are stored the same way (numpy's as a list of ints).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from minidl.errors import CorruptFileError, InputError, MissingFileError, UnsafePickleError
from minidl.fileio import atomic_open, file_lock, pickle_globals, refused_pickle


def save_checkpoint(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` to ``path`` so that a crash never leaves a half-written file
    (``minidl.fileio.atomic_open``: a temporary file, flushed, then renamed over ``path``)."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


_TORCH_GLOBALS = ("torch.", "collections.OrderedDict")  # what torch.save itself writes


def _pickle_bytes(path: str) -> bytes:
    """The pickle inside a torch file: its data.pkl for the zip format, else the file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            return archive.read(name) if name else b""
    with open(path, "rb") as f:
        return f.read()


def read_torch_file(path: str | os.PathLike, what: str = "a torch checkpoint (.pt)",
                    map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, but a file that is missing, a folder, empty,
    truncated, corrupt or holding pickled objects other than tensors and plain data
    raises ``minidl.errors.InputError``: one line naming the file and the fault (never
    torch's advice to re-run with weights_only=False)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise MissingFileError(f"{path} is a folder, not {what}")
    if not os.path.isfile(path):
        raise MissingFileError(f"no file at {path!r}: expected {what}")
    if os.path.getsize(path) == 0:
        raise CorruptFileError(f"{path} is empty: not {what}")
    try:
        with warnings.catch_warnings():  # its refusal says it all; no warning above it
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a global, or not a pickle at all
        refused = re.search(r"GLOBAL (\S+)", str(exc))
        names = [refused.group(1)] if refused else [
            name for name in pickle_globals(_pickle_bytes(path)) if not name.startswith(_TORCH_GLOBALS)]
        if not names:
            raise CorruptFileError(f"{path} is not {what} (not a torch file)") from None
        raise UnsafePickleError(refused_pickle(path, names=names)) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptFileError(f"{path} is truncated or damaged ({first.split('. ')[0]}); "
                               f"it cannot be read as {what}") from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only);
    a bad file raises one line (:func:`read_torch_file`)."""
    return read_torch_file(path, map_location=map_location)


def get_rng_state() -> dict[str, Any]:
    """The state of every random generator a training run touches."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {"key": np_state["state"]["key"].tolist(), "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": np.asarray(n["key"], dtype=np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def cached(folder: str | os.PathLike, name: str, recipe: dict[str, Any],
           build: Callable[[], dict[str, Any]], read: Callable[[dict[str, Any]], Any] = lambda result: result,
           log: Callable[[str], None] | None = None) -> tuple[Any, Path, bool]:
    """``read(build())``, with ``build()``'s result (a dict of tensors and plain data) computed
    once per ``recipe`` (plain data: everything that decides the result) and kept in
    ``<folder>/<name>-<16 hex digits of the recipe's hash>.pt``. ``read`` turns the stored dict
    into what the caller uses (a model from its weights, say) and raises ``ValueError``,
    ``KeyError``, ``TypeError`` or ``RuntimeError`` where it does not fit. Built under
    ``minidl.fileio.file_lock``, and the file re-checked inside it, so that a second process
    asking for the same recipe waits and then reads the first one's file; a file that cannot
    be read, was written for another recipe or is refused by ``read`` is built again, with
    one line to ``log`` saying why. Under torchrun (WORLD_SIZE > 1) every rank builds and
    nothing is cached: a rank waiting on the lock would stall the others.
    Returns (what ``read`` made, the file, whether it came from an earlier build)."""
    text = json.dumps(recipe, sort_keys=True)
    recipe, digest = json.loads(text), hashlib.sha256(text.encode()).hexdigest()[:16]  # tuples as the file's lists
    path = Path(folder) / f"{name}-{digest}.pt"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return read(build()), path, False
    with file_lock(path):
        if path.exists():
            try:
                state = load_checkpoint(path)
                if not (isinstance(state, dict) and state.get("recipe") == recipe and "result" in state):
                    raise ValueError("it was written for other settings")
                return read(state["result"]), path, True
            except (InputError, KeyError, TypeError, ValueError, RuntimeError) as error:
                if log is not None:
                    log(f"{path} cannot be used ({str(error).splitlines()[0]}): building it again")
        result = build()
        save_checkpoint({"recipe": recipe, "result": result}, path)
    return read(result), path, False
