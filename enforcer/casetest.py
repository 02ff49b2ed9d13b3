"""Table-driven policy tests (``callward policy test``), shared with the pytest suite.

A cases file is YAML::

    cases:
      - note: the 11th call in a minute is denied
        before:                       # optional earlier calls, replayed in order
          - {request: {tool: run_python_file, grant: g1}, at: "2026-01-01T00:00:01Z", count: 10}
        at: "2026-01-01T00:00:59Z"    # optional; default 2026-01-01T00:00:00Z
        request: {tool: run_python_file, grant: g1, arguments: {path: a.py}}
        decision: deny
        rule: /tools/run_python_file/limits/0

An earlier call may carry ``outcome: error`` to give its quota back, as Report does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from callward.enforcer.engine import Decision, Request, decide
from callward.enforcer.limits import InMemoryLimitState, release
from callward.enforcer.policy import CompiledPolicy

DEFAULT_AT = "2026-01-01T00:00:00Z"


class CasesInvalid(Exception):
    """The cases file itself is malformed."""


@dataclass(frozen=True)
class CaseResult:
    note: str
    passed: bool
    expected: tuple[str, str | None]
    got: Decision


def parse_time(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.timestamp()
    if isinstance(value, str):
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.timestamp()
    raise CasesInvalid(f"not a time: {value!r}")


def to_request(raw: Any) -> Request:
    if not isinstance(raw, dict) or not isinstance(raw.get("tool"), str):
        raise CasesInvalid(f"a request needs at least a 'tool' string: {raw!r}")
    args = raw.get("arguments", raw.get("args", {})) or {}
    if not isinstance(args, dict):
        raise CasesInvalid(f"request arguments must be an object: {args!r}")
    return Request(
        tool=raw["tool"],
        arguments=args,
        server=str(raw.get("server", "")),
        grant=str(raw.get("grant", "")),
        agent_id=str(raw.get("agent_id", raw.get("agent", ""))),
        session_id=str(raw.get("session_id", raw.get("session", ""))),
        call_id=str(raw.get("call_id", "")),
    )


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise CasesInvalid(f"{path}: cannot read cases: {e}") from None
    cases = doc.get("cases") if isinstance(doc, dict) else doc
    if not isinstance(cases, list):
        raise CasesInvalid(f"{path}: expected a list of cases (or a 'cases' key)")
    for i, c in enumerate(cases):
        if not isinstance(c, dict) or "request" not in c or "decision" not in c:
            raise CasesInvalid(f"{path}: case {i} needs 'request' and 'decision'")
    return cases


def run_case(policy: CompiledPolicy, case: dict[str, Any]) -> CaseResult:
    state = InMemoryLimitState()
    for earlier in case.get("before", []) or []:
        req = to_request(earlier.get("request"))
        at = parse_time(earlier.get("at", case.get("at", DEFAULT_AT)))
        for _ in range(int(earlier.get("count", 1))):
            d = decide(policy, req, state, at)
            if earlier.get("outcome") == "error":
                release(state, d.reserved)
    now = parse_time(case.get("at", DEFAULT_AT))
    got = decide(policy, to_request(case["request"]), state, now)
    want_rule = case.get("rule")
    passed = got.decision == case["decision"] and (want_rule is None or got.rule == want_rule)
    return CaseResult(str(case.get("note", "")), passed, (case["decision"], want_rule), got)


def run_cases(policy: CompiledPolicy, cases: list[dict[str, Any]]) -> list[CaseResult]:
    return [run_case(policy, c) for c in cases]
