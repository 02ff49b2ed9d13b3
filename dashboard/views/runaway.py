"""Runaway agents: each agent's activity against its own usual, the runaway findings, and the
calls behind each finding."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from callward.dashboard import charts, context, findings, queries, widgets
from callward.dashboard.queries import QueryError

ctx = context.page(
    "Runaway agents",
    "Each agent's busiest period against its own median, and the detectors' runaway findings.",
)


def evidence(row: pd.Series) -> None:
    start, end = row["first_seen"].to_pydatetime(), row["last_seen"].to_pydatetime()
    calls = queries.calls_in_window(
        ctx.data_dir,
        start,
        end,
        agent_id=row["agent_id"] or "",
        session_id=row["session_id"] or "",
        trace_id="" if row["session_id"] else row["trace_id"] or "",
    )
    st.markdown(f"**{row['explanation'] or row['pattern']}**")
    st.caption(
        f"{row['severity']} · agent `{row['agent_id'] or charts.NO_AGENT}` · {start:%Y-%m-%d %H:%M:%S} → "
        f"{end:%H:%M:%S} UTC · {len(calls):,} calls"
    )
    if not calls.empty:
        st.altair_chart(charts.timeline(calls), width="stretch")
        widgets.table(calls, f"runaway-{row['agent_id']}-{start:%Y%m%dT%H%M%S}")
    widgets.session_link(row)


def render() -> None:
    activity = queries.agent_activity(ctx.data_dir, ctx.flt)
    if activity.empty:
        st.info("No agent made a call in this range.")
        return
    width = activity["bucket_width"].iloc[0]
    st.subheader("Activity against each agent's usual")
    st.caption(
        f"Calls per {width}: 'usual' is the agent's median over the buckets it was active in; "
        "an agent far above the diagonal is doing much more than it usually does."
    )
    left, right = st.columns([2, 3])
    with left:
        st.altair_chart(charts.agent_peaks(activity), width="stretch")
    with right:
        widgets.table(activity.drop(columns=["bucket_width"]), "agent-activity")

    agents = activity["agent_id"].tolist()
    agent = st.selectbox("Agent", agents, index=0, key="runaway_agent")
    if agent:
        usual = float(activity.loc[activity["agent_id"] == agent, "usual"].iloc[0])
        timeline = queries.agent_timeline(ctx.data_dir, ctx.flt, agent)
        st.altair_chart(charts.decisions_over_time(timeline, usual=usual), width="stretch")

    st.subheader("Runaway findings")
    found = findings.load(ctx.data_dir)
    if widgets.findings_unavailable(found, ctx.data_dir):
        return
    runaway = findings.within(findings.of_kind(found.frame, "runaway"), ctx.flt)
    if runaway.empty:
        st.success("No runaway agent found in this range.")
        return
    st.metric("Runaway findings", f"{len(runaway):,}")
    widgets.table(runaway.drop(columns=["span_ids"]), "runaway-findings", max_rows=queries.MAX_ROWS)
    row = widgets.pick_finding(runaway, "runaway_finding")
    st.subheader("Evidence")
    evidence(row)


try:
    render()
except QueryError as error:
    widgets.query_error(error)
