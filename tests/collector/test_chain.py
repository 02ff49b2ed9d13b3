"""The writer's side of the hash chain: canonical rows, file links, the head record, and
what a restart, a crash before the head update, a lost last file or files from before the
chain do to it."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callward.collector.audit import verify_store
from callward.collector.chain import canonical_rows, genesis, read_heads, read_link
from callward.collector.store import StoreWriter, conform
from callward.record import RECORD_COLUMNS, ROW_HASH, TOOL_CALL_SCHEMA, heads_path, partition_dir
from tests.collector.chained_store import DAY, batch, chain_files, write_batches

DATE = DAY.strftime("%Y-%m-%d")


def test_each_row_hash_chains_from_the_row_before(tmp_path: Path) -> None:
    write_batches(tmp_path, [3, 4])  # 22:00 and 23:00: two files of one partition
    files = chain_files(tmp_path, DATE)
    prev = genesis(DATE)
    for seq, path in enumerate(files):
        link = read_link(path)
        assert link is not None and (link.seq, link.prev, link.date) == (seq, prev.hex(), DATE)
        table = pq.read_table(path)
        hashes = []
        for row in canonical_rows(table):
            prev = hashlib.sha256(prev + row).digest()
            hashes.append(prev.hex())
        assert table.column(ROW_HASH).to_pylist() == hashes
        assert (link.last, link.rows) == (hashes[-1], table.num_rows)
    assert read_heads(tmp_path)[DATE].file == files[-1].name


def test_row_hash_is_the_last_column_and_conform_fills_it(tmp_path: Path) -> None:
    assert TOOL_CALL_SCHEMA.names[-1] == ROW_HASH and ROW_HASH not in RECORD_COLUMNS
    assert conform(batch(2, 0)).column(ROW_HASH).to_pylist() == ["", ""]


def test_a_row_hash_given_by_a_producer_is_replaced(tmp_path: Path) -> None:
    table = batch(3, 0).append_column(ROW_HASH, pa.array(["f" * 64] * 3))
    StoreWriter(tmp_path).write(table)
    (path,) = chain_files(tmp_path, DATE)
    assert "f" * 64 not in pq.read_table(path).column(ROW_HASH).to_pylist()
    assert verify_store(tmp_path).ok


VALUES = {
    "string": st.one_of(st.none(), st.text(max_size=5)),
    "int": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "float": st.one_of(st.none(), st.floats(allow_nan=False)),
}


@settings(max_examples=200, deadline=None)
@given(
    column=st.sampled_from(["tool", "message", "result_bytes", "duration_ms", "end_time"]),
    data=st.data(),
)
def test_two_rows_differing_in_one_value_hash_differently(column: str, data) -> None:
    """The canonical bytes are injective per column: null, "" and every value differ,
    and a value cannot slide into its neighbour (length-prefixed)."""
    kind = TOOL_CALL_SCHEMA.field(column).type
    if pa.types.is_string(kind):
        values = data.draw(st.lists(VALUES["string"], min_size=2, max_size=2, unique=True))
    elif pa.types.is_int64(kind):
        values = data.draw(st.lists(VALUES["int"], min_size=2, max_size=2, unique=True))
    elif pa.types.is_float64(kind):
        values = data.draw(st.lists(VALUES["float"], min_size=2, max_size=2, unique=True))
    else:
        micros = data.draw(st.lists(st.integers(0, 2**50), min_size=2, max_size=2, unique=True))
        values = [pa.scalar(m, pa.timestamp("us", tz="UTC")).as_py() for m in micros]
    rows = [dict(r) for r in batch(1, 0).to_pylist() * 2]
    for row, value in zip(rows, values, strict=True):
        row[column] = value
    table = pa.Table.from_pylist(rows, schema=conform(batch(1, 0)).schema)
    first, second = canonical_rows(table)
    assert first != second


def test_adjacent_text_columns_do_not_run_into_each_other() -> None:
    rows = [dict(r) for r in batch(1, 0).to_pylist() * 2]
    # without the lengths both would read 01 "a" 01 01 "b" (01 marks a value)
    rows[0] |= {"grant": "a\x01", "server": "b"}
    rows[1] |= {"grant": "a", "server": "\x01b"}
    first, second = canonical_rows(conform(pa.Table.from_pylist(rows)))
    assert first != second


def test_a_restarted_writer_continues_the_chain(tmp_path: Path) -> None:
    write_batches(tmp_path, [3, 2])
    before = chain_files(tmp_path, DATE)
    writer = StoreWriter(tmp_path)
    writer.write(batch(4, 100, hours=1.5))
    writer.close()
    files = chain_files(tmp_path, DATE)
    assert files[:2] == before
    link = read_link(files[2])
    previous = read_link(before[-1])
    assert link is not None and previous is not None
    assert (link.seq, link.prev) == (2, previous.last)
    assert verify_store(tmp_path).ok


def test_a_crash_before_the_head_update_is_not_tampering(tmp_path: Path) -> None:
    """The file is durable, the head record still names the file before it: verify accepts
    the lag of one file, and the next writer continues from the file."""
    write_batches(tmp_path, [3])
    record = heads_path(tmp_path).read_bytes()
    writer = StoreWriter(tmp_path)
    writer.write(batch(2, 50, hours=1))
    heads_path(tmp_path).write_bytes(record)  # as if killed between rename and update
    report = verify_store(tmp_path)
    assert report.ok, report.to_json()
    assert report.partitions[0].head_lags
    writer = StoreWriter(tmp_path)  # the restart
    writer.write(batch(2, 80, hours=1.5))
    assert [read_link(p).seq for p in chain_files(tmp_path, DATE)] == [0, 1, 2]  # type: ignore[union-attr]
    report = verify_store(tmp_path)
    assert report.ok and not report.partitions[0].head_lags


def test_a_crash_before_the_first_head_record_is_not_tampering(tmp_path: Path) -> None:
    write_batches(tmp_path, [3])
    shutil.rmtree(heads_path(tmp_path).parent)
    report = verify_store(tmp_path)
    assert report.ok and report.partitions[0].head_lags


def test_a_writer_keeps_a_lost_last_file_visible(tmp_path: Path) -> None:
    """Writing on after the last file was deleted must not erase the evidence: the chain
    goes on after the head record, so the gap is reported."""
    write_batches(tmp_path, [3, 2])
    lost = chain_files(tmp_path, DATE)[-1]
    lost.unlink()
    writer = StoreWriter(tmp_path)
    writer.write(batch(2, 50, hours=1.5))
    links = [read_link(p) for p in chain_files(tmp_path, DATE)]
    assert [lk.seq for lk in links if lk] == [0, 2]
    (partition,) = verify_store(tmp_path).partitions
    assert partition.broken is not None and partition.broken.kind == "missing_file"


def _write_unchained(data_dir: Path, table: pa.Table, name: str) -> Path:
    """A file as the writer wrote it before the chain existed: no row_hash, no link."""
    folder = partition_dir(data_dir, DATE)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(conform(table).drop_columns([ROW_HASH]).replace_schema_metadata(None), path)
    return path


def test_files_from_before_the_chain_are_unchained_not_tampering(tmp_path: Path) -> None:
    _write_unchained(tmp_path, batch(3, 0), "part-old.parquet")
    report = verify_store(tmp_path)
    assert report.ok and [p.status for p in report.partitions] == ["unchained"]


def test_the_chain_adopts_the_files_it_finds_and_notices_a_new_one(tmp_path: Path) -> None:
    old = _write_unchained(tmp_path, batch(3, 0), "part-old.parquet")
    writer = StoreWriter(tmp_path)
    writer.write(batch(2, 10, hours=1))
    (first,) = chain_files(tmp_path, DATE)
    link = read_link(first)
    assert link is not None and link.adopted == (
        (old.name, hashlib.sha256(old.read_bytes()).hexdigest()),
    )
    assert link.prev == genesis(DATE, link.adopted).hex()
    report = verify_store(tmp_path)
    assert report.ok and report.partitions[0].unchained_files == 1
    _write_unchained(tmp_path, batch(1, 20), "part-later.parquet")
    (partition,) = verify_store(tmp_path).partitions
    assert partition.broken is not None
    assert (partition.broken.kind, Path(partition.broken.file or "").name) == (
        "not_in_chain",
        "part-later.parquet",
    )


def test_an_adopted_file_that_changes_is_reported(tmp_path: Path) -> None:
    old = _write_unchained(tmp_path, batch(3, 0), "part-old.parquet")
    StoreWriter(tmp_path).write(batch(2, 10, hours=1))
    _write_unchained(tmp_path, batch(2, 0), old.name)
    (partition,) = verify_store(tmp_path).partitions
    assert partition.broken is not None and partition.broken.kind == "adopted_changed"


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 40), cut=st.integers(0, 40), nulls=st.sets(st.integers(0, 39)))
def test_a_row_hashes_the_same_alone_or_in_any_slice_of_a_table(
    n: int, cut: int, nulls: set[int]
) -> None:
    """The bytes of a row do not depend on where its table starts (Arrow slices share
    buffers at an offset) nor on the nulls of other rows."""
    rows = [dict(r) for r in batch(n, 0).to_pylist()]
    for i in nulls & set(range(n)):
        rows[i] |= {"tool": None, "result_bytes": None, "end_time": None}
    table = pa.Table.from_pylist(rows, schema=conform(batch(1, 0)).schema)
    whole = canonical_rows(table)
    k = min(cut, n)
    assert canonical_rows(table.slice(0, k)) + canonical_rows(table.slice(k)) == whole
    assert [canonical_rows(table.slice(i, 1))[0] for i in range(n)] == whole


def test_an_adopted_file_that_is_gone_is_reported(tmp_path: Path) -> None:
    old = _write_unchained(tmp_path, batch(3, 0), "part-old.parquet")
    StoreWriter(tmp_path).write(batch(2, 10, hours=1))
    old.unlink()
    (partition,) = verify_store(tmp_path).partitions
    assert partition.broken is not None
    assert (partition.broken.kind, partition.broken.file) == (
        "adopted_changed",
        str(old.relative_to(tmp_path)),
    )


def test_a_head_record_that_disagrees_with_the_file_is_logged_and_kept_visible(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_batches(tmp_path, [3])
    path = heads_path(tmp_path)
    path.write_text(path.read_text().replace(read_heads(tmp_path)[DATE].last, "0" * 64))
    with caplog.at_level(logging.ERROR, logger="callward.collector.chain"):
        StoreWriter(tmp_path).write(batch(2, 50, hours=1))
    assert "disagree on the last hash" in caplog.text
    # the writer went on from the file; the edited record it replaced is history, and
    # the chain itself is whole
    assert verify_store(tmp_path).ok
