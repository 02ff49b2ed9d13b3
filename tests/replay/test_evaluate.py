"""Replaying the policy in force reproduces every online decision (hypothesis), and the
limit logic handles hand-made contention cases with known answers."""

from __future__ import annotations

import heapq
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callward.enforcer.batch import _refused_alone
from callward.enforcer.policy import compile_document
from callward.replay import load
from callward.replay.compare import ReplayRequest, compare
from tests.replay.recorded import EPOCH_US, Call, simulate_online, span_ids, write_store
from tests.replay.strategies import call_fields, policy_documents

# Mostly within a few minutes (limits fill up, failed calls hand quota back), sometimes over
# two hours so that hour windows roll over.
call_st = st.tuples(
    call_fields,
    st.one_of(st.integers(0, 300 * 1_000_000), st.integers(0, 2 * 3600 * 1_000_000)),
    st.sampled_from([0, 1, 500_000, 30_000_000, 90_000_000]),
    st.booleans(),
)


def _calls(drawn: list[tuple[dict[str, Any], int, int, bool]]) -> list[Call]:
    ids = span_ids(len(drawn))
    # Many calls share a start time on purpose: ties are the hard case.
    return [
        Call(
            start_us=EPOCH_US + (t // 7_000_000) * 7_000_000,
            duration_us=dur,
            failed=failed,
            span_id=ids[i],
            **fields,
        )
        for i, (fields, t, dur, failed) in enumerate(drawn)
    ]


def _replay_same(
    doc: dict[str, Any],
    calls: list[Call],
    schedule_docs: list[tuple[int, dict[str, Any]]] | None = None,
):
    policy = compile_document(doc)
    schedule = [(0, policy)] + [(t, compile_document(d)) for t, d in (schedule_docs or [])]
    records = simulate_online(calls, schedule)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_store(data, records, [p for _, p in schedule])
        result = compare(ReplayRequest(data_dir=data, candidate=policy))
    return records, result


def _assert_reproduced(records: list[dict[str, Any]], result: Any) -> None:
    """Every call's replayed decision and rule, and its replay under its recorded version
    (fidelity), are the recorded ones."""
    rows = list(result.calls.iter_rows(named=True))
    want = {r["span_id"]: (r["decision"], r["rule"]) for r in records}
    assert {r["span_id"]: (r["r_decision"], r["r_rule"]) for r in rows} == want
    assert {r["span_id"]: (r["f_decision"], r["f_rule"]) for r in rows} == want


@pytest.mark.timeout(600)
@settings(max_examples=30)
@given(policy_documents(), st.lists(call_st, min_size=1, max_size=40))
def test_replaying_the_policy_in_force_reproduces_every_decision(
    doc: dict[str, Any], drawn: list[Any]
) -> None:
    records, result = _replay_same(doc, _calls(drawn))
    _assert_reproduced(records, result)


_YEAR_US = 365 * 86400 * 1_000_000


@pytest.mark.timeout(600)
@settings(max_examples=20)
@given(
    policy_documents(),
    st.lists(call_st, min_size=1, max_size=40),
    st.sampled_from([0, 200 * _YEAR_US, -180 * _YEAR_US]),
    st.sampled_from([0, 130 * _YEAR_US]),
)
def test_the_same_holds_far_from_the_epoch_and_over_many_windows(
    doc: dict[str, Any], drawn: list[Any], shift: int, apart: int
) -> None:
    """Beyond 2106 or before 1834 the engine's float window starts can no longer be
    computed on integers; calls 130 years apart make more minute windows than a table
    counts. Both take other paths through the limit stage, with the same results."""
    calls = _calls(drawn)
    for i, c in enumerate(calls):
        c.start_us += shift + (apart if i % 2 else 0)
    records, result = _replay_same(doc, calls)
    _assert_reproduced(records, result)


@pytest.mark.timeout(600)
@settings(max_examples=15)
@given(policy_documents(), st.lists(call_st, min_size=1, max_size=40))
def test_the_same_holds_for_stores_read_as_strings(doc: dict[str, Any], drawn: list[Any]) -> None:
    """Columns of mostly distinct texts are read as strings, not Categorical: replay
    numbers their signatures by hashing then, with the same results."""
    with mock.patch.object(load, "_MANY_ENTRIES", 0):
        records, result = _replay_same(doc, _calls(drawn))
    _assert_reproduced(records, result)


@pytest.mark.timeout(600)
@settings(max_examples=30)
@given(
    policy_documents(),
    policy_documents(),
    st.lists(call_st, min_size=1, max_size=40),
    st.integers(0, 2 * 3600 * 1_000_000),
)
def test_fidelity_is_exact_across_a_policy_reload(
    doc_a: dict[str, Any], doc_b: dict[str, Any], drawn: list[Any], switch: int
) -> None:
    calls = _calls(drawn)
    records, result = _replay_same(doc_a, calls, [(EPOCH_US + switch, doc_b)])
    fid = {r["span_id"]: (r["f_decision"], r["f_rule"]) for r in result.calls.iter_rows(named=True)}
    assert fid == {r["span_id"]: (r["decision"], r["rule"]) for r in records}


LIMITED = {
    "version": "1",
    "default": "deny",
    "tools": {
        "pay": {
            "limits": [{"counter": "pay", "window": "minute", "max": 2, "scope": "agent"}],
            "deny_if": [{"conditions": [{"path": "args.amount", "op": "gt", "value": 100}]}],
        },
        "read": {},
    },
    "all_tools": {"limits": [{"counter": "all", "window": "hour", "max": 4, "scope": "agent"}]},
}


def _one(
    t_s: float,
    tool: str,
    agent: str = "a",
    failed: bool = False,
    dur_s: float = 1,
    amount: int = 1,
    sid: int = 0,
) -> Call:
    return Call(
        start_us=EPOCH_US + int(t_s * 1e6),
        duration_us=int(dur_s * 1e6),
        tool=tool,
        agent_id=agent,
        failed=failed,
        arguments={"amount": amount},
        span_id=f"{sid:016x}",
    )


def _decisions(doc: dict[str, Any], calls: list[Call]) -> list[tuple[str, str]]:
    policy = compile_document(doc)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        # Recorded under an allow-everything policy, so every call was executed.
        recorded = compile_document({"version": "1", "default": "allow"})
        write_store(data, simulate_online(calls, [(0, recorded)]), [])
        result = compare(ReplayRequest(data_dir=data, candidate=policy))
    rows = result.calls.sort("start_us", "span_id")
    return list(rows.select("r_decision", "r_rule").iter_rows())


def test_third_call_in_a_minute_is_denied_and_a_new_minute_has_room() -> None:
    calls = [
        _one(0, "pay", sid=1),
        _one(10, "pay", sid=2),
        _one(20, "pay", sid=3),
        _one(61, "pay", sid=4),
    ]
    assert _decisions(LIMITED, calls) == [
        ("allow", "/tools/pay"),
        ("allow", "/tools/pay"),
        ("deny", "/tools/pay/limits/0"),
        ("allow", "/tools/pay"),
    ]


def test_a_failed_call_gives_its_quota_back_at_its_end_time() -> None:
    # The second call fails and ends at 15 s: the call at 20 s gets its slot; the one at
    # 12 s (before the release) does not.
    calls = [
        _one(0, "pay", sid=1),
        _one(10, "pay", failed=True, dur_s=5, sid=2),
        _one(12, "pay", sid=3),
        _one(20, "pay", sid=4),
        _one(30, "pay", sid=5),
    ]
    assert [d for d, _ in _decisions(LIMITED, calls)] == ["allow", "allow", "deny", "allow", "deny"]


def test_denied_calls_consume_nothing_and_limits_of_two_scopes_interact() -> None:
    # Big payments are denied by deny_if and take no quota; the all_tools hour limit (4)
    # then stops the fifth allowed call even though the minute limit has room.
    calls = [
        _one(0, "pay", amount=500, sid=1),
        _one(1, "pay", sid=2),
        _one(2, "read", sid=3),
        _one(70, "read", sid=4),
        _one(80, "pay", sid=5),
        _one(140, "read", sid=6),
        _one(150, "read", agent="b", sid=7),
    ]
    assert _decisions(LIMITED, calls) == [
        ("deny", "/tools/pay/deny_if/0"),
        ("allow", "/tools/pay"),
        ("allow", "/tools/read"),
        ("allow", "/tools/read"),
        ("allow", "/tools/pay"),
        ("deny", "/all_tools/limits/0"),
        ("allow", "/tools/read"),
    ]


busy_call_st = st.tuples(
    call_fields,
    st.integers(0, 150 * 1_000_000),
    st.sampled_from([0, 1, 2_000_000, 20_000_000]),
    st.booleans(),
)


@st.composite
def _busy_policies(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(policy_documents())
    doc["default"] = "allow"
    doc["all_tools"] = {
        "limits": [
            {
                "counter": "busy",
                "window": draw(st.sampled_from(["minute", "hour"])),
                "max": draw(st.integers(1, 3)),
                "scope": draw(st.sampled_from(["global", "agent", "tool"])),
            }
        ]
    }
    for body in doc["tools"].values():
        for lim in body.get("limits", []):
            if lim["counter"] == "busy":
                lim["counter"] = "busy2"
    return doc


@pytest.mark.timeout(600)
@settings(max_examples=30)
@given(_busy_policies(), st.lists(busy_call_st, min_size=5, max_size=40))
def test_contended_limits_with_failures_reproduce_every_decision(
    doc: dict[str, Any], drawn: list[Any]
) -> None:
    records, result = _replay_same(doc, _calls(drawn))
    got = {r["span_id"]: (r["r_decision"], r["r_rule"]) for r in result.calls.iter_rows(named=True)}
    assert got == {r["span_id"]: (r["decision"], r["rule"]) for r in records}
    assert result.stats.sequential_calls <= result.stats.calls


def _refused_one_by_one(calls: list[tuple[int, int, bool]], maximum: int) -> list[bool]:
    """The count of one key, call by call: the plain reading of the engine's rules."""
    held, releases, out = 0, [], []
    for start, end, gives_back in calls:
        while releases and releases[0] <= start:
            heapq.heappop(releases)
            held -= 1
        if held >= maximum:
            out.append(True)
            continue
        held += 1
        out.append(False)
        if gives_back:
            heapq.heappush(releases, end)
    return out


key_calls = st.lists(
    st.tuples(st.integers(0, 40), st.integers(0, 30), st.booleans()), min_size=1, max_size=30
)


@given(st.lists(st.tuples(key_calls, st.integers(0, 4)), min_size=1, max_size=6))
def test_counting_a_key_by_runs_equals_counting_call_by_call(
    keys: list[tuple[list[tuple[int, int, bool]], int]],
) -> None:
    rows: list[dict[str, Any]] = []
    want: list[bool] = []
    for k, (drawn, maximum) in enumerate(keys):
        calls = sorted((s, s + d, g) for s, d, g in drawn)
        want.extend(_refused_one_by_one(calls, maximum))
        base = len(rows)
        rows.extend(
            {"row": base + i, "key": k, "start": s, "end": e, "gives_back": g, "max": maximum}
            for i, (s, e, g) in enumerate(calls)
        )
    refused = set(_refused_alone(pl.DataFrame(rows)).get_column("row").to_list())
    assert [r in refused for r in range(len(rows))] == want


def test_fidelity_across_a_reload_that_keeps_a_busy_limit() -> None:
    """Two versions with the same limit: its counter is kept across the reload, and the
    limit stage sees the calls of both versions on one key."""
    doc_a = {
        "version": "1",
        "default": "deny",
        "tools": {
            "pay": {"limits": [{"counter": "pay", "window": "minute", "max": 2, "scope": "agent"}]}
        },
    }
    doc_b = {**doc_a, "tools": {**doc_a["tools"], "read": {}}}
    calls = [
        _one(t, "pay", sid=i, failed=(i == 2), dur_s=3) for i, t in enumerate([0, 1, 2, 5, 6, 7, 8])
    ]
    records, result = _replay_same(doc_a, calls, [(EPOCH_US + 4_000_000, doc_b)])
    fid = {r["span_id"]: (r["f_decision"], r["f_rule"]) for r in result.calls.iter_rows(named=True)}
    assert fid == {r["span_id"]: (r["decision"], r["rule"]) for r in records}
    assert [r["decision"] for r in sorted(records, key=lambda r: r["span_id"])].count("deny") >= 2


@pytest.mark.parametrize("window", ["minute", "hour", "day"])
@pytest.mark.parametrize(
    ("shift", "apart"),
    [(0, 0), (200 * _YEAR_US, 0), (0, 130 * _YEAR_US), (200 * _YEAR_US, 130 * _YEAR_US)],
    ids=["integer-windows", "float-windows", "many-windows", "float-and-many"],
)
def test_calls_spread_over_one_window_fill_it(window: str, shift: int, apart: int) -> None:
    """Three calls at the start, middle and end of one window, two allowed per window:
    the third is refused, however the limit stage counts windows (a window counted as two
    halves would let it through). ``apart`` adds a call 130 years later."""
    seconds = {"minute": 60, "hour": 3600, "day": 86400}[window]
    doc = {
        "version": "1",
        "default": "allow",
        "tools": {"t": {"limits": [{"counter": "c", "window": window, "max": 2}]}},
    }
    ids = span_ids(4)
    # EPOCH_US is midnight: a whole number of every window from the epoch.
    start = EPOCH_US + shift - shift % (86400 * 1_000_000)
    offsets = [1_000_000, seconds * 500_000, seconds * 1_000_000 - 1_000_000]
    calls = [
        Call(start_us=start + o, duration_us=10, tool="t", span_id=ids[i])
        for i, o in enumerate(offsets)
    ]
    if apart:
        calls.append(Call(start_us=start + apart, duration_us=10, tool="t", span_id=ids[3]))
    records, result = _replay_same(doc, calls)
    recorded = {r["span_id"]: r["decision"] for r in records}
    assert [recorded[i] for i in ids[: len(calls)]] == ["allow", "allow", "deny", "allow"][
        : len(calls)
    ]
    _assert_reproduced(records, result)
