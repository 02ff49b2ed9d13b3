"""Every count threshold of the detectors tried one below, at and one above its value.

The property tests in test_runaway.py draw counts at random and may never land on
threshold - 1; these cases name the three values around each threshold of
``DetectorConfig`` so an off-by-one in a ``>=`` is caught every run.
"""

from __future__ import annotations

import json

import duckdb
import pytest

from callward.detectors import DetectorConfig, detect
from tests.detectors.conftest import call, history, table

CFG = DetectorConfig()
AROUND = (-1, 0, 1)


def _found(rows, pattern: str, session: str) -> list:
    con = duckdb.connect()
    con.register("rows_arrow", table(rows))
    con.execute("CREATE TABLE tool_calls AS SELECT * FROM rows_arrow")
    return [f for f in detect(con) if f.pattern == pattern and f.session_id == session]


@pytest.mark.parametrize("delta", AROUND)
def test_identical_loop_around_loop_repeats(delta: int) -> None:
    n = CFG.loop_repeats + delta
    rows = history(hours=3)
    rows += [call("read_file", {"path": "/w/a.py"}, 20000 + i, session="loop") for i in range(n)]
    found = _found(rows, "identical_call_loop", "loop")
    assert bool(found) == (delta >= 0)
    assert all(f.calls == n for f in found)


@pytest.mark.parametrize("delta", AROUND)
def test_ping_pong_around_pingpong_calls(delta: int) -> None:
    n = CFG.pingpong_calls + delta
    rows = [
        call("git_log" if i % 2 == 0 else "get_file_contents", {"k": i % 2}, i * 1.0, session="pp")
        for i in range(n)
    ]
    found = _found(rows, "ping_pong", "pp")
    assert bool(found) == (delta >= 0)
    assert all(f.calls == n for f in found)


@pytest.mark.parametrize("delta", AROUND)
def test_retry_storm_around_retry_failures(delta: int) -> None:
    n = CFG.retry_failures + delta
    rows = [
        call(
            "http_post",
            {"url": "https://x.test", "attempt": i},
            i * 0.5,
            session="r",
            outcome="error",
        )
        for i in range(n)
    ]
    found = _found(rows, "retry_storm", "r")
    assert bool(found) == (delta >= 0)
    assert all(f.calls == n for f in found)


@pytest.mark.parametrize("delta", AROUND)
def test_repeated_side_effect_around_side_effect_repeats(delta: int) -> None:
    n = CFG.side_effect_repeats + delta
    charge = {"amount": 4599, "customer": "cus_1", "currency": "usd"}
    rows = []
    for i in range(n):
        rows.append(call("create_charge", charge, i * 30.0, session="dup"))
        rows.append(call("query", {"sql": f"select {i}"}, i * 30.0 + 5, session="dup"))
    found = _found(rows, "repeated_side_effect", "dup")
    assert bool(found) == (delta >= 0)
    assert all(f.calls == n for f in found)


@pytest.mark.parametrize("delta", AROUND)
def test_rate_spike_around_spike_min_per_minute(delta: int) -> None:
    # The agent's usual minute is 3 calls, so spike_factor * p95 (15) is below the floor
    # and the floor alone decides.
    assert CFG.spike_factor * 3 < CFG.spike_min_per_minute
    n = CFG.spike_min_per_minute + delta
    rows = []
    for h in range(30):
        rows += [
            call("read_file", {"p": f"{h}-{i}"}, h * 3600 + i * 20, agent="quiet", session=f"q{h}")
            for i in range(3)
        ]
    rows += [
        call("read_file", {"p": f"spike-{i}"}, 40 * 3600 + i * 0.3, agent="quiet", session="spike")
        for i in range(n)
    ]
    found = _found(rows, "rate_spike", "spike")
    assert bool(found) == (delta >= 0)


@pytest.mark.parametrize("delta", AROUND)
def test_long_session_around_long_session_min_calls(delta: int) -> None:
    # Sessions of 10 calls: long_session_factor * median (50) is below the floor.
    assert CFG.long_session_factor * 10 < CFG.long_session_min_calls
    n = CFG.long_session_min_calls + delta
    rows = []
    for s in range(40):
        rows += [
            call("read_file", {"p": f"{s}-{i}"}, s * 3600 + i * 10, session=f"n{s}")
            for i in range(10)
        ]
    rows += [
        call(
            ["read_file", "list_directory", "query"][i % 3],
            {"same": i % 3},
            200000 + i * 7.0,
            session="circles",
        )
        for i in range(n)
    ]
    found = _found(rows, "long_session", "circles")
    assert bool(found) == (delta >= 0)


LATER = 40 * 3600.0  # after the day and a half of history


def _bulk_then_send(reads: int, send_chars: int) -> list:
    rows = history()
    rows += [
        call("read_file", {"path": f"/w/src/f{i}.py"}, LATER + i, session="bulk")
        for i in range(reads)
    ]
    head = json.dumps({"to": ["team@acme.test"], "body": ""})
    body = "x" * (send_chars - len(head))
    send = call("send_email", {"to": ["team@acme.test"], "body": body}, LATER + 60, session="bulk")
    assert len(send["arguments"]) == send_chars
    return [*rows, send]


@pytest.mark.parametrize("delta", AROUND)
def test_bulk_read_around_bulk_reads(delta: int) -> None:
    rows = _bulk_then_send(CFG.bulk_reads + delta, 3 * CFG.large_send_bytes)
    found = _found(rows, "bulk_read_then_large_send", "bulk")
    assert bool(found) == (delta >= 0)


@pytest.mark.parametrize("delta", AROUND)
def test_large_send_around_large_send_bytes(delta: int) -> None:
    rows = _bulk_then_send(CFG.bulk_reads + 2, CFG.large_send_bytes + delta)
    found = _found(rows, "bulk_read_then_large_send", "bulk")
    assert bool(found) == (delta >= 0)
