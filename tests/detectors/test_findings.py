"""The detect() API: empty input, time windows, missing ids, hostile rows, both sources."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from callward.collector.store import ensure_store
from callward.detectors import Finding, detect, detect_report
from tests.detectors.conftest import T0, call, history


def loop_rows(session: str = "loop", at: float = 40 * 3600.0, **kw) -> list[dict]:
    return [call("read_file", {"path": "/w/a.py"}, at + i, session=session, **kw) for i in range(8)]


def test_empty_store_is_an_empty_result_with_a_message(tmp_path: Path) -> None:
    ensure_store(tmp_path / "d")
    report = detect_report(tmp_path / "d")
    assert report.findings == [] and report.calls_analysed == 0
    assert "no tool calls in the store" in report.message
    assert detect(tmp_path / "d") == []


def test_a_directory_that_is_not_a_store_yet_is_empty_too(tmp_path: Path) -> None:
    assert detect(tmp_path) == []


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        detect(tmp_path / "nope")


def test_window_without_calls(make_store) -> None:
    d = make_store(history(hours=3) + loop_rows())
    report = detect_report(d, since=T0 + timedelta(days=30))
    assert report.findings == [] and "no tool calls in this time window" in report.message


def test_window_selects_findings_but_history_still_counts(make_store) -> None:
    rows = history() + loop_rows(at=40 * 3600.0)
    rows.append(call("read_file", {"path": "/w/.env"}, 45 * 3600.0, session="x"))
    rows.append(
        call("http_post", {"url": "https://new.test/c", "json": {}}, 45 * 3600.0 + 5, session="x")
    )
    d = make_store(rows)
    everything = detect(d)
    assert {f.pattern for f in everything} == {
        "identical_call_loop",
        "private_data_to_new_destination",
    }
    late = detect(d, since=T0 + timedelta(hours=44))
    # the destination is judged new against the agent's whole history, not just the window
    assert [f.pattern for f in late] == ["private_data_to_new_destination"]
    early = detect(d, until=T0 + timedelta(hours=44))
    assert [f.pattern for f in early] == ["identical_call_loop"]


def test_naive_times_are_taken_as_utc(make_store) -> None:
    d = make_store(history(hours=3) + loop_rows(at=3600.0 * 5))
    naive = (T0 + timedelta(hours=4)).replace(tzinfo=None)
    assert [f.pattern for f in detect(d, since=naive)] == ["identical_call_loop"]


def test_missing_agent_and_session_ids_fall_back_to_trace_and_service(make_store) -> None:
    rows = loop_rows(session="", agent="", trace="ab" * 16)
    d = make_store(rows)
    [f] = detect(d)
    assert f.session_id == "" and f.trace_id == "ab" * 16 and f.session_key == "ab" * 16
    assert f.missing == ("agent_id", "session_id")
    assert "missing agent_id, session_id" in f.explanation and "test-agent" in f.explanation
    # two traces of the same anonymous agent are two sessions, not one
    rows2 = rows + [dict(r, trace_id="cd" * 16, span_id=r["span_id"][::-1]) for r in rows]
    assert {f.trace_id for f in detect(make_store(rows2))} == {"ab" * 16, "cd" * 16}


@pytest.mark.timeout(120)
def test_hostile_and_malformed_rows_do_not_break_detection(make_store) -> None:
    rows = history(hours=3)
    weird = [
        ("'; DROP TABLE calls; --", "not json at all {{{"),
        ("read_file", "\x00\x01 binary \udcff".encode("utf-8", "replace").decode()),
        ("send_email", json.dumps({"to": ["a@" + "b" * 5000 + ".test"], "body": "z" * 1_000_000})),
        ("", ""),
        ("ツール", json.dumps({"路径": "/w/ファイル", "url": "https://例え.テスト/"})),
        ("http_post", json.dumps({"url": "javascript:alert(1)", "json": {"a": "[REDACTED:"}})),
        ("fetch", '{"url": "https://x.test/' + "%" * 3000 + '"}'),
    ]
    for i, (tool, args) in enumerate(weird):
        rows.append(call(tool, args, 20000.0 + i, session="w"))
    rows.append(
        dict(
            call("read_file", {"p": 1}, 20100.0, session="w"),
            attributes="not json",
            outcome=None,
            decision=None,
        )
    )
    rows += loop_rows(session="w", at=20200.0)
    d = make_store(rows)
    found = detect(d)
    assert [f.pattern for f in found if f.session_id == "w"] == ["identical_call_loop"]


def test_a_connection_gives_the_same_findings_as_the_directory(make_store) -> None:
    rows = history() + loop_rows()
    rows.append(call("read_file", {"path": "/w/.env"}, 45 * 3600.0, session="x"))
    rows.append(call("create_gist", {"public": True, "files": {}}, 45 * 3600.0 + 5, session="x"))
    d = make_store(rows)
    from callward.collector.store import view_sql

    con = duckdb.connect()
    con.execute(view_sql(d))
    via_con = detect(con)
    # the connection is the caller's: it is left usable and without our temp tables
    assert con.execute("SELECT count(*) FROM tool_calls").fetchone()[0] == len(rows)
    assert not con.execute("SELECT * FROM duckdb_tables() WHERE table_name = 'calls'").fetchall()
    assert [f.to_json() for f in via_con] == [f.to_json() for f in detect(d)]


def test_findings_are_ordered_and_serialisable(make_store) -> None:
    rows = history() + loop_rows()
    rows.append(call("read_file", {"path": "/w/.env"}, 45 * 3600.0, session="x"))
    rows.append(call("create_gist", {"public": True, "files": {}}, 45 * 3600.0 + 5, session="x"))
    found = detect(make_store(rows))
    order = ["critical", "high", "medium", "low"]
    assert [order.index(f.severity) for f in found] == sorted(
        order.index(f.severity) for f in found
    )
    for f in found:
        assert isinstance(f, Finding) and f.first_seen <= f.last_seen
        assert f.first_seen.tzinfo is not None
        data = json.loads(json.dumps(f.to_json()))
        assert set(data) >= {
            "kind",
            "pattern",
            "severity",
            "agent_id",
            "session_id",
            "first_seen",
            "last_seen",
            "span_ids",
            "explanation",
        }


def test_a_read_only_connection_to_the_store_file_works(make_store) -> None:
    d = make_store(history(hours=3) + loop_rows())
    con = duckdb.connect(str(d / "callward.duckdb"), read_only=True)
    assert [f.pattern for f in detect(con)] == ["identical_call_loop"]
    assert [f.pattern for f in detect(con)] == ["identical_call_loop"]  # and again
