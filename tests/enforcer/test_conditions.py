"""Compiled conditions: each closure gives the answer a plain interpreter of the rules gives.

The oracle below evaluates a condition the direct way, one ``if`` per op, as the engine did
before conditions were compiled. The property test draws paths, ops, values and arguments
(strings, numbers, bools, nulls, lists and objects, values that are equal across types) so
that every specialised fast path in :mod:`callward.enforcer.conditions` is compared with it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from callward.enforcer.conditions import MISSING, compile_rule, lookup
from callward.enforcer.engine import Request, holds, rule_holds
from callward.enforcer.policy_model import OPS, Condition, Rule

# --------------------------------------------------------------------------- the oracle


def oracle_lookup(req: Request, path: tuple[str, ...]) -> Any:
    roots = {
        "args": req.arguments,
        "tool": req.tool,
        "server": req.server,
        "agent_id": req.agent_id,
        "session_id": req.session_id,
        "grant": req.grant,
    }
    if path[0] not in roots:
        return MISSING
    cur: Any = roots[path[0]]
    for seg in path[1:]:
        if isinstance(cur, Mapping):
            if seg not in cur:
                return MISSING
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit():
            if int(seg) >= len(cur):
                return MISSING
            cur = cur[int(seg)]
        else:
            return MISSING
    return cur


def json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def oracle(cond: Condition, req: Request) -> bool:
    actual = oracle_lookup(req, cond.path)
    op, v = cond.op, cond.value
    if op == "exists":
        return (actual is not MISSING) == v
    if actual is MISSING:
        return False
    if op == "eq":
        return json_equal(actual, v)
    if op == "neq":
        return not json_equal(actual, v)
    if op == "in":
        return any(json_equal(actual, x) for x in v)
    if op == "not_in":
        return not any(json_equal(actual, x) for x in v)
    if op in ("lt", "lte", "gt", "gte"):
        if not is_num(actual):
            return False
        return {
            "lt": actual < v,
            "lte": actual <= v,
            "gt": actual > v,
            "gte": actual >= v,
        }[op]
    if op == "regex":
        return (
            isinstance(actual, str)
            and cond.pattern is not None
            and cond.pattern.search(actual) is not None
        )
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(v, str) and v in actual
        if isinstance(actual, list):
            return any(json_equal(x, v) for x in actual)
        return False
    return False


# --------------------------------------------------------------------------- strategies

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 2, 1.0, 0.0, 2.5, -1, "a", "b", "ab", "1", "", "true"]),
)
nested = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(["k", "a", "0"]), inner)
    ),
    max_leaves=6,
)
values = st.one_of(scalars, nested)
# Mostly one segment under args, the shape real policies use and the fast path covers.
paths = st.one_of(
    st.sampled_from(["args.k", "args.a", "args.0"]),
    st.sampled_from(["tool", "server", "grant", "agent_id", "session_id", "tool.x"]),
    st.lists(st.sampled_from(["k", "a", "0", "1"]), min_size=1, max_size=3).map(
        lambda segs: "args." + ".".join(segs)
    ),
)


@st.composite
def conditions(draw: st.DrawFn) -> Condition:
    op = draw(st.sampled_from(OPS))
    path = tuple(draw(paths).split("."))
    if op in ("in", "not_in"):
        value: Any = draw(st.one_of(st.lists(st.sampled_from(["a", "b", "1"])), st.lists(values)))
    elif op in ("lt", "lte", "gt", "gte"):
        value = draw(st.sampled_from([0, 1, 2, 1.5, -1]))
    elif op == "regex":
        value = draw(st.sampled_from(["^a", "b$", "a|1", ""]))
    elif op == "exists":
        value = draw(st.booleans())
    else:
        value = draw(values)
    return Condition(path, op, value, re.compile(value) if op == "regex" else None)


requests = st.builds(
    Request,
    tool=st.sampled_from(["a", "b", "ab"]),
    arguments=st.fixed_dictionaries({}, optional={"k": values, "a": values, "0": values}),
    server=st.sampled_from(["", "a"]),
    grant=st.sampled_from(["", "a", "1"]),
    agent_id=st.sampled_from(["b"]),
    session_id=st.sampled_from(["ab"]),
)


# --------------------------------------------------------------------------- properties


@settings(max_examples=1000)
@given(conditions(), requests)
def test_compiled_condition_equals_the_interpreter(cond: Condition, req: Request) -> None:
    assert holds(cond, req) == oracle(cond, req)
    assert lookup(req, cond.path) == oracle_lookup(req, cond.path) or (
        lookup(req, cond.path) is MISSING and oracle_lookup(req, cond.path) is MISSING
    )


@given(st.lists(conditions(), max_size=4), requests)
def test_compiled_rule_is_every_condition(conds: list[Condition], req: Request) -> None:
    rule = Rule("/r", tuple(conds), None)
    assert rule_holds(rule, req) == all(oracle(c, req) for c in conds)


def test_rule_without_conditions_always_holds() -> None:
    assert compile_rule(())(Request(tool="t", arguments={}))


def test_condition_equality_ignores_the_closure() -> None:
    a = Condition(("args", "x"), "eq", "v")
    b = Condition(("args", "x"), "eq", "v")
    assert a == b and a.test is not b.test
    assert "test" not in repr(a)
