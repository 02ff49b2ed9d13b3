"""Overview: how many calls, how they were decided, who makes them, which policy decided."""

from __future__ import annotations

import streamlit as st

from callward.dashboard import charts, context, findings, queries, widgets
from callward.dashboard.queries import QueryError

ctx = context.page("Overview", "Calls and decisions over time, the busiest names, and findings.")


def render() -> None:
    head = queries.headline(ctx.data_dir, ctx.flt)
    cols = st.columns(5)
    cols[0].metric("Calls", f"{int(head['calls']):,}")
    cols[1].metric("Denied", f"{int(head['denied']):,}")
    cols[2].metric("Deny rate", f"{head['deny_rate']:.1%}")
    cols[3].metric("Awaiting approval", f"{int(head['approvals']):,}")
    cols[4].metric("Agents · errors", f"{int(head['agents']):,} · {int(head['errors']):,}")

    st.subheader("Calls and decisions over time")
    over_time = queries.decisions_over_time(ctx.data_dir, ctx.flt)
    st.altair_chart(charts.decisions_over_time(over_time), width="stretch")

    st.subheader("Busiest")
    for col, (column, label) in zip(
        st.columns(3),
        (("server", "Servers"), ("tool", "Tools"), ("agent_id", "Agents")),
        strict=True,
    ):
        with col:
            st.markdown(f"**{label}**")
            frame = queries.top(ctx.data_dir, ctx.flt, column)
            st.altair_chart(charts.top_bars(frame, column, label), width="stretch")
            widgets.download(frame, f"top-{column}")

    st.subheader("Policy versions in force")
    widgets.table(queries.policy_versions(ctx.data_dir, ctx.flt), "policy-versions")
    st.page_link("views/policies.py", label="Compare policy versions", icon=":material/policy:")

    st.subheader("Latest findings")
    found = findings.load(ctx.data_dir)
    if widgets.findings_unavailable(found, ctx.data_dir):
        return
    recent = findings.within(found.frame, ctx.flt).head(20)
    if recent.empty:
        st.success("No findings in this range.")
        return
    widgets.table(recent.drop(columns=["span_ids"]), "findings")
    st.page_link("views/runaway.py", label="Runaway agents", icon=":material/directions_run:")
    st.page_link("views/exfiltration.py", label="Exfiltration", icon=":material/upload:")


try:
    render()
except QueryError as error:
    widgets.query_error(error)
