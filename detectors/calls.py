"""The detectors' working set: one DuckDB temp table ``calls`` built from ``tool_calls``.

Each row is one ``execute_tool`` span with what every pattern needs precomputed once:
the session key (session id, else the trace), the agent key (agent id, else the service
name), a signature of (tool, arguments), the tool's roles (read, egress, untrusted source,
destructive, side effect) and, for the few rows where they matter, the private-data flag,
the destination and the arguments themselves. Roles are decided per distinct tool name, so
the cost per call is a hash join, not a regex.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from callward.detectors.config import DetectorConfig
from callward.record import TABLE, data_files, data_files_glob

ROLES = ("is_read", "is_egress", "is_untrusted", "is_destructive", "is_side_effect")

# Destination of an outbound call, from its arguments: a mail domain, a URL host, a chat
# channel, a repository, or "public" for anything published openly (a public gist).
_DESTINATION_SQL = r"""
CASE
  WHEN regexp_matches(arguments, '"(to|recipients?|cc|bcc|email|address)"\s*:\s*\[?\s*"[^"]*@')
    THEN 'mail:' || lower(regexp_extract(arguments,
      '"(?:to|recipients?|cc|bcc|email|address)"\s*:\s*\[?\s*"[^"@]*@([^"\s>]+)"', 1))
  WHEN regexp_matches(arguments, '"(url|uri|endpoint|webhook|webhook_url|href|target)"\s*:\s*"[a-zA-Z][a-zA-Z0-9+.-]*://')
    THEN 'host:' || lower(regexp_extract(arguments,
      '"(?:url|uri|endpoint|webhook|webhook_url|href|target)"\s*:\s*"[a-zA-Z][a-zA-Z0-9+.-]*://([^/"?:#]+)', 1))
  WHEN regexp_matches(arguments, '"public"\s*:\s*true')
    THEN 'public:' || tool
  WHEN regexp_matches(arguments, '"(channel|channel_id|room|conversation|chat_id)"\s*:\s*"')
    THEN 'chat:' || lower(regexp_extract(arguments,
      '"(?:channel|channel_id|room|conversation|chat_id)"\s*:\s*"([^"]+)"', 1))
  WHEN regexp_matches(arguments, '"owner"\s*:\s*"') AND regexp_matches(arguments, '"repo"\s*:\s*"')
    THEN 'repo:' || lower(regexp_extract(arguments, '"owner"\s*:\s*"([^"]+)"', 1)) || '/'
                 || lower(regexp_extract(arguments, '"repo"\s*:\s*"([^"]+)"', 1))
  WHEN regexp_matches(arguments, '"repo(sitory)?"\s*:\s*"[^"/]+/[^"]+"')
    THEN 'repo:' || lower(regexp_extract(arguments, '"repo(?:sitory)?"\s*:\s*"([^"]+)"', 1))
  ELSE 'tool:' || tool
END
"""


@dataclass
class CallsWindow:
    """An open connection holding the ``calls`` table for one detection run."""

    con: duckdb.DuckDBPyConnection
    calls_in_window: int


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source_sql(
    source: Path | str | duckdb.DuckDBPyConnection,
) -> tuple[duckdb.DuckDBPyConnection, str, bool]:
    """A connection and the relation to read calls from; ``owned`` when we opened it."""
    if isinstance(source, duckdb.DuckDBPyConnection):
        return source, TABLE, False
    root = Path(source)
    if not root.exists():
        raise FileNotFoundError(f"no store at {root}")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    # our own connection: row order is never relied on (every query orders explicitly), and
    # dropping it lets DuckDB build the working tables with less memory and time
    con.execute("SET preserve_insertion_order = false")
    if not data_files(root):
        return con, "", True
    glob = data_files_glob(root)
    return (
        con,
        f"read_parquet({_literal(glob)}, hive_partitioning = true, union_by_name = true)",
        True,
    )


def _classify_tools(
    names: list[str], cfg: DetectorConfig
) -> list[tuple[str, bool, bool, bool, bool, bool]]:
    """Roles per distinct tool name; general name heuristics, no list of known tools."""
    flags = re.IGNORECASE
    read = re.compile(cfg.read_tools, flags)
    egress = re.compile(cfg.egress_tools, flags)
    untrusted = re.compile(cfg.untrusted_tools, flags)
    destructive = re.compile(cfg.destructive_tools, flags)
    side = re.compile(cfg.side_effect_tools, flags)
    out = []
    for name in names:
        # camelCase and dotted names become tokens too: sendEmail -> send_Email
        norm = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
        is_read = bool(read.search(norm))
        is_destructive = bool(destructive.search(norm))
        is_egress = bool(egress.search(norm)) and not is_read and not is_destructive
        is_untrusted = bool(untrusted.search(norm)) and is_read
        is_side = (bool(side.search(norm)) or is_egress) and not is_read
        out.append((name, is_read, is_egress, is_untrusted, is_destructive, is_side))
    return out


@contextmanager
def open_calls(
    source: Path | str | duckdb.DuckDBPyConnection,
    since: datetime | None,
    until: datetime | None,
    cfg: DetectorConfig,
) -> Iterator[CallsWindow]:
    """Build the ``calls`` temp table: every call before ``until`` (history for the
    baselines), with ``in_window`` marking the calls in ``[since, until)``."""
    con, relation, owned = _source_sql(source)
    try:
        if not relation:
            yield CallsWindow(con, 0)
            return
        time_filter = "TRUE" if until is None else f"start_time < {_ts(until)}"
        in_window = "TRUE" if since is None else f"ts >= {_ts(since)}"
        con.execute(
            f"CREATE OR REPLACE TEMP VIEW cw_source AS SELECT * FROM {relation} WHERE {time_filter}"
        )
        tools = [
            r[0]
            for r in con.execute("SELECT DISTINCT coalesce(tool, '') FROM cw_source").fetchall()
        ]
        con.execute(
            "CREATE OR REPLACE TEMP TABLE cw_roles (tool VARCHAR, is_read BOOLEAN, is_egress BOOLEAN,"
            " is_untrusted BOOLEAN, is_destructive BOOLEAN, is_side_effect BOOLEAN)"
        )
        if tools:
            con.executemany(
                "INSERT INTO cw_roles VALUES (?, ?, ?, ?, ?, ?)", _classify_tools(tools, cfg)
            )
        private = _literal(cfg.private_arguments)
        injection = _literal(cfg.injection_text)
        result_keys = " OR ".join(
            f"strpos(attributes, {_literal(k)}) > 0" for k in cfg.result_attributes
        )
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE calls AS
            WITH raw AS (
              SELECT start_time AS ts, span_id, trace_id,
                     coalesce(agent_id, '') AS agent_id, coalesce(session_id, '') AS session_id,
                     coalesce(service_name, '') AS service, coalesce(tool, '') AS tool,
                     coalesce(arguments, '') AS arguments, coalesce(outcome, '') AS outcome,
                     coalesce(decision, '') AS decision, coalesce(attributes, '') AS attributes
              FROM cw_source
            )
            SELECT ts, span_id,
                   CASE WHEN session_id = '' THEN trace_id ELSE '' END AS trace_id,
                   agent_id, session_id, service,
                   -- integer keys: every pattern groups or sorts by them, and 64-bit hashes
                   -- of a few million distinct ids do not collide in practice
                   hash(CASE WHEN session_id <> '' THEN session_id ELSE 'trace:' || trace_id END)
                     AS skey,
                   hash(CASE WHEN agent_id <> '' THEN agent_id
                        WHEN service <> '' THEN 'service:' || service ELSE 'unknown' END) AS akey,
                   tool, hash(tool, arguments) AS sig, strlen(arguments) AS alen,
                   (outcome = 'error' OR decision = 'deny') AS failed, decision,
                   r.is_read, r.is_egress, r.is_untrusted, r.is_destructive, r.is_side_effect,
                   CASE WHEN r.is_read THEN regexp_matches(arguments, {private}, 'i') ELSE FALSE END
                     AS is_private,
                   CASE WHEN ({result_keys}) THEN regexp_matches(attributes, {injection}, 'i')
                        ELSE FALSE END AS is_injected,
                   CASE WHEN r.is_egress OR r.is_destructive OR r.is_untrusted THEN arguments END
                     AS kept_arguments,
                   CASE WHEN r.is_egress THEN {_DESTINATION_SQL} END AS destination,
                   {in_window} AS in_window
            FROM raw JOIN cw_roles r USING (tool)
            """
        )
        baseline = f"INTERVAL {int(cfg.baseline_hours * 3600)} SECOND"
        # Outbound calls with whether their destination is new to the agent: first used in
        # this very session, after the agent had ``baseline_hours`` of history to know it by.
        # A destination another agent of the organisation already sends to is not new either;
        # publishing openly (a public gist) never becomes a known destination.
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE egress AS
            WITH agent_start AS (SELECT akey, min(ts) AS t0 FROM calls GROUP BY akey),
            first_use AS (
              SELECT akey, destination, min(ts) AS first_ts, arg_min(skey, ts) AS first_skey
              FROM calls WHERE is_egress GROUP BY akey, destination
            ), org_first_use AS (
              SELECT destination, min(ts) AS org_first_ts FROM calls WHERE is_egress
              GROUP BY destination
            )
            SELECT c.ts, c.span_id, c.skey, c.akey, c.agent_id, c.session_id, c.trace_id,
                   c.service, c.tool, c.alen, c.kept_arguments, c.destination, c.in_window,
                   c.decision,
                   (c.destination LIKE 'public:%'
                    OR (f.first_skey = c.skey AND f.first_ts >= a.t0 + {baseline}
                        AND o.org_first_ts >= f.first_ts)) AS is_new
            FROM calls c
            JOIN first_use f ON f.akey = c.akey AND f.destination = c.destination
            JOIN org_first_use o ON o.destination = c.destination
            JOIN agent_start a ON a.akey = c.akey
            WHERE c.is_egress
            """
        )
        n = con.execute("SELECT count(*) FROM calls WHERE in_window").fetchone()
        yield CallsWindow(con, int(n[0]) if n else 0)
    finally:
        if owned:
            con.close()
        else:
            for name in ("calls", "cw_roles", "egress", "seq", "runs", "stuck_sessions"):
                con.execute(f"DROP TABLE IF EXISTS {name}")
            con.execute("DROP VIEW IF EXISTS cw_source")


def _ts(t: datetime) -> str:
    return f"TIMESTAMPTZ {_literal(t.isoformat())}"
