"""Hypothesis strategies for random policies and random traffic, shared by the vectorizer
and replay property tests. Values are chosen to hit the corners of JSON equality (1 vs 1.0
vs true vs "1"), missing paths, lists, objects, big numbers, Python-only regex syntax, values of
the wrong type for their op, paths to normalise and every JSON type."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from callward.enforcer.json_values import JSON_TYPES
from callward.enforcer.policy_model import OPS

TOOLS = ["read", "write", "pay", "ship"]
SERVERS = ["", "bank"]
TOOL_KEYS = ["read", "write", "pay", "bank/pay", "wr*", "*"]
AGENTS = ["ana", "bo"]
GRANTS = ["g1", "g2"]
SESSIONS = ["s1", "s2"]

# Paths that normalise in every way path_under knows, and the ones it refuses.
PATHS = ["/w/a", "/w", "/w/../etc", "//w/./a", "/w2", "/../w", "w/a", "/w\\a", "/w/\x00"]
scalar_values = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([2**60, 2**60 + 1, 1.0, 1.5, -0.0, 1e300]),
    st.sampled_from(["", "a", "1", "ab", "xa", "A", "é", "5000", "a\n"]),
    st.sampled_from(PATHS),
    st.booleans(),
    st.none(),
)
json_values = st.recursive(
    scalar_values,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["k", "0", "1"]), inner, max_size=2),
    ),
    max_leaves=4,
)
ARG_PATHS = ["args.n", "args.s", "args.o.k", "args.o.0", "args.l.0", "args.l.1", "args.l.01"]
FIELD_PATHS = ["tool", "server", "agent_id", "session_id", "grant", "tool.x", "args"]


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    path = draw(st.sampled_from(ARG_PATHS + FIELD_PATHS))
    op = draw(st.sampled_from(OPS))
    cond: dict[str, Any] = {"path": path, "op": op}
    if op in ("in", "not_in"):
        cond["value"] = draw(st.lists(json_values, max_size=3))
    elif op in ("lt", "lte", "gt", "gte"):
        cond["value"] = draw(st.one_of(st.integers(-2, 3), st.sampled_from([0.5, 2**60, 1e300])))
    elif op == "regex":
        cond["value"] = draw(
            st.sampled_from(["^a", "b$", "(?i)A", r"\d", "é", "^$", "a.*", "/w.*"])
        )
        if draw(st.booleans()):
            cond["ignore_case"] = draw(st.booleans())
    elif op == "path_under":
        dirs = st.sampled_from(["/w", "/w/", "/", "//w/a"])
        cond["value"] = draw(st.one_of(dirs, st.lists(dirs, min_size=1, max_size=2)))
    elif op == "type":
        kinds = st.sampled_from(JSON_TYPES)
        cond["value"] = draw(st.one_of(kinds, st.lists(kinds, min_size=1, max_size=2)))
    elif op == "exists":
        if draw(st.booleans()):
            cond["value"] = draw(st.booleans())
    elif op == "contains":
        cond["value"] = draw(json_values)
    else:
        cond["value"] = draw(json_values)
    return cond


def _rule(action: bool) -> st.SearchStrategy[dict[str, Any]]:
    base = {"conditions": st.lists(conditions(), min_size=1, max_size=2)}
    optional: dict[str, Any] = {"reason": st.sampled_from(["no", "stop"])}
    if action:
        optional["action"] = st.sampled_from(["deny", "require_approval"])
    return st.fixed_dictionaries(base, optional=optional)


limit_st = st.fixed_dictionaries(
    {
        "counter": st.sampled_from(["c1", "c2", "c3"]),
        "window": st.sampled_from(["minute", "hour", "day"]),
        "max": st.integers(0, 3),
        "scope": st.sampled_from(["grant", "agent", "session", "tool", "global"]),
    },
    optional={"sliding": st.booleans()},
)
tool_st = st.fixed_dictionaries(
    {},
    optional={
        "action": st.sampled_from(["allow", "allow", "deny", "require_approval"]),
        "require": st.lists(_rule(False), max_size=1),
        "deny_if": st.lists(_rule(True), max_size=2),
        "limits": st.lists(limit_st, max_size=2),
        "reason": st.just("tool says no"),
    },
)


@st.composite
def policy_documents(draw: st.DrawFn, with_limits: bool = True) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "1",
        "default": draw(st.sampled_from(["allow", "deny"])),
        "tools": draw(st.dictionaries(st.sampled_from(TOOL_KEYS), tool_st, max_size=4)),
    }
    if draw(st.booleans()):
        doc["hide"] = draw(st.lists(st.sampled_from(["ship", "bank/read", "p*"]), max_size=2))
    if with_limits and draw(st.booleans()):
        doc["all_tools"] = {"limits": draw(st.lists(limit_st, max_size=2))}
    if not with_limits:
        for body in doc["tools"].values():
            body.pop("limits", None)
    # One counter name keeps one setting across the policy.
    seen: dict[str, dict[str, Any]] = {}
    for lim in [
        *doc.get("all_tools", {}).get("limits", []),
        *(x for t in doc["tools"].values() for x in t.get("limits", [])),
    ]:
        first = seen.setdefault(lim["counter"], dict(lim))
        lim.clear()
        lim.update(first)
    return doc


arguments_st = st.fixed_dictionaries(
    {},
    optional={
        "n": json_values,
        "s": st.sampled_from(["", "a", "ab", "xa", "1", "A", "é", "a1", "a\n", *PATHS]),
        "o": st.dictionaries(st.sampled_from(["k", "0"]), json_values, max_size=2),
        "l": st.lists(json_values, max_size=3),
    },
)

call_fields = st.fixed_dictionaries(
    {
        "tool": st.sampled_from(TOOLS),
        "server": st.sampled_from(SERVERS),
        "agent_id": st.sampled_from(AGENTS),
        "session_id": st.sampled_from(SESSIONS),
        "grant": st.sampled_from(GRANTS),
        "arguments": arguments_st,
    }
)
