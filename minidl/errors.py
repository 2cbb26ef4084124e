"""The project's one exception type for a user's mistake, and its kinds.

A wrong value, a missing file, a truncated or tampered one: the library raises an
``InputError`` whose message is one line naming the value and what to do, and the
command line (``python -m assignments``) prints that line and exits non-zero,
without a traceback. Anything else that goes wrong is a bug and keeps its traceback.
Each kind is also the built-in exception it refines (``except ValueError`` still
catches a corrupt file), so code written against the built-in ones keeps working.
"""
import pickle


class InputError(Exception):
    """A mistake in what the user gave: the message says which value and what to do."""


class BadValueError(InputError, ValueError):
    """A setting or argument that cannot work (a negative seed, zero epochs...)."""


class MissingFileError(InputError, FileNotFoundError):
    """A file the user named is not there (or is a folder)."""


class CorruptFileError(InputError, ValueError):
    """A file exists but is empty, truncated, corrupted or not what its name says."""


class UnsafePickleError(InputError, pickle.UnpicklingError):
    """A file asks to unpickle something other than plain data: refused, never run."""
