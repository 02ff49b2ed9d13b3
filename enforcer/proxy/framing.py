"""Classification of a client's message from its raw JSON, before any SDK parsing.

The SDK's models are lenient: a ``tools/call`` whose ``id`` is ``1.5``, ``true``,
``null`` or an object does not validate as a request, so it parses as a
*notification* with an extra ``id`` field and would be forwarded with no decision.
Servers that treat "has a method and an id" as a request then execute it. So every
message from a client is classified here first, from the JSON text, by the rules of
JSON-RPC 2.0 as MCP (2025-06-18 and later) narrows them, and anything outside them is
refused and never forwarded:

* a request: ``jsonrpc: "2.0"``, a string ``method``, an ``id`` that is a string or an
  integer (MCP forbids ``null``; integers stay within ±(2**53 - 1), so that a server
  that reads numbers as doubles cannot see two ids as one), ``params`` an object if
  present;
* a notification: the same without ``id``, and its method under ``notifications/``
  (a ``tools/call`` without an id is a request missing its id, not a notification);
* a response (the client's answer to a server's request): a usable ``id`` and exactly
  one of ``result`` (an object) or ``error`` (an object with an integer ``code`` and a
  string ``message``), and no ``method``;
* nothing else: no batch arrays (MCP removed batching in 2025-06-18, and the SDK
  transports the proxy is built on cannot carry one), no member outside those above,
  no repeated member name (two parsers may keep different copies), no nesting deeper
  than :data:`MAX_DEPTH` (checked without recursion before parsing), no text that is not
  UTF-8, no unpaired surrogate, no ``NaN``/``Infinity`` and no number too large for a
  double (``-1e400`` would be read as minus infinity; the rule lives in
  :mod:`callward.enforcer.json_values`, shared with the gRPC enforcer), no ``callward/``
  method (the proxy's own stand-ins).

The answer to a refused message is a JSON-RPC error: ``-32700`` when the text is not
JSON, ``-32600`` otherwise, carrying the message's id when it is usable and ``null``
when not, as JSON-RPC 2.0 says.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from callward.enforcer.json_values import (
    MAX_DOUBLE_DIGITS,
    NonFiniteNumber,
    finite_float,
    finite_int,
)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects accepted in one message. MCP messages need a
handful of levels plus the tool's arguments; the SDK's parser gives up far deeper, and
the standard library's recursion limit sits around 1,000 levels."""

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest integer id: beyond it a server reading JSON numbers as doubles (JavaScript)
maps two ids to one, and an answer would reach the wrong request."""

RESERVED_PREFIX = "callward/"
"""Methods of the proxy's own stand-in messages; a client may not send them."""

_MEMBERS = frozenset({"jsonrpc", "id", "method", "params", "result", "error"})
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a message is not forwarded, and the JSON-RPC error that answers it."""

    code: int
    reason: str
    id: str | int | None = None
    """The message's id when usable, else None (the answer then carries ``id: null``)."""


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of ``[``/``{`` in a JSON text, brackets inside strings ignored.

    Iterative and in C loops only (regex, translate, accumulate), so neither a deep
    text nor a long one can exhaust the stack or hold the event loop for long.
    """
    outside = _STRING.sub(b"", raw)
    steps = outside.translate(_DEPTH_STEP, _BRACKETS)
    return max(accumulate(memoryview(steps).cast("b")), default=0)


def usable_id(value: Any) -> bool:
    """Whether ``value`` may be a request id: a string, or an integer in the safe range."""
    if isinstance(value, str):
        return True
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    )


class _Duplicate(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        raise _Duplicate("a member name is repeated in one object")
    return doc


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse(raw: bytes, max_depth: int = MAX_DEPTH) -> Any | Refusal:
    """The JSON value of ``raw``, or the refusal of a text that cannot be one."""
    if nesting_depth(raw) > max_depth:
        return Refusal(INVALID_REQUEST, f"message nested deeper than {max_depth} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return Refusal(PARSE_ERROR, "parse error: the message is not UTF-8 text")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs,
            parse_constant=_no_constant,
            parse_float=finite_float,
            parse_int=finite_int if len(text) >= MAX_DOUBLE_DIGITS else None,
        )
    except (_Duplicate, NonFiniteNumber) as e:
        return Refusal(INVALID_REQUEST, f"invalid request: {e}")
    except (ValueError, RecursionError):
        return Refusal(PARSE_ERROR, "parse error: the message is not valid JSON")
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(doc, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return Refusal(INVALID_REQUEST, "invalid request: a string holds an unpaired surrogate")
    return doc


def classify(raw: bytes, max_depth: int = MAX_DEPTH) -> Refusal | None:
    """None when the client's message ``raw`` may be forwarded, else why not."""
    doc = parse(raw, max_depth)
    if isinstance(doc, Refusal):
        return doc
    return classify_document(doc)


def classify_document(doc: Any) -> Refusal | None:
    """The shape rules of the module docstring, on an already parsed message."""
    if isinstance(doc, list):
        return _invalid("batches are not accepted (MCP 2025-06-18 and later have none)")
    if not isinstance(doc, dict):
        return _invalid("a JSON-RPC message is an object")
    rid = doc.get("id") if usable_id(doc.get("id")) else None
    unknown = sorted(set(doc) - _MEMBERS)
    if unknown:
        return _invalid(f"unknown member(s) {', '.join(map(repr, unknown[:5]))}", rid)
    if doc.get("jsonrpc") != "2.0":
        return _invalid('"jsonrpc" must be "2.0"', rid)
    if "method" in doc:
        return _check_request(doc, rid)
    return _check_response(doc, rid)


def _check_request(doc: dict[str, Any], rid: str | int | None) -> Refusal | None:
    method = doc["method"]
    if not isinstance(method, str) or not method:
        return _invalid('"method" must be a non-empty string', rid)
    if "result" in doc or "error" in doc:
        return _invalid("a message is a request or a response, not both", rid)
    if "params" in doc and not isinstance(doc["params"], dict):
        return _invalid('"params" must be an object', rid)
    if method.startswith(RESERVED_PREFIX):
        return _invalid(f"methods under {RESERVED_PREFIX} are the proxy's own", rid)
    if "id" in doc:
        if rid is None:
            return _invalid(
                "a request id must be a string or an integer "
                f"(at most {MAX_SAFE_INTEGER} in magnitude)"
            )
        return None
    if not method.startswith("notifications/"):
        return _invalid(f"{method} is a request and needs an id")
    return None


def _check_response(doc: dict[str, Any], rid: str | int | None) -> Refusal | None:
    if "params" in doc:
        return _invalid('"params" without "method"', rid)
    if rid is None:
        return _invalid("a response needs the string or integer id of the request it answers")
    if ("result" in doc) == ("error" in doc):
        return _invalid('a response has exactly one of "result" or "error"', rid)
    if "result" in doc:
        return (
            None if isinstance(doc["result"], dict) else _invalid('"result" must be an object', rid)
        )
    error = doc["error"]
    if not isinstance(error, dict):
        return _invalid('"error" must be an object', rid)
    code = error.get("code")
    if (
        not isinstance(code, int)
        or isinstance(code, bool)
        or not isinstance(error.get("message"), str)
    ):
        return _invalid('"error" needs an integer "code" and a string "message"', rid)
    return None


def _invalid(reason: str, rid: str | int | None = None) -> Refusal:
    return Refusal(INVALID_REQUEST, f"invalid request: {reason}", rid)


__all__ = [
    "INVALID_REQUEST",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "PARSE_ERROR",
    "RESERVED_PREFIX",
    "Refusal",
    "classify",
    "classify_document",
    "nesting_depth",
    "parse",
    "usable_id",
]
