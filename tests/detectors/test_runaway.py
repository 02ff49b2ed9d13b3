"""Runaway patterns on hand-built stores: each fires at its threshold and not below."""

from __future__ import annotations

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callward.detectors import DetectorConfig, detect
from tests.detectors.conftest import call, history, table

CFG = DetectorConfig()


def patterns(findings, kind="runaway"):
    return {f.pattern for f in findings if f.kind == kind}


def _con(rows):
    con = duckdb.connect()
    con.register("rows_arrow", table(rows))
    con.execute("CREATE TABLE tool_calls AS SELECT * FROM rows_arrow")
    return con


@settings(max_examples=12)
@given(n=st.integers(min_value=1, max_value=14))
def test_identical_loop_fires_exactly_from_the_threshold(n: int) -> None:
    rows = history(hours=3)
    rows += [call("read_file", {"path": "/w/a.py"}, 20000 + i, session="loop") for i in range(n)]
    found = [f for f in detect(_con(rows)) if f.pattern == "identical_call_loop"]
    assert bool(found) == (n >= CFG.loop_repeats)
    if found:
        assert found[0].session_id == "loop" and found[0].calls == n and len(found[0].span_ids) == n


def test_an_interrupted_loop_is_not_a_loop() -> None:
    rows = []
    for i in range(12):
        rows.append(call("read_file", {"path": "/w/a.py"}, i * 2.0, session="x"))
        if i % 3 == 2:
            rows.append(call("write_file", {"path": f"/w/b{i}.py"}, i * 2.0 + 1, session="x"))
    assert "identical_call_loop" not in patterns(detect(_con(rows)))


@settings(max_examples=12)
@given(n=st.integers(min_value=2, max_value=16))
def test_ping_pong_needs_a_strict_alternation(n: int) -> None:
    rows = [
        call("git_log" if i % 2 == 0 else "get_file_contents", {"k": i % 2}, i * 1.0, session="pp")
        for i in range(n)
    ]
    found = [f for f in detect(_con(rows)) if f.pattern == "ping_pong"]
    assert bool(found) == (n >= CFG.pingpong_calls)
    if found:
        assert found[0].calls == n and len(set(found[0].span_ids)) == n


def test_retry_storm_counts_failures_and_denials_of_one_tool() -> None:
    rows = [
        call(
            "http_post",
            {"url": "https://x.test", "attempt": i},
            i * 0.5,
            session="r",
            outcome="error",
        )
        for i in range(3)
    ]
    rows += [
        call(
            "http_post",
            {"url": "https://x.test", "attempt": 9 + i},
            10 + i * 0.5,
            session="r",
            outcome="",
            decision="deny",
        )
        for i in range(3)
    ]
    found = [f for f in detect(_con(rows)) if f.pattern == "retry_storm"]
    assert len(found) == 1 and found[0].calls == 6 and "3 denied" in found[0].explanation
    # a success in between resets the run
    rows.insert(3, call("http_post", {"url": "https://x.test"}, 5.0, session="r", outcome="ok"))
    assert "retry_storm" not in patterns(detect(_con(rows)))


def test_rate_spike_is_relative_to_the_agent_own_minutes() -> None:
    # The busy batch agent does 100 calls a minute every hour: 100 in a minute is its habit.
    rows = []
    for h in range(30):
        rows += [
            call("run_tests", {"f": f"t{i}"}, h * 3600 + i * 0.5, agent="ci", session=f"b{h}")
            for i in range(100)
        ]
    # The quiet agent does 3 a minute; then one session does 150 in a minute.
    for h in range(30):
        rows += [
            call("read_file", {"p": f"{h}-{i}"}, h * 3600 + i * 20, agent="quiet", session=f"q{h}")
            for i in range(3)
        ]
    rows += [
        call("read_file", {"p": f"spike-{i}"}, 40 * 3600 + i * 0.3, agent="quiet", session="spike")
        for i in range(150)
    ]
    found = [f for f in detect(_con(rows)) if f.pattern == "rate_spike"]
    assert [f.session_id for f in found] == ["spike"]


def test_long_session_only_when_going_in_circles() -> None:
    rows = []
    for s in range(40):
        rows += [
            call("read_file", {"p": f"{s}-{i}"}, s * 3600 + i * 10, session=f"n{s}")
            for i in range(10)
        ]
    circles = [
        call(
            ["read_file", "list_directory", "query"][i % 3],
            {"same": i % 3},
            200000 + i * 7.0,
            session="circles",
        )
        for i in range(300)
    ]
    healthy = [
        call("read_file", {"p": f"h-{i}"}, 300000 + i * 7.0, session="healthy") for i in range(300)
    ]
    found = detect(_con(rows + circles + healthy))
    long = {f.session_id for f in found if f.pattern == "long_session"}
    assert long == {"circles"}
    assert not [f for f in found if f.session_id == "healthy"]


def test_repeated_side_effect_needs_identical_arguments() -> None:
    charge = {"amount": 4599, "customer": "cus_1", "currency": "usd"}
    rows = []
    for i in range(3):
        rows.append(call("create_charge", charge, i * 30.0, session="dup"))
        rows.append(call("query", {"sql": f"select {i}"}, i * 30.0 + 5, session="dup"))
    rows += [
        call(
            "create_charge",
            {**charge, "customer": f"cus_{i + 10}"},
            500 + i * 30.0,
            session="distinct",
        )
        for i in range(5)
    ]
    found = [f for f in detect(_con(rows)) if f.pattern == "repeated_side_effect"]
    assert [f.session_id for f in found] == ["dup"] and found[0].calls == 3


@pytest.mark.parametrize("tool", ["read_file", "list_directory", "get_file_contents"])
def test_reads_repeated_are_not_side_effects(tool: str) -> None:
    rows = [call(tool, {"p": 1}, i * 60.0, session="s") for i in range(4)]
    rows.insert(2, call("query", {"q": 1}, 61.0, session="s"))
    assert "repeated_side_effect" not in patterns(detect(_con(rows)))
