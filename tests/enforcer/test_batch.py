"""The batch entry point decides a table exactly as the online engine decides call by call.

The oracle is the online gateway's own order of work: ``decide`` with an
``InMemoryLimitState`` per call in (start time, span id) order, a failed call's quota given
back at its end time, a release before a decision at the same microsecond, a reload keeping
only the counters whose settings did not change. It is held against
:func:`enforcer.batch.decide_table` on a store written by the collector's writer and on a
store written by the dataset generator, with random policies and random traffic. Each
property also counts how many of its examples had a call refused by a full limit, and
fails if too few did: without contention the limit stages would go untested.
"""

from __future__ import annotations

import heapq
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pytest
import yaml
from hypothesis import event, given, settings, target
from hypothesis import strategies as st

from callward.collector.schema import PARQUET_DIR
from callward.datasets.catalog import TOOLS as GENERATED_TOOLS
from callward.datasets.generator import GenerateConfig, generate
from callward.enforcer.batch import decide_table
from callward.enforcer.engine import CounterKey, InMemoryLimitState, Request, decide
from callward.enforcer.policy import CompiledPolicy, compile_document, compile_text
from callward.replay.load import load_calls
from tests.replay.recorded import EPOCH_US, Call, simulate_online, span_ids, write_store
from tests.replay.strategies import call_fields, limit_st, policy_documents

_YEAR_US = 365 * 86400 * 1_000_000
# At least this share of a property's examples must have a call refused by a full limit.
MIN_LIMIT_DENIAL_SHARE = 0.3


def online(frame: pl.DataFrame, policy: CompiledPolicy) -> dict[str, tuple[str, str, str]]:
    """(decision, rule, message) per span id, deciding call by call as the gateway does."""
    state = InMemoryLimitState()
    releases: list[tuple[int, int, tuple[CounterKey, ...]]] = []
    out: dict[str, tuple[str, str, str]] = {}
    for seq, r in enumerate(frame.sort("start_us", "span_id").iter_rows(named=True)):
        while releases and releases[0][0] <= r["start_us"]:
            state.release(heapq.heappop(releases)[2])
        req = Request(
            r["tool"],
            json.loads(r["arguments"]),
            r["server"],
            r["grant"],
            r["agent_id"],
            r["session_id"],
        )
        d = decide(policy, req, state, r["start_us"] / 1_000_000)
        if d.reserved and r["fails"]:
            heapq.heappush(releases, (r["end_us"], seq, d.reserved))
        out[r["span_id"]] = (d.decision, d.rule, d.message)
    return out


def batch(
    frame: pl.DataFrame, policies: dict[str, CompiledPolicy], version: pl.Series | str
) -> dict[str, tuple[str, str, str]]:
    decided, _ = decide_table(frame, policies, version)
    rows = decided.cast(pl.String).rows()
    return dict(zip(frame.get_column("span_id").cast(pl.String).to_list(), rows, strict=True))


def limit_denials(decisions: dict[str, tuple[str, str, str]]) -> int:
    return sum(1 for d, rule, _ in decisions.values() if d == "deny" and "/limits/" in rule)


def run_and_count(prop: Any, seen: list[int]) -> None:
    """Run a property that appends its examples' limit denials to ``seen``; check the share."""
    prop()
    hit = sum(1 for n in seen if n > 0)
    assert seen and hit / len(seen) >= MIN_LIMIT_DENIAL_SHARE, (hit, len(seen))


# --------------------------------------------------------------------------- collector store


@st.composite
def contended_policies(draw: st.DrawFn) -> dict[str, Any]:
    """A random policy plus one policy-wide limit small enough to fill up."""
    doc = draw(policy_documents())
    if draw(st.integers(0, 3)):
        doc["default"] = "allow"
    busy = {
        "counter": "busy",
        "window": draw(st.sampled_from(["minute", "hour", "day"])),
        "max": draw(st.integers(1, 3)),
        "scope": draw(st.sampled_from(["global", "agent", "tool", "session", "grant"])),
        "sliding": draw(st.integers(0, 3)) == 0,
    }
    doc["all_tools"] = {"limits": [busy, *doc.get("all_tools", {}).get("limits", [])]}
    for body in doc["tools"].values():
        for lim in body.get("limits", []):
            if lim["counter"] == "busy":
                lim["counter"] = "busy2"
    return doc


# Start times: bunched at a few instants (ties, and calls one microsecond apart), spread
# over minutes and hours, or far apart (days, a century).
start_st = st.one_of(
    st.tuples(st.integers(0, 20), st.integers(0, 1)).map(lambda p: p[0] * 7_000_000 + p[1]),
    st.integers(0, 300 * 1_000_000),
    st.integers(0, 2 * 3600 * 1_000_000),
    st.sampled_from([0, 1, 3 * 86400 * 1_000_000, 130 * _YEAR_US]),
)
call_st = st.tuples(
    call_fields,
    start_st,
    st.sampled_from([0, 1, 500_000, 7_000_000, 30_000_000, 90_000_000]),
    st.booleans(),
)


def recorded_store(
    doc: dict[str, Any], drawn: list[Any], reload: tuple[int, dict[str, Any]] | None
) -> tuple[list[dict[str, Any]], dict[str, CompiledPolicy], pl.DataFrame]:
    """Online records of the drawn calls, written by the collector's writer and read back
    as replay reads a store."""
    ids = span_ids(len(drawn))
    calls = [
        Call(start_us=EPOCH_US + t, duration_us=dur, failed=failed, span_id=ids[i], **fields)
        for i, (fields, t, dur, failed) in enumerate(drawn)
    ]
    schedule = [(0, compile_document(doc))]
    if reload is not None:
        schedule.append((EPOCH_US + reload[0], compile_document(reload[1])))
    records = simulate_online(calls, schedule)
    policies = {p.version: p for _, p in schedule}
    with tempfile.TemporaryDirectory() as tmp:
        write_store(Path(tmp), records, list(policies.values()))
        frame = load_calls(Path(tmp)).frame
    return records, policies, frame


def test_batch_equals_online_on_a_collector_store() -> None:
    seen: list[int] = []

    @settings(max_examples=60, deadline=None)
    @given(
        contended_policies(),
        st.lists(call_st, min_size=1, max_size=50),
        st.none() | st.tuples(st.integers(0, 2 * 3600 * 1_000_000), contended_policies()),
    )
    def prop(doc: dict[str, Any], drawn: list[Any], reload: Any) -> None:
        records, policies, frame = recorded_store(doc, drawn, reload)
        frame = frame.with_columns((pl.col("outcome") == "error").alias("fails"))
        got = batch(frame, policies, frame.get_column("policy_version").cast(pl.String))
        want = {r["span_id"]: (r["decision"], r["rule"], r["message"]) for r in records}
        assert got == want
        denials = limit_denials(want)
        event("a limit refused a call" if denials else "no limit refused a call")
        target(float(denials), label="limit denials")
        seen.append(denials)

    run_and_count(prop, seen)


def test_a_reload_that_changes_a_limit_resets_its_counter_and_keeps_the_others() -> None:
    """A fixed case with known answers: ``a`` is kept across the reload, ``b`` reset."""
    before = {
        "version": "1",
        "default": "allow",
        "tools": {
            "read": {"limits": [{"counter": "a", "window": "hour", "max": 1}]},
            "pay": {"limits": [{"counter": "b", "window": "hour", "max": 1}]},
        },
    }
    after = {
        **before,
        "tools": {
            **before["tools"],
            "pay": {"limits": [{"counter": "b", "window": "hour", "max": 2}]},
        },
    }
    fields = {"server": "", "agent_id": "x", "session_id": "s", "grant": "g", "arguments": {}}
    drawn = [
        ({**fields, "tool": "read"}, 0, 10, False),
        ({**fields, "tool": "pay"}, 1, 10, False),
        ({**fields, "tool": "read"}, 20, 10, False),
        ({**fields, "tool": "pay"}, 21, 10, False),
        ({**fields, "tool": "pay"}, 22, 10, False),
    ]
    records, policies, frame = recorded_store(before, drawn, (10, after))
    frame = frame.with_columns((pl.col("outcome") == "error").alias("fails"))
    got = batch(frame, policies, frame.get_column("policy_version").cast(pl.String))
    assert [got[r["span_id"]][0] for r in records] == ["allow", "allow", "deny", "allow", "allow"]


# --------------------------------------------------------------------------- fixed policy

FIXED = compile_text(
    """
version: "1"
default: deny
all_tools:
  limits: [{counter: per_agent, window: minute, max: 6, scope: agent}]
tools:
  alpha:
    deny_if: [{conditions: [{path: args.n, op: gt, value: 5}]}]
    limits: [{counter: per_session, window: minute, max: 3, scope: session}]
  beta:
    limits:
      - {counter: per_grant, window: minute, max: 2, scope: grant}
      - {counter: per_agent, window: minute, max: 6, scope: agent}
  gamma:
    action: require_approval
"""
)
FIXED_TOOLS = ("alpha", "beta", "gamma", "delta")


def fixed_frame(rows: list[tuple[int, int, int, int, int, bool]]) -> pl.DataFrame:
    """(tool, n, agent, session, start µs, fails) per call; each lasts 5 s."""
    return pl.DataFrame(
        {
            "start_us": [EPOCH_US + r[4] for r in rows],
            "end_us": [EPOCH_US + r[4] + 5_000_000 for r in rows],
            "span_id": span_ids(len(rows)),
            "agent_id": [["a1", "a2", ""][r[2]] for r in rows],
            "session_id": [["s1", "s2", ""][r[3]] for r in rows],
            "grant": ["g"] * len(rows),
            "server": ["s"] * len(rows),
            "tool": [FIXED_TOOLS[r[0]] for r in rows],
            "arguments": [json.dumps({"n": r[1]}) for r in rows],
            "fails": [r[5] for r in rows],
        },
        schema_overrides={"start_us": pl.Int64, "end_us": pl.Int64},
    )


fixed_rows = st.lists(
    st.tuples(
        st.integers(0, len(FIXED_TOOLS) - 1),
        st.sampled_from([1, 9]),
        st.integers(0, 2),
        st.integers(0, 2),
        # Mostly within one minute, where the limits fill up; sometimes over two.
        st.one_of(st.integers(0, 50), st.integers(0, 1300)).map(lambda t: t * 100_000),
        st.booleans(),
    ),
    min_size=10,
    max_size=80,
)


def test_batch_equals_online_on_a_fixed_policy() -> None:
    seen: list[int] = []

    @settings(max_examples=100, deadline=None)
    @given(fixed_rows)
    def prop(rows: list[tuple[int, int, int, int, int, bool]]) -> None:
        frame = fixed_frame(rows)
        want = online(frame, FIXED)
        assert batch(frame, {FIXED.version: FIXED}, FIXED.version) == want
        target(float(limit_denials(want)), label="limit denials")
        seen.append(limit_denials(want))

    run_and_count(prop, seen)


@pytest.mark.parametrize("calls", [3, 4, 5])
def test_a_window_one_over_its_max_denies_the_last_call(calls: int) -> None:
    frame = fixed_frame([(0, 1, 0, 0, i * 1_000_000, False) for i in range(calls)])
    got = batch(frame, {FIXED.version: FIXED}, FIXED.version)
    decisions = [got[s][0] for s in frame.get_column("span_id").to_list()]
    assert decisions == ["allow"] * 3 + ["deny"] * (calls - 3)


def test_a_failed_call_gives_back_its_quota_before_a_call_at_its_end_time() -> None:
    # Three alpha calls fill the session's minute; the second fails and ends at 6 s, when
    # the fourth starts: release first, so the fourth is allowed and the fifth is not.
    rows = [(0, 1, 0, 0, 0, False), (0, 1, 0, 0, 1_000_000, True), (0, 1, 0, 0, 2_000_000, False)]
    rows += [(0, 1, 0, 0, 6_000_000, False), (0, 1, 0, 0, 6_000_001, False)]
    frame = fixed_frame(rows)
    got = batch(frame, {FIXED.version: FIXED}, FIXED.version)
    assert [got[s][0] for s in frame.get_column("span_id").to_list()] == [
        "allow",
        "allow",
        "allow",
        "allow",
        "deny",
    ]
    assert got == online(frame, FIXED)


# --------------------------------------------------------------------------- generated store


@st.composite
def generator_policies(draw: st.DrawFn) -> dict[str, Any]:
    """Limits on the generator's tools (no condition reads arguments, which the store keeps
    redacted: the oracle decides on the stored rows)."""
    tools = draw(st.lists(st.sampled_from(GENERATED_TOOLS), min_size=1, max_size=8, unique=True))
    doc: dict[str, Any] = {"version": "1", "default": draw(st.sampled_from(["allow", "deny"]))}
    body = st.fixed_dictionaries(
        {
            "limits": st.lists(
                limit_st.map(lambda lim: {**lim, "max": lim["max"] * 4 + 1}), max_size=2
            )
        },
        optional={"action": st.sampled_from(["allow", "allow", "deny", "require_approval"])},
    )
    doc["tools"] = {t: draw(body) for t in tools}
    doc["all_tools"] = {
        "limits": [
            {
                "counter": "busy",
                "window": draw(st.sampled_from(["minute", "hour"])),
                "max": draw(st.integers(1, 40)),
                "scope": draw(st.sampled_from(["global", "agent", "tool", "session", "grant"])),
            }
        ]
    }
    seen: dict[str, dict[str, Any]] = {}  # one counter name keeps one setting
    for lim in [lim for b in doc["tools"].values() for lim in b["limits"]]:
        first = seen.setdefault(lim["counter"], dict(lim))
        lim.clear()
        lim.update(first)
    return doc


def generated_store(out: Path) -> pl.DataFrame:
    table = ds.dataset(out / PARQUET_DIR, format="parquet", partitioning="hive").to_table()
    return pl.from_arrow(table.drop(["date"])).with_columns(  # type: ignore[union-attr]
        pl.col("start_time").dt.epoch("us").alias("start_us"),
        pl.col("end_time").dt.epoch("us").alias("end_us"),
        (pl.col("outcome") == "error").alias("fails"),
    )


def stored_decisions(stored: pl.DataFrame) -> dict[str, tuple[str, str, str]]:
    rows = stored.select("span_id", "decision", "rule", "message").iter_rows()
    return {s: (d, r, m) for s, d, r, m in rows}


@pytest.mark.timeout(900)
def test_the_generator_writes_what_the_online_engine_decides() -> None:
    seen: list[int] = []

    @settings(max_examples=8, deadline=None)
    @given(generator_policies(), st.integers(0, 2**16))
    def prop(doc: dict[str, Any], seed: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            policy_file = Path(tmp) / "policy.yaml"
            policy_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
            out = Path(tmp) / "store"
            cfg = GenerateConfig(
                out=out, agents=7, days=1, seed=seed, calls=1500, policy=policy_file
            )
            generate(cfg)
            stored = generated_store(out)
        policy = compile_document(doc)
        want = online(stored, policy)
        assert stored_decisions(stored) == want
        # A failed call ran (it gave quota back), so it was allowed; the rest ran or not
        # as the decision says.
        executed = stored.get_column("outcome") != ""
        assert (executed == (stored.get_column("decision") == "allow")).all()
        denials = limit_denials(want)
        target(float(denials), label="limit denials")
        seen.append(denials)

    run_and_count(prop, seen)


def test_the_generator_gives_quota_back_for_failed_calls() -> None:
    """One tight limit on the busiest tool: some failed calls' quota is reused."""
    doc = {
        "version": "1",
        "default": "allow",
        "all_tools": {"limits": [{"counter": "c", "window": "hour", "max": 3, "scope": "agent"}]},
    }
    with tempfile.TemporaryDirectory() as tmp:
        policy_file = Path(tmp) / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(doc), encoding="utf-8")
        out = Path(tmp) / "store"
        generate(GenerateConfig(out=out, agents=7, days=1, seed=3, calls=3000, policy=policy_file))
        stored = generated_store(out)
    policy = compile_document(doc)
    want = online(stored, policy)
    assert stored_decisions(stored) == want
    # Without releases, more calls would be refused: the generator's store is not that one.
    no_release = online(stored.with_columns(pl.lit(False).alias("fails")), policy)
    assert limit_denials(no_release) > limit_denials(want)
    assert int(np.sum(stored.get_column("fails").to_numpy())) > 0
