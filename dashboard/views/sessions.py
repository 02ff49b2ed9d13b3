"""Sessions: one session or trace, call by call, with what was decided and why."""

from __future__ import annotations

from datetime import date

import streamlit as st

from callward.dashboard import charts, context, queries, widgets
from callward.dashboard.queries import QueryError

ctx = context.page(
    "Sessions",
    "Pick a session (or paste a trace id) to see its calls in order.",
)
SHOWN = [
    "start_time",
    "agent_id",
    "server",
    "tool",
    "decision",
    "rule",
    "message",
    "arguments",
    "outcome",
    "error_type",
    "duration_ms",
    "trace_id",
    "span_id",
]


def day_param(name: str) -> date | None:
    """A ``YYYY-MM-DD`` query parameter, or None when absent or malformed."""
    try:
        return date.fromisoformat(st.query_params.get(name, ""))
    except ValueError:
        return None


def render() -> None:
    wanted_session = st.query_params.get("session", "")
    wanted_trace = st.query_params.get("trace", "")
    recent = queries.sessions(ctx.data_dir, ctx.flt)
    ids = recent["session_id"].tolist()
    if wanted_session and wanted_session not in ids:
        ids.insert(0, wanted_session)
    labels = {
        row.session_id: f"{row.session_id} · {row.agent_id} · {row.started:%Y-%m-%d %H:%M} · "
        f"{row.calls:,} calls, {row.denied:,} denied"
        for row in recent.itertuples()
    }
    left, right = st.columns([3, 2])
    with left:
        session = st.selectbox(
            "Session (most recent first)",
            ids,
            index=ids.index(wanted_session) if wanted_session in ids else 0 if ids else None,
            format_func=lambda s: labels.get(s, s),
            key="session_pick",
        )
    with right:
        trace = st.text_input("…or a trace id", value=wanted_trace, key="trace_pick").strip()
    st.caption(
        "The list holds sessions that started in the last day of the range; open an older "
        "one by its id from a finding's link or with `?session=ID` in the address."
    )
    widgets.truncated_note(recent)

    # The days to read: from the link that opened the page, else from the session list.
    first_day, last_day = day_param("from"), day_param("to")
    listed = recent[recent["session_id"] == session]
    if session and not trace and first_day is None and not listed.empty:
        first_day = listed["started"].iloc[0].date()
        last_day = listed["ended"].iloc[0].date()
    if trace:
        calls = queries.session_calls(
            ctx.data_dir, trace_id=trace, first_day=first_day, last_day=last_day
        )
        what = f"trace `{trace}`"
    elif session:
        calls = queries.session_calls(
            ctx.data_dir, session_id=session, first_day=first_day, last_day=last_day
        )
        what = f"session `{session}`"
    else:
        st.info("No session in this range; widen the filters.")
        return
    if calls.empty:
        st.warning(f"No call recorded for {what}.")
        return

    denied = int((calls["decision"] == "deny").sum())
    errors = int((calls["outcome"] == "error").sum())
    cols = st.columns(4)
    cols[0].metric("Calls", f"{len(calls):,}")
    cols[1].metric("Denied", f"{denied:,}")
    cols[2].metric("Errors", f"{errors:,}")
    cols[3].metric("Tools", f"{calls['tool'].nunique():,}")
    st.markdown(f"Calls of {what}, in order:")
    st.altair_chart(charts.timeline(calls), width="stretch")
    name = f"calls-{(trace or session or 'calls')[:40]}"
    widgets.table(calls[SHOWN], name)


try:
    render()
except QueryError as error:
    widgets.query_error(error)
