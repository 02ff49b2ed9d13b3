"""--fail-on parsing and evaluation, including hostile rule texts."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callward.replay.gates import MAX_GATE_CHARS, GateError, evaluate_gates, parse_gate


def _report(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "total": 200,
        "changed": 10,
        "unchanged": 188,
        "rule_changed": 0,
        "unknown": 2,
        "newly_denied": 6,
        "newly_allowed": 4,
        "transitions": [
            {"name": "allow->deny", "count": 6},
            {"name": "deny->allow", "count": 4},
        ],
        "fidelity": {"share": 0.995},
    }
    base.update(over)
    return base


@pytest.mark.parametrize(
    ("text", "failed"),
    [
        ("newly_denied>1%", True),  # 3 %
        ("newly_denied>3%", False),
        ("newly_denied>=3%", True),
        ("deny->allow>0", True),
        ("deny -> allow > 4", False),
        ("deny→allow==4", True),
        ("allow->require_approval>0", False),
        ("fidelity<99.5%", False),
        ("fidelity<0.996", True),
        ("unknown!=2", False),
        ("changed<=10", True),
    ],
)
def test_gate_results(text: str, failed: bool) -> None:
    [result] = evaluate_gates([parse_gate(text)], _report())
    assert result["failed"] is failed


def test_percent_of_an_empty_report_is_zero_and_unknown_fidelity_fails() -> None:
    report = _report(total=0, newly_denied=0, fidelity={"share": None})
    results = evaluate_gates([parse_gate("newly_denied>0%"), parse_gate("fidelity<99%")], report)
    assert [r["failed"] for r in results] == [False, True]
    assert results[1]["value"] is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "newly_denied",
        ">1",
        "newly_denied>>1",
        "x->y>1",
        "deny->deny>0",
        "newly_denied>1%%",
        "newly_denied>1e3",
        "fidelity<-1",
        "total>1" + "0" * 300,
        "changed>1; rm -rf /",
    ],
)
def test_rejected_gates(text: str) -> None:
    with pytest.raises(GateError):
        parse_gate(text)


@given(st.text(max_size=60))
def test_any_text_parses_or_raises_gate_error(text: str) -> None:
    try:
        gate = parse_gate(text)
    except GateError:
        return
    [result] = evaluate_gates([gate], _report())
    assert isinstance(result["failed"], bool)


_OP_HOLDS = {
    ">=": lambda v, t: v >= t,
    "<=": lambda v, t: v <= t,
    "==": lambda v, t: v == t,
    "!=": lambda v, t: v != t,
    ">": lambda v, t: v > t,
    "<": lambda v, t: v < t,
}


@pytest.mark.parametrize("op", list(_OP_HOLDS))
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_each_comparison_one_below_at_and_one_above_its_threshold(op: str, delta: int) -> None:
    # changed = 10 in the report; the threshold sits at 10 - delta, so the value is one
    # below, at, and one above it.
    threshold = 10 - delta
    [result] = evaluate_gates([parse_gate(f"changed{op}{threshold}")], _report())
    assert result["value"] == 10 and result["threshold"] == threshold
    assert result["failed"] is _OP_HOLDS[op](10, threshold)


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_percent_and_fidelity_thresholds_around_their_value(delta: int) -> None:
    # newly_denied is 6 of 200 calls (3 %); fidelity 0.995 (99.5 %).
    [pct] = evaluate_gates([parse_gate(f"newly_denied>={3 + delta}%")], _report())
    assert pct["failed"] is (delta <= 0)
    [fid] = evaluate_gates([parse_gate(f"fidelity<{99.5 + delta / 10}%")], _report())
    assert fid["failed"] is (delta > 0)


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_gate_length_limit_one_below_at_and_one_above(delta: int) -> None:
    text = "changed>1" + " " * (MAX_GATE_CHARS + delta - len("changed>1"))
    assert len(text) == MAX_GATE_CHARS + delta
    if delta <= 0:
        assert parse_gate(text).threshold == 1
    else:
        with pytest.raises(GateError, match="limit"):
            parse_gate(text)
