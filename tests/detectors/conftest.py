"""Build small stores call by call for the detector tests (real Parquet, real DuckDB)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from callward.collector.schema import TOOL_CALL_SCHEMA
from callward.collector.store import write_tool_calls

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def call(
    tool: str,
    arguments: dict[str, Any] | str,
    at: float,
    *,
    agent: str = "agent-a",
    session: str = "s1",
    trace: str | None = None,
    outcome: str = "ok",
    decision: str = "allow",
    attributes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One tool-call row ``at`` seconds after T0."""
    start = T0 + timedelta(seconds=at)
    return {
        "start_time": start,
        "end_time": start + timedelta(milliseconds=20),
        "trace_id": trace or (session.encode().hex() + "0" * 32)[:32],
        "span_id": secrets.token_hex(8),
        "agent_id": agent,
        "session_id": session,
        "tool": tool,
        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        "outcome": outcome,
        "decision": decision,
        "service_name": "test-agent",
        "attributes": json.dumps(attributes or {}),
    }


def table(rows: list[dict[str, Any]]) -> pa.Table:
    cols = {name: [r.get(name) for r in rows] for name in rows[0]}
    fields = [TOOL_CALL_SCHEMA.field(n) for n in cols]
    return pa.table(cols, schema=pa.schema(fields))


@pytest.fixture
def make_store(tmp_path: Path) -> Callable[[list[dict[str, Any]]], Path]:
    counter = iter(range(1000))

    def build(rows: list[dict[str, Any]]) -> Path:
        d = tmp_path / f"store{next(counter)}"
        write_tool_calls(d, table(rows))
        return d

    return build


def history(
    agent: str = "agent-a", hours: float = 30, dest_email: str = "team@acme.test"
) -> list[dict[str, Any]]:
    """A quiet agent with a day of ordinary history and one usual destination."""
    rows = []
    for k in range(int(hours)):
        s = f"hist-{agent}-{k}"
        rows.append(
            call("read_file", {"path": f"/w/src/m{k}.py"}, k * 3600.0, agent=agent, session=s)
        )
        rows.append(
            call("list_directory", {"path": f"/w/d{k}"}, k * 3600.0 + 5, agent=agent, session=s)
        )
        rows.append(
            call(
                "send_email",
                {"to": [dest_email], "body": f"digest {k}"},
                k * 3600.0 + 9,
                agent=agent,
                session=s,
            )
        )
    return rows
