"""The store writer: schema conformance, dedupe across writers, atomic files, the view."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from callward.collector.schema import DUCKDB_FILE, PARQUET_DIR, POLICIES_DIR, TOOL_CALL_SCHEMA
from callward.collector.store import (
    StoreLockedError,
    StoreWriter,
    conform,
    ensure_store,
    parquet_files,
    refresh_view,
    refresh_view_in_child,
    save_policy,
    write_tool_calls,
)

T0 = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)


def rows(n: int, start: int = 0, day: datetime = T0) -> pa.Table:
    return pa.table(
        {
            "start_time": [day + timedelta(seconds=i) for i in range(start, start + n)],
            "end_time": [day + timedelta(seconds=i + 1) for i in range(start, start + n)],
            "trace_id": [f"{i:032x}" for i in range(start, start + n)],
            "span_id": [f"{i + 1:016x}" for i in range(start, start + n)],
            "tool": [f"tool-{i}" for i in range(start, start + n)],
            "decision": ["allow"] * n,
        }
    )


def query(data_dir: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data_dir / DUCKDB_FILE), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_empty_store_has_a_typed_empty_view(tmp_path: Path) -> None:
    ensure_store(tmp_path)
    assert query(tmp_path, "select count(*) from tool_calls") == [(0,)]
    cols = [c[0] for c in query(tmp_path, "describe tool_calls")]
    assert cols == [*TOOL_CALL_SCHEMA.names, "date"]


def test_rows_are_partitioned_by_utc_date_and_readable_both_ways(tmp_path: Path) -> None:
    write_tool_calls(tmp_path, rows(3))  # 23:59:59, 00:00:00 and 00:00:01 the next day
    dates = sorted(p.parent.name for p in parquet_files(tmp_path))
    assert dates == ["date=2026-03-01", "date=2026-03-02"]
    got = query(tmp_path, "select tool, cast(date as varchar) from tool_calls order by tool")
    assert got == [("tool-0", "2026-03-01"), ("tool-1", "2026-03-02"), ("tool-2", "2026-03-02")]
    glob = str(tmp_path / "**" / "*.parquet")
    con = duckdb.connect()
    n = con.execute(
        f"select count(*) from read_parquet('{glob}', hive_partitioning = true)"
    ).fetchone()
    assert n == (3,)


def test_missing_columns_are_filled_and_types_cast(tmp_path: Path) -> None:
    table = conform(rows(2))
    assert table.schema == TOOL_CALL_SCHEMA
    assert table.column("message").to_pylist() == ["", ""]
    assert table.column("duration_ms").to_pylist() == [None, None]


def test_naive_and_nanosecond_timestamps_are_taken_as_utc() -> None:
    naive = pa.array([datetime(2026, 1, 1, 12)], type=pa.timestamp("ns"))
    t = conform(
        pa.table(
            {"start_time": naive, "end_time": naive, "trace_id": ["a" * 32], "span_id": ["b" * 16]}
        )
    )
    assert t.column("start_time").to_pylist()[0] == datetime(2026, 1, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": ["red"]}, "not in the tool-call schema"),
        ({"trace_id": ["XYZ"]}, "trace_id"),
        ({"span_id": ["ABCDEF0123456789"]}, "span_id"),
        ({"start_time": pa.array([None], type=pa.timestamp("us", tz="UTC"))}, "null"),
        ({"duration_ms": ["fast"]}, "cannot cast"),
    ],
)
def test_bad_tables_are_refused(change: dict, message: str) -> None:
    base = rows(1).to_pydict()
    base.update(change)
    with pytest.raises(ValueError, match=message):
        conform(pa.table(base))


def test_missing_required_column_is_refused() -> None:
    with pytest.raises(ValueError, match="required columns missing: span_id"):
        conform(rows(1).drop_columns(["span_id"]))


def test_duplicates_are_dropped_within_a_batch_and_across_writers(tmp_path: Path) -> None:
    batch = pa.concat_tables([rows(5), rows(5)])
    write_tool_calls(tmp_path, batch)
    assert query(tmp_path, "select count(*) from tool_calls") == [(5,)]
    writer = StoreWriter(tmp_path)  # a new process reads the keys back from the files
    writer.write(rows(8))  # 5 old, 3 new
    assert writer.duplicates_dropped == 5
    assert query(
        tmp_path, "select count(*), count(distinct (trace_id, span_id)) from tool_calls"
    ) == [(8, 8)]
    assert writer.write(rows(8)) == []  # nothing new: no empty file either


def test_same_span_id_in_another_trace_is_not_a_duplicate(tmp_path: Path) -> None:
    a = rows(1)
    b = a.set_column(a.schema.get_field_index("trace_id"), "trace_id", pa.array(["f" * 32]))
    write_tool_calls(tmp_path, pa.concat_tables([a, b]))
    assert query(tmp_path, "select count(*) from tool_calls") == [(2,)]


def test_no_temp_file_is_left_and_stale_ones_are_removed(tmp_path: Path) -> None:
    write_tool_calls(tmp_path, rows(4))
    part_dirs = list((tmp_path / PARQUET_DIR).iterdir())
    assert all(not p.name.startswith(".") for d in part_dirs for p in d.iterdir())
    stale = part_dirs[0] / ".part-crashed.parquet.tmp"
    stale.write_bytes(b"PAR1 half a file")
    # Readers never match a temp file, even before the cleanup.
    assert query(tmp_path, "select count(*) from tool_calls") == [(4,)]
    ensure_store(tmp_path)
    assert not stale.exists()
    for path in parquet_files(tmp_path):
        pq.read_table(path)


def test_view_works_from_any_working_directory(tmp_path: Path) -> None:
    data = tmp_path / "store"
    write_tool_calls(data, rows(2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = textwrap.dedent(
        f"""
        import duckdb
        con = duckdb.connect({str(data / DUCKDB_FILE)!r}, read_only=True)
        print(con.execute("select count(*) from tool_calls").fetchone()[0])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=elsewhere, capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "2", out.stderr


def test_path_with_a_quote_is_escaped_in_the_view(tmp_path: Path) -> None:
    data = tmp_path / "o'brien"
    write_tool_calls(data, rows(2))
    assert query(data, "select count(*) from tool_calls") == [(2,)]


@pytest.mark.timeout(60)
def test_a_reader_holding_the_file_does_not_break_writes(tmp_path: Path) -> None:
    write_tool_calls(tmp_path, rows(2))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True); "
            "c.execute('select 1'); print('open', flush=True); sys.stdin.read()",
            str(tmp_path / DUCKDB_FILE),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreLockedError):
            refresh_view(tmp_path, attempts=2, wait_s=0.01)
        with pytest.raises(StoreLockedError):
            refresh_view_in_child(tmp_path)  # the collector's way: the lock is reported too
        write_tool_calls(tmp_path, rows(3, start=100))  # Parquet written; view retried later
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    refresh_view(tmp_path)
    assert query(tmp_path, "select count(*) from tool_calls") == [(5,)]


def test_policies_are_saved_once_and_atomically(tmp_path: Path) -> None:
    ensure_store(tmp_path)
    assert save_policy(tmp_path, "sha256:00aa", '{"version":"1"}')
    assert not save_policy(tmp_path, "sha256:00aa", '{"version":"1"}')
    files = sorted(os.listdir(tmp_path / POLICIES_DIR))
    assert files == ["sha256:00aa.json"]
    with pytest.raises(ValueError):
        save_policy(tmp_path, "../escape", "{}")


def test_a_writer_can_keep_duckdb_out_of_its_process(tmp_path: Path) -> None:
    """The collector's writer (view_in_child) makes the same store and view without
    importing DuckDB itself."""
    probe = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        import pyarrow as pa
        from callward.collector.store import StoreWriter
        writer = StoreWriter(Path(sys.argv[1]), view_in_child=True)
        writer.write(pa.table({
            "start_time": pa.array([1_770_000_000_000_000 + i for i in range(4)], pa.timestamp("us", tz="UTC")),
            "end_time": pa.array([1_770_000_000_000_001 + i for i in range(4)], pa.timestamp("us", tz="UTC")),
            "trace_id": [f"{i + 1:032x}" for i in range(4)],
            "span_id": [f"{i + 1:016x}" for i in range(4)],
        }))
        writer.close()
        print("duckdb" in sys.modules)
        """
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
    assert query(tmp_path, "select count(*) from tool_calls") == [(4,)]
