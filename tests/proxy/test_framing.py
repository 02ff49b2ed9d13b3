"""framing.classify: every JSON-RPC shape, allowed or not, and fuzzing that it never raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.types import JSONRPCMessage, JSONRPCNotification, JSONRPCRequest

from callward.enforcer.proxy.framing import (
    INVALID_REQUEST,
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    PARSE_ERROR,
    Refusal,
    classify,
    nesting_depth,
)

CALL = {"name": "echo", "arguments": {"text": "hi"}}


def msg(**members: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", **members}).encode()


@pytest.mark.parametrize("rid", [1.5, True, False, None, {}, {"a": 1}, [], [1], 2**53, -(2**53)])
def test_a_tools_call_with_an_unusable_id_is_refused_without_an_id(rid: Any) -> None:
    """The attack: the SDK parses these as notifications, a lenient server runs them."""
    refusal = classify(msg(id=rid, method="tools/call", params=CALL))
    assert refusal == Refusal(INVALID_REQUEST, refusal.reason if refusal else "", None)


@pytest.mark.parametrize("rid", ["a", "", 0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER])
def test_string_and_safe_integer_ids_pass(rid: Any) -> None:
    assert classify(msg(id=rid, method="tools/call", params=CALL)) is None


ACCEPTED = [
    msg(method="notifications/initialized"),
    msg(id=1, method="ping"),
    msg(id=1, result={}),
    msg(id="x", error={"code": -1, "message": "no"}),
]

REFUSED: list[tuple[bytes, int, str]] = [
    (b"[" + msg(id=1, method="ping") + b"]", INVALID_REQUEST, "batch"),
    (b"[]", INVALID_REQUEST, "batch"),
    (b'"ping"', INVALID_REQUEST, "object"),
    (json.dumps({"id": 1, "method": "ping"}).encode(), INVALID_REQUEST, "jsonrpc"),
    (msg(jsonrpc="1.0", id=1, method="ping"), INVALID_REQUEST, "jsonrpc"),
    (msg(id=1, method="ping", extra=1), INVALID_REQUEST, "unknown member"),
    (msg(id=1, method=5), INVALID_REQUEST, "method"),
    (msg(id=1, method=""), INVALID_REQUEST, "method"),
    (msg(id=1, method="tools/call", params=[1]), INVALID_REQUEST, "params"),
    (msg(id=1, method="tools/call", params="x"), INVALID_REQUEST, "params"),
    (msg(method="tools/call", params=CALL), INVALID_REQUEST, "needs an id"),
    (msg(id=1, method="callward/refused"), INVALID_REQUEST, "proxy's own"),
    (msg(id=1, method="ping", result={}), INVALID_REQUEST, "not both"),
    (msg(id=1), INVALID_REQUEST, "exactly one"),
    (msg(id=1, result={}, error={"code": 1, "message": "x"}), INVALID_REQUEST, "exactly one"),
    (msg(id=1, result=[]), INVALID_REQUEST, "result"),
    (msg(id=None, result={}), INVALID_REQUEST, "response needs"),
    (msg(id=1, error={"code": "1", "message": "x"}), INVALID_REQUEST, "error"),
    (msg(id=1, params={}), INVALID_REQUEST, "params"),
    (
        b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}',
        INVALID_REQUEST,
        "repeated",
    ),
    (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}',
        INVALID_REQUEST,
        "repeated",
    ),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":NaN}}', PARSE_ERROR, "JSON"),
    (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        b'"params":{"name":"pay","arguments":{"amount":-1e400}}}',
        INVALID_REQUEST,
        "out of range",
    ),
    (b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":1E+999}}', INVALID_REQUEST, "range"),
    (
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":-' + b"9" * 400 + b"}}",
        INVALID_REQUEST,
        "range",
    ),
    (b'{"jsonrpc":"2.0","id":1,"method":"p\xffing"}', PARSE_ERROR, "UTF-8"),
    (
        b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"s":"\\ud800"}}',
        INVALID_REQUEST,
        "surrogate",
    ),
    (b"not json", PARSE_ERROR, "JSON"),
    (b"[" * 3000 + b"]" * 3000, INVALID_REQUEST, "deeper"),
    (b'{"a":' * 3000 + b"1" + b"}" * 3000, INVALID_REQUEST, "deeper"),
]


@pytest.mark.parametrize("raw", ACCEPTED)
def test_the_shapes_json_rpc_allows_pass(raw: bytes) -> None:
    assert classify(raw) is None


@pytest.mark.parametrize(("raw", "code", "why"), REFUSED)
def test_the_shapes_it_does_not_allow_are_refused(raw: bytes, code: int, why: str) -> None:
    refusal = classify(raw)
    assert refusal is not None and refusal.code == code and why in refusal.reason


def test_the_id_of_a_refused_request_is_kept_when_usable() -> None:
    refusal = classify(msg(id="k", method="tools/call", params=[]))
    assert refusal is not None and refusal.id == "k"


def test_depth_ignores_brackets_inside_strings() -> None:
    assert nesting_depth(json.dumps({"s": "[[[[{{{{" * 100}).encode()) == 1
    assert classify(msg(id=1, method="ping", params={"s": "[" * 5000})) is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
members = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2]) | json_values,
        "id": json_values,
        "method": st.sampled_from(["tools/call", "ping", "notifications/x", "initialize"])
        | json_values,
        "params": json_values,
        "result": json_values,
        "error": json_values,
        "extra": json_values,
    },
)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = classify(raw)
    assert result is None or isinstance(result, Refusal)


@given(members)
def test_accepted_messages_are_what_the_sdk_reads_them_as(doc: dict[str, Any]) -> None:
    """What framing lets through the SDK parses as the same kind: no request slips by
    as a notification, the shape that let an unusable id skip the policy."""
    raw = json.dumps(doc).encode()
    if nesting_depth(raw) > MAX_DEPTH or classify(raw) is not None:
        return
    root = JSONRPCMessage.model_validate_json(raw).root
    if "method" in doc and "id" in doc:
        assert isinstance(root, JSONRPCRequest) and root.id == doc["id"]
    elif "method" in doc:
        assert isinstance(root, JSONRPCNotification)
        assert doc["method"].startswith("notifications/")


@given(st.integers(0, 4000), st.sampled_from([b"[", b'{"a":']))
def test_any_depth_is_judged_without_recursion(depth: int, opener: bytes) -> None:
    """Accepted exactly up to MAX_DEPTH; deeper is refused, never a RecursionError."""
    closer = b"]" if opener == b"[" else b"}"
    value = opener * depth + b"1" + closer * depth
    raw = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"v":' + value + b"}}"
    assert (classify(raw) is None) == (depth + 2 <= MAX_DEPTH)
