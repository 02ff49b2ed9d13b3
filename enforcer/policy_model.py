"""The compiled policy: what the loader produces and the engine, replay and batch read.

Every value here has already been validated by :mod:`callward.enforcer.policy_load`;
nothing in this module checks its input again. The dataclasses are frozen (the
policy in force is shared by every request thread and swapped whole on reload),
except :class:`CompiledPolicy`, whose only mutable part is its name-resolution cache.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callward.enforcer.conditions import Test, compile_condition, compile_rule
from callward.semconv import POLICY_DIGEST_HEX

SUPPORTED_VERSIONS = ("1",)
OPS = (
    "eq",
    "neq",
    "in",
    "not_in",
    "lt",
    "lte",
    "gt",
    "gte",
    "regex",
    "contains",
    "exists",
    "path_under",
    "type",
)
WINDOWS: Mapping[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
SCOPES = ("grant", "agent", "session", "tool", "global")
ACTIONS = ("allow", "deny", "require_approval")
RULE_ACTIONS = ("deny", "require_approval")
# Request fields a condition path may start with; ``args`` is PolicyLayer's.
PATH_ROOTS = ("args", "tool", "server", "agent_id", "session_id", "grant")

# The text of a decision whose rule gives none, by what decided it. Here rather than in
# the engine so that an entry naming one tool gets its texts filled in once, at load.
DEFAULT_MESSAGES: Mapping[str, str] = {
    "hidden": "tool {tool!r} is hidden by policy",
    "default": "tool {tool!r} is not allowed by policy (default deny)",
    "action_deny": "tool {tool!r} is denied by policy",
    "action_approval": "call to {tool!r} requires human approval",
    "require": "call to {tool!r} does not meet a required condition",
    "deny_if": "call to {tool!r} matches a deny_if rule",
    "approval": "call to {tool!r} requires approval",
}


@functools.lru_cache(maxsize=4096)
def default_message(kind: str, tool: str) -> str:
    """The text of a decision of ``kind`` (a key of :data:`DEFAULT_MESSAGES`) on ``tool``."""
    return DEFAULT_MESSAGES[kind].format(tool=tool)


@dataclass(frozen=True, slots=True)
class Condition:
    """``path op value``; ``test`` is its compiled closure (:mod:`callward.enforcer.conditions`).

    ``on_wrong_type`` is what the condition answers for a present value its op cannot
    judge (``"5000"`` under ``gt``): true in a ``deny_if`` rule, false in a ``require``
    rule, so that such a value is denied either way. The loader sets it.
    """

    path: tuple[str, ...]
    op: str
    value: Any
    pattern: re.Pattern[str] | None = None
    on_wrong_type: bool = False
    test: Test = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "test",
            compile_condition(self.path, self.op, self.value, self.pattern, self.on_wrong_type),
        )


@dataclass(frozen=True, slots=True)
class Rule:
    """A ``require`` or ``deny_if`` entry: all conditions must hold (``test``, compiled)."""

    pointer: str
    conditions: tuple[Condition, ...]
    message: str | None
    action: str = "deny"
    test: Test = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", compile_rule(tuple(c.test for c in self.conditions)))


@dataclass(frozen=True, slots=True)
class Limit:
    pointer: str
    counter: str
    window: str
    window_seconds: int
    max: int
    scope: str
    message: str | None
    sliding: bool = False
    """A sliding window (the last ``window_seconds`` before each call) instead of a
    calendar one; see :mod:`callward.enforcer.limits`."""

    @property
    def per(self) -> str:
        """How the window reads in a message: ``minute`` or ``sliding minute``."""
        return f"sliding {self.window}" if self.sliding else self.window


RequireCheck = tuple[Test, str, str | None]
"""(rule holds, rule pointer, deny text or None for the default text on the call's tool)."""
DenyIfCheck = tuple[Test, str, bool, str | None]
"""(rule holds, rule pointer, asks approval, text or None as in :data:`RequireCheck`)."""


@dataclass(frozen=True, slots=True)
class ToolRule:
    """One entry under ``tools``; ``key`` is the name as written (maybe a glob or server/tool).

    The fields after ``message`` are derived, for the engine: each rule as a tuple it
    unpacks without attribute lookups, and every text that does not depend on the call.
    A text is ``None`` only when it is the default one and the entry is a glob, whose
    text names the tool actually called.
    """

    key: str
    pointer: str
    server: str | None
    name_pattern: str
    is_glob: bool
    action: str
    require: tuple[Rule, ...]
    deny_if: tuple[Rule, ...]
    limits: tuple[Limit, ...]
    message: str | None
    require_checks: tuple[RequireCheck, ...] = field(init=False, repr=False, compare=False)
    deny_if_checks: tuple[DenyIfCheck, ...] = field(init=False, repr=False, compare=False)
    action_pointer: str = field(init=False, repr=False, compare=False)
    action_message: str | None = field(init=False, repr=False, compare=False)
    unconditional: bool = field(init=False, repr=False, compare=False)
    """Allowed with nothing to check but limits: ``decide`` goes straight to them."""

    def __post_init__(self) -> None:
        text = self._text
        setattr_ = object.__setattr__
        setattr_(
            self,
            "require_checks",
            tuple((r.test, r.pointer, text(r.message, "require")) for r in self.require),
        )
        setattr_(
            self,
            "deny_if_checks",
            tuple(
                (
                    r.test,
                    r.pointer,
                    r.action == "require_approval",
                    text(r.message, "approval" if r.action == "require_approval" else "deny_if"),
                )
                for r in self.deny_if
            ),
        )
        setattr_(self, "action_pointer", self.pointer + "/action")
        setattr_(
            self, "unconditional", self.action == "allow" and not self.require and not self.deny_if
        )
        kind = "action_approval" if self.action == "require_approval" else "action_deny"
        setattr_(self, "action_message", text(None, kind))

    def _text(self, own: str | None, kind: str) -> str | None:
        if own or self.message:
            return own or self.message
        return None if self.is_glob else default_message(kind, self.name_pattern)


@dataclass(slots=True)
class CompiledPolicy:
    """A validated policy, ready for :func:`enforcer.engine.decide`."""

    version: str
    default: str
    all_tools_limits: tuple[Limit, ...]
    tools: tuple[ToolRule, ...]
    source: str
    document: dict[str, Any]
    canonical: str
    _exact: dict[tuple[str | None, str], ToolRule] = field(default_factory=dict, repr=False)
    _globs: tuple[ToolRule, ...] = ()
    resolved: dict[tuple[str, str], tuple[ToolRule | None, bool]] = field(
        default_factory=dict, repr=False, compare=False
    )
    """:meth:`resolve`'s answers by (server, tool); ``decide`` reads it first, a call saved."""
    _hidden_by: dict[tuple[str, str], str | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for t in self.tools:
            if not t.is_glob:
                self._exact[(t.server, t.name_pattern)] = t
        # Most specific glob first: a server-qualified one, then the longest literal part.
        globs = [t for t in self.tools if t.is_glob]
        globs.sort(key=lambda t: (t.server is None, -len(t.name_pattern.replace("*", ""))))
        self._globs = tuple(globs)

    def resolve(self, server: str, tool: str) -> tuple[ToolRule | None, bool]:
        """The tool entry that governs ``server/tool`` and whether the tool is hidden.

        Precedence: exact ``server/tool``, exact ``tool``, then globs (server-qualified
        before bare, longer literal part first, then file order). Cached per name.
        """
        key = (server, tool)
        hit = self.resolved.get(key)
        if hit is not None:
            return hit
        entry = self._exact.get((server, tool)) if server else None
        if entry is None:
            entry = self._exact.get((None, tool))
        if entry is None:
            for g in self._globs:
                if g.server is not None and g.server != server:
                    continue
                if fnmatch.fnmatchcase(tool, g.name_pattern):
                    entry = g
                    break
        hidden = self.hide_rule(server, tool) is not None
        result = (entry, hidden)
        if len(self.resolved) < 65536:
            self.resolved[key] = result
        return result

    def hide_rule(self, server: str, tool: str) -> str | None:
        """The pointer of the first ``hide`` entry matching the tool or ``server/tool``, if any.

        Cached per name like :meth:`resolve`: a hidden tool's every call needs its pointer.
        """
        key = (server, tool)
        if key in self._hidden_by:
            return self._hidden_by[key]
        pointer = self._first_hide(server, tool)
        if len(self._hidden_by) < 65536:
            self._hidden_by[key] = pointer
        return pointer

    def _first_hide(self, server: str, tool: str) -> str | None:
        for i, h in enumerate(self.document.get("hide", ())):
            if h == "*" or fnmatch.fnmatchcase(tool, h):
                return f"/hide/{i}"
            if server and fnmatch.fnmatchcase(f"{server}/{tool}", h):
                return f"/hide/{i}"
        return None

    def all_limits(self) -> list[Limit]:
        out = list(self.all_tools_limits)
        for t in self.tools:
            out.extend(t.limits)
        return out

    def limit_signatures(self) -> dict[str, tuple[str, int, str, bool]]:
        """counter -> (window, max, scope, sliding); used to keep counters across a reload."""
        return {
            lim.counter: (lim.window, lim.max, lim.scope, lim.sliding) for lim in self.all_limits()
        }


def pointer_escape(token: str) -> str:
    """RFC 6901 escaping of one JSON-pointer reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def policy_version(document: Mapping[str, Any]) -> str:
    """Content hash of the canonical policy: the same rules always get the same version."""
    digest = hashlib.sha256(canonical_json(document).encode()).hexdigest()
    return "sha256:" + digest[:POLICY_DIGEST_HEX]


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
