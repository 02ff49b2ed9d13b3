"""Page pieces every page shares: the empty state, the query-error box, table downloads,
and the store's stats in the sidebar. Layout only; the data comes from :mod:`queries`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st

from callward.dashboard import charts, findings
from callward.dashboard.queries import QueryError

SESSION_SLACK = pd.Timedelta(days=1)  # a session may start before, or end after, a finding
GET_DATA_IN = """\
Nothing has been recorded in this store yet. To get data in, either

* run the collector and send it calls through the gateway:
  `callward collector --data-dir {data_dir}` and point the proxy's telemetry at it, or
* generate a synthetic dataset into it: `callward datasets generate --out {data_dir}`.

This page refreshes on its own once calls arrive.
"""


def empty_store(data_dir: str) -> None:
    """The friendly empty state: what is missing and the commands that fill it."""
    st.info(GET_DATA_IN.format(data_dir=data_dir), icon=":material/inbox:")


def query_error(error: QueryError) -> None:
    """Show a failed query with its SQL, so an operator can rerun it by hand."""
    st.error(f"A query failed: {error.message}", icon=":material/error:")
    with st.expander("SQL"):
        st.code(error.sql.strip(), language="sql")
        if error.params:
            st.caption(f"parameters: {[str(p) for p in error.params]}")


def truncated_note(frame: pd.DataFrame) -> None:
    if frame.attrs.get("truncated"):
        st.caption(f"Showing the first {len(frame):,} rows; narrow the filters to see the rest.")


def download(frame: pd.DataFrame, name: str, key: str | None = None) -> None:
    """A CSV download of exactly the table shown."""
    st.download_button(
        "Download CSV",
        frame.to_csv(index=False).encode(),
        file_name=f"{name}.csv",
        mime="text/csv",
        key=key or f"download-{name}",
    )


def table(frame: pd.DataFrame, name: str, max_rows: int | None = None, **kwargs: Any) -> None:
    """A table with its truncation note and a download button."""
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.head(max_rows)
        frame.attrs["truncated"] = True
    frame = charts.name_missing_agents(frame)
    st.dataframe(frame, hide_index=True, width="stretch", **kwargs)
    truncated_note(frame)
    download(frame, name)


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago ``moment`` was, in the largest sensible unit."""
    if moment is None:
        return "never"
    seconds = ((now or datetime.now(UTC)) - moment).total_seconds()
    if seconds < 0:
        return "in the future"
    for unit, width in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= width:
            return f"{seconds / width:,.0f} {unit} ago"
    return f"{seconds:,.0f} s ago"


def store_stats(summary: dict[str, Any]) -> None:
    """The sidebar block: which store, how big, how fresh."""
    st.sidebar.subheader("Store")
    st.sidebar.caption(f"`{summary['data_dir']}`")
    st.sidebar.markdown(
        f"**{summary['calls']:,}** calls · {summary['files']:,} Parquet files · "
        f"{human_bytes(summary['bytes'])} · {summary['days']:,} day(s)"
    )
    last = summary["last_span"]
    if last is not None:
        st.sidebar.markdown(f"Latest span **{last:%Y-%m-%d %H:%M:%S} UTC** ({age(last)})")
    else:
        st.sidebar.markdown("Latest span: none yet")


def findings_unavailable(found: findings.Findings, data_dir: str) -> bool:
    """Say why there are no findings to show (still running, not installed, failed), if so."""
    if found.pending:
        st.info(
            "The detectors are still running over the store; findings appear here when "
            "they finish.",
            icon=":material/hourglass_top:",
        )
        _await_findings(data_dir)
        return True
    if found.note:
        st.info(f"No findings: {found.note}.")
        return True
    return False


@st.fragment(run_every=2.0)
def _await_findings(data_dir: str) -> None:
    if findings.runner().ready(data_dir):
        st.rerun(scope="app")


def session_link(row: pd.Series) -> None:
    """A link from a finding to its session (or trace) on the Sessions page, with the days
    around the finding so the page reads those partitions only."""
    if row.get("session_id"):
        params, label = {"session": row["session_id"]}, f"session {row['session_id']}"
    elif row.get("trace_id"):
        params, label = {"trace": row["trace_id"]}, f"trace {row['trace_id']}"
    else:
        return
    params["from"] = f"{row['first_seen'] - SESSION_SLACK:%Y-%m-%d}"
    params["to"] = f"{row['last_seen'] + SESSION_SLACK:%Y-%m-%d}"
    st.page_link(
        "views/sessions.py", label=f"Open {label}", icon=":material/search:", query_params=params
    )


MAX_PICKABLE = 200


def pick_finding(frame: pd.DataFrame, key: str) -> pd.Series:
    """A picker over the first findings (most severe first); returns the chosen one's row."""
    frame = frame.head(MAX_PICKABLE)
    labels = [
        f"{r.severity} · {r.pattern} · {r.agent_id or charts.NO_AGENT} · {r.session_id or r.trace_id} · "
        f"{r.first_seen:%Y-%m-%d %H:%M}"
        for r in frame.itertuples()
    ]
    index = st.selectbox("Finding", range(len(labels)), format_func=lambda i: labels[i], key=key)
    return frame.iloc[index or 0]
