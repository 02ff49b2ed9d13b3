"""Compiled conditions: each closure gives the answer a plain interpreter of the rules gives.

The oracle below evaluates a condition the direct way, one ``if`` per op, as the engine did
before conditions were compiled. The property test draws paths, ops, values and arguments
(strings, numbers, bools, nulls, lists and objects, values that are equal across types) so
that every specialised fast path in :mod:`callward.enforcer.conditions` is compared with it.
"""

from __future__ import annotations

import math
import posixpath
import re
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callward.enforcer.conditions import MISSING, compile_rule, lookup
from callward.enforcer.engine import InMemoryLimitState, Request, decide, holds, rule_holds
from callward.enforcer.json_values import JSON_TYPES
from callward.enforcer.policy import compile_document
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
    if cond.op == "exists":
        return (actual is not MISSING) == cond.value
    if actual is MISSING:
        return False
    verdict = judge(cond, actual)
    return cond.on_wrong_type if verdict is None else verdict


def judge(cond: Condition, actual: Any) -> bool | None:
    """The op on a present value; None when the value is not one the op can judge."""
    op, v = cond.op, cond.value
    if op == "eq":
        return json_equal(actual, v)
    if op == "neq":
        return not json_equal(actual, v)
    if op == "in":
        return any(json_equal(actual, x) for x in v)
    if op == "not_in":
        return not any(json_equal(actual, x) for x in v)
    if op in ("lt", "lte", "gt", "gte"):
        if not is_num(actual) or math.isnan(actual):
            return None
        return {
            "lt": actual < v,
            "lte": actual <= v,
            "gt": actual > v,
            "gte": actual >= v,
        }[op]
    if op == "regex":
        if not isinstance(actual, str):
            return None
        flags = cond.pattern.flags if cond.pattern is not None else 0
        return re.fullmatch(v, actual, flags) is not None
    if op == "contains":
        if isinstance(actual, str) and isinstance(v, str):
            return v in actual
        if isinstance(actual, list):
            return any(json_equal(x, v) for x in actual)
        return None
    if op == "path_under":
        if not isinstance(actual, str) or not actual.startswith("/") or "\\" in actual:
            return None
        if "\x00" in actual:
            return None
        p = posixpath.normpath("/" + actual.lstrip("/"))
        dirs = [v] if isinstance(v, str) else v
        return any(
            posixpath.commonpath([p, posixpath.normpath("/" + d.lstrip("/"))])
            == posixpath.normpath("/" + d.lstrip("/"))
            for d in dirs
        )
    if op == "type":
        kinds = [v] if isinstance(v, str) else v
        return json_type(actual) in kinds or (json_type(actual) == "integer" and "number" in kinds)
    raise AssertionError(op)


def json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


# --------------------------------------------------------------------------- strategies

PATHS = [
    "/w",
    "/w/",
    "/w/a",
    "/w2",
    "/w/../etc",
    "/w/./a//b",
    "//w/a",
    "/../w/a",
    "/w/a/..",
    "/",
    "w/a",
    "",
    "/w/\x00a",
    "\\w\\a",
    "/w\\..\\etc",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, 1, 2, 1.0, 0.0, 2.5, -1, "a", "b", "ab", "1", "", "true", "5000"]),
    st.sampled_from([*PATHS, "a\n", "A", float("nan")]),
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
        value = draw(st.sampled_from(["^a", "b$", "a|1", "", "a.*", "a$", "/w/.*"]))
    elif op == "exists":
        value = draw(st.booleans())
    elif op == "path_under":
        dirs = st.sampled_from(["/w", "/w/", "/", "/w/a", "//w", "/x/../w"])
        value = draw(st.one_of(dirs, st.lists(dirs, min_size=1, max_size=2)))
    elif op == "type":
        kinds = st.sampled_from(JSON_TYPES)
        value = draw(st.one_of(kinds, st.lists(kinds, min_size=1, max_size=3)))
    else:
        value = draw(values)
    pattern = None
    if op == "regex":
        pattern = re.compile(value, draw(st.sampled_from([0, re.IGNORECASE])))
    return Condition(path, op, value, pattern, on_wrong_type=draw(st.booleans()))


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
    assert lookup(req, cond.path) is oracle_lookup(req, cond.path)  # the very value


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


# --------------------------------------------------------------------------- attacks


def verdict(kind: str, condition: dict[str, Any], arguments: dict[str, Any]) -> str:
    """The decision on one call of a tool whose only rule is ``kind`` (require / deny_if)."""
    doc = {"version": "1", "tools": {"t": {kind: [{"conditions": [condition]}]}}}
    policy = compile_document(doc)
    return decide(policy, Request(tool="t", arguments=arguments), InMemoryLimitState(), 0.0)[0]


WRONG_TYPES = [
    ({"op": "gt", "value": 1000}, "5000"),  # a server that coerces strings pays
    ({"op": "gte", "value": 0}, True),
    ({"op": "lt", "value": 1000}, [5]),
    ({"op": "lte", "value": 1000}, None),
    ({"op": "lte", "value": 1000}, float("nan")),
    ({"op": "regex", "value": "a.*"}, 5),
    ({"op": "regex", "value": "a.*"}, ["abc"]),
    ({"op": "contains", "value": "rm"}, {"cmd": "rm"}),
    ({"op": "contains", "value": 5}, "5"),
    ({"op": "path_under", "value": "/workspace"}, 5),
    ({"op": "path_under", "value": "/workspace"}, "workspace/a"),
    ({"op": "path_under", "value": "/workspace"}, "/workspace/a\x00/../../etc"),
    ({"op": "path_under", "value": "/workspace"}, "/workspace\\..\\etc"),
]


@pytest.mark.parametrize(("condition", "actual"), WRONG_TYPES)
@pytest.mark.parametrize("kind", ["require", "deny_if"])
def test_a_value_the_op_cannot_judge_is_denied(
    kind: str, condition: dict[str, Any], actual: Any
) -> None:
    assert verdict(kind, {"path": "args.x", **condition}, {"x": actual}) == "deny"


@pytest.mark.parametrize(("kind", "expected"), [("require", "deny"), ("deny_if", "allow")])
@pytest.mark.parametrize("op", ["gt", "regex", "contains", "path_under", "type", "neq"])
def test_a_missing_argument_makes_the_condition_false(kind: str, expected: str, op: str) -> None:
    value = {"gt": 1, "regex": ".*", "contains": "a", "path_under": "/", "type": "null"}
    condition = {"path": "args.x", "op": op, "value": value.get(op, "a")}
    assert verdict(kind, condition, {"other": 1}) == expected


def test_the_right_type_is_judged_as_before() -> None:
    gt = {"path": "args.amount", "op": "gt", "value": 1000}
    assert verdict("deny_if", gt, {"amount": 5000}) == "deny"
    assert verdict("deny_if", gt, {"amount": 999.5}) == "allow"
    assert verdict("require", gt, {"amount": 5000}) == "allow"


@pytest.mark.parametrize(
    ("path", "under"),
    [
        ("/workspace/../etc/passwd", False),
        ("/workspace/a/../../etc/passwd", False),
        ("/workspace2/x", False),
        ("/workspace", True),
        ("/workspace/", True),
        ("/workspace/a/./b//c", True),
        ("//workspace/a", True),
        ("/../../workspace/a", True),  # above the root stays at the root
        ("/workspace/a/..", True),
        ("/workspace/..", False),
        ("/", False),
    ],
)
def test_path_under_normalises_then_compares_whole_segments(path: str, under: bool) -> None:
    condition = {"path": "args.path", "op": "path_under", "value": ["/srv/data", "/workspace/"]}
    assert verdict("require", condition, {"path": path}) == ("allow" if under else "deny")
    assert verdict("deny_if", condition, {"path": path}) == ("deny" if under else "allow")


def test_path_under_the_root_takes_every_absolute_path() -> None:
    condition = {"path": "args.path", "op": "path_under", "value": "/"}
    assert verdict("require", condition, {"path": "/../x"}) == "allow"
    assert verdict("require", condition, {"path": "x"}) == "deny"


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("^/workspace/", "/workspace/x", False),  # a prefix is no longer enough
        ("/workspace/.*", "/workspace/x", True),
        ("test_.*", "test_customer", True),
        ("test_.*", "live_test_customer", False),
        ("[a-z]+$", "abc\n", False),  # no $ before a trailing newline
        ("[a-z]+", "abc\n", False),
        ("(?s)rm .*", "rm -rf /\nx", True),
    ],
)
def test_regex_matches_the_whole_string(pattern: str, text: str, matches: bool) -> None:
    condition = {"path": "args.s", "op": "regex", "value": pattern}
    assert verdict("require", condition, {"s": text}) == ("allow" if matches else "deny")


def test_regex_ignore_case() -> None:
    condition = {"path": "args.s", "op": "regex", "value": "drop .*", "ignore_case": True}
    assert verdict("deny_if", condition, {"s": "DROP table x"}) == "deny"
    del condition["ignore_case"]
    assert verdict("deny_if", condition, {"s": "DROP table x"}) == "allow"


@pytest.mark.parametrize(
    ("kinds", "value", "is_one"),
    [
        ("integer", 1000, True),
        ("integer", 1000.0, False),  # a JSON integer literal only; 1000.0 is a float
        ("integer", 1.5, False),
        ("integer", True, False),
        ("number", 1.5, True),
        ("number", 1000, True),
        ("number", True, False),  # true is never a number
        ("number", "1000", False),
        ("boolean", False, True),
        ("null", None, True),
        ("string", "", True),
        ("array", [], True),
        ("object", {}, True),
        (["integer", "null"], None, True),
        (["string", "array"], {}, False),
    ],
)
def test_type(kinds: str | list[str], value: Any, is_one: bool) -> None:
    condition = {"path": "args.x", "op": "type", "value": kinds}
    assert verdict("require", condition, {"x": value}) == ("allow" if is_one else "deny")
    assert verdict("deny_if", condition, {"x": value}) == ("deny" if is_one else "allow")
