"""The SQL behind every page, and the one connection it runs on (the hourly pre-aggregations
it reads when it can are defined in :mod:`dashboard.rollups`).

The dashboard only reads. It opens one in-memory DuckDB database per data directory (cached
for the life of the app) whose view ``tool_calls`` reads the store's Hive-partitioned Parquet
files directly, then switches off file access outside the data directory and locks the
configuration. Reading the Parquet files rather than the collector's ``callward.duckdb``
keeps the dashboard working while the collector holds that file open for writing (DuckDB
lets only one process open a database file when one of them writes).

Every query is bounded: a row cap (``LIMIT``), a time limit (a timer interrupts the cursor),
and a cache with a TTL so a page re-run does not re-scan the store. A failed query raises
:class:`QueryError`, which keeps the SQL and its parameters for the page to show.

Pages never pull raw calls in bulk: each query aggregates in SQL, over the hourly rollups
when they answer the filter exactly and over the raw calls otherwise, and returns at most a
few thousand rows.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import streamlit as st

from callward.dashboard import rollups
from callward.record import PARTITION_COLUMN, TABLE, TOOL_CALL_SCHEMA, data_files, data_files_glob

CACHE_TTL_S = 30
QUERY_TIMEOUT_S = 20.0
MAX_ROWS = 5000
MAX_FILTER_VALUES = 500
TOP_N = 10

# Bucket widths offered to charts, narrowest first; a chart gets the narrowest one that keeps it
# under MAX_BUCKETS points.
BUCKETS: tuple[tuple[str, timedelta], ...] = (
    ("1 minute", timedelta(minutes=1)),
    ("10 minutes", timedelta(minutes=10)),
    ("1 hour", timedelta(hours=1)),
    ("6 hours", timedelta(hours=6)),
    ("1 day", timedelta(days=1)),
    ("7 days", timedelta(days=7)),
)
MAX_BUCKETS = 400

# Columns a "top N" query may group by; never interpolate anything else into SQL.
TOP_COLUMNS = ("agent_id", "server", "tool")


_DUCK_TYPES = {
    pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ",
    pa.string(): "VARCHAR",
    pa.float64(): "DOUBLE",
    pa.int64(): "BIGINT",
}


class QueryError(Exception):
    """A dashboard query failed; carries the SQL and its parameters so the page can show them."""

    def __init__(self, message: str, sql: str, params: Sequence[Any] = ()):
        super().__init__(message)
        self.message = message
        self.sql = sql
        self.params = tuple(params)


class QueryTimeout(QueryError):
    """A query ran past its time limit and was interrupted."""


# --------------------------------------------------------------------------- filters


@dataclass(frozen=True)
class CallFilter:
    """The cross-page filters: a half-open time range and optional agent/server/tool sets."""

    start: datetime | None = None
    end: datetime | None = None
    agents: tuple[str, ...] = ()
    servers: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()

    def where(self, prefix: str = "") -> tuple[str, list[Any]]:
        """SQL predicate (never empty) and its parameters, with partition pruning on date."""
        conds: list[str] = []
        params: list[Any] = []
        if self.start is not None:
            conds += [f"{prefix}{PARTITION_COLUMN} >= ?", f"{prefix}start_time >= ?"]
            params += [self.start.date(), self.start]
        if self.end is not None:
            conds += [f"{prefix}{PARTITION_COLUMN} <= ?", f"{prefix}start_time < ?"]
            params += [self.end.date(), self.end]
        for column, values in (
            ("agent_id", self.agents),
            ("server", self.servers),
            ("tool", self.tools),
        ):
            if values:
                marks = ", ".join("?" for _ in values)
                conds.append(f"{prefix}{column} IN ({marks})")
                params += list(values)
        return (" AND ".join(conds) or "TRUE"), params


def bucket_for(start: datetime | None, end: datetime | None) -> str:
    """The narrowest bucket width that keeps a chart of [start, end) under MAX_BUCKETS points."""
    if start is None or end is None:
        return BUCKETS[-2][0]
    span = max(end - start, timedelta(seconds=1))
    for name, width in BUCKETS:
        if span / width <= MAX_BUCKETS:
            return name
    return BUCKETS[-1][0]


# --------------------------------------------------------------------------- the connection


@dataclass
class Store:
    """One read-only view of a data directory."""

    data_dir: Path
    con: duckdb.DuckDBPyConnection
    has_files: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    summarized: set[Path] = field(default_factory=set)  # files already in the rollups
    bounds: tuple[datetime | None, datetime | None] = (None, None)  # first, last start

    @property
    def glob(self) -> str:
        # The collector writes under dot-prefixed temp names and renames; never read those.
        return data_files_glob(self.data_dir)

    def parquet_files(self) -> list[Path]:
        return data_files(self.data_dir)

    def refresh(self) -> None:
        """Point the view at the Parquet files once they exist; summarise any new file."""
        files = self.parquet_files()
        if self.has_files and self.summarized == set(files):
            return
        with self.lock:
            if files and not self.has_files:
                self.con.execute(
                    f"CREATE OR REPLACE VIEW {TABLE} AS SELECT * FROM read_parquet("
                    f"{_sql_literal(self.glob)}, hive_partitioning = true, "
                    f"hive_types = {{'{PARTITION_COLUMN}': DATE}})"
                )
                self.has_files = True
            rollups.update(self, files)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _empty_view_sql() -> str:
    cols = [f"CAST(NULL AS {_DUCK_TYPES[f.type]}) AS {f.name}" for f in TOOL_CALL_SCHEMA]
    cols.append(f"CAST(NULL AS DATE) AS {PARTITION_COLUMN}")
    return f"CREATE OR REPLACE VIEW {TABLE} AS SELECT {', '.join(cols)} WHERE FALSE"


def open_store(data_dir: str | Path) -> Store:
    """Open a read-only view of ``data_dir`` (uncached; the app uses :func:`connect`)."""
    root = Path(data_dir).resolve()
    con = duckdb.connect(":memory:")
    con.execute("SET TimeZone = 'UTC'")
    con.execute(_empty_view_sql())
    rollups.create(con)
    con.execute(f"SET allowed_directories = [{_sql_literal(str(root) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return Store(root, con)


@st.cache_resource(show_spinner=False, max_entries=8)
def connect(data_dir: str) -> Store:
    """The app's one connection per data directory."""
    return open_store(data_dir)


def run(
    store: Store,
    sql: str,
    params: Sequence[Any] = (),
    *,
    max_rows: int = MAX_ROWS,
    timeout_s: float = QUERY_TIMEOUT_S,
) -> pd.DataFrame:
    """Run one bounded query; ``frame.attrs['truncated']`` says whether rows were cut."""
    try:
        store.refresh()
    except rollups.SummaryError as e:
        raise QueryError(e.message, e.sql) from None
    bounded = f"SELECT * FROM ({sql}) AS bounded LIMIT {int(max_rows) + 1}"
    cur = store.con.cursor()
    timer = threading.Timer(timeout_s, cur.interrupt)
    timer.daemon = True
    timer.start()
    try:
        frame = cur.execute(bounded, list(params)).df()
    except duckdb.InterruptException:
        raise QueryTimeout(f"query interrupted after {timeout_s:g} s", sql, params) from None
    except duckdb.Error as e:
        raise QueryError(f"{type(e).__name__}: {e}", sql, params) from None
    finally:
        timer.cancel()
        cur.close()
    truncated = len(frame) > max_rows
    if truncated:
        frame = frame.head(max_rows)
    frame.attrs["truncated"] = truncated
    return frame


def prepare(data_dir: str) -> None:
    """Bring the view and the rollups up to date with the files on disk (cheap if nothing
    changed); the app calls it under a spinner so a long first summary is visible."""
    try:
        connect(data_dir).refresh()
    except rollups.SummaryError as e:
        raise QueryError(e.message, e.sql) from None


def _q(data_dir: str, sql: str, params: Sequence[Any] = (), **kw: Any) -> pd.DataFrame:
    return run(connect(data_dir), sql, params, **kw)


_cached = st.cache_data(ttl=CACHE_TTL_S, max_entries=512, show_spinner=False)


# --------------------------------------------------------------------------- store-wide


def _rollup_ok(data_dir: str, flt: CallFilter, bucket: timedelta | None = None) -> bool:
    """Whether the hourly rollups answer this filter (and chart bucket) exactly."""
    store = connect(data_dir)
    try:
        store.refresh()
    except rollups.SummaryError:
        return False  # the raw query will report the error, with its SQL
    if bucket is not None and bucket % timedelta(hours=1):
        return False
    return rollups.covers(store, flt)


def _utc(moment: pd.Timestamp) -> datetime:
    """A plain ``datetime`` in ``datetime.UTC`` (DuckDB hands back ``Etc/UTC`` zoneinfo)."""
    return moment.to_pydatetime().astimezone(UTC)


def _width(name: str) -> timedelta:
    return dict(BUCKETS)[name]


@_cached
def store_summary(data_dir: str) -> dict[str, Any]:
    """Size and freshness of the whole store (no filters): for the sidebar and empty states."""
    store = connect(data_dir)
    frame = run(
        store,
        "SELECT sum(calls) AS calls, min(first_start) AS first_span, max(last_end) AS last_span,"
        " count(DISTINCT hour // 24) AS days FROM calls_hourly",
    )
    files = store.parquet_files()
    row = frame.iloc[0]
    empty = pd.isna(row["calls"])
    return {
        "data_dir": str(store.data_dir),
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "calls": 0 if empty else int(row["calls"]),
        "days": int(row["days"]),
        "first_span": None if empty else _utc(row["first_span"]),
        "last_span": None if empty else _utc(row["last_span"]),
    }


@_cached
def filter_options(data_dir: str) -> dict[str, list[str]]:
    """The busiest agents, servers and tools, offered in the filter pickers."""
    out: dict[str, list[str]] = {}
    for column in TOP_COLUMNS:
        frame = _q(
            data_dir,
            f"SELECT {column} AS value FROM calls_hourly WHERE coalesce({column}, '') <> ''"
            f" GROUP BY {column} ORDER BY sum(calls) DESC, {column}",
            max_rows=MAX_FILTER_VALUES,
        )
        out[column] = sorted(frame["value"].tolist())
    return out


# --------------------------------------------------------------------------- overview


@_cached
def headline(data_dir: str, flt: CallFilter) -> dict[str, Any]:
    """The figures at the top of the overview."""
    if _rollup_ok(data_dir, flt):
        where, params = rollups.where(flt)
        source, n, count = "calls_hourly", "calls", "sum(calls)"
        errors = "sum(errors)"
    else:
        where, params = flt.where()
        source, n, count = TABLE, "1", "count(*)"
        errors = "count(*) FILTER (WHERE outcome = 'error')"
    frame = _q(
        data_dir,
        f"""
        SELECT {count} AS calls,
               coalesce(sum({n}) FILTER (WHERE decision = 'deny'), 0) AS denied,
               coalesce(sum({n}) FILTER (WHERE decision = 'require_approval'), 0) AS approvals,
               coalesce(sum({n}) FILTER (WHERE decision = 'allow'), 0) AS allowed,
               coalesce({errors}, 0) AS errors,
               count(DISTINCT agent_id) FILTER (WHERE coalesce(agent_id, '') <> '') AS agents
        FROM {source} WHERE {where}
        """,
        params,
    )
    row = {k: int(0 if pd.isna(v) else v) for k, v in frame.iloc[0].to_dict().items()}
    decided = row["denied"] + row["approvals"] + row["allowed"]
    return {**row, "deny_rate": (row["denied"] / decided) if decided else 0.0}


@_cached
def decisions_over_time(data_dir: str, flt: CallFilter) -> pd.DataFrame:
    """Calls per time bucket and decision ("none" when the call was not decided)."""
    width = _width(bucket_for(flt.start, flt.end))
    if _rollup_ok(data_dir, flt, width):
        where, params = rollups.where(flt)
        hours = int(width / timedelta(hours=1))
        key, n, source = f"hour // {hours} * {hours * 3600}", "sum(calls)", "calls_hourly"
    else:
        where, params = flt.where()
        seconds = int(width.total_seconds())
        key = f"epoch_us(start_time) // {seconds * 1_000_000} * {seconds}"
        n, source = "count(*)", TABLE
    return _q(
        data_dir,
        f"""
        SELECT to_timestamp(b) AS bucket, decision, calls FROM (
            SELECT {key} AS b,
                   CASE WHEN coalesce(decision, '') = '' THEN 'none' ELSE decision END
                       AS decision,
                   {n} AS calls
            FROM {source} WHERE {where} GROUP BY ALL
        ) ORDER BY bucket, decision
        """,
        params,
        max_rows=MAX_BUCKETS * 4 * 2,
    )


@_cached
def top(data_dir: str, flt: CallFilter, column: str, n: int = TOP_N) -> pd.DataFrame:
    """The ``n`` busiest values of ``column`` with their deny counts."""
    if column not in TOP_COLUMNS:
        raise ValueError(f"cannot group by {column!r}")
    if _rollup_ok(data_dir, flt):
        where, params = rollups.where(flt)
        source, calls = "calls_hourly", "calls"
    else:
        where, params = flt.where()
        source, calls = TABLE, "1"
    return _q(
        data_dir,
        f"""
        SELECT coalesce({column}, '') AS {column}, sum({calls}) AS calls,
               coalesce(sum({calls}) FILTER (WHERE decision = 'deny'), 0) AS denied
        FROM {source} WHERE {where}
        GROUP BY 1 ORDER BY calls DESC, 1
        """,
        params,
        max_rows=n,
    )


@_cached
def policy_versions(data_dir: str, flt: CallFilter) -> pd.DataFrame:
    """Policy versions seen in decisions, with when each was first and last in force."""
    if _rollup_ok(data_dir, flt):
        where, params = rollups.where(flt)
        sql = f"""
            SELECT policy_version, min(first_start) AS first_seen, max(last_start) AS last_seen,
                   sum(calls) AS calls,
                   coalesce(sum(calls) FILTER (WHERE decision = 'deny'), 0) AS denied
            FROM calls_hourly WHERE {where} AND policy_version <> ''
            GROUP BY 1 ORDER BY last_seen DESC
        """
    else:
        where, params = flt.where()
        sql = f"""
            SELECT policy_version, min(start_time) AS first_seen, max(start_time) AS last_seen,
                   count(*) AS calls, count(*) FILTER (WHERE decision = 'deny') AS denied
            FROM {TABLE} WHERE {where} AND coalesce(policy_version, '') <> ''
            GROUP BY 1 ORDER BY last_seen DESC
        """
    return _q(data_dir, sql, params)


# --------------------------------------------------------------------------- runaway agents


@_cached
def agent_activity(data_dir: str, flt: CallFilter) -> pd.DataFrame:
    """Per agent: its usual (median) calls per bucket against its busiest bucket."""
    name = bucket_for(flt.start, flt.end)
    width = max(_width(name), timedelta(hours=1)) if _rollup_ok(data_dir, flt) else _width(name)
    if _rollup_ok(data_dir, flt, width):
        name = next(k for k, v in BUCKETS if v == width)
        where, params = rollups.where(flt)
        hours = int(width / timedelta(hours=1))
        per = f"""
            SELECT agent_id, hour // {hours} * {hours * 3600} AS b, sum(calls) AS calls,
                   coalesce(sum(calls) FILTER (WHERE decision = 'deny'), 0) AS denied
            FROM calls_hourly WHERE {where} AND coalesce(agent_id, '') <> '' GROUP BY ALL
        """
    else:
        where, params = flt.where()
        seconds = int(width.total_seconds())
        per = f"""
            SELECT agent_id, epoch_us(start_time) // {seconds * 1_000_000} * {seconds} AS b,
                   count(*) AS calls, count(*) FILTER (WHERE decision = 'deny') AS denied
            FROM {TABLE} WHERE {where} AND coalesce(agent_id, '') <> '' GROUP BY ALL
        """
    return _q(
        data_dir,
        f"""
        WITH per AS ({per})
        SELECT agent_id, sum(calls) AS calls, sum(denied) AS denied,
               count(*) AS active_buckets, median(calls) AS usual, max(calls) AS peak,
               to_timestamp(arg_max(b, calls)) AS peak_at,
               max(calls) / median(calls) AS peak_vs_usual, '{name}' AS bucket_width
        FROM per GROUP BY agent_id ORDER BY peak_vs_usual DESC, calls DESC, agent_id
        """,
        params,
    )


@_cached
def agent_timeline(data_dir: str, flt: CallFilter, agent_id: str) -> pd.DataFrame:
    """One agent's calls per bucket and decision, for its activity chart."""
    narrowed = CallFilter(flt.start, flt.end, (agent_id,), flt.servers, flt.tools)
    return decisions_over_time(data_dir, narrowed)


_CALL_COLUMNS_SQL = f"""
    SELECT start_time, agent_id, session_id, server, tool, decision, rule, message,
           arguments, outcome, error_type, duration_ms, result_bytes, policy_version,
           trace_id, span_id
    FROM {TABLE} WHERE {{where}} ORDER BY start_time, span_id
"""


@_cached
def calls_in_window(
    data_dir: str,
    start: datetime,
    end: datetime,
    agent_id: str = "",
    session_id: str = "",
    trace_id: str = "",
    span_ids: tuple[str, ...] = (),
    max_rows: int = 1000,
) -> pd.DataFrame:
    """The calls behind a finding, in time order: its window, narrowed by agent, session,
    trace or span ids (each one given narrows further)."""
    conds = [f"{PARTITION_COLUMN} BETWEEN ? AND ?", "start_time BETWEEN ? AND ?"]
    params: list[Any] = [start.date(), end.date(), start, end]
    for column, value in (
        ("agent_id", agent_id),
        ("session_id", session_id),
        ("trace_id", trace_id),
    ):
        if value:
            conds.append(f"{column} = ?")
            params.append(value)
    if span_ids:
        conds.append(f"span_id IN ({', '.join('?' for _ in span_ids)})")
        params += list(span_ids)
    sql = _CALL_COLUMNS_SQL.format(where=" AND ".join(conds))
    return _q(data_dir, sql, params, max_rows=max_rows)


# --------------------------------------------------------------------------- exfiltration


@_cached
def destinations(data_dir: str, flt: CallFilter) -> pd.DataFrame:
    """Hosts named in call arguments (URLs), ordered by when each was first used."""
    if _rollup_ok(data_dir, flt):
        where, params = rollups.where(flt)
        hits = f"""
            SELECT destination, first_used, last_used, agent_id, tool, decision, calls
            FROM egress_hourly WHERE {where}
        """
    else:
        where, params = flt.where()
        hits = f"""
            SELECT destination, start_time AS first_used, start_time AS last_used, agent_id,
                   tool, coalesce(decision, '') AS decision, 1 AS calls
            FROM (SELECT *, lower(regexp_extract(arguments, '{rollups.URL_HOST}', 1))
                      AS destination
                  FROM {TABLE} WHERE {where} AND contains(arguments, '://'))
            WHERE destination <> ''
        """
    return _q(
        data_dir,
        f"""
        SELECT destination, min(first_used) AS first_used,
               arg_min(agent_id, first_used) AS first_agent,
               arg_min(tool, first_used) AS first_tool, max(last_used) AS last_used,
               sum(calls) AS calls, count(DISTINCT agent_id) AS agents,
               coalesce(sum(calls) FILTER (WHERE decision = 'deny'), 0) AS denied
        FROM ({hits}) GROUP BY destination ORDER BY first_used, destination
        """,
        params,
    )


@_cached
def redactions(data_dir: str, flt: CallFilter) -> pd.DataFrame:
    """How many secrets were redacted from arguments, by kind (``[REDACTED:kind]`` markers)."""
    if _rollup_ok(data_dir, flt):
        where, params = rollups.where(flt)
        sql = f"""
            SELECT kind, sum(secrets) AS secrets, sum(calls) AS calls
            FROM redactions_hourly WHERE {where} GROUP BY kind
        """
    else:
        where, params = flt.where()
        sql = f"""
            SELECT kind, count(*) AS secrets, count(DISTINCT span_id) AS calls
            FROM (SELECT unnest(regexp_extract_all(arguments, '{rollups.REDACTION_KIND}', 1))
                      AS kind, span_id
                  FROM {TABLE}
                  WHERE {where} AND contains(arguments, '{rollups.REDACTION_MARKER}'))
            GROUP BY kind
        """
    return _q(data_dir, f"SELECT * FROM ({sql}) ORDER BY secrets DESC, kind", params)


# --------------------------------------------------------------------------- sessions

RECENT_SESSIONS = timedelta(days=1)


@_cached
def sessions(data_dir: str, flt: CallFilter, max_rows: int = 500) -> pd.DataFrame:
    """Sessions that started in the last day of the filter's range, most recent first.

    Only the last day is listed so the query reads one or two daily partitions, not the
    whole store; an older session opens by its id (a link, or ``?session=``).
    """
    recent = flt
    if flt.end is not None:
        start = flt.end - RECENT_SESSIONS
        if flt.start is None or flt.start < start:
            recent = CallFilter(start, flt.end, flt.agents, flt.servers, flt.tools)
    where, params = recent.where()
    return _q(
        data_dir,
        f"""
        SELECT session_id, arg_min(agent_id, start_time) AS agent_id,
               min(start_time) AS started, max(end_time) AS ended, count(*) AS calls,
               count(*) FILTER (WHERE decision = 'deny') AS denied,
               count(DISTINCT trace_id) AS traces
        FROM {TABLE} WHERE {where} AND coalesce(session_id, '') <> ''
        GROUP BY session_id ORDER BY started DESC, session_id
        """,
        params,
        max_rows=max_rows,
    )


@_cached
def session_calls(
    data_dir: str,
    session_id: str = "",
    trace_id: str = "",
    first_day: date | None = None,
    last_day: date | None = None,
    max_rows: int = MAX_ROWS,
) -> pd.DataFrame:
    """Every call of one session or one trace, in order; the days, when known, limit the
    read to those date partitions."""
    if not session_id and not trace_id:
        raise ValueError("a session or a trace id is needed")
    conds: list[str] = []
    params: list[Any] = []
    if first_day is not None:
        conds.append(f"{PARTITION_COLUMN} >= ?")
        params.append(first_day)
    if last_day is not None:
        conds.append(f"{PARTITION_COLUMN} <= ?")
        params.append(last_day)
    if session_id:
        conds.append("session_id = ?")
        params.append(session_id)
    if trace_id:
        conds.append("trace_id = ?")
        params.append(trace_id)
    sql = _CALL_COLUMNS_SQL.format(where=" AND ".join(conds))
    return _q(data_dir, sql, params, max_rows=max_rows)


# --------------------------------------------------------------------------- policies


@_cached
def policy_usage(data_dir: str) -> pd.DataFrame:
    """Every policy version that decided a call, over the whole store."""
    return policy_versions(data_dir, CallFilter())
