"""Build a real store of recorded calls the way the online enforcer would have made them.

``simulate_online`` plays the enforcer's part with a fake clock: a Check (``decide``) at each
call's start, a Report at its end that gives the quota back when the upstream call failed,
and policy reloads that keep only the counters whose settings did not change, exactly as
``enforcer.server.EnforcerService`` does. ``write_store`` writes the records through the
collector's own writer and keeps every policy version in ``D/policies``.
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from callward.collector.schema import TOOL_CALL_SCHEMA
from callward.collector.store import save_policy, write_tool_calls
from callward.enforcer.engine import InMemoryLimitState, Request, decide
from callward.enforcer.policy import CompiledPolicy

EPOCH_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z


@dataclass
class Call:
    """One call as an agent made it; ``failed`` says how the upstream call would end."""

    start_us: int
    duration_us: int
    tool: str
    arguments: dict[str, Any] = field(default_factory=dict)
    server: str = ""
    agent_id: str = ""
    session_id: str = ""
    grant: str = ""
    failed: bool = False
    span_id: str = ""


def span_ids(n: int) -> list[str]:
    return [f"{i + 1:016x}" for i in range(n)]


def simulate_online(
    calls: list[Call], schedule: list[tuple[int, CompiledPolicy]]
) -> list[dict[str, Any]]:
    """Records of ``calls`` decided online; ``schedule`` is (from time, policy) in force."""
    state = InMemoryLimitState()
    ordered = sorted(calls, key=lambda c: (c.start_us, c.span_id))
    releases: list[tuple[int, int, list[Any]]] = []  # (end, seq, mutable reserved keys)
    pending: list[list[Any]] = []
    policy = schedule[0][1]
    switch = 1
    records = []
    for seq, c in enumerate(ordered):
        while releases and releases[0][0] <= c.start_us:
            _, _, keys = heapq.heappop(releases)
            state.release(keys)
        while switch < len(schedule) and schedule[switch][0] <= c.start_us:
            new = schedule[switch][1]
            old_sigs, new_sigs = policy.limit_signatures(), new.limit_signatures()
            kept = {k for k, sig in new_sigs.items() if old_sigs.get(k) == sig}
            state.retain_counters(kept)
            for keys in pending:
                keys[:] = [k for k in keys if k[0] in kept]
            policy = new
            switch += 1
        req = Request(
            tool=c.tool,
            arguments=c.arguments,
            server=c.server,
            grant=c.grant,
            agent_id=c.agent_id,
            session_id=c.session_id,
            call_id=f"call-{c.span_id}",
        )
        d = decide(policy, req, state, c.start_us / 1_000_000)
        outcome = ""
        if d.allowed:
            outcome = "error" if c.failed else "ok"
            if c.failed and d.reserved:
                keys = list(d.reserved)
                pending.append(keys)
                heapq.heappush(releases, (c.start_us + c.duration_us, seq, keys))
        records.append(
            {
                "start_time": c.start_us,
                "end_time": c.start_us + c.duration_us,
                "trace_id": f"{int(c.span_id, 16):032x}",
                "span_id": c.span_id,
                "parent_span_id": "",
                "call_id": req.call_id,
                "agent_id": c.agent_id,
                "session_id": c.session_id,
                "grant": c.grant,
                "server": c.server,
                "tool": c.tool,
                "arguments": json.dumps(c.arguments, ensure_ascii=False),
                "decision": d.decision,
                "rule": d.rule,
                "message": d.message,
                "policy_version": d.policy_version,
                "outcome": outcome,
                "error_type": "Upstream" if outcome == "error" else "",
                "duration_ms": c.duration_us / 1000,
                "result_bytes": 10,
                "service_name": "callward-enforcer",
                "attributes": "{}",
            }
        )
    return records


def to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records as a table of the store's schema (times are epoch microseconds, kept exact)."""
    arrays = [pa.array([r.get(f.name, "") for r in records], type=f.type) for f in TOOL_CALL_SCHEMA]
    return pa.Table.from_arrays(arrays, schema=TOOL_CALL_SCHEMA)


def write_store(
    data_dir: Path, records: list[dict[str, Any]], policies: list[CompiledPolicy]
) -> None:
    if records:
        write_tool_calls(data_dir, to_table(records))
    for p in policies:
        save_policy(data_dir, p.version, p.canonical)
