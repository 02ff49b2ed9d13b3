"""Invariants of the engine for any policy and any traffic (hypothesis).

Limits are counted here from the document itself (the instants of the calls each
(counter, scope value) holds, in integer microseconds; a calendar limit counts those in the
call's window, a sliding one those in the ``length`` before it), never from the keys
``decide`` reserves, so an engine that gave every call its own window, ignored releases,
or slid a calendar window, fails.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from callward.enforcer.engine import Request, decide
from callward.enforcer.limits import InMemoryLimitState, release
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
    },
    optional={"sliding": st.booleans()},
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
    st.fixed_dictionaries(
        {
            "path": st.sampled_from(["args.n", "args.s"]),
            "op": st.just("type"),
            "value": st.sampled_from(["integer", "string", ["number", "null"]]),
        }
    ),
    st.fixed_dictionaries(
        {"path": st.just("args.s"), "op": st.just("path_under"), "value": st.just("/a")}
    ),
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
    # Three times in four, every allowed call is also under all_tools limits.
    if draw(st.integers(0, 3)):
        doc["all_tools"] = {"limits": draw(st.lists(limit_st, min_size=1, max_size=2))}
    # The same counter name must keep one setting: make them consistent.
    seen: dict[str, dict[str, Any]] = {}
    for lim in [
        *doc.get("all_tools", {}).get("limits", []),
        *(x for t in doc["tools"].values() for x in t.get("limits", [])),
    ]:
        first = seen.setdefault(lim["counter"], dict(lim))
        lim.clear()
        lim.update(first)
    return doc


BASE_S = 1_700_000_000 // 86400 * 86400  # a UTC midnight

call_st = st.tuples(
    st.sampled_from(TOOLS),
    st.sampled_from(GRANTS),
    st.sampled_from(AGENTS),
    st.sampled_from(["s1", "s2"]),
    # Microseconds after BASE_S: mostly within a few minutes, so that calls share windows;
    # on a 5 s grid, so that calls less than a window apart straddle a calendar boundary
    # (where a sliding window and a calendar one disagree).
    st.one_of(
        st.integers(0, 180_000_000),
        st.integers(0, 36).map(lambda k: k * 5_000_000),
        st.integers(0, 3 * 86400 * 1_000_000),
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "n": st.one_of(st.integers(-1, 6), st.sampled_from(["3", 2.0, None])),
            "s": st.sampled_from(["a", "xb", "ab", "", "/a/b", "/a/../b", 1]),
        },
    ),
    st.booleans(),  # the upstream call failed
)


def _scope_value(scope: str, r: Request) -> str:
    field = SCOPE_FIELD[scope]
    return "" if field is None else getattr(r, field)


def _limits_of(doc: dict[str, Any], tool: str) -> list[tuple[str, dict[str, Any]]]:
    """(pointer, limit) that apply to an allowed call of ``tool``, as the document says."""
    own = doc["tools"][tool].get("limits", []) if tool in doc["tools"] else []
    shared = doc.get("all_tools", {}).get("limits", [])
    return [(f"/tools/{tool}/limits/{i}", x) for i, x in enumerate(own)] + [
        (f"/all_tools/limits/{i}", x) for i, x in enumerate(shared)
    ]


Held = dict[tuple[str, str], list[int]]
"""(counter, scope value) -> instants (µs) of the calls it holds, by the document's rules."""


def _independent_counts(
    doc: dict[str, Any], r: Request, t_us: int, held: Held
) -> list[tuple[str, tuple[str, str], int, int]]:
    """(pointer, (counter, scope value), calls counted at ``t_us``, max) per counter, in
    checking order, from the document and integer microseconds, never the engine's keys."""
    out, seen = [], set()
    for pointer, lim in _limits_of(doc, r.tool):
        if lim["counter"] in seen:
            continue
        seen.add(lim["counter"])
        length = WINDOW_LEN[lim["window"]] * 1_000_000
        name = (lim["counter"], _scope_value(lim["scope"], r))
        if lim.get("sliding"):
            n = sum(1 for s in held.get(name, []) if t_us - length < s)
        else:
            n = sum(1 for s in held.get(name, []) if s // length == t_us // length)
        out.append((pointer, name, n, lim["max"]))
    return out


def _without_limits(doc: dict[str, Any]) -> dict[str, Any]:
    tools = {t: {k: v for k, v in e.items() if k != "limits"} for t, e in doc["tools"].items()}
    return {k: v for k, v in doc.items() if k != "all_tools"} | {"tools": tools}


@given(policies(), st.lists(call_st, max_size=60))
def test_no_key_gets_more_than_max_allowed_calls_in_a_window(
    doc: dict[str, Any], calls: list[Any]
) -> None:
    p = compile_document(doc)
    state = InMemoryLimitState()
    held: Held = {}
    for tool, grant, agent, session, t_us, args, failed in sorted(calls, key=lambda c: c[4]):
        r = Request(tool, args, grant=grant, agent_id=agent, session_id=session)
        d = decide(p, r, state, BASE_S + t_us / 1_000_000)
        assert d.decision in ("allow", "deny", "require_approval")
        if not d.allowed:
            assert d.reserved == ()
            continue
        counted = _independent_counts(doc, r, t_us, held)
        for _, name, n, maximum in counted:
            assert n + 1 <= maximum, (name, n)
            held.setdefault(name, []).append(t_us)
        if failed:
            release(state, d.reserved)
            for _, name, _, _ in counted:
                held[name].remove(t_us)


@given(policies(), st.lists(call_st, max_size=40))
def test_decisions_are_the_condition_verdict_then_the_counted_limits(
    doc: dict[str, Any], calls: list[Any]
) -> None:
    """Every decision is what the same policy without limits decides, unless that is an
    allow and an independently counted limit is full: then that limit denies."""
    p, bare = compile_document(doc), compile_document(_without_limits(doc))
    state, unlimited = InMemoryLimitState(), InMemoryLimitState()
    held: Held = {}
    for tool, grant, agent, session, t_us, args, failed in sorted(calls, key=lambda c: c[4]):
        r = Request(tool, args, grant=grant, agent_id=agent, session_id=session)
        verdict = decide(bare, r, unlimited, BASE_S + t_us / 1_000_000)
        got = decide(p, r, state, BASE_S + t_us / 1_000_000)
        if not verdict.allowed:
            assert (got.decision, got.rule) == (verdict.decision, verdict.rule)
            continue
        counted = _independent_counts(doc, r, t_us, held)
        full = [pointer for pointer, _, n, maximum in counted if n >= maximum]
        if full:
            assert (got.decision, got.rule) == ("deny", full[0])
            continue
        assert (got.decision, got.rule) == ("allow", verdict.rule)
        if failed:
            release(state, got.reserved)
        else:
            for _, name, _, _ in counted:
                held.setdefault(name, []).append(t_us)


@given(policies(), st.lists(call_st, max_size=40))
def test_denied_calls_never_change_state(doc: dict[str, Any], calls: list[Any]) -> None:
    p = compile_document(doc)
    state = InMemoryLimitState()
    for tool, grant, agent, session, t_us, args, _ in calls:
        before = (dict(state.counts), {k: list(v) for k, v in state.instants.items()})
        r = Request(tool, args, grant=grant, agent_id=agent, session_id=session)
        d = decide(p, r, state, BASE_S + t_us / 1_000_000)
        if not d.allowed:
            assert (state.counts, state.instants) == before
            assert d.reserved == ()
            assert d.rule.startswith("/")
