"""Invariants of the engine for any policy and any traffic (hypothesis)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from callward.enforcer.engine import InMemoryLimitState, Request, decide
from callward.enforcer.policy import compile_document

TOOLS = ["a", "b", "c"]
GRANTS = ["g1", "g2"]
AGENTS = ["x", "y"]
WINDOW_LEN = {"minute": 60, "hour": 3600, "day": 86400}
SCOPE_FIELD = {
    "grant": "grant",
    "agent": "agent_id",
    "session": "session_id",
    "global": None,
    "tool": "tool",
}

limit_st = st.fixed_dictionaries(
    {
        "counter": st.sampled_from(["c1", "c2", "c3", "c4"]),
        "window": st.sampled_from(list(WINDOW_LEN)),
        "max": st.integers(0, 4),
        "scope": st.sampled_from(list(SCOPE_FIELD)),
    }
)
cond_st = st.one_of(
    st.fixed_dictionaries(
        {
            "path": st.just("args.n"),
            "op": st.sampled_from(["lt", "gt", "lte", "gte", "eq", "neq"]),
            "value": st.integers(0, 5),
        }
    ),
    st.fixed_dictionaries(
        {
            "path": st.just("args.s"),
            "op": st.sampled_from(["regex", "contains"]),
            "value": st.sampled_from(["a", "b", "^x"]),
        }
    ),
    st.fixed_dictionaries(
        {
            "path": st.just("args.s"),
            "op": st.sampled_from(["in", "not_in"]),
            "value": st.lists(st.sampled_from(["a", "xb", "ab"]), max_size=2),
        }
    ),
    st.fixed_dictionaries({"path": st.sampled_from(["args.n", "args.m"]), "op": st.just("exists")}),
)
rule_st = st.fixed_dictionaries({"conditions": st.lists(cond_st, min_size=1, max_size=2)})
tool_st = st.fixed_dictionaries(
    {},
    optional={
        "require": st.lists(rule_st, max_size=1),
        "deny_if": st.lists(rule_st, max_size=2),
        "limits": st.lists(limit_st, max_size=2),
    },
)


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": "1",
        "default": draw(st.sampled_from(["allow", "deny"])),
        "tools": draw(st.dictionaries(st.sampled_from(TOOLS), tool_st, max_size=3)),
    }
    if draw(st.booleans()):
        doc["all_tools"] = {"limits": draw(st.lists(limit_st, max_size=2))}
    # The same counter name must keep one setting: make them consistent.
    seen: dict[str, dict[str, Any]] = {}
    for lim in [
        *doc.get("all_tools", {}).get("limits", []),
        *(x for t in doc["tools"].values() for x in t.get("limits", [])),
    ]:
        first = seen.setdefault(lim["counter"], dict(lim))
        lim.update(first)
    return doc


call_st = st.tuples(
    st.sampled_from(TOOLS),
    st.sampled_from(GRANTS),
    st.sampled_from(AGENTS),
    st.sampled_from(["s1", "s2"]),
    st.floats(0, 3 * 86400, allow_nan=False),
    st.fixed_dictionaries(
        {}, optional={"n": st.integers(-1, 6), "s": st.sampled_from(["a", "xb", "ab", ""])}
    ),
    st.booleans(),  # the upstream call failed
)


def _scope_value(scope: str, r: Request) -> str:
    field = SCOPE_FIELD[scope]
    return "" if field is None else getattr(r, field)


@given(policies(), st.lists(call_st, max_size=60))
def test_no_key_gets_more_than_max_allowed_calls_in_a_window(
    doc: dict[str, Any], calls: list[Any]
) -> None:
    p = compile_document(doc)
    state = InMemoryLimitState()
    net: Counter[tuple[str, str, int]] = Counter()
    limits = {lim.counter: lim for lim in p.all_limits()}
    for tool, grant, agent, session, t, args, failed in sorted(calls, key=lambda c: c[4]):
        r = Request(tool, args, grant=grant, agent_id=agent, session_id=session)
        d = decide(p, r, state, 1_700_000_000 + t)
        for key in d.reserved:
            net[key] += 1
        if failed and d.reserved:
            state.release(d.reserved)
            for key in d.reserved:
                net[key] -= 1
        for key, n in net.items():
            assert n <= limits[key[0]].max
        assert d.decision in ("allow", "deny", "require_approval")
        if d.reserved:
            assert d.allowed


@given(policies(), st.lists(call_st, max_size=40))
def test_same_inputs_same_decisions(doc: dict[str, Any], calls: list[Any]) -> None:
    p1, p2 = compile_document(doc), compile_document(doc)
    s1, s2 = InMemoryLimitState(), InMemoryLimitState()
    for tool, grant, agent, session, t, args, _ in calls:
        r = Request(tool, args, grant=grant, agent_id=agent, session_id=session)
        assert decide(p1, r, s1, t) == decide(p2, r, s2, t)
    assert s1.counts == s2.counts


@given(policies(), st.lists(call_st, max_size=40))
def test_denied_calls_never_change_state(doc: dict[str, Any], calls: list[Any]) -> None:
    p = compile_document(doc)
    state = InMemoryLimitState()
    for tool, grant, agent, session, t, args, _ in calls:
        before = dict(state.counts)
        d = decide(
            p, Request(tool, args, grant=grant, agent_id=agent, session_id=session), state, t
        )
        if not d.allowed:
            assert state.counts == before
            assert d.reserved == ()
            assert d.rule.startswith("/")
