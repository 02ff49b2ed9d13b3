"""The Finding model and the one detection entry point, :func:`detect`.

The CLI (``callward detect``) and the dashboard both call :func:`detect`; there is no
second implementation. Every pattern is a DuckDB query over the ``tool_calls`` rows
(``runaway.py``, ``exfiltration.py``): work grows with the store, never with a Python loop
per call. Python only turns the (few) result rows into :class:`Finding` objects.

Rows without ``agent_id`` or ``session_id`` are still analysed: the session falls back to
the trace, the agent to the service name, and the finding lists what was missing.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from callward.detectors.calls import CallsWindow, open_calls
from callward.detectors.config import DetectorConfig
from callward.detectors.exfiltration import exfiltration_sql
from callward.detectors.runaway import runaway_sql
from callward.detectors.runaway import setup_sql as runaway_setup_sql

KINDS = ("runaway", "exfiltration")
SEVERITIES = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing an operator should look at: a pattern seen in one session (or trace)."""

    kind: str  # runaway | exfiltration
    pattern: str
    severity: str  # low | medium | high | critical
    agent_id: str
    session_id: str
    first_seen: datetime
    last_seen: datetime
    span_ids: tuple[str, ...]
    explanation: str
    trace_id: str = ""  # set when the session id is missing (the trace stands in for it)
    missing: tuple[str, ...] = ()  # identifiers absent from the spans: agent_id, session_id
    calls: int = 0  # calls involved (span_ids is capped)

    @property
    def session_key(self) -> str:
        """The session the finding is about: its id, or its trace when the id is missing."""
        return self.session_id or self.trace_id

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["first_seen"] = self.first_seen.isoformat()
        out["last_seen"] = self.last_seen.isoformat()
        out["span_ids"] = list(self.span_ids)
        out["missing"] = list(self.missing)
        return out


@dataclass(frozen=True, slots=True)
class DetectionReport:
    """Findings plus what was looked at, so "no findings" and "no data" read differently."""

    findings: list[Finding]
    calls_analysed: int
    message: str
    window: tuple[datetime | None, datetime | None] = (None, None)
    counts: dict[str, int] = field(default_factory=dict)


def detect_report(
    source: Path | str | duckdb.DuckDBPyConnection,
    since: datetime | None = None,
    until: datetime | None = None,
    config: DetectorConfig | None = None,
) -> DetectionReport:
    """Run every detector over the store (a data directory or an open DuckDB connection
    that has a ``tool_calls`` table or view) for calls in ``[since, until)``.

    History before ``since`` still counts as the baseline (destinations an agent already
    used, its usual session length), so a window does not make old habits look new.
    """
    cfg = config or DetectorConfig()
    since, until = _utc(since), _utc(until)
    with open_calls(source, since, until, cfg) as window:
        if window.calls_in_window == 0:
            where = "in the store" if since is None and until is None else "in this time window"
            return DetectionReport(
                [], 0, f"no tool calls {where}; nothing to analyse", (since, until)
            )
        findings = _run(window, cfg)
    counts = {k: sum(1 for f in findings if f.kind == k) for k in KINDS}
    if findings:
        message = f"{len(findings)} finding(s) in {window.calls_in_window} calls: " + ", ".join(
            f"{counts[k]} {k}" for k in KINDS
        )
    else:
        message = f"no findings in {window.calls_in_window} calls"
    return DetectionReport(findings, window.calls_in_window, message, (since, until), counts)


def detect(
    source: Path | str | duckdb.DuckDBPyConnection,
    since: datetime | None = None,
    until: datetime | None = None,
    config: DetectorConfig | None = None,
) -> list[Finding]:
    """Every finding for calls in ``[since, until)``, most severe first, then by time."""
    return detect_report(source, since, until, config).findings


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _run(window: CallsWindow, cfg: DetectorConfig) -> list[Finding]:
    con = window.con
    out: list[Finding] = []
    for statement in runaway_setup_sql(cfg):
        con.execute(statement)
    for sql in (*runaway_sql(cfg), *exfiltration_sql(cfg)):
        rows = con.execute(sql).fetchall()
        out.extend(_finding(row, cfg) for row in rows)
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    out.sort(key=lambda f: (-rank[f.severity], f.first_seen, f.pattern, f.session_key))
    return out


def _finding(row: tuple[Any, ...], cfg: DetectorConfig) -> Finding:
    (
        kind,
        pattern,
        severity,
        agent_id,
        session_id,
        trace_id,
        service,
        first_seen,
        last_seen,
        span_ids,
        calls,
        explanation,
    ) = row
    missing = tuple(
        name for name, value in (("agent_id", agent_id), ("session_id", session_id)) if not value
    )
    if missing:
        stand_in = []
        if not session_id:
            stand_in.append(f"analysed per trace {trace_id}")
        if not agent_id:
            stand_in.append(f"agent taken from service {service!r}" if service else "agent unknown")
        explanation = f"{explanation} [missing {', '.join(missing)}: {'; '.join(stand_in)}]"
    spans = tuple(span_ids or ())[: cfg.max_span_ids]
    return Finding(
        kind=kind,
        pattern=pattern,
        severity=severity,
        agent_id=agent_id or "",
        session_id=session_id or "",
        first_seen=_aware(first_seen),
        last_seen=_aware(last_seen),
        span_ids=spans,
        explanation=explanation,
        trace_id=trace_id if not session_id else "",
        missing=missing,
        calls=int(calls),
    )


def _aware(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def findings_json(findings: list[Finding]) -> str:
    return json.dumps([f.to_json() for f in findings], indent=2)
