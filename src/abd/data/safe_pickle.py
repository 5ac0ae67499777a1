"""A restricted unpickler for data files (CIFAR-10 batches): numpy arrays and plain containers only.

``pickle.load`` runs whatever callable a file names, so a crafted file can execute code. This unpickler
resolves only an allow-list of globals (numpy array/dtype/scalar reconstruction, latin-1 byte decoding and a
few builtin containers) and refuses every other global *before* anything is called.
"""

from __future__ import annotations

import builtins
import importlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from abd.data.base import DataFormatError


class ForbiddenGlobalError(DataFormatError, pickle.UnpicklingError):
    """A pickle named a global outside the allow-list; nothing from it was called."""


def _numpy_attr(submodule: str, name: str) -> Callable[..., Any]:
    """``numpy._core.<submodule>.<name>`` (numpy 2) or ``numpy.core.<submodule>.<name>`` (numpy 1)."""
    for pkg in ("numpy._core", "numpy.core"):
        try:
            return getattr(importlib.import_module(f"{pkg}.{submodule}"), name)
        except (ImportError, AttributeError):
            continue
    raise ForbiddenGlobalError(f"numpy has no {submodule}.{name}")


def _latin1_encode(obj: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles use to rebuild ``bytes`` (``_codecs.encode(s, 'latin1')``), latin-1 only."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise ForbiddenGlobalError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    if not isinstance(obj, str):
        raise ForbiddenGlobalError("_codecs.encode expects a str")
    return obj.encode("latin1")


def _safe_dtype(*args: Any, **kwargs: Any) -> Any:
    """``numpy.dtype`` that refuses object dtypes (they could hold arbitrary Python objects)."""
    import numpy as np

    dt = np.dtype(*args, **kwargs)
    if dt.hasobject:
        raise ForbiddenGlobalError(f"object dtype {dt} is not allowed in a data pickle")
    return dt


def _resolvers() -> dict[tuple[str, str], Callable[[], Any]]:
    import numpy as np

    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: _safe_dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }
    for pkg in ("numpy.core", "numpy._core"):
        table[(f"{pkg}.multiarray", "_reconstruct")] = lambda: _numpy_attr("multiarray", "_reconstruct")
        table[(f"{pkg}.multiarray", "scalar")] = lambda: _numpy_attr("multiarray", "scalar")
        table[(f"{pkg}.numeric", "_frombuffer")] = lambda: _numpy_attr("numeric", "_frombuffer")
    for mod in ("builtins", "__builtin__"):  # Python 3 / Python 2 spelling
        for name in ("set", "frozenset", "bytearray", "list", "dict", "tuple"):
            table[(mod, name)] = lambda name=name: getattr(builtins, name)
    return table


ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_resolvers())


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS`; anything else raises ForbiddenGlobalError."""

    _table = _resolvers()

    def find_class(self, module: str, name: str) -> Any:
        resolve = self._table.get((module, name))
        if resolve is None:
            raise ForbiddenGlobalError(
                f"forbidden global {module}.{name} in pickle: only numpy arrays and plain containers "
                "are allowed in a data file (refused without running it)"
            )
        return resolve()

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenGlobalError("persistent ids are not allowed in a data pickle")


def safe_loads(data: bytes, encoding: str = "bytes") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler` (``encoding='bytes'`` reads Python 2 pickles)."""
    return RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()


def safe_load(path: str | Path, encoding: str = "bytes") -> Any:
    """Unpickle the file at ``path`` safely; malformed files raise DataFormatError naming the file."""
    path = Path(path)
    try:
        return safe_loads(path.read_bytes(), encoding=encoding)
    except ForbiddenGlobalError as e:
        raise ForbiddenGlobalError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataFormatError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
