"""The vectorized stateless verdict agrees with enforcer.engine.decide on every call."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any
from unittest import mock

import numpy as np
import polars as pl
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from callward.enforcer import vectorize
from callward.enforcer.engine import CounterKey, Request, decide
from callward.enforcer.limits import SlidingKey
from callward.enforcer.policy import compile_document
from callward.enforcer.vectorize import json_pointer, stateless_verdicts
from tests.replay.strategies import call_fields, policy_documents


class _AlwaysRoom:
    """A limit state in which every limit has room: isolates the stateless part."""

    def count(self, key: CounterKey) -> int:
        return -1

    def count_since(self, key: SlidingKey, length_us: int) -> int:
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
        # A value of the wrong type fails closed: it holds in a deny_if rule.
        ({"path": "args.n", "op": "gt", "value": 1000}, {"n": "5000"}, "deny"),
        ({"path": "args.n", "op": "gt", "value": 1000}, {"n": 5000}, "deny"),
        ({"path": "args.n", "op": "gt", "value": 1000}, {"n": 50}, "allow"),
        ({"path": "args.s", "op": "contains", "value": "b"}, {"s": 5}, "deny"),
        ({"path": "args.s", "op": "regex", "value": "a"}, {"s": "ab"}, "allow"),
        ({"path": "args.s", "op": "regex", "value": "a"}, {"s": 1}, "deny"),
        ({"path": "tool", "op": "gt", "value": 1}, {}, "deny"),
        ({"path": "args.n", "op": "type", "value": "integer"}, {"n": 1.0}, "allow"),
        ({"path": "args.n", "op": "type", "value": "integer"}, {"n": 1}, "deny"),
        ({"path": "args.n", "op": "type", "value": ["null", "boolean"]}, {"n": 0}, "allow"),
        ({"path": "args.p", "op": "path_under", "value": "/w"}, {"p": "/w/../etc"}, "allow"),
        ({"path": "args.p", "op": "path_under", "value": "/w"}, {"p": "//w/./a"}, "deny"),
        ({"path": "args.p", "op": "path_under", "value": "/w"}, {"p": "w/a"}, "deny"),
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


def _colliding_hashes(frame: pl.DataFrame) -> list[np.ndarray]:
    """A hash under which every value of a given length collides."""
    return [
        c.cast(pl.String).str.len_bytes().fill_null(0).cast(pl.UInt64).to_numpy()
        for c in frame.get_columns()
    ]


_texts = st.lists(
    st.sampled_from(["", "a", "b", "ab", "ba", "abc", "é", "{}", '{"a":1}', None]), max_size=12
)
_kinds = st.sampled_from([pl.String, pl.Categorical])


@given(_texts, st.integers(1, 200), _kinds, _kinds, st.booleans())
@example(["a", "b"], 100, pl.String, pl.String, True)  # few hashes, many rows: counted
@example(["", "a", "ab", "b"], 1, pl.String, pl.Categorical, True)  # many: row by row
def test_dense_codes_number_equal_values_equally_even_when_hashes_collide(
    values: list[str | None], repeat: int, kind: Any, other_kind: Any, collide: bool
) -> None:
    # Repeating the rows gives few distinct values for many rows, which is checked for
    # collisions another way than many distinct values.
    values = values * repeat
    flipped = [None if v is None else v[::-1] for v in values]
    column = pl.Series(values, dtype=pl.String).cast(kind)
    other = pl.Series(flipped, dtype=pl.String).cast(other_kind)
    with mock.patch.object(
        vectorize, "_hashes", _colliding_hashes if collide else vectorize._hashes
    ):
        codes, first = vectorize.dense_codes(column, other)
    pairs = list(zip(values, flipped, strict=True))
    assert codes.size == len(values)
    seen: dict[int, tuple[str | None, str | None]] = {}
    for code, pair in zip(codes.tolist(), pairs, strict=True):
        assert seen.setdefault(code, pair) == pair  # one number, one pair of values
    assert len(seen) == len(set(pairs))  # and one pair, one number
    assert sorted(seen) == list(range(len(seen)))
    assert sorted(codes[first].tolist()) == list(range(len(seen)))


@settings(max_examples=30)
@given(policy_documents(), st.lists(call_fields, min_size=1, max_size=25))
def test_vectorized_verdict_equals_engine_when_hashes_collide(
    doc: dict[str, Any], calls: list[dict[str, Any]]
) -> None:
    policy = compile_document(doc)
    with mock.patch.object(vectorize, "_hashes", _colliding_hashes):
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
