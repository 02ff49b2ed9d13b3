"""Hourly pre-aggregations of the store, kept in the dashboard's in-memory database.

A page over ten million calls cannot scan them on every render, so the query layer keeps
three small tables summarising the calls per hour, agent, server and tool: decisions and
policy versions (``calls_hourly``), hosts named in arguments (``egress_hourly``) and
redaction markers (``redactions_hourly``). They are built file by file: Parquet files are
immutable once the collector has renamed them into place, so only new files are read; if a
file disappears (the store was rewritten) the tables are rebuilt.

A query can use them when its time range falls on whole hours (or reaches past the ends of
the store); :func:`covers` says so, and :mod:`dashboard.queries` falls back to the raw calls
otherwise. ``tests/dashboard/test_rollups.py`` checks that both paths give the same answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from callward.collector.schema import PARTITION_COLUMN, TABLE

if TYPE_CHECKING:
    from callward.dashboard.queries import CallFilter, Store

HOUR_US = 3_600_000_000
URL_HOST = r"://(?:[^/@\s\"]+@)?([A-Za-z0-9.\-_]+)"
REDACTION_KIND = r"\[REDACTED:([^\]]*)\]"
REDACTION_MARKER = "[REDACTED:"

_HOUR = f"epoch_us(start_time) // {HOUR_US}"
_KEYS = "agent_id, server, tool"

ROLLUPS: dict[str, str] = {
    "calls_hourly": f"""
        SELECT {_HOUR} AS hour, {_KEYS}, coalesce(decision, '') AS decision,
               coalesce(policy_version, '') AS policy_version, count(*) AS calls,
               count(*) FILTER (WHERE outcome = 'error') AS errors,
               min(start_time) AS first_start, max(start_time) AS last_start,
               max(end_time) AS last_end
        FROM {{source}} GROUP BY ALL
    """,
    "egress_hourly": f"""
        SELECT hour, {_KEYS}, decision, destination, count(*) AS calls,
               min(start_time) AS first_used, max(start_time) AS last_used
        FROM (
            SELECT {_HOUR} AS hour, {_KEYS}, coalesce(decision, '') AS decision, start_time,
                   lower(regexp_extract(arguments, '{URL_HOST}', 1)) AS destination
            FROM {{source}} WHERE contains(arguments, '://')
        ) WHERE destination <> '' GROUP BY ALL
    """,
    "redactions_hourly": f"""
        SELECT hour, {_KEYS}, kind, count(*) AS secrets, count(DISTINCT span_id) AS calls
        FROM (
            SELECT {_HOUR} AS hour, {_KEYS}, span_id,
                   unnest(regexp_extract_all(arguments, '{REDACTION_KIND}', 1)) AS kind
            FROM {{source}} WHERE contains(arguments, '{REDACTION_MARKER}')
        ) GROUP BY ALL
    """,
}


class SummaryError(Exception):
    """New Parquet files could not be summarised; keeps the statement that failed."""

    def __init__(self, message: str, sql: str):
        super().__init__(message)
        self.message = message
        self.sql = sql


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create(con: duckdb.DuckDBPyConnection) -> None:
    """Create the (empty) rollup tables from the (empty) ``tool_calls`` view."""
    for name, sql in ROLLUPS.items():
        con.execute(f"CREATE TABLE {name} AS {sql.format(source=TABLE)} LIMIT 0")


def _source(files: Sequence[Path]) -> str:
    paths = ", ".join(_literal(str(p)) for p in files)
    return (
        f"read_parquet([{paths}], hive_partitioning = true, "
        f"hive_types = {{'{PARTITION_COLUMN}': DATE}})"
    )


def update(store: Store, files: Sequence[Path]) -> None:
    """Summarise the files not summarised yet (all of them if one has disappeared).

    The caller holds the store's lock. A file that cannot be read raises the DuckDB error,
    with nothing half-inserted (one transaction per update).
    """
    current = set(files)
    if store.summarized - current:
        for name in ROLLUPS:
            store.con.execute(f"DELETE FROM {name}")
        store.summarized = set()
    new = sorted(current - store.summarized)
    if not new:
        return
    source = _source(new)
    cur = store.con.cursor()
    statement = ""
    try:
        cur.execute("BEGIN TRANSACTION")
        for name, sql in ROLLUPS.items():
            statement = f"INSERT INTO {name} {sql.format(source=source)}"
            cur.execute(statement)
        cur.execute("COMMIT")
    except duckdb.Error as e:
        cur.execute("ROLLBACK")
        raise SummaryError(f"{type(e).__name__}: {e}", statement) from None
    finally:
        cur.close()
    store.summarized |= set(new)
    row = store.con.execute("SELECT min(first_start), max(last_start) FROM calls_hourly").fetchone()
    store.bounds = (row[0], row[1]) if row else (None, None)


def _epoch_us(t: datetime) -> int:
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def covers(store: Store, flt: CallFilter) -> bool:
    """Whether the rollups answer ``flt`` exactly: its range starts and ends on whole hours,
    or reaches past the first/last call of the store."""
    first, last = store.bounds
    if first is None or last is None:
        return False
    start_ok = flt.start is None or flt.start <= first or _epoch_us(flt.start) % HOUR_US == 0
    end_ok = flt.end is None or flt.end > last or _epoch_us(flt.end) % HOUR_US == 0
    return start_ok and end_ok


def where(flt: CallFilter) -> tuple[str, list[Any]]:
    """The filter as a predicate on a rollup's ``hour`` and key columns."""
    conds: list[str] = []
    params: list[Any] = []
    if flt.start is not None:
        conds.append("hour >= ?")
        # Exact because covers() holds: the start is on an hour, or before every call.
        params.append(_epoch_us(flt.start) // HOUR_US)
    if flt.end is not None:
        conds.append("hour < ?")
        params.append(-(-_epoch_us(flt.end) // HOUR_US))  # on an hour, or after every call
    for column, values in (("agent_id", flt.agents), ("server", flt.servers), ("tool", flt.tools)):
        if values:
            conds.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    return (" AND ".join(conds) or "TRUE"), params
