"""The shared charts as Vega-Lite specs: UTC time, whole-number count axes, named missing
agents, the diagonal the runaway caption promises, and suspicion that grows the dot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd

from callward.dashboard import charts


def _layers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("layer", [spec])


def _values(chart: Any) -> list[dict[str, Any]]:
    spec = chart.to_dict()
    return [row for rows in spec.get("datasets", {}).values() for row in rows]


def test_time_axes_are_utc_with_a_24_hour_clock() -> None:
    frame = pd.DataFrame(
        {
            "bucket": [datetime(2026, 3, 2, 21, 42, tzinfo=UTC)],
            "decision": ["allow"],
            "calls": [3],
        }
    )
    spec = charts.decisions_over_time(frame).to_dict()
    x = _layers(spec)[0]["encoding"]["x"]
    assert x["scale"]["type"] == "utc"
    assert "utcFormat" in x["axis"]["labelExpr"] and "%H:%M" in x["axis"]["labelExpr"]
    assert "%I" not in x["axis"]["labelExpr"]  # no 12-hour clock
    tooltip = _layers(spec)[0]["encoding"]["tooltip"][0]
    assert tooltip["formatType"] == "utc"
    # The time goes to the browser with its offset, so it is not read as local time.
    assert _values(charts.decisions_over_time(frame))[0]["bucket"].endswith("+00:00")


def test_naive_times_are_taken_as_utc() -> None:
    frame = pd.DataFrame({"t": [datetime(2026, 3, 2, 1, 3)]})
    assert str(charts.in_utc(frame, "t")["t"].iloc[0]) == "2026-03-02 01:03:00+00:00"


def test_count_axes_have_whole_ticks() -> None:
    frame = pd.DataFrame({"tool": ["a"], "calls": [2], "denied": [1]})
    x = charts.top_bars(frame, "tool", "Tools").to_dict()["encoding"]["x"]
    assert x["axis"]["tickMinStep"] == 1 and x["axis"]["format"] == "d"


def test_busiest_bars_keep_their_size_with_one_bar() -> None:
    frame = pd.DataFrame({"agent_id": [""], "calls": [5], "denied": [0]})
    chart = charts.top_bars(frame, "agent_id", "Agents")
    assert chart.to_dict()["height"] == {"step": charts.BAR_STEP}
    assert {row["agent_id"] for row in _values(chart)} == {charts.NO_AGENT}


def test_missing_agent_ids_are_named() -> None:
    frame = pd.DataFrame({"agent_id": ["a", "", None], "n": [1, 2, 3]})
    assert charts.name_missing_agents(frame)["agent_id"].tolist() == [
        "a",
        charts.NO_AGENT,
        charts.NO_AGENT,
    ]


def test_the_peaks_chart_draws_its_diagonal_and_names_its_legend() -> None:
    frame = pd.DataFrame(
        {
            "agent_id": ["steady", "loop"],
            "usual": [4.0, 2.0],
            "peak": [5, 40],
            "peak_vs_usual": [1.25, 20.0],
            "peak_at": [datetime(2026, 3, 2, 1, tzinfo=UTC)] * 2,
        }
    )
    layers = charts.agent_peaks(frame).to_dict()["layer"]
    assert [layer["mark"]["type"] for layer in layers] == ["line", "circle"]
    assert layers[1]["encoding"]["color"]["title"] == "busiest ÷ usual"


def test_suspicious_destinations_are_the_biggest_dots() -> None:
    frame = pd.DataFrame(
        {
            "destination": ["api.example", "new.example", "evil.example"],
            "calls": [50, 1, 3],
            "denied": [0, 0, 2],
        }
    )
    assert charts.suspicion(frame).tolist() == ["usual", "rarely used", "denied"]
    frame = frame.assign(
        first_used=[datetime(2026, 3, 2, h, tzinfo=UTC) for h in (1, 2, 3)],
        first_agent=["a", "", "b"],
    )
    size = charts.destinations(frame).to_dict()["encoding"]["size"]["scale"]
    by_level = dict(zip(size["domain"], size["range"], strict=True))
    assert by_level["denied"] > by_level["rarely used"] > by_level["usual"]
