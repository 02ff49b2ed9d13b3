"""The generator writes a real store: the one schema, labels that match it, decisions from
the engine, redacted arguments, and the same content for the same seed."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as ds
import pytest

from callward.collector.schema import DECISIONS, PARQUET_DIR, TOOL_CALL_SCHEMA
from callward.datasets.generator import (
    DEMO_POLICY,
    GenerateConfig,
    GenerateSummary,
    generate,
    hex_ids,
)
from callward.datasets.incidents import SCENARIOS
from callward.datasets.labels import read_labels
from callward.enforcer.policy import load_policy

SMALL = dict(agents=7, days=2, calls=6000)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    d = tmp_path_factory.mktemp("gen")
    return d, generate(GenerateConfig(out=d, seed=5, chunk_rows=2500, **SMALL))


def rows(d: Path):
    return ds.dataset(d / PARQUET_DIR, format="parquet", partitioning="hive").to_table()


def test_schema_and_row_count(store) -> None:
    d, summary = store
    t = rows(d)
    assert t.num_rows == summary.rows > 6000  # the ordinary calls asked for, plus incidents
    for field in TOOL_CALL_SCHEMA:
        assert t.schema.field(field.name).type == field.type, field.name
    con = duckdb.connect(str(d / "callward.duckdb"), read_only=True)
    assert con.execute("SELECT count(*) FROM tool_calls").fetchone()[0] == summary.rows
    # partitioned by the UTC date of start_time
    dates = {p.name for p in (d / PARQUET_DIR).iterdir()}
    assert dates == {"date=2026-01-05", "date=2026-01-06"} or dates >= {"date=2026-01-05"}


def test_labels_point_at_real_spans_of_their_session(store) -> None:
    d, summary = store
    labels = read_labels(d)
    assert len(labels) == summary.incidents + summary.hard_negatives
    assert {lab.pattern for lab in labels} == {s.pattern for s in SCENARIOS}
    t = rows(d).select(["span_id", "session_id", "trace_id", "agent_id"]).to_pylist()
    by_span = {r["span_id"]: r for r in t}
    for lab in labels:
        assert lab.span_ids and lab.first_seen <= lab.last_seen
        for span in lab.span_ids:
            r = by_span[span]
            assert r["session_id"] == lab.session_id and r["trace_id"] == lab.trace_id
            assert r["agent_id"] == lab.agent_id


def test_ids_are_well_formed_and_anonymous_agents_carry_none(store) -> None:
    d, _ = store
    t = rows(d).to_pydict()
    assert len(set(t["span_id"])) == len(t["span_id"])
    assert all(re.fullmatch(r"[0-9a-f]{32}", x) for x in t["trace_id"])
    anonymous = [s for s, a in zip(t["service_name"], t["agent_id"], strict=True) if a == ""]
    assert anonymous and set(anonymous) == {"desktop-assistant"}
    for a, s in zip(t["agent_id"], t["session_id"], strict=True):
        assert (a == "") == (s == "")


def test_decisions_come_from_the_demo_policy(store) -> None:
    d, summary = store
    t = rows(d).to_pydict()
    version = load_policy(DEMO_POLICY).version
    assert set(t["policy_version"]) == {version}
    assert set(t["decision"]) <= set(DECISIONS) and summary.decisions["allow"] > 0
    for dec, outcome, rule in zip(t["decision"], t["outcome"], t["rule"], strict=True):
        assert rule.startswith("/")
        assert (outcome == "") == (dec != "allow")
    # the .env reads of the coding agents ask for approval, as the policy says
    env = [
        dec
        for dec, tool, args in zip(t["decision"], t["tool"], t["arguments"], strict=True)
        if tool == "read_file" and args.endswith('/.env"}')
    ]
    assert env and set(env) == {"require_approval"}


def test_no_secret_survives_redaction(store) -> None:
    d, _ = store
    args = "\n".join(rows(d).column("arguments").to_pylist())
    assert not re.search(r"AKIA[A-Z0-9]{16}|ghp_[A-Za-z0-9]{36}|BEGIN OPENSSH PRIVATE KEY", args)
    labels = [lab for lab in read_labels(d) if lab.pattern == "secret_in_egress"]
    assert labels and "[REDACTED:" in args


def test_day_and_night(store) -> None:
    d, _ = store
    t = rows(d).select(["start_time", "agent_id"]).to_pydict()
    hours = Counter(
        ts.hour
        for ts, a in zip(t["start_time"], t["agent_id"], strict=True)
        if a.startswith("support")
    )
    assert sum(hours[h] for h in range(9, 17)) > 5 * sum(hours[h] for h in range(0, 5))


def test_same_seed_same_store_other_seed_other_store(store, tmp_path: Path) -> None:
    d, _ = store
    again = tmp_path / "again"
    generate(GenerateConfig(out=again, seed=5, chunk_rows=4000, **SMALL))
    a = rows(d).sort_by("span_id")
    b = rows(again).sort_by("span_id")
    assert a.drop(["date"]).equals(b.drop(["date"]))
    assert [x.to_json() for x in read_labels(d)] == [x.to_json() for x in read_labels(again)]
    other = tmp_path / "other"
    generate(GenerateConfig(out=other, seed=6, **SMALL))
    assert set(rows(other).column("span_id").to_pylist()).isdisjoint(
        a.column("span_id").to_pylist()
    )


def test_hex_ids() -> None:
    ids = hex_ids(np.random.default_rng(0), 1000, 8).to_pylist()
    assert all(re.fullmatch(r"[0-9a-f]{16}", x) for x in ids) and len(set(ids)) == 1000
    assert hex_ids(np.random.default_rng(0), 0, 8).to_pylist() == []
