"""The cross-page filters (time range, agent, server, tool), drawn once in the sidebar and kept
in session state so every page reads the same selection.

Time presets count back from the store's latest span, not from the wall clock, so a store
recorded last week still shows its last hour of activity.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from typing import Any

import streamlit as st

from callward.dashboard.queries import CallFilter

PRESETS: dict[str, timedelta | None] = {
    "All data": None,
    "Last hour": timedelta(hours=1),
    "Last 6 hours": timedelta(hours=6),
    "Last 24 hours": timedelta(hours=24),
    "Last 7 days": timedelta(days=7),
    "Custom dates": None,
}
KEY_RANGE = "filter_range"
KEY_DATES = "filter_dates"
KEY_AGENTS = "filter_agents"
KEY_SERVERS = "filter_servers"
KEY_TOOLS = "filter_tools"
KEY_ACTIVE = "filter_active"
_RESOLUTION = timedelta(microseconds=1)
# Presets this wide start on a whole hour (up to an hour more than asked for), which lets
# the hourly rollups answer them instead of a scan of every call in range.
ALIGN_FROM = timedelta(days=1)


def resolve(
    preset: str,
    first: datetime | None,
    last: datetime | None,
    dates: tuple[date, ...] = (),
    agents: tuple[str, ...] = (),
    servers: tuple[str, ...] = (),
    tools: tuple[str, ...] = (),
) -> CallFilter:
    """Turn the sidebar's choices into a filter with an explicit, half-open time range."""
    if first is None or last is None:
        return CallFilter(agents=agents, servers=servers, tools=tools)
    end = last + _RESOLUTION
    start = first
    width = PRESETS.get(preset)
    if width is not None:
        start = end - width
        if width >= ALIGN_FROM:  # whole hours, so the hourly rollups answer exactly
            start = start.replace(minute=0, second=0, microsecond=0)
        start = max(first, start)
    elif preset == "Custom dates" and dates:
        tz = first.tzinfo
        start = datetime.combine(dates[0], time.min, tzinfo=tz)
        end = datetime.combine(dates[-1] + timedelta(days=1), time.min, tzinfo=tz)
    return CallFilter(start, end, agents, servers, tools)


def _reset() -> None:
    for key in (KEY_AGENTS, KEY_SERVERS, KEY_TOOLS):
        st.session_state[key] = []
    st.session_state[KEY_RANGE] = "All data"


def sidebar(summary: dict[str, Any], options: dict[str, list[str]]) -> CallFilter:
    """Draw the filters in the sidebar and remember the resulting filter for the pages."""
    first, last = summary["first_span"], summary["last_span"]
    st.sidebar.subheader("Filters")
    preset = st.sidebar.selectbox(
        "Time range", list(PRESETS), key=KEY_RANGE, help="Counted back from the latest span."
    )
    dates: tuple[date, ...] = ()
    if preset == "Custom dates" and first is not None and last is not None:
        picked = st.sidebar.date_input(
            "Dates (UTC)",
            value=(first.date(), last.date()),
            min_value=first.date(),
            max_value=last.date(),
            key=KEY_DATES,
        )
        dates = tuple(picked) if isinstance(picked, tuple | list) else (picked,)
    pickers = (
        ("Agents", "agent_id", KEY_AGENTS),
        ("Servers", "server", KEY_SERVERS),
        ("Tools", "tool", KEY_TOOLS),
    )
    chosen: list[tuple[str, ...]] = []
    for label, column, key in pickers:
        values = st.sidebar.multiselect(label, options.get(column, []), key=key)
        chosen.append(tuple(values))
    st.sidebar.button("Reset filters", on_click=_reset)
    flt = resolve(preset or "All data", first, last, dates, *chosen)
    st.session_state[KEY_ACTIVE] = flt
    return flt


def active() -> CallFilter:
    """The filter the sidebar set on this run (everything, if it has not run yet)."""
    flt = st.session_state.get(KEY_ACTIVE)
    return flt if isinstance(flt, CallFilter) else CallFilter()


def describe(flt: CallFilter) -> str:
    """One line saying what the page is showing, for captions and download names."""
    parts = []
    if flt.start is not None and flt.end is not None:
        parts.append(f"{flt.start:%Y-%m-%d %H:%M} → {flt.end:%Y-%m-%d %H:%M} UTC")
    for label, values in (("agents", flt.agents), ("servers", flt.servers), ("tools", flt.tools)):
        if values:
            parts.append(f"{label}: {', '.join(values)}")
    return " · ".join(parts) or "all calls"
