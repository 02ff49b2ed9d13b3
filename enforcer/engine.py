"""The decision: a pure function of (compiled policy, request, limit state, now).

:func:`decide` reads no clock, does no I/O and logs nothing; everything it needs
is passed in. That is what lets the gRPC server, the MCP proxy, ``policy test``
and replay share this one implementation, and tests run it with a fake clock.

Evaluation order for one call (docs/policy.md has the contract):

1. hidden tool -> deny ``/hide/N``
2. no matching ``tools`` entry -> ``/default`` (deny, or allow subject to ``all_tools.limits``)
3. ``action: deny`` -> deny
4. every ``require`` rule must hold, else deny ``.../require/N``
5. the first ``deny_if`` rule that holds denies (or asks approval if its action says so)
6. ``action: require_approval`` -> require_approval
7. every limit (tool's, then ``all_tools``) must have room; the first full one denies
8. allow, and only then reserve one unit of every applicable limit
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from callward.enforcer.limits import (
    CounterKey,
    InMemoryLimitState,
    LimitState,
    counter_key,
    reserve,
    scope_key,
)
from callward.enforcer.policy import CompiledPolicy, Condition, Limit, Rule, ToolRule

ALLOW = "allow"
DENY = "deny"
REQUIRE_APPROVAL = "require_approval"


class Request(NamedTuple):
    """One tool call as the engine sees it. ``arguments`` is the decoded JSON object."""

    tool: str
    arguments: Mapping[str, Any]
    server: str = ""
    grant: str = ""
    agent_id: str = ""
    session_id: str = ""
    call_id: str = ""


class Decision(NamedTuple):
    decision: str
    rule: str
    message: str
    policy_version: str
    reserved: tuple[CounterKey, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW


_tuple_new = tuple.__new__


def _decision(
    decision: str, rule: str, message: str, version: str, reserved: tuple[CounterKey, ...] = ()
) -> Decision:
    # Same value as Decision(...), without NamedTuple's Python-level __new__ (hot path).
    return _tuple_new(Decision, (decision, rule, message, version, reserved))


# --------------------------------------------------------------------------- predicates

_MISSING = object()


def lookup(req: Request, path: tuple[str, ...]) -> Any:
    """The value at a condition path (``args.a.b``, ``tool``, ``agent_id`` …) or a sentinel."""
    root = path[0]
    cur: Any
    if root == "args":
        cur = req.arguments
    elif root == "tool":
        cur = req.tool
    elif root == "server":
        cur = req.server
    elif root == "agent_id":
        cur = req.agent_id
    elif root == "session_id":
        cur = req.session_id
    elif root == "grant":
        cur = req.grant
    else:
        return _MISSING
    for seg in path[1:]:
        # type() first: isinstance against the Mapping ABC is several times slower.
        if type(cur) is dict or isinstance(cur, Mapping):
            if seg not in cur:
                return _MISSING
            cur = cur[seg]
        elif isinstance(cur, list) and seg.isdigit():
            i = int(seg)
            if i >= len(cur):
                return _MISSING
            cur = cur[i]
        else:
            return _MISSING
    return cur


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _json_eq(a: Any, b: Any) -> bool:
    # JSON equality: true is not 1, 1 equals 1.0.
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def holds(cond: Condition, req: Request) -> bool:
    """Whether one condition holds. A missing path makes every op false except ``exists``."""
    actual = lookup(req, cond.path)
    op = cond.op
    if op == "exists":
        return (actual is not _MISSING) == cond.value
    if actual is _MISSING:
        return False
    v = cond.value
    if op == "eq":
        return _json_eq(actual, v)
    if op == "neq":
        return not _json_eq(actual, v)
    if op == "in":
        return any(_json_eq(actual, x) for x in v)
    if op == "not_in":
        return not any(_json_eq(actual, x) for x in v)
    if op in ("lt", "lte", "gt", "gte"):
        if not _num(actual):
            return False
        if op == "lt":
            return bool(actual < v)
        if op == "lte":
            return bool(actual <= v)
        if op == "gt":
            return bool(actual > v)
        return bool(actual >= v)
    if op == "regex":
        pattern: re.Pattern[str] | None = cond.pattern
        return (
            isinstance(actual, str) and pattern is not None and pattern.search(actual) is not None
        )
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(v, str) and v in actual
        if isinstance(actual, list):
            return any(_json_eq(x, v) for x in actual)
        return False
    return False


def rule_holds(rule: Rule, req: Request) -> bool:
    for c in rule.conditions:
        if not holds(c, req):
            return False
    return True


# --------------------------------------------------------------------------- limits


# The limit rules themselves (windows, keys, reserve) live in callward.enforcer.limits.


def applicable_limits(entry: ToolRule | None, policy: CompiledPolicy) -> tuple[Limit, ...]:
    if entry is None:
        return policy.all_tools_limits
    if not policy.all_tools_limits:
        return entry.limits
    return entry.limits + policy.all_tools_limits


# --------------------------------------------------------------------------- decide


def decide(policy: CompiledPolicy, req: Request, state: LimitState, now: float) -> Decision:
    """Decide one call and, when it is allowed, reserve its quota in ``state``.

    ``now`` is epoch seconds (UTC). The returned ``reserved`` keys are what a
    failed upstream call gives back through ``state.release``.
    """
    version = policy.version
    entry, hidden = policy.resolve(req.server, req.tool)
    if hidden:
        return _decision(
            DENY, _hide_pointer(policy, req), f"tool {req.tool!r} is hidden by policy", version
        )
    if entry is None:
        if policy.default != ALLOW:
            return _decision(
                DENY,
                "/default",
                f"tool {req.tool!r} is not allowed by policy (default deny)",
                version,
            )
        allow_rule = "/default"
    else:
        allow_rule = entry.pointer
        if entry.action == DENY:
            return _decision(
                DENY,
                entry.pointer + "/action",
                entry.message or f"tool {req.tool!r} is denied by policy",
                version,
            )
        for rule in entry.require:
            if not rule_holds(rule, req):
                return _decision(
                    DENY,
                    rule.pointer,
                    rule.message
                    or entry.message
                    or f"call to {req.tool!r} does not meet a required condition",
                    version,
                )
        approval: Rule | None = None
        for rule in entry.deny_if:
            if rule_holds(rule, req):
                if rule.action == REQUIRE_APPROVAL:
                    if approval is None:
                        approval = rule
                    continue
                return _decision(
                    DENY,
                    rule.pointer,
                    rule.message or entry.message or f"call to {req.tool!r} matches a deny_if rule",
                    version,
                )
        if approval is not None:
            return _decision(
                REQUIRE_APPROVAL,
                approval.pointer,
                approval.message or entry.message or f"call to {req.tool!r} requires approval",
                version,
            )
        if entry.action == REQUIRE_APPROVAL:
            return _decision(
                REQUIRE_APPROVAL,
                entry.pointer + "/action",
                entry.message or f"call to {req.tool!r} requires human approval",
                version,
            )
    # applicable_limits(), inlined: this is the hottest path of every allowed call.
    if entry is None:
        limits = policy.all_tools_limits
    elif policy.all_tools_limits:
        limits = entry.limits + policy.all_tools_limits
    else:
        limits = entry.limits
    if not limits:
        return _decision(ALLOW, allow_rule, "", version)
    reserved = reserve(limits, req, state, now)
    if not isinstance(reserved, tuple):  # the first full limit; nothing was reserved
        lim = reserved
        return _decision(
            DENY,
            lim.pointer,
            lim.message
            or f"rate limit {lim.counter!r} reached: {lim.max} per {lim.window} per {lim.scope}",
            version,
        )
    return _decision(ALLOW, allow_rule, "", version, reserved)


def _hide_pointer(policy: CompiledPolicy, req: Request) -> str:
    return policy.hide_rule(req.server, req.tool) or "/hide"


def visible_tools(policy: CompiledPolicy, server: str, tools: Iterable[str]) -> list[str]:
    """The names of ``tools`` that a ``tools/list`` answer may show."""
    return [t for t in tools if not policy.resolve(server, t)[1]]


__all__ = [
    "ALLOW",
    "DENY",
    "REQUIRE_APPROVAL",
    "CounterKey",
    "Decision",
    "InMemoryLimitState",
    "LimitState",
    "Request",
    "counter_key",
    "decide",
    "holds",
    "lookup",
    "rule_holds",
    "scope_key",
    "visible_tools",
]
