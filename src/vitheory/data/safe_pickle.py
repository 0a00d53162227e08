"""A restricted unpickler: plain containers and numpy arrays, nothing that can run code.

``pickle.load`` on a file calls whatever global the file names (``os.system``, ``builtins.exec``, ...), so a
user's data file could run code.  :class:`SafeUnpickler` overrides ``find_class`` -- the only door through which a
pickle reaches a callable -- and admits exactly

* numpy's array reconstruction: ``numpy.ndarray``, ``numpy.dtype``, ``multiarray._reconstruct`` (protocols
  0-4) and ``numeric._frombuffer`` (protocol 5), under both the numpy 1.x paths ``numpy.core.*`` and the numpy
  2.x paths ``numpy._core.*``;
* ``builtins.set`` and ``builtins.frozenset`` (protocol <= 3 writes sets through them; Python 2's ``__builtin__``
  spelling too).

dict, list, tuple, str, bytes, int, float, bool and None have their own opcodes and need no global.  Everything
else -- including ``_codecs.encode`` (Python 3 bytes at protocol 2) and numpy scalars -- is refused with
:class:`UnsafePickleError` naming the refused global, *before* it is looked up, so nothing from the file runs.
Persistent ids are refused too.
"""
from __future__ import annotations

import io
import os
import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global (or a persistent id) outside the allow-list."""


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as f   # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct as f  # type: ignore[no-redef]
    return f


def _frombuffer():
    try:
        from numpy._core.numeric import _frombuffer as f   # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.numeric import _frombuffer as f  # type: ignore[no-redef]
    return f


#: (module, name) -> a zero-argument function returning the object (resolved lazily, never by import-by-name)
ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,       # protocol 5 writes arrays through it
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("__builtin__", "set"): lambda: set,
    ("__builtin__", "frozenset"): lambda: frozenset,
}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS` (see the module doc)."""

    def find_class(self, module, name):
        get = ALLOWED_GLOBALS.get((module, name))
        if get is None:
            raise UnsafePickleError(f"global '{module}.{name}' is not allowed (only plain containers and numpy "
                                    "arrays are read; nothing in the file was run)")
        return get()

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed (only plain containers and numpy arrays are read)")


def safe_load(source: str | os.PathLike | bytes | bytearray | memoryview, encoding: str = "latin1"):
    """Unpickle ``source`` (a path, or the pickle's bytes) with :class:`SafeUnpickler`.

    ``encoding="latin1"`` reads Python 2 pickles of numpy arrays correctly (numpy's advice) and turns Python 2
    ``str`` keys into ``str``.  Raises :class:`UnsafePickleError` for a refused global; ``EOFError`` /
    ``pickle.UnpicklingError`` / ``ValueError`` ... for a truncated or corrupt stream (callers turn these into a
    ``ConfigError`` naming their file); ``OSError`` when a path cannot be read.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return SafeUnpickler(io.BytesIO(bytes(source)), encoding=encoding).load()
    with open(os.fspath(source), "rb") as fh:
        return SafeUnpickler(fh, encoding=encoding).load()
