"""What workers and the DuckDB owner exchange over the owner's Unix socket (``tokenhub serve --workers N``).

Values travel as pickles: request records, query arguments (dataclasses, datetimes) and query results (dicts,
named tuples, numpy scalars) round-trip without a schema of their own. Unpickling is restricted all the same:
only value classes (never a function, never a class from elsewhere than the standard value types, numpy's
array rebuild, ``pipeline.types`` and ``store.*``) can be named in a payload, so bytes on the socket can build
values but cannot call anything. The socket is the owner's, mode 0600 in the data directory, beside the key
file that already gives its reader everything: this is defence in depth, not the access control.

A query function is sent by name (``module:qualname``) and resolved by the owner only when it is a public,
module-level function of a ``store.`` module (the read queries: store/request_queries.py, tsdb.py, ...).
"""

from __future__ import annotations

import importlib
import io
import pickle
import types
from collections.abc import Callable
from typing import Any

__all__ = ["OWNER_SOCKET", "WireRefused", "dumps", "function_ref", "loads", "resolve_function"]

OWNER_SOCKET = ".owner/sock"  # in the data directory, in a folder of its own (0700): the owner's internal HTTP
_BUILTINS = frozenset({"set", "frozenset", "complex", "bytearray", "slice", "range"})
_VALUE_MODULES = frozenset({"datetime", "decimal", "uuid", "collections", "zoneinfo"})
# numpy arrays and scalars pickle through these rebuild functions (in either numpy package layout)
_NUMPY = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
)


class WireRefused(ValueError):
    """A payload naming something it may not (or a function reference that is not a store query)."""


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Any:
    return _Restricted(io.BytesIO(data)).load()


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _NUMPY or (module == "builtins" and name in _BUILTINS):
            return super().find_class(module, name)
        if module in _VALUE_MODULES or module == "pipeline.types" or module.startswith("store."):
            found = super().find_class(module, name)
            if isinstance(found, type) and not issubclass(found, BaseException):
                return found
        raise WireRefused(f"{module}.{name} may not travel to or from the DuckDB owner")


def function_ref(fn: Callable[..., Any]) -> str:
    """``module:qualname`` of a module-level store query (what the owner will accept to run)."""
    ref = f"{getattr(fn, '__module__', '')}:{getattr(fn, '__qualname__', '')}"
    resolve_function(ref)  # refuse here, with the same message, what the owner would refuse
    return ref


def resolve_function(ref: str) -> Callable[..., Any]:
    module_name, _, name = ref.partition(":")
    if not module_name.startswith("store.") or not name.isidentifier() or name.startswith("_"):
        raise WireRefused(f"{ref!r} is not a public query function of a store module")
    fn = getattr(importlib.import_module(module_name), name, None)
    if not isinstance(fn, types.FunctionType) or fn.__module__ != module_name:
        raise WireRefused(f"{ref!r} is not a public query function of a store module")
    return fn
