"""The hourly rollups give the same answers as a scan of the raw calls, for every filter they
claim to cover, and pick up new files as they arrive."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import streamlit as st
from hypothesis import given, settings
from hypothesis import strategies as s

from callward.collector.schema import TOOL_CALL_SCHEMA
from callward.collector.store import write_tool_calls
from callward.dashboard import queries, rollups
from callward.dashboard.queries import CallFilter
from tests.dashboard.store_fixture import T0, FixtureStore, build_rows

AGENTS = ["planner", "coder", "runaway-bot", "exfil-agent", "nobody"]
SERVERS = ["filesystem", "fetch", "github"]
TOOLS = ["read_file", "fetch", "http_post", "write_file"]
HOURS = s.integers(min_value=-3, max_value=51).map(lambda h: T0 + timedelta(hours=h))


def both_ways(fn: Callable[..., Any], *args: Any) -> tuple[Any, Any]:
    """(answer from the rollups, answer from the raw calls) for one query."""
    st.cache_data.clear()
    fast = fn(*args)
    st.cache_data.clear()
    with mock.patch.object(rollups, "covers", return_value=False):
        slow = fn(*args)
    st.cache_data.clear()
    return fast, slow


def same(pair: tuple[pd.DataFrame, pd.DataFrame], key: list[str]) -> None:
    a, b = pair
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)


@settings(max_examples=25)
@given(
    HOURS,
    s.integers(min_value=1, max_value=60),
    s.lists(s.sampled_from(AGENTS), max_size=2, unique=True),
    s.lists(s.sampled_from(SERVERS), max_size=2, unique=True),
    s.lists(s.sampled_from(TOOLS), max_size=2, unique=True),
)
def test_rollups_and_raw_calls_agree(
    fixture_store: FixtureStore,
    start: datetime,
    hours: int,
    agents: list[str],
    servers: list[str],
    tools: list[str],
) -> None:
    data_dir = str(fixture_store.data_dir)
    flt = CallFilter(
        start, start + timedelta(hours=hours), tuple(agents), tuple(servers), tuple(tools)
    )
    queries.connect(data_dir).refresh()
    assert rollups.covers(queries.connect(data_dir), flt)
    fast, slow = both_ways(queries.headline, data_dir, flt)
    assert fast == slow
    for column in queries.TOP_COLUMNS:
        same(both_ways(queries.top, data_dir, flt, column, 100), [column])
    same(both_ways(queries.policy_versions, data_dir, flt), ["policy_version"])
    same(both_ways(queries.destinations, data_dir, flt), ["destination"])
    same(both_ways(queries.redactions, data_dir, flt), ["kind"])
    same(both_ways(queries.decisions_over_time, data_dir, flt), ["bucket", "decision"])


def test_an_unaligned_range_inside_the_store_is_not_covered(fixture_store: FixtureStore) -> None:
    store = queries.connect(str(fixture_store.data_dir))
    store.refresh()
    inside = T0 + timedelta(hours=5, minutes=7)
    assert not rollups.covers(store, CallFilter(inside, inside + timedelta(hours=2)))
    assert rollups.covers(store, CallFilter(T0 - timedelta(minutes=3), None))


def test_new_files_are_summarised_and_a_removed_one_rebuilds(tmp_path: Path) -> None:
    rows = build_rows()
    write_tool_calls(tmp_path, pa.Table.from_pylist(rows[:100], schema=TOOL_CALL_SCHEMA))
    data_dir = str(tmp_path)
    assert queries.store_summary(data_dir)["calls"] == 100
    st.cache_data.clear()
    write_tool_calls(tmp_path, pa.Table.from_pylist(rows[100:250], schema=TOOL_CALL_SCHEMA))
    assert queries.store_summary(data_dir)["calls"] == 250
    st.cache_data.clear()
    newest = max(tmp_path.glob("tool_calls/*/*.parquet"), key=lambda p: p.stat().st_mtime_ns)
    kept = pq.read_table(newest).num_rows
    newest.unlink()
    assert queries.store_summary(data_dir)["calls"] == 250 - kept


def test_epoch_conversion_matches_the_database() -> None:
    moment = datetime(2026, 3, 2, 13, 45, 7, 123456, tzinfo=UTC)
    store = queries.open_store(Path("."))
    expected = store.con.execute("SELECT epoch_us(?::TIMESTAMPTZ)", [moment]).fetchone()
    assert expected is not None and rollups._epoch_us(moment) == expected[0]
