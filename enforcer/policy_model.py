"""The compiled policy: what the loader produces and the engine, replay and batch read.

Every value here has already been validated by :mod:`callward.enforcer.policy_load`;
nothing in this module checks its input again. The dataclasses are frozen (the
policy in force is shared by every request thread and swapped whole on reload),
except :class:`CompiledPolicy`, whose only mutable part is its name-resolution cache.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("1",)
OPS = ("eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists")
WINDOWS: Mapping[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
SCOPES = ("grant", "agent", "session", "tool", "global")
ACTIONS = ("allow", "deny", "require_approval")
RULE_ACTIONS = ("deny", "require_approval")
# Request fields a condition path may start with; ``args`` is PolicyLayer's.
PATH_ROOTS = ("args", "tool", "server", "agent_id", "session_id", "grant")


@dataclass(frozen=True, slots=True)
class Condition:
    path: tuple[str, ...]
    op: str
    value: Any
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """A ``require`` or ``deny_if`` entry: all conditions must hold."""

    pointer: str
    conditions: tuple[Condition, ...]
    message: str | None
    action: str = "deny"


@dataclass(frozen=True, slots=True)
class Limit:
    pointer: str
    counter: str
    window: str
    window_seconds: int
    max: int
    scope: str
    message: str | None


@dataclass(frozen=True, slots=True)
class ToolRule:
    """One entry under ``tools``; ``key`` is the name as written (maybe a glob or server/tool)."""

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
    _resolve_cache: dict[tuple[str, str], tuple[ToolRule | None, bool]] = field(
        default_factory=dict, repr=False
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
        hit = self._resolve_cache.get(key)
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
        if len(self._resolve_cache) < 65536:
            self._resolve_cache[key] = result
        return result

    def hide_rule(self, server: str, tool: str) -> str | None:
        """The pointer of the first ``hide`` entry matching the tool or ``server/tool``, if any."""
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

    def limit_signatures(self) -> dict[str, tuple[str, int, str]]:
        """counter -> (window, max, scope); used to keep counters across a reload."""
        return {lim.counter: (lim.window, lim.max, lim.scope) for lim in self.all_limits()}


def pointer_escape(token: str) -> str:
    """RFC 6901 escaping of one JSON-pointer reference token."""
    return token.replace("~", "~0").replace("/", "~1")


def policy_version(document: Mapping[str, Any]) -> str:
    """Content hash of the canonical policy: the same rules always get the same version."""
    return "sha256:" + hashlib.sha256(canonical_json(document).encode()).hexdigest()[:16]


def canonical_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
