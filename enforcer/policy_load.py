"""Load and validate a policy, then compile it into :mod:`callward.enforcer.policy_model`.

A policy file is PolicyLayer's ``policy.json`` (accepted unchanged) or the same
document in YAML, plus the extensions described in docs/policy.md. Loading is
all-or-nothing: every problem is collected, sorted and raised together as
:class:`PolicyInvalid` (``FILE:LINE:COL: code: message``); a policy that has any
error is never compiled, so it can never be evaluated half loaded.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from callward.enforcer.errors import Location, PolicyError, PolicyInvalid
from callward.enforcer.json_values import JSON_TYPES, normal_path
from callward.enforcer.policy_model import (
    ACTIONS,
    OPS,
    PATH_ROOTS,
    RULE_ACTIONS,
    SCOPES,
    SUPPORTED_VERSIONS,
    WINDOWS,
    CompiledPolicy,
    Condition,
    Limit,
    Rule,
    ToolRule,
    canonical_json,
    pointer_escape,
    policy_version,
)

MAX_POLICY_BYTES = 4 * 1024 * 1024
# Values (mappings, lists, scalars) a policy may expand to. Far above any real policy, and
# it bounds what YAML aliases can make of a few bytes: nine aliases of nine aliases, eight
# levels deep, is 43 million values from 300 bytes, and minutes of loading.
MAX_POLICY_NODES = 200_000

_TOP_KEYS = {"version", "default", "hide", "all_tools", "tools", "description", "name"}
_TOOL_KEYS = {"require", "deny_if", "limits", "on_deny", "action", "reason", "description"}
_RULE_KEYS = {"conditions", "on_deny", "reason", "action", "description", "name"}
_COND_KEYS = {"path", "op", "value", "ignore_case"}
_LIMIT_KEYS = {"counter", "window", "max", "scope", "sliding", "on_deny", "reason"}
_ALL_TOOLS_KEYS = {"limits"}

Path_ = tuple[Any, ...]
"""A path inside the parsed document (keys and list indices), used to find a line."""


class _Locator:
    """Maps a JSON path inside the document to a line and column of the source."""

    def __init__(self, text: str, file: str):
        self.file = file
        self.marks: dict[tuple[Any, ...], tuple[int, int]] = {}
        # Keys written twice in one mapping, each at its second place. A parser keeps one
        # of the two silently (the last, for both json and PyYAML), so what the author
        # reads and what is enforced differ: an error, never a choice made for them.
        self.duplicates: list[tuple[str, int, int]] = []
        self._budget = MAX_POLICY_NODES
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            node = None
        if node is not None:
            self._walk(node, ())

    def _walk(self, node: yaml.Node, path: tuple[Any, ...]) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise PolicyInvalid(
                [
                    PolicyError(
                        Location(self.file, 1, 1),
                        "too_large",
                        f"policy expands to more than {MAX_POLICY_NODES} values "
                        "(YAML aliases repeat what they refer to)",
                    )
                ]
            )
        self.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for k, v in node.value:
                key = k.value
                if isinstance(key, str) and key in seen and key != "<<":
                    self.duplicates.append((key, k.start_mark.line + 1, k.start_mark.column + 1))
                seen.add(key)
                self.marks[(*path, key, "__key__")] = (
                    k.start_mark.line + 1,
                    k.start_mark.column + 1,
                )
                self._walk(v, (*path, key))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self._walk(v, (*path, i))

    def at(self, path: tuple[Any, ...], key: bool = False) -> Location:
        if key and (*path, "__key__") in self.marks:
            line, col = self.marks[(*path, "__key__")]
            return Location(self.file, line, col)
        p = path
        while p not in self.marks and p:
            p = p[:-1]
        line, col = self.marks.get(p, (1, 1))
        return Location(self.file, line, col)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- loading


def parse_text(text: str, file: str = "<policy>") -> tuple[dict[str, Any], _Locator]:
    """Parse JSON or YAML text into a document; raises :class:`PolicyInvalid` on syntax errors."""
    try:
        return _parse_text(text, file)
    except RecursionError:
        raise PolicyInvalid([_too_deep(file)]) from None


def _too_deep(file: str) -> PolicyError:
    return PolicyError(Location(file, 1, 1), "too_deep", "policy is nested too deeply to load")


def _parse_text(text: str, file: str) -> tuple[dict[str, Any], _Locator]:
    loc = _Locator(text, file)
    stripped = text.lstrip()
    doc: Any
    if stripped.startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise PolicyInvalid(
                [PolicyError(Location(file, e.lineno, e.colno), "syntax", f"invalid JSON: {e.msg}")]
            ) from None
    else:
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = getattr(e, "problem", None) or str(e)
            raise PolicyInvalid(
                [PolicyError(Location(file, line, col), "syntax", f"invalid YAML: {problem}")]
            ) from None
    if loc.duplicates:
        raise PolicyInvalid(
            [
                PolicyError(
                    Location(file, line, col), "duplicate_key", f"key {key!r} is given twice"
                )
                for key, line, col in loc.duplicates
            ]
        )
    if stripped.startswith("{") and _has_duplicate_keys(text):
        # A JSON document the YAML composer could not read (it is stricter on some
        # whitespace): the duplicate is known, its place is not.
        raise PolicyInvalid(
            [PolicyError(Location(file, 1, 1), "duplicate_key", "a key is given twice")]
        )
    if not isinstance(doc, dict):
        raise PolicyInvalid(
            [PolicyError(Location(file, 1, 1), "type", "a policy must be a JSON/YAML object")]
        )
    return doc, loc


class _DuplicateKey(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise _DuplicateKey
    return dict(pairs)


def _has_duplicate_keys(text: str) -> bool:
    try:
        json.loads(text, object_pairs_hook=_no_duplicates)
    except _DuplicateKey:
        return True
    return False


def load_policy(path: str | Path) -> CompiledPolicy:
    """Read, validate and compile a policy file; raises :class:`PolicyInvalid`."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise PolicyInvalid(
            [PolicyError(Location(str(p), 0, 0), "unreadable", e.strerror or str(e))]
        ) from None
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyInvalid(
            [
                PolicyError(
                    Location(str(p), 0, 0), "too_large", f"policy over {MAX_POLICY_BYTES} bytes"
                )
            ]
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyInvalid(
            [PolicyError(Location(str(p), 1, 1), "encoding", f"policy is not UTF-8: {e.reason}")]
        ) from None
    return compile_text(text, str(p))


def compile_text(text: str, file: str = "<policy>") -> CompiledPolicy:
    doc, loc = parse_text(text, file)
    return compile_document(doc, loc=loc, file=file)


def compile_document(
    doc: dict[str, Any], *, loc: _Locator | None = None, file: str = "<policy>"
) -> CompiledPolicy:
    """Validate a parsed document and compile it; every error is reported at once."""
    if loc is None:
        loc = _Locator("", file)
    v = _Validator(loc)
    try:
        compiled = v.run(doc)
    except RecursionError:
        raise PolicyInvalid([_too_deep(file)]) from None
    if v.errors or compiled is None:
        raise PolicyInvalid(v.errors)
    return compiled


def check_file(path: str | Path) -> list[PolicyError]:
    """All errors of a policy file (empty when it is valid)."""
    try:
        load_policy(path)
    except PolicyInvalid as e:
        return e.errors
    return []


# --------------------------------------------------------------------------- validation


class _Validator:
    """One pass over a document: each method checks one part, records errors and keeps going.

    A method returns the compiled part it checked (or ``None`` / a shorter list when the part
    is broken), so one bad rule does not hide the errors of the next.
    """

    def __init__(self, loc: _Locator):
        self.loc = loc
        self.errors: list[PolicyError] = []
        self.counters: dict[str, tuple[tuple[str, Any, Any, Any], Path_]] = {}

    def err(self, path: Path_, code: str, msg: str, key: bool = False) -> None:
        self.errors.append(PolicyError(self.loc.at(path, key), code, msg))

    def _unknown(self, obj: Mapping[str, Any], allowed: set[str], path: Path_) -> None:
        for k in obj:
            if k not in allowed:
                self.err(
                    (*path, k),
                    "unknown_field",
                    f"unknown field {k!r} (expected one of {', '.join(sorted(allowed))})",
                    key=True,
                )

    def _message(self, obj: Mapping[str, Any], path: Path_) -> str | None:
        msg = None
        for k in ("on_deny", "reason"):
            if k in obj:
                if not isinstance(obj[k], str):
                    self.err((*path, k), "type", f"{k} must be a string")
                else:
                    msg = msg or obj[k]
        return msg

    # ---- the document

    def run(self, doc: dict[str, Any]) -> CompiledPolicy | None:
        self._unknown(doc, _TOP_KEYS, ())
        self._version(doc)
        default = doc.get("default", "deny")
        if default not in ("allow", "deny"):
            self.err(
                ("default",), "invalid_value", f'default must be "allow" or "deny", got {default!r}'
            )
        self._hide(doc.get("hide", []))
        all_limits = self._all_tools(doc.get("all_tools", {}))
        tools = self._tools(doc.get("tools", {}))
        if self.errors:
            return None
        return CompiledPolicy(
            version=policy_version(doc),
            default=str(default),
            all_tools_limits=tuple(all_limits),
            tools=tuple(tools),
            source=self.loc.file,
            document=doc,
            canonical=canonical_json(doc),
        )

    def _version(self, doc: dict[str, Any]) -> None:
        version = doc.get("version")
        if "version" not in doc:
            self.err((), "missing_field", "missing required field 'version'")
        elif not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
            self.err(
                ("version",),
                "unsupported_version",
                f'unsupported version {version!r} (supported: "1")',
            )

    def _hide(self, hide_raw: Any) -> None:
        if not isinstance(hide_raw, list):
            self.err(("hide",), "type", "hide must be a list of tool names")
            return
        for i, h in enumerate(hide_raw):
            if not isinstance(h, str) or not h:
                self.err(("hide", i), "type", "hide entries must be non-empty strings")

    def _all_tools(self, at: Any) -> list[Limit]:
        if not isinstance(at, dict):
            self.err(("all_tools",), "type", "all_tools must be an object")
            return []
        self._unknown(at, _ALL_TOOLS_KEYS, ("all_tools",))
        return self._limits(at.get("limits", []), ("all_tools", "limits"), "/all_tools")

    def _tools(self, tools_raw: Any) -> list[ToolRule]:
        if not isinstance(tools_raw, dict):
            self.err(("tools",), "type", "tools must be an object keyed by tool name")
            return []
        tools: list[ToolRule] = []
        for name, body in tools_raw.items():
            t = self._tool(name, body)
            if t is not None:
                tools.append(t)
        return tools

    # ---- one tool entry

    def _tool(self, name: str, body: Any) -> ToolRule | None:
        path: Path_ = ("tools", name)
        pointer = "/tools/" + pointer_escape(name)
        if not name:
            self.err(path, "invalid_value", "tool name must not be empty", key=True)
            return None
        if name.count("/") > 1:
            self.err(
                path,
                "invalid_value",
                f"tool name {name!r}: at most one '/' (server/tool)",
                key=True,
            )
            return None
        if body is None:
            body = {}
        if not isinstance(body, dict):
            self.err(path, "type", f"tools.{name} must be an object")
            return None
        self._unknown(body, _TOOL_KEYS, path)
        server, _, tool = name.rpartition("/")
        action = body.get("action", "allow")
        if action not in ACTIONS:
            self.err(
                (*path, "action"), "invalid_value", f"action must be one of {', '.join(ACTIONS)}"
            )
        message = self._message(body, path)
        require = self._rules(
            body.get("require", []), (*path, "require"), pointer + "/require", False
        )
        deny_if = self._rules(
            body.get("deny_if", []), (*path, "deny_if"), pointer + "/deny_if", True
        )
        limits = self._limits(body.get("limits", []), (*path, "limits"), pointer)
        return ToolRule(
            key=name,
            pointer=pointer,
            server=server or None,
            name_pattern=tool,
            is_glob=any(c in tool for c in "*?["),
            action=str(action),
            require=tuple(require),
            deny_if=tuple(deny_if),
            limits=tuple(limits),
            message=message,
        )

    # ---- rules and conditions

    def _rules(self, raw: Any, path: Path_, pointer: str, is_deny_if: bool) -> list[Rule]:
        if not isinstance(raw, list):
            self.err(path, "type", f"{path[-1]} must be a list of rules")
            return []
        out: list[Rule] = []
        for i, r in enumerate(raw):
            rule = self._rule(r, (*path, i), f"{pointer}/{i}", is_deny_if)
            if rule is not None:
                out.append(rule)
        return out

    def _rule(self, r: Any, rp: Path_, pointer: str, is_deny_if: bool) -> Rule | None:
        if not isinstance(r, dict):
            self.err(rp, "type", "a rule must be an object with 'conditions'")
            return None
        self._unknown(r, _RULE_KEYS, rp)
        conds_raw = r.get("conditions", [])
        conds: list[Condition] = []
        if not isinstance(conds_raw, list):
            self.err((*rp, "conditions"), "type", "conditions must be a list")
        else:
            for j, c in enumerate(conds_raw):
                cc = self._condition(c, (*rp, "conditions", j), is_deny_if)
                if cc is not None:
                    conds.append(cc)
            if not conds_raw and not is_deny_if:
                self.err(
                    (*rp, "conditions"),
                    "invalid_value",
                    "a require rule needs at least one condition",
                )
        action = r.get("action", "deny")
        if action not in RULE_ACTIONS:
            self.err(
                (*rp, "action"),
                "invalid_value",
                'rule action must be "deny" or "require_approval"',
            )
        return Rule(
            pointer=pointer,
            conditions=tuple(conds),
            message=self._message(r, rp),
            action=str(action),
        )

    def _condition(self, c: Any, path: Path_, is_deny_if: bool) -> Condition | None:
        """A condition; in a ``deny_if`` rule a value of the wrong type makes it hold."""
        if not isinstance(c, dict):
            self.err(path, "type", "a condition must be an object {path, op, value}")
            return None
        self._unknown(c, _COND_KEYS, path)
        segs = self._condition_path(c.get("path"), path)
        op = c.get("op")
        if op not in OPS:
            self.err(
                (*path, "op"), "unknown_op", f"unknown op {op!r} (expected one of {', '.join(OPS)})"
            )
            return None
        checked = self._condition_value(c, op, path)
        if segs is None or checked is None:
            return None
        value, pattern = checked
        return Condition(path=segs, op=op, value=value, pattern=pattern, on_wrong_type=is_deny_if)

    def _condition_path(self, p: Any, path: Path_) -> tuple[str, ...] | None:
        if not isinstance(p, str) or not p:
            self.err(
                (*path, "path"),
                "type",
                "condition path must be a non-empty string like 'args.amount'",
            )
            return None
        segs = tuple(p.split("."))
        if segs[0] not in PATH_ROOTS or any(not s for s in segs):
            self.err(
                (*path, "path"),
                "invalid_path",
                f"path {p!r} must start with one of {', '.join(PATH_ROOTS)}",
            )
            return None
        return segs

    def _condition_value(
        self, c: dict[str, Any], op: str, path: Path_
    ) -> tuple[Any, re.Pattern[str] | None] | None:
        """The condition's value (``exists`` defaults to true) and compiled regex, or None."""
        value = c.get("value")
        vp = (*path, "value")
        ignore_case = c.get("ignore_case", False)
        if not isinstance(ignore_case, bool):
            self.err((*path, "ignore_case"), "type", "ignore_case must be true or false")
            return None
        if "ignore_case" in c and op != "regex":
            self.err(
                (*path, "ignore_case"),
                "invalid_value",
                f"ignore_case applies to op 'regex' only, not {op!r}",
                key=True,
            )
            return None
        if op != "exists" and "value" not in c:
            self.err(path, "missing_field", f"op {op!r} needs a 'value'")
        elif op in ("in", "not_in") and not isinstance(value, list):
            self.err(vp, "type", f"op {op!r} needs a list value")
        elif op in ("lt", "lte", "gt", "gte") and not _is_number(value):
            self.err(vp, "type", f"op {op!r} needs a number value")
        elif op == "regex":
            if not isinstance(value, str):
                self.err(vp, "type", "op 'regex' needs a string pattern")
                return None
            try:
                return value, re.compile(value, re.IGNORECASE if ignore_case else 0)
            except re.error as e:
                self.err(vp, "invalid_regex", f"invalid regex {value!r}: {e}")
        elif op == "path_under":
            if self._directories(value, vp):
                return value, None
        elif op == "type":
            if self._type_names(value, vp):
                return value, None
        elif op == "exists" and "value" in c and not isinstance(value, bool):
            self.err(vp, "type", "op 'exists' takes an optional boolean value")
        elif op == "exists" and "value" not in c:
            return True, None
        else:
            return value, None
        return None

    def _strings(self, value: Any, vp: Path_, needs: str) -> list[tuple[str, Path_]] | None:
        """A string or a non-empty list of them, each with its place, or None (reported)."""
        if isinstance(value, str):
            return [(value, vp)]
        if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
            return [(x, (*vp, i)) for i, x in enumerate(value)]
        self.err(vp, "type", needs)
        return None

    def _directories(self, value: Any, vp: Path_) -> bool:
        """A ``path_under`` value: absolute directories, as :func:`normal_path` reads them."""
        items = self._strings(value, vp, "op 'path_under' needs a directory or a list of them")
        bad = [(x, at) for x, at in items or () if normal_path(x) is None]
        for x, at in bad:
            self.err(
                at, "invalid_path", f"directory {x!r} must be absolute, without NUL or backslash"
            )
        return items is not None and not bad

    def _type_names(self, value: Any, vp: Path_) -> bool:
        items = self._strings(value, vp, "op 'type' needs a type name or a list of them")
        bad = [(x, at) for x, at in items or () if x not in JSON_TYPES]
        for x, at in bad:
            self.err(
                at, "unknown_type", f"unknown type {x!r} (expected one of {', '.join(JSON_TYPES)})"
            )
        return items is not None and not bad

    # ---- limits

    def _limits(self, raw: Any, path: Path_, pointer: str) -> list[Limit]:
        if not isinstance(raw, list):
            self.err(path, "type", "limits must be a list")
            return []
        out: list[Limit] = []
        for i, lim in enumerate(raw):
            limit = self._limit(lim, (*path, i), f"{pointer}/limits/{i}")
            if limit is not None:
                out.append(limit)
        return out

    def _limit(self, lim: Any, lp: Path_, pointer: str) -> Limit | None:
        if not isinstance(lim, dict):
            self.err(lp, "type", "a limit must be an object {counter, window, max, scope}")
            return None
        self._unknown(lim, _LIMIT_KEYS, lp)
        ok = self._limit_fields(lim, lp)
        msg = self._message(lim, lp)
        if not ok:
            return None
        counter, window, mx, scope = (
            lim["counter"],
            lim["window"],
            lim["max"],
            lim.get("scope", "grant"),
        )
        sliding = lim.get("sliding", False)
        sig = (str(window), mx, str(scope), sliding)
        prev = self.counters.get(str(counter))
        if prev is not None and prev[0] != sig:
            self.err(
                lp,
                "counter_conflict",
                f"counter {counter!r} is defined with different settings at line {self.loc.at(prev[1]).line}",
            )
            return None
        self.counters.setdefault(str(counter), (sig, lp))
        return Limit(
            pointer=pointer,
            counter=str(counter),
            window=str(window),
            window_seconds=WINDOWS[str(window)],
            max=mx,
            scope=str(scope),
            message=msg,
            sliding=sliding,
        )

    def _limit_fields(self, lim: dict[str, Any], lp: Path_) -> bool:
        """Check counter, window, max and scope; report every bad one, True when all are good."""
        ok = True
        counter = lim.get("counter")
        if not isinstance(counter, str) or not counter:
            self.err((*lp, "counter"), "type", "limit counter must be a non-empty string")
            ok = False
        window = lim.get("window")
        if not isinstance(window, str) or window not in WINDOWS:
            self.err(
                (*lp, "window"),
                "unknown_window",
                f"unknown window {window!r} (expected minute, hour or day)",
            )
            ok = False
        mx = lim.get("max")
        if not isinstance(mx, int) or isinstance(mx, bool):
            self.err((*lp, "max"), "type", "limit max must be an integer")
            ok = False
        elif mx < 0:
            self.err((*lp, "max"), "negative_max", f"limit max must be >= 0, got {mx}")
            ok = False
        scope = lim.get("scope", "grant")
        if scope not in SCOPES:
            self.err(
                (*lp, "scope"),
                "unknown_scope",
                f"unknown scope {scope!r} (expected one of {', '.join(SCOPES)})",
            )
            ok = False
        if not isinstance(lim.get("sliding", False), bool):
            self.err((*lp, "sliding"), "type", "limit sliding must be true or false")
            ok = False
        return ok
