"""The Altair charts the pages share, with one colour per decision throughout the app."""

from __future__ import annotations

import altair as alt
import pandas as pd

DECISION_COLOURS = {
    "allow": "#2e7d32",
    "deny": "#c62828",
    "require_approval": "#ef6c00",
    "none": "#9e9e9e",
}
_DECISION_SCALE = alt.Scale(domain=list(DECISION_COLOURS), range=list(DECISION_COLOURS.values()))


def decisions_over_time(
    frame: pd.DataFrame, usual: float | None = None
) -> alt.LayerChart | alt.FacetChart:
    """Stacked calls per bucket by decision; a dashed rule marks ``usual`` when given."""
    bars = (
        alt.Chart(frame)
        .mark_bar()
        .encode(
            x=alt.X("bucket:T", title="time (UTC)"),
            y=alt.Y("sum(calls):Q", title="calls"),
            color=alt.Color("decision:N", scale=_DECISION_SCALE, title="decision"),
            tooltip=["bucket:T", "decision:N", "calls:Q"],
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
    return alt.layer(*layers).properties(height=260)


def top_bars(frame: pd.DataFrame, column: str, title: str) -> alt.Chart:
    """Horizontal bars of the busiest values, denied part in red."""
    long = frame.assign(allowed=frame["calls"] - frame["denied"]).melt(
        id_vars=[column], value_vars=["allowed", "denied"], var_name="part", value_name="n"
    )
    return (
        alt.Chart(long)
        .mark_bar()
        .encode(
            y=alt.Y(
                f"{column}:N",
                sort="-x",
                title=None,
                axis=alt.Axis(labelOverlap=False, labelLimit=180),
            ),
            x=alt.X("sum(n):Q", title="calls"),
            color=alt.Color(
                "part:N",
                scale=alt.Scale(domain=["allowed", "denied"], range=["#90a4ae", "#c62828"]),
                legend=None,
            ),
            tooltip=[f"{column}:N", "part:N", "n:Q"],
        )
        .properties(height=max(80, 26 * len(frame)))
    )


def agent_peaks(frame: pd.DataFrame) -> alt.Chart:
    """Each agent's busiest bucket against its usual: the runaway ones stand out to the right."""
    return (
        alt.Chart(frame)
        .mark_circle(size=120)
        .encode(
            x=alt.X("usual:Q", title="usual calls per bucket (median)"),
            y=alt.Y("peak:Q", title="busiest bucket"),
            color=alt.Color("peak_vs_usual:Q", scale=alt.Scale(scheme="orangered"), title="×"),
            tooltip=["agent_id:N", "usual:Q", "peak:Q", "peak_vs_usual:Q", "peak_at:T"],
        )
        .properties(height=260)
    )


def timeline(frame: pd.DataFrame) -> alt.Chart:
    """One tick per call, by tool, coloured by decision: the evidence of a finding."""
    frame = frame.assign(decision=frame["decision"].replace("", "none"))
    return (
        alt.Chart(frame)
        .mark_tick(thickness=2, size=18)
        .encode(
            x=alt.X("start_time:T", title="time (UTC)"),
            y=alt.Y("tool:N", title=None),
            color=alt.Color("decision:N", scale=_DECISION_SCALE),
            tooltip=["start_time:T", "server:N", "tool:N", "decision:N", "rule:N", "message:N"],
        )
        .properties(height=max(80, 40 * frame["tool"].nunique()))
    )
