"""Exfiltration: the findings, each one's path from a private read to an egress call, every
destination by when it was first used, and how many secrets were redacted."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import streamlit as st

from callward.dashboard import charts, context, findings, queries, widgets
from callward.dashboard.queries import QueryError

LOOKBACK = timedelta(hours=1)  # how far before a finding its flow starts

ctx = context.page(
    "Exfiltration",
    "Private reads followed by egress, where calls were sent, and the secrets kept out of the log.",
)


def flow(row: pd.Series) -> None:
    """The session's calls from a while before the finding up to its egress, finding marked."""
    start, end = row["first_seen"].to_pydatetime(), row["last_seen"].to_pydatetime()
    steps = queries.calls_in_window(
        ctx.data_dir,
        start - LOOKBACK,
        end,
        agent_id=row["agent_id"] or "",
        session_id=row["session_id"] or "",
        trace_id="" if row["session_id"] else row["trace_id"] or "",
    )
    st.markdown(f"**{row['explanation'] or row['pattern']}**")
    if steps.empty:
        st.caption("The calls of this finding are not in the store.")
        return
    flagged = set(row["span_ids"])
    steps.insert(0, "finding", steps["span_id"].isin(flagged).map({True: "⚑", False: ""}))
    path = " → ".join(
        f"{'⚑ ' if s.span_id in flagged else ''}`{s.tool}`"
        f"{' (' + s.decision + ')' if s.decision else ''}"
        for s in steps.tail(12).itertuples()
    )
    st.markdown(f"Flow (last {min(len(steps), 12)} calls, ⚑ = in the finding): {path}")
    st.dataframe(
        steps[
            ["finding", "start_time", "server", "tool", "arguments", "decision", "rule", "message"]
        ],
        hide_index=True,
        width="stretch",
    )
    widgets.session_link(row)


def render() -> None:
    secrets = queries.redactions(ctx.data_dir, ctx.flt)
    total = int(secrets["secrets"].sum()) if not secrets.empty else 0
    dests = queries.destinations(ctx.data_dir, ctx.flt)

    found = findings.load(ctx.data_dir)
    exfil = findings.within(findings.of_kind(found.frame, "exfil"), ctx.flt)
    cols = st.columns(3)
    cols[0].metric("Exfiltration findings", "—" if found.note else f"{len(exfil):,}")
    cols[1].metric("Secrets redacted", f"{total:,}")
    cols[2].metric("Destinations", f"{len(dests):,}")

    st.subheader("Findings: from private read to egress")
    if widgets.findings_unavailable(found, ctx.data_dir):
        pass
    elif exfil.empty:
        st.success("No exfiltration attempt found in this range.")
    if not exfil.empty:
        widgets.table(
            exfil.drop(columns=["span_ids"]), "exfiltration-findings", max_rows=queries.MAX_ROWS
        )
        flow(widgets.pick_finding(exfil, "exfil_finding"))

    st.subheader("Destinations by first use")
    st.caption("Hosts named in URLs in call arguments; a new host late in the range stands out.")
    if dests.empty:
        st.info("No call named a URL in this range.")
    else:
        st.caption(
            "Bigger and redder is more suspicious: a denied send, then a host used only "
            f"{charts.RARE_CALLS} time(s) or fewer, then ordinary hosts."
        )
        chart = charts.destinations(dests)
        st.altair_chart(chart, width="stretch")
        widgets.table(dests, "destinations")

    st.subheader("Secrets redacted")
    if secrets.empty:
        st.info("No redaction marker (`[REDACTED:kind]`) in the arguments of this range.")
    else:
        st.caption(f"{total:,} secrets in the arguments were replaced by a marker, by kind:")
        st.altair_chart(
            charts.count_bars(secrets, "kind", "secrets", ["kind", "secrets", "calls"]),
            width="stretch",
        )
        widgets.table(secrets, "redactions")


try:
    render()
except QueryError as error:
    widgets.query_error(error)
