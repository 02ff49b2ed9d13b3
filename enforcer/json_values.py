"""JSON values as the MCP server will read them: finite numbers, type names, POSIX paths.

A condition is only worth what its reading of a value shares with the server's. Three
readings are fixed here, once, for every caller:

* **Numbers are finite doubles.** ``NaN`` and ``Infinity`` are not JSON, and ``1e400``
  (or a 400-digit integer) is valid JSON that no double holds: Python reads the first as
  infinity, which passes ``lte 1000`` when negative, and a server reading doubles sees
  something else again. The gRPC enforcer and the proxy's framing both parse with
  :func:`finite_float` / :func:`finite_int` and refuse such a message.
* **Type names are JSON's.** ``integer`` is an integer *literal* (``1000``, not
  ``1000.0`` or ``1e3``): Python reads those two as floats, and so does a server decoding
  into a typed integer field, which refuses them. ``true`` is a boolean, never a number.
* **A path is normalised as POSIX resolves it lexically** (:func:`normal_path`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from typing import Any

JSON_TYPES = ("integer", "number", "string", "boolean", "array", "object", "null")
"""The names the ``type`` op accepts."""

# Python types of a parsed JSON value, by type name (a Mapping that is not a dict
# counts as an object too; see :func:`python_types`).
_PYTHON_TYPES: Mapping[str, tuple[type, ...]] = {
    "integer": (int,),
    "number": (int, float),
    "string": (str,),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
    "null": (type(None),),
}
MAX_DOUBLE_DIGITS = len(str(int(sys.float_info.max)))
"""Digits of the largest double: only an integer literal this long can be out of range,
so a text shorter than this needs no :func:`finite_int` (which costs a call per integer)."""


class NonFiniteNumber(ValueError):
    """A JSON number no double holds (``1e400``), or the non-JSON ``NaN``/``Infinity``."""


def reject_constant(name: str) -> Any:
    """``parse_constant`` hook: ``NaN``, ``Infinity`` and ``-Infinity`` are not JSON."""
    raise NonFiniteNumber(f"{name} is not valid JSON")


def finite_float(text: str) -> float:
    """``parse_float`` hook: the double of a literal, refusing one that overflows."""
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:32]} is out of range for a double")
    return value


def finite_int(text: str) -> int:
    """``parse_int`` hook: the integer of a literal, refusing one beyond a double's range."""
    value = int(text)
    if len(text) >= MAX_DOUBLE_DIGITS and abs(value) > sys.float_info.max:
        raise NonFiniteNumber(f"the number {text[:32]}… is out of range for a double")
    return value


def python_types(names: tuple[str, ...]) -> frozenset[type]:
    """The Python types of parsed JSON values whose type is one of ``names``."""
    return frozenset(t for name in names for t in _PYTHON_TYPES[name])


def normal_path(path: str) -> str | None:
    """``path`` with ``.``, ``..`` and repeated slashes resolved, or None when it is not
    one this reading can vouch for.

    POSIX semantics, lexically: ``..`` above the root stays at the root, and a leading
    ``//`` is one slash (POSIX leaves it implementation-defined; here it is not special).
    None for a relative path (relative to what, only the server knows), a NUL byte (the
    C API ends the path there) and a backslash (a separator on Windows servers).
    """
    if path[:1] != "/" or "\x00" in path or "\\" in path:
        return None
    parts: list[str] = []
    for seg in path.split("/"):
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if parts:
                parts.pop()
            continue
        parts.append(seg)
    return "/" + "/".join(parts)


__all__ = [
    "JSON_TYPES",
    "MAX_DOUBLE_DIGITS",
    "NonFiniteNumber",
    "finite_float",
    "finite_int",
    "normal_path",
    "python_types",
    "reject_constant",
]
