"""The query layer: bounded, read-only, safe with hostile filter values, honest on errors."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as s

from callward.collector.schema import PARQUET_DIR
from callward.collector.store import write_tool_calls
from callward.dashboard import queries
from callward.dashboard.queries import CallFilter, QueryError, QueryTimeout
from tests.dashboard.store_fixture import EXFIL_HOST, FixtureStore, build_rows

HOSTILE = [
    "x' OR '1'='1",
    "'; DROP VIEW tool_calls; --",
    'planner"',
    "\\",
    "%",
    "plan_er",
    "é" * 5000,
    "a\x00b",
    "",
]


def test_hostile_filter_values_match_nothing_and_change_nothing(
    fixture_store: FixtureStore,
) -> None:
    data_dir = str(fixture_store.data_dir)
    for value in HOSTILE:
        flt = CallFilter(agents=(value,), servers=(value,), tools=(value,))
        assert queries.headline(data_dir, flt)["calls"] == 0
        assert queries.top(data_dir, flt, "tool").empty
    assert queries.headline(data_dir, CallFilter())["calls"] == fixture_store.table.num_rows


def test_many_filter_values_are_bound_not_spliced(fixture_store: FixtureStore) -> None:
    agents = (*(f"agent-{i}" for i in range(2000)), "planner")
    head = queries.headline(str(fixture_store.data_dir), CallFilter(agents=agents))
    planner = fixture_store.table.column("agent_id").to_pylist().count("planner")
    assert head["calls"] == planner


def test_top_refuses_a_column_outside_its_list(fixture_store: FixtureStore) -> None:
    with pytest.raises(ValueError, match="cannot group by"):
        queries.top(str(fixture_store.data_dir), CallFilter(), "arguments; DROP VIEW x")


def test_rows_are_capped_and_the_cap_is_reported(fixture_store: FixtureStore) -> None:
    store = queries.connect(str(fixture_store.data_dir))
    capped = queries.run(store, "SELECT * FROM range(100)", max_rows=10)
    assert len(capped) == 10 and capped.attrs["truncated"]
    whole = queries.run(store, "SELECT * FROM range(100)", max_rows=100)
    assert len(whole) == 100 and not whole.attrs["truncated"]


@pytest.mark.timeout(60)
def test_a_slow_query_is_interrupted_and_keeps_its_sql(fixture_store: FixtureStore) -> None:
    store = queries.connect(str(fixture_store.data_dir))
    sql = "SELECT sum(hash(i)) FROM range(1000000000000) t(i)"
    with pytest.raises(QueryTimeout) as caught:
        queries.run(store, sql, timeout_s=0.2)
    assert caught.value.sql == sql
    # The connection is still usable afterwards.
    assert queries.run(store, "SELECT 1 AS one")["one"].iloc[0] == 1


def test_a_failing_query_keeps_its_sql_and_parameters(fixture_store: FixtureStore) -> None:
    store = queries.connect(str(fixture_store.data_dir))
    with pytest.raises(QueryError) as caught:
        queries.run(store, "SELECT no_such_column FROM tool_calls WHERE tool = ?", ["x"])
    assert "no_such_column" in caught.value.sql
    assert caught.value.params == ("x",)
    assert "no_such_column" in caught.value.message


def test_the_connection_reads_nothing_outside_the_store_and_stays_locked(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.csv"
    outside.write_text("a\n1\n")
    store = queries.connect(str(fixture_store.data_dir))
    with pytest.raises(QueryError):
        queries.run(store, f"SELECT * FROM read_csv('{outside}')")
    with pytest.raises(QueryError):
        queries.run(store, "SET enable_external_access = true")


def test_an_empty_store_answers_zero_then_sees_calls_once_written(tmp_path: Path) -> None:
    data_dir = str(tmp_path)
    store = queries.open_store(data_dir)
    assert queries.run(store, "SELECT count(*) AS n FROM tool_calls")["n"].iloc[0] == 0
    assert queries.destinations(data_dir, CallFilter()).empty
    rows = build_rows()[:5]
    write_tool_calls(tmp_path, pa.Table.from_pylist(rows, schema=queries.TOOL_CALL_SCHEMA))
    assert queries.run(store, "SELECT count(*) AS n FROM tool_calls")["n"].iloc[0] == 5


def test_temp_files_of_a_write_in_progress_are_not_read(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    copy = tmp_path / "store"
    shutil.copytree(fixture_store.data_dir, copy)
    part = next((copy / PARQUET_DIR).glob("*/*.parquet"))
    shutil.copy(part, part.with_name(".tmp-half-written.parquet"))
    summary = queries.store_summary(str(copy))
    assert summary["calls"] == fixture_store.table.num_rows


def test_a_data_dir_with_quotes_in_its_name_works(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    copy = tmp_path / 'it\'s a "store"'
    shutil.copytree(fixture_store.data_dir, copy)
    assert queries.store_summary(str(copy))["calls"] == fixture_store.table.num_rows


def test_a_corrupt_parquet_file_is_a_query_error_naming_it(
    fixture_store: FixtureStore, tmp_path: Path
) -> None:
    copy = tmp_path / "store"
    shutil.copytree(fixture_store.data_dir, copy)
    bad = copy / PARQUET_DIR / "date=2026-03-04" / "part-bad.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(QueryError) as caught:
        queries.store_summary(str(copy))
    assert "part-bad.parquet" in caught.value.message


def test_destinations_are_ordered_by_first_use(fixture_store: FixtureStore) -> None:
    dests = queries.destinations(str(fixture_store.data_dir), CallFilter())
    assert list(dests["first_used"]) == sorted(dests["first_used"])
    assert dests["destination"].iloc[-1] == EXFIL_HOST
    assert dests.loc[dests["destination"] == EXFIL_HOST, "denied"].iloc[0] == 1


def test_redactions_count_every_marker(fixture_store: FixtureStore) -> None:
    kinds = queries.redactions(str(fixture_store.data_dir), CallFilter())
    expected = sum(
        a.count("[REDACTED:") for a in fixture_store.table.column("arguments").to_pylist()
    )
    assert int(kinds["secrets"].sum()) == expected
    assert set(kinds["kind"]) == {"aws_access_key", "private_key"}


def test_agent_activity_puts_the_runaway_agent_first(fixture_store: FixtureStore) -> None:
    first = fixture_store.table.column("start_time")[0].as_py()
    flt = CallFilter(first, first + timedelta(days=2))
    activity = queries.agent_activity(str(fixture_store.data_dir), flt)
    assert activity["agent_id"].iloc[0] == "runaway-bot"
    top = activity.iloc[0]
    assert top["peak"] > 10 * top["usual"]


def test_time_filter_is_half_open(fixture_store: FixtureStore) -> None:
    times = sorted(fixture_store.table.column("start_time").to_pylist())
    cut = times[len(times) // 2]
    data_dir = str(fixture_store.data_dir)
    before = queries.headline(data_dir, CallFilter(end=cut))["calls"]
    after = queries.headline(data_dir, CallFilter(start=cut))["calls"]
    assert before == sum(t < cut for t in times)
    assert before + after == len(times)


MOMENTS = s.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=s.just(UTC)
)


@given(MOMENTS, s.timedeltas(min_value=timedelta(0), max_value=timedelta(days=365 * 5)))
def test_a_chart_never_has_more_buckets_than_the_cap(start: datetime, span: timedelta) -> None:
    name = queries.bucket_for(start, start + span)
    width = dict(queries.BUCKETS)[name]
    assert span / width <= queries.MAX_BUCKETS or name == queries.BUCKETS[-1][0]


@given(
    s.lists(s.text(max_size=20), max_size=5),
    s.lists(s.text(max_size=20), max_size=5),
    s.lists(s.text(max_size=20), max_size=5),
    s.booleans(),
    s.booleans(),
)
def test_every_filter_value_is_a_parameter(
    agents: list[str], servers: list[str], tools: list[str], has_start: bool, has_end: bool
) -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    flt = CallFilter(
        moment if has_start else None,
        moment if has_end else None,
        tuple(agents),
        tuple(servers),
        tuple(tools),
    )
    sql, params = flt.where()
    assert sql.count("?") == len(params)
    for value in agents + servers + tools:
        assert value in params
        if value and value not in ("?",):
            # values never reach the SQL text itself
            assert f"'{value}'" not in sql
