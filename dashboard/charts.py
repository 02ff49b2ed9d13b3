"""The Altair charts the pages share, with one colour per decision throughout the app.

Time is UTC wherever a person reads it. Vega-Lite formats dates in the browser's zone unless
told otherwise, so every time axis here uses a UTC scale and UTC formats, 24-hour clock, and
every frame's times are handed over with their offset (a naive time would be read as local).
"""

from __future__ import annotations

from typing import Any

import altair as alt
import pandas as pd

DECISION_COLOURS = {
    "allow": "#2e7d32",
    "deny": "#c62828",
    "require_approval": "#ef6c00",
    "none": "#9e9e9e",
}
_DECISION_SCALE = alt.Scale(domain=list(DECISION_COLOURS), range=list(DECISION_COLOURS.values()))
NO_AGENT = "(no agent id)"  # what a call without an agent id is called on every page
BAR_STEP = 28  # pixels per bar: few bars stay readable, many bars grow the chart
# Midnight shows the date, whole minutes the time of day, anything finer the seconds too:
# "Mar 02", "06:00", "20:00:05".
_UTC_LABEL = (
    "utcFormat(datum.value, utcseconds(datum.value) != 0 ? '%H:%M:%S'"
    " : utchours(datum.value) == 0 && utcminutes(datum.value) == 0 ? '%b %d' : '%H:%M')"
)
TOOLTIP_TIME = "%Y-%m-%d %H:%M:%S UTC"
# SVG, so the labels are text a browser (and its tests) can read.
_EMBED = {"embedOptions": {"renderer": "svg"}}


def utc_x(field: str, title: str = "time (UTC)") -> alt.X:
    """A time x axis in UTC with a 24-hour clock, whatever the browser's zone."""
    return alt.X(
        f"{field}:T",
        title=title,
        scale=alt.Scale(type="utc"),
        axis=alt.Axis(labelExpr=_UTC_LABEL, labelOverlap=True),
    )


def utc_tooltip(field: str, title: str | None = None) -> alt.Tooltip:
    return alt.Tooltip(
        f"{field}:T", title=title or f"{field} (UTC)", format=TOOLTIP_TIME, formatType="utc"
    )


def count_axis(title: str) -> alt.Axis:
    """An axis for whole counts: no 0.5 ticks."""
    return alt.Axis(title=title, tickMinStep=1, format="d")


def in_utc(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``frame`` with ``columns`` as UTC-aware times (naive ones are taken to be UTC)."""
    out = frame.copy()
    for column in columns:
        if column in out.columns:
            values = pd.to_datetime(out[column])
            out[column] = (
                values.dt.tz_localize("UTC")
                if values.dt.tz is None
                else values.dt.tz_convert("UTC")
            )
    return out


def name_missing_agents(frame: pd.DataFrame, *columns: str) -> pd.DataFrame:
    """``frame`` with an empty or missing agent id shown as :data:`NO_AGENT`."""
    out = frame.copy()
    for column in columns or ("agent_id", "first_agent"):
        if column in out.columns and not pd.api.types.is_numeric_dtype(out[column]):
            out[column] = out[column].fillna("").replace("", NO_AGENT)
    return out


def _chart(frame: pd.DataFrame, **props: Any) -> alt.Chart:
    """A top-level chart drawn as SVG (layers take theirs from the layer chart)."""
    return alt.Chart(frame, usermeta=_EMBED).properties(**props)


def decisions_over_time(
    frame: pd.DataFrame, usual: float | None = None
) -> alt.LayerChart | alt.FacetChart:
    """Stacked calls per bucket by decision; a dashed rule marks ``usual`` when given."""
    bars = (
        alt.Chart(in_utc(frame, "bucket"))
        .mark_bar()
        .encode(
            x=utc_x("bucket"),
            y=alt.Y("sum(calls):Q", axis=count_axis("calls")),
            color=alt.Color("decision:N", scale=_DECISION_SCALE, title="decision"),
            tooltip=[utc_tooltip("bucket"), "decision:N", "calls:Q"],
        )
    )
    layers: list[alt.Chart] = [bars]
    if usual is not None:
        rule = (
            alt.Chart(pd.DataFrame({"usual": [usual]}))
            .mark_rule(strokeDash=[6, 4], color="#1565c0")
            .encode(y="usual:Q", tooltip=[alt.Tooltip("usual:Q", title="usual per bucket")])
        )
        layers.append(rule)
    return alt.layer(*layers, usermeta=_EMBED).properties(height=260)


def top_bars(frame: pd.DataFrame, column: str, title: str) -> alt.Chart:
    """Horizontal bars of the busiest values, denied part in red, one fixed step per bar."""
    frame = name_missing_agents(frame, column) if column == "agent_id" else frame
    long = frame.assign(allowed=frame["calls"] - frame["denied"]).melt(
        id_vars=[column], value_vars=["allowed", "denied"], var_name="part", value_name="n"
    )
    return (
        _chart(long, height=alt.Step(BAR_STEP))
        .mark_bar()
        .encode(
            y=alt.Y(
                f"{column}:N",
                sort="-x",
                title=None,
                axis=alt.Axis(labelOverlap=False, labelLimit=160),
            ),
            x=alt.X("sum(n):Q", axis=count_axis("calls")),
            color=alt.Color(
                "part:N",
                scale=alt.Scale(domain=["allowed", "denied"], range=["#90a4ae", "#c62828"]),
                legend=alt.Legend(title=None, orient="bottom"),
            ),
            tooltip=[alt.Tooltip(f"{column}:N", title=title), "part:N", "n:Q"],
        )
    )


def agent_peaks(frame: pd.DataFrame) -> alt.LayerChart | alt.FacetChart:
    """Each agent's busiest bucket against its usual, with the diagonal where the two are
    equal: the runaway ones stand far above it."""
    frame = in_utc(name_missing_agents(frame), "peak_at")
    top = float(max(frame["peak"].max(), frame["usual"].max(), 1)) if not frame.empty else 1.0
    points = (
        alt.Chart(frame)
        .mark_circle(size=120)
        .encode(
            x=alt.X("usual:Q", axis=count_axis("usual calls per bucket (median)")),
            y=alt.Y("peak:Q", axis=count_axis("busiest bucket")),
            color=alt.Color(
                "peak_vs_usual:Q",
                scale=alt.Scale(scheme="orangered"),
                title="busiest ÷ usual",
            ),
            tooltip=[
                "agent_id:N",
                "usual:Q",
                "peak:Q",
                alt.Tooltip("peak_vs_usual:Q", title="busiest ÷ usual", format=".1f"),
                utc_tooltip("peak_at", "busiest at (UTC)"),
            ],
        )
    )
    diagonal = (
        alt.Chart(pd.DataFrame({"usual": [0.0, top], "peak": [0.0, top]}))
        .mark_line(strokeDash=[4, 4], color="#78909c")
        .encode(x="usual:Q", y="peak:Q")
    )
    return alt.layer(diagonal, points, usermeta=_EMBED).properties(height=260)


def timeline(frame: pd.DataFrame) -> alt.Chart:
    """One tick per call, by tool, coloured by decision: the evidence of a finding."""
    frame = in_utc(frame.assign(decision=frame["decision"].replace("", "none")), "start_time")
    return (
        _chart(frame, height=alt.Step(36))
        .mark_tick(thickness=2, size=18)
        .encode(
            x=utc_x("start_time"),
            y=alt.Y("tool:N", title=None),
            color=alt.Color("decision:N", scale=_DECISION_SCALE),
            tooltip=[
                utc_tooltip("start_time"),
                "server:N",
                "tool:N",
                "decision:N",
                "rule:N",
                "message:N",
            ],
        )
    )


# How suspicious a destination looks, most first: a denied send, a host used only once or
# twice (a new place to send to), an ordinary host.
SUSPICION = {"denied": "#c62828", "rarely used": "#ef6c00", "usual": "#90a4ae"}
_SUSPICION_SIZE = {"denied": 360, "rarely used": 180, "usual": 60}
RARE_CALLS = 2


def suspicion(frame: pd.DataFrame) -> pd.Series:
    """Each destination's :data:`SUSPICION` level from its denied and total calls."""
    levels = pd.Series("usual", index=frame.index)
    levels[frame["calls"] <= RARE_CALLS] = "rarely used"
    levels[frame["denied"] > 0] = "denied"
    return levels


def destinations(frame: pd.DataFrame) -> alt.Chart:
    """Destinations by first use, the suspicious ones big and red, ordinary ones small."""
    frame = in_utc(name_missing_agents(frame), "first_used", "last_used")
    frame = frame.assign(suspicion=suspicion(frame))
    levels = list(SUSPICION)
    return (
        _chart(frame, height=alt.Step(24))
        .mark_circle(opacity=0.85)
        .encode(
            x=utc_x("first_used", "first used (UTC)"),
            y=alt.Y("destination:N", sort=alt.SortField("first_used"), title=None),
            size=alt.Size(
                "suspicion:N",
                scale=alt.Scale(domain=levels, range=[_SUSPICION_SIZE[k] for k in levels]),
                legend=None,
            ),
            color=alt.Color(
                "suspicion:N",
                scale=alt.Scale(domain=levels, range=list(SUSPICION.values())),
                title="how suspicious",
            ),
            tooltip=[
                "destination:N",
                "suspicion:N",
                utc_tooltip("first_used", "first used (UTC)"),
                "first_agent:N",
                "calls:Q",
                "denied:Q",
            ],
        )
    )


def count_bars(frame: pd.DataFrame, category: str, count: str, tooltip: list[str]) -> alt.Chart:
    """Plain horizontal bars of a count per category, one fixed step per bar."""
    return (
        _chart(frame, height=alt.Step(BAR_STEP))
        .mark_bar()
        .encode(
            y=alt.Y(f"{category}:N", sort="-x", title=None),
            x=alt.X(f"{count}:Q", axis=count_axis(count)),
            tooltip=tooltip,
        )
    )


def over_time_area(frame: pd.DataFrame, field: str, count: str) -> alt.Chart:
    """A filled area of a count over UTC time (the replay's newly denied calls)."""
    return (
        _chart(in_utc(frame, field), height=200)
        .mark_area(color="#c62828", opacity=0.6)
        .encode(
            x=utc_x(field),
            y=alt.Y(f"{count}:Q", axis=count_axis("calls")),
            tooltip=[utc_tooltip(field), f"{count}:Q"],
        )
    )
