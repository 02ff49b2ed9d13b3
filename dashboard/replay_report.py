"""Run a replay through the replay package and lay its report out on the Replay page.

Nothing here re-decides a call: :func:`replay.compare.compare` does the replay with the
enforcer's engine and :func:`replay.report.build_report` builds the report document (the
same one ``callward replay --format json`` prints); this module only draws it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from callward.dashboard import charts
from callward.dashboard.queries import CACHE_TTL_S, CallFilter
from callward.enforcer.policy import compile_text


@st.cache_data(ttl=CACHE_TTL_S * 10, max_entries=16, show_spinner=False)
def run_replay(
    data_dir: str,
    name: str,
    text: str,
    since: datetime | None,
    until: datetime | None,
    agent: str | None,
    tool: str | None,
) -> dict[str, Any]:
    """The replay report of ``text`` over the store (cached: a replay reads every call)."""
    from callward.replay.compare import ReplayRequest, compare
    from callward.replay.report import build_report

    request = ReplayRequest(
        data_dir=Path(data_dir),
        candidate=compile_text(text, name),
        since=since,
        until=until,
        agent=agent,
        tool=tool,
    )
    return build_report(compare(request))


def _utc(moment: datetime | None) -> datetime | None:
    return None if moment is None else moment.astimezone(UTC)


def _single(values: tuple[str, ...]) -> str | None:
    return values[0] if len(values) == 1 else None


def replay_range(flt: CallFilter) -> str:
    """The time range a replay covers, named the way ``make demo`` names it: the sidebar's
    range, which is all recorded calls unless narrowed."""
    if flt.start is None or flt.end is None:
        return "all recorded calls"
    return (
        f"{flt.start.astimezone(UTC):%Y-%m-%d %H:%M} → {flt.end.astimezone(UTC):%Y-%m-%d %H:%M}"
        " UTC (the sidebar's time range; All data by default)"
    )


def show(data_dir: str, name: str, text: str, flt: CallFilter) -> None:
    """Replay ``text`` under the page filters and draw the report."""
    try:
        from callward.replay.load import StoreError
    except ModuleNotFoundError:
        st.info("The replay package is not installed, so the candidate cannot be replayed.")
        return
    agent, tool = _single(flt.agents), _single(flt.tools)
    st.markdown(f"**Range replayed:** {replay_range(flt)}")
    if len(flt.agents) > 1 or len(flt.tools) > 1 or flt.servers:
        st.caption(
            "Replay narrows by time, one agent and one tool; other filters are not applied "
            "to the report."
        )
    try:
        with st.spinner("Replaying the recorded calls under the candidate…"):
            report = run_replay(data_dir, name, text, _utc(flt.start), _utc(flt.end), agent, tool)
    except StoreError as e:
        st.error(f"The store could not be replayed: {e}")
        return
    layout(report)


def layout(report: dict[str, Any]) -> None:
    """The report: totals, transitions with examples, the most affected, and over time."""
    if report.get("message"):
        st.info(report["message"])
    fidelity = report.get("fidelity", {}).get("share")
    cols = st.columns(6)
    cols[0].metric("Calls replayed", f"{report['total']:,}")
    cols[1].metric("Unchanged", f"{report['unchanged']:,}")
    cols[2].metric("Newly denied", f"{report['newly_denied']:,}")
    cols[3].metric("Newly allowed", f"{report['newly_allowed']:,}")
    cols[4].metric("Unknown", f"{report['unknown']:,}")
    cols[5].metric("Fidelity", "—" if fidelity is None else f"{fidelity:.2%}")
    st.caption(
        f"Candidate `{report['candidate']['version']}` against "
        f"{'the recorded decisions' if report['baseline']['kind'] == 'recorded' else 'a baseline'}"
        ". Fidelity is the share of calls whose recorded decision the recorded policy "
        "reproduces; unknown calls could not be replayed faithfully and are not guessed."
    )

    st.subheader("Transitions")
    transitions = report.get("transitions", [])
    if not transitions:
        st.success("The candidate decides every replayed call as it was decided.")
    else:
        frame = pd.DataFrame([{k: t[k] for k in ("name", "count", "share")} for t in transitions])
        st.dataframe(frame, hide_index=True, width="stretch")
        for t in transitions:
            with st.expander(f"{t['name']}: {t['count']:,} call(s), examples"):
                st.dataframe(
                    charts.name_missing_agents(pd.DataFrame(t["examples"])),
                    hide_index=True,
                    width="stretch",
                )

    affected = report.get("most_affected", {})
    if any(affected.values()):
        st.subheader("Most affected")
        for col, key in zip(st.columns(4), ("agents", "tools", "sessions", "rules"), strict=True):
            with col:
                st.markdown(f"**{key.capitalize()}**")
                st.dataframe(pd.DataFrame(affected.get(key, [])), hide_index=True)

    points = report.get("newly_denied_over_time", {}).get("points", [])
    if points and any(p["count"] for p in points):
        st.subheader("Newly denied over time")
        frame = pd.DataFrame(points).assign(start=lambda f: pd.to_datetime(f["start"], utc=True))
        st.altair_chart(charts.over_time_area(frame, "start", "count"), width="stretch")
    _downloads(report)


def _downloads(report: dict[str, Any]) -> None:
    from callward.replay.render import render

    cols = st.columns(3)
    for col, (fmt, ext, mime) in zip(
        cols,
        (
            ("markdown", "md", "text/markdown"),
            ("json", "json", "application/json"),
            ("html", "html", "text/html"),
        ),
        strict=True,
    ):
        col.download_button(
            f"Report as {fmt}",
            render(report, fmt).encode(),
            file_name=f"replay-report.{ext}",
            mime=mime,
            key=f"replay-download-{fmt}",
        )
