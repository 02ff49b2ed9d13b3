"""Stores written by the real writer, and the ways to tamper with their Parquet files, for
the chain and audit tests."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from callward.collector.chain import read_link
from callward.collector.store import StoreWriter
from callward.record import data_files, partition_date

DAY = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)


def batch(n: int, first: int, *, tag: str = "", day: datetime = DAY, hours: float = 0) -> pa.Table:
    """``n`` rows with ids from ``first`` on, ``hours`` after ``day``."""
    start = day + timedelta(hours=hours)
    ids = range(first, first + n)
    return pa.table(
        {
            "start_time": [start + timedelta(seconds=i) for i in ids],
            "end_time": [start + timedelta(seconds=i + 1) for i in ids],
            "trace_id": [f"{i:032x}" for i in ids],
            "span_id": [f"{i + 1:016x}" for i in ids],
            "tool": [f"tool-{tag}{i % 5}" for i in ids],
            "arguments": [f'{{"n": {i}}}' for i in ids],
            "duration_ms": [None if i % 3 == 0 else i / 7 for i in ids],
            "decision": ["allow"] * n,
        }
    )


def write_batches(data_dir: Path, sizes: list[int], *, tag: str = "", spread: float = 1) -> None:
    """One writer, one ``write`` per size; batches ``spread`` hours apart (so some cross
    midnight into the next partition)."""
    writer = StoreWriter(data_dir)
    first = 0
    for k, n in enumerate(sizes):
        writer.write(batch(n, first, tag=tag, hours=k * spread))
        first += n
    writer.close()


def chain_files(data_dir: Path, date: str) -> list[Path]:
    """The chained files of partition ``date`` in chain order."""
    files = [p for p in data_files(data_dir) if partition_date(p) == date]
    links = [(read_link(p), p) for p in files]
    return [p for _, p in sorted((lk.seq, p) for lk, p in links if lk is not None)]


def dates(data_dir: Path) -> list[str]:
    return sorted({d for p in data_files(data_dir) if (d := partition_date(p)) is not None})


# ---------------------------------------------------------------- tampering, in place


def _rewrite(path: Path, table: pa.Table) -> None:
    """Write ``table`` over ``path``, keeping its metadata (the chain link) as it was."""
    pq.write_table(table, path)


def edit_value(path: Path, row: int, column: str = "tool", value: str = "edited") -> None:
    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[row] = value
    at = table.schema.get_field_index(column)
    _rewrite(path, table.set_column(at, table.schema.field(at), pa.array(values, pa.string())))


def delete_row(path: Path, row: int) -> None:
    table = pq.read_table(path)
    _rewrite(path, pa.concat_tables([table.slice(0, row), table.slice(row + 1)]))


def swap_rows(path: Path, i: int, j: int) -> None:
    table = pq.read_table(path)
    order = list(range(table.num_rows))
    order[i], order[j] = order[j], order[i]
    _rewrite(path, table.take(order))


def copy_in(source: Path, partition: Path) -> Path:
    """Copy a file from another store into ``partition`` (under its own name)."""
    target = partition / source.name
    shutil.copyfile(source, target)
    return target
