"""callward/record.py: the one listing of a store's files, on hostile trees."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from callward import record
from callward.collector import schema


def _parquet(path: Path, value: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"v": [value]}), path)
    return path


def _duckdb_reads(data_dir: Path) -> list[str]:
    """The files DuckDB's read_parquet opens through the store's glob."""
    rows = duckdb.sql(
        f"SELECT DISTINCT filename FROM read_parquet('{record.data_files_glob(data_dir)}', "
        "filename = true) ORDER BY filename"
    ).fetchall()
    return [r[0] for r in rows]


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A store with one good file per day and every kind of file a reader must skip."""
    d = tmp_path / "store"
    root = d / record.PARQUET_DIR
    good = [
        _parquet(root / "date=2026-01-01" / "part-a.parquet", "a"),
        _parquet(root / "date=2026-01-02" / "part-b.parquet", "b"),
    ]
    # a writer's temp file, a dot file that still ends in .parquet, a non-Parquet file
    _parquet(root / "date=2026-01-01" / ".part-c.parquet.1234.tmp", "temp")
    _parquet(root / "date=2026-01-01" / ".part-d.parquet", "hidden")
    (root / "date=2026-01-01" / "notes.txt").write_text("not data")
    (root / "date=2026-01-01" / "part-e.parquet.tmp").write_bytes(b"PAR1 torn")
    # a directory named date=.. with a subfolder x: three levels down, not a partition
    _parquet(root / "date=.." / "x" / "part-f.parquet", "escape")
    # a file directly under tool_calls (no partition)
    _parquet(root / "part-g.parquet", "flat")
    # a symlinked data file inside a partition, pointing outside the store
    outside = _parquet(tmp_path / "elsewhere" / "part-h.parquet", "linked")
    link = root / "date=2026-01-02" / "part-h.parquet"
    link.symlink_to(outside)
    good.append(link)
    return d, sorted(good)


def test_data_files_lists_only_visible_partition_files(hostile: tuple[Path, list[Path]]) -> None:
    d, good = hostile
    assert record.data_files(d) == good


def test_duckdb_glob_reads_the_same_files(hostile: tuple[Path, list[Path]]) -> None:
    d, good = hostile
    resolved = d.resolve()
    expected = sorted(str(resolved / p.relative_to(d)) for p in good)
    assert _duckdb_reads(d) == expected


def test_data_files_of_a_missing_or_empty_store(tmp_path: Path) -> None:
    assert record.data_files(tmp_path / "absent") == []
    (tmp_path / record.PARQUET_DIR / "date=2026-01-01").mkdir(parents=True)
    assert record.data_files(tmp_path) == []
    assert record.policy_files(tmp_path) == []


def test_partition_dir_refuses_a_date_that_is_a_path(tmp_path: Path) -> None:
    assert record.partition_dir(tmp_path, "2026-01-31") == (
        tmp_path / "tool_calls" / "date=2026-01-31"
    )
    for bad in ("../x", "2026-01-31/../../etc", "", "2026-1-1", "2026-01-31\n"):
        with pytest.raises(ValueError):
            record.partition_dir(tmp_path, bad)


def test_partition_date(tmp_path: Path) -> None:
    root = tmp_path / record.PARQUET_DIR
    assert record.partition_date(root / "date=2026-03-04" / "p.parquet") == "2026-03-04"
    assert record.partition_date(root / "date=.." / "p.parquet") is None
    assert record.partition_date(root / "date=2026-03-04x" / "p.parquet") is None
    assert record.partition_date(root / "p.parquet") is None


def test_policy_files_skip_temp_and_other_files(tmp_path: Path) -> None:
    folder = tmp_path / record.POLICIES_DIR
    folder.mkdir()
    for name in ("b.json", "a.json", ".a.json.99.tmp", ".hidden.json", "c.yaml", "d.json.tmp"):
        (folder / name).write_text("{}")
    (folder / "sub.json").mkdir()  # a directory is listed by name like before; readers skip it
    assert [p.name for p in record.policy_files(tmp_path)] == ["a.json", "b.json", "sub.json"]


def test_policy_path_refuses_names_that_leave_the_folder(tmp_path: Path) -> None:
    assert record.policy_path(tmp_path, "sha256:ab").name == "sha256:ab.json"
    for bad in ("../x", "a/b", ".hidden", "", "a\\b"):
        with pytest.raises(ValueError):
            record.policy_path(tmp_path, bad)


def test_temp_files_are_the_ones_data_files_skip(hostile: tuple[Path, list[Path]]) -> None:
    d, _ = hostile
    (d / record.POLICIES_DIR).mkdir()
    stale_policy = d / record.POLICIES_DIR / ".v.json.1.tmp"
    stale_policy.write_text("{")
    assert sorted(p.name for p in record.temp_files(d)) == [
        ".part-c.parquet.1234.tmp",
        ".v.json.1.tmp",
    ]
    assert not set(record.temp_files(d)) & set(record.data_files(d))


def test_collector_schema_reexports_the_record() -> None:
    assert schema.TOOL_CALL_SCHEMA is record.TOOL_CALL_SCHEMA
    assert schema.PARQUET_DIR == record.PARQUET_DIR
