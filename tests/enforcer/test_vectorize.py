"""The vectorized stateless verdict agrees with enforcer.engine.decide on every call."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer import vectorize
from enforcer.engine import CounterKey, Request, decide
from enforcer.policy import compile_document
from enforcer.vectorize import json_pointer, stateless_verdicts
from tests.replay.strategies import call_fields, policy_documents


class _AlwaysRoom:
    """A limit state in which every limit has room: isolates the stateless part."""

    def count(self, key: CounterKey) -> int:
        return -1

    def add(self, keys: Iterable[CounterKey]) -> None:
        pass

    def release(self, keys: Iterable[CounterKey]) -> None:
        pass


def _frame(calls: list[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(
        [{**c, "arguments": json.dumps(c["arguments"])} for c in calls],
        schema={
            k: pl.String for k in ("tool", "server", "agent_id", "session_id", "grant", "arguments")
        },
    )


def _engine(doc: dict[str, Any], calls: list[dict[str, Any]]) -> list[tuple[str, str]]:
    policy = compile_document(doc)
    out = []
    for c in calls:
        d = decide(policy, Request(**c), _AlwaysRoom(), 0.0)
        out.append((d.decision, d.rule))
    return out


@given(policy_documents(), st.lists(call_fields, min_size=1, max_size=25))
def test_vectorized_verdict_equals_engine(doc: dict[str, Any], calls: list[dict[str, Any]]) -> None:
    policy = compile_document(doc)
    got = stateless_verdicts(policy, _frame(calls)).frame()
    assert got.height == len(calls)
    assert list(got.select("s_decision", "s_rule").iter_rows()) == _engine(doc, calls)


def test_json_pointer_escapes_and_refuses_ambiguous_segments() -> None:
    assert json_pointer(("args", "a/b", "t~")) == "/a~1b/t~0"
    assert json_pointer(("args", "l", "0")) == "/l/0"
    assert json_pointer(("args", "l", "01")) is None
    assert json_pointer(("args", "l", "-")) is None
    assert json_pointer(("args", "l", "²")) is None


@pytest.mark.parametrize(
    ("condition", "arguments", "expected"),
    [
        ({"path": "args.n", "op": "eq", "value": 1}, {"n": "1"}, "allow"),
        ({"path": "args.n", "op": "eq", "value": 1}, {"n": 1.0}, "deny"),
        ({"path": "args.n", "op": "eq", "value": True}, {"n": 1}, "allow"),
        ({"path": "args.n", "op": "gt", "value": 2**53}, {"n": 2**53 + 1}, "deny"),
        ({"path": "args.n", "op": "exists", "value": True}, {"n": None}, "deny"),
        ({"path": "args.s", "op": "regex", "value": r"^\d$"}, {"s": "٣"}, "deny"),
        ({"path": "args.l.1", "op": "eq", "value": "x"}, {"l": ["a", "x"]}, "deny"),
        ({"path": "args.l.01", "op": "eq", "value": "x"}, {"l": ["a", "x"]}, "deny"),
        ({"path": "args.s", "op": "contains", "value": "b"}, {"s": ["a", "bc"]}, "allow"),
        ({"path": "args.s", "op": "contains", "value": "b"}, {"s": ["a", "b"]}, "deny"),
        ({"path": "args.s", "op": "contains", "value": "b"}, {"s": "abc"}, "deny"),
        ({"path": "args.o", "op": "eq", "value": {"k": [1]}}, {"o": {"k": [1]}}, "deny"),
    ],
)
def test_hand_made_conditions(
    condition: dict[str, Any], arguments: dict[str, Any], expected: str
) -> None:
    doc = {"version": "1", "tools": {"t": {"deny_if": [{"conditions": [condition]}]}}}
    call = {
        "tool": "t",
        "server": "",
        "agent_id": "",
        "session_id": "",
        "grant": "",
        "arguments": arguments,
    }
    got = stateless_verdicts(compile_document(doc), _frame([call])).frame()
    assert got["s_decision"].to_list() == [expected]
    assert _engine(doc, [call])[0][0] == expected


def test_rejects_frames_without_the_needed_columns() -> None:
    policy = compile_document({"version": "1"})
    with pytest.raises(ValueError, match="arguments"):
        stateless_verdicts(policy, pl.DataFrame({"tool": ["a"]}))


def _colliding_hash(column: pl.Series) -> np.ndarray:
    """A hash under which every value of a given length collides."""
    return column.cast(pl.String).str.len_bytes().fill_null(0).cast(pl.UInt64).to_numpy()


_texts = st.lists(st.sampled_from(["", "a", "b", "ab", "ba", "abc", "é", "{}", '{"a":1}']))


@given(_texts, st.booleans())
def test_dense_codes_number_equal_values_equally_even_when_hashes_collide(
    values: list[str], collide: bool
) -> None:
    column = pl.Series(values, dtype=pl.String)
    other = pl.Series([v[::-1] for v in values], dtype=pl.String)
    with mock.patch.object(vectorize, "_hash", _colliding_hash if collide else vectorize._hash):
        codes, first = vectorize.dense_codes(column, other)
    pairs = list(zip(values, [v[::-1] for v in values], strict=True))
    assert codes.size == len(values)
    for i in range(len(values)):
        for j in range(len(values)):
            assert (codes[i] == codes[j]) == (pairs[i] == pairs[j])
    assert sorted(codes[first].tolist()) == list(range(len(set(pairs))))


@settings(max_examples=30)
@given(policy_documents(), st.lists(call_fields, min_size=1, max_size=25))
def test_vectorized_verdict_equals_engine_when_hashes_collide(
    doc: dict[str, Any], calls: list[dict[str, Any]]
) -> None:
    policy = compile_document(doc)
    with mock.patch.object(vectorize, "_hash", _colliding_hash):
        got = stateless_verdicts(policy, _frame(calls)).frame()
    assert list(got.select("s_decision", "s_rule").iter_rows()) == _engine(doc, calls)


def test_calls_with_the_same_signature_but_different_fields_are_judged_apart() -> None:
    doc = {
        "version": "1",
        "tools": {
            "t": {"deny_if": [{"conditions": [{"path": "agent_id", "op": "eq", "value": "x"}]}]}
        },
    }
    calls = [
        {"tool": "t", "server": "", "agent_id": a, "session_id": "", "grant": "", "arguments": {}}
        for a in ("x", "y", "x", "z")
    ]
    got = stateless_verdicts(compile_document(doc), _frame(calls)).frame()
    assert got["s_decision"].to_list() == ["deny", "allow", "deny", "allow"]
    assert list(got.select("s_decision", "s_rule").iter_rows()) == _engine(doc, calls)


def test_conditions_that_compile_to_constants_give_one_verdict_per_call() -> None:
    doc = {
        "version": "1",
        "tools": {
            "t": {"require": [{"conditions": [{"path": "args.n", "op": "in", "value": []}]}]}
        },
    }
    calls = [
        {"tool": "t", "server": "", "agent_id": "", "session_id": "", "grant": "", "arguments": a}
        for a in ({"n": 0}, {}, {"n": 1}, {"n": 0})
    ]
    got = stateless_verdicts(compile_document(doc), _frame(calls)).frame()
    assert list(got.select("s_decision", "s_rule").iter_rows()) == _engine(doc, calls)
