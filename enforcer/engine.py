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

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from callward.enforcer.conditions import lookup
from callward.enforcer.limits import (
    CounterKey,
    InMemoryLimitState,
    LimitState,
    counter_key,
    reserve,
    scope_key,
)
from callward.enforcer.policy import CompiledPolicy, Condition, Limit, Rule, ToolRule
from callward.enforcer.policy_model import default_message

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

# What each op means lives in callward.enforcer.conditions, compiled into every
# Condition (``cond.test``) and Rule (``rule.test``) when the policy loads.


def holds(cond: Condition, req: Request) -> bool:
    """Whether one condition holds. A missing path makes every op false except ``exists``."""
    return cond.test(req)


def rule_holds(rule: Rule, req: Request) -> bool:
    """Whether every condition of ``rule`` holds (a rule without conditions always holds)."""
    return rule.test(req)


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

    One function, not split: it reads top to bottom in the order of the module docstring's
    contract, and each helper call would add a frame to the path every call takes.
    """
    version = policy.version
    entry, hidden = policy.resolved.get((req.server, req.tool)) or policy.resolve(
        req.server, req.tool
    )
    # Rule matching runs each rule's compiled closure; a deny's text was filled in at load
    # unless it is the default text of a glob entry, which names the tool called.
    if hidden:
        return _tuple_new(
            Decision,
            (DENY, _hide_pointer(policy, req), default_message("hidden", req.tool), version, ()),
        )
    if entry is None:
        if policy.default != ALLOW:
            return _tuple_new(
                Decision, (DENY, "/default", default_message("default", req.tool), version, ())
            )
        allow_rule = "/default"
    elif entry.unconditional:
        allow_rule = entry.pointer
    else:
        allow_rule = entry.pointer
        if entry.action == DENY:
            message = entry.action_message or default_message("action_deny", req.tool)
            return _tuple_new(Decision, (DENY, entry.action_pointer, message, version, ()))
        for test, pointer, text in entry.require_checks:
            if not test(req):
                message = text or default_message("require", req.tool)
                return _tuple_new(Decision, (DENY, pointer, message, version, ()))
        approval: tuple[str, str | None] | None = None
        for test, pointer, asks_approval, text in entry.deny_if_checks:
            if test(req):
                if asks_approval:
                    if approval is None:
                        approval = (pointer, text)
                    continue
                message = text or default_message("deny_if", req.tool)
                return _tuple_new(Decision, (DENY, pointer, message, version, ()))
        if approval is not None:
            pointer, text = approval
            message = text or default_message("approval", req.tool)
            return _tuple_new(Decision, (REQUIRE_APPROVAL, pointer, message, version, ()))
        if entry.action == REQUIRE_APPROVAL:
            message = entry.action_message or default_message("action_approval", req.tool)
            return _tuple_new(
                Decision, (REQUIRE_APPROVAL, entry.action_pointer, message, version, ())
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
            or f"rate limit {lim.counter!r} reached: {lim.max} per {lim.per} per {lim.scope}",
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
