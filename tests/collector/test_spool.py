"""The spool: rows through the segment log, fsync'ed, and a spool written before the
segment log existed still read after an upgrade. (Framing, torn tails, damage and
rotation are tested once, in test_segment_log.py.)"""

from __future__ import annotations

import zlib
from pathlib import Path

import pyarrow as pa

from callward.collector.spool import Spool, decode_rows, encode_rows


def recovered(directory: Path) -> list[bytes]:
    return [payload for _, payload in Spool(directory).recover()]


def test_rows_round_trip_through_arrow_ipc() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", None]})
    assert decode_rows(encode_rows(table)).equals(table)


def test_rows_survive_a_restart_in_order(tmp_path: Path) -> None:
    tables = [pa.table({"n": list(range(i, i + 3))}) for i in range(0, 9, 3)]
    spool = Spool(tmp_path)
    for t in tables:
        spool.append(encode_rows(t))
    spool.close()
    got = pa.concat_tables([decode_rows(p) for p in recovered(tmp_path)])
    assert got.column("n").to_pylist() == list(range(9))


def test_an_append_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"acknowledged")
    # Still open, never closed: a second reader (as after a SIGKILL) sees the frame.
    assert recovered(tmp_path) == [b"acknowledged"]
    spool.close()


def old_spool_record(payload: bytes) -> bytes:
    """A record exactly as the spool wrote it before the segment log: assembled by hand
    from the documented layout, not with the code under test."""
    return (
        b"CWS1"
        + len(payload).to_bytes(4, "little")
        + zlib.crc32(payload).to_bytes(4, "little")
        + payload
    )


def test_a_spool_written_before_the_upgrade_is_replayed(tmp_path: Path) -> None:
    rows = pa.table({"trace_id": ["a" * 32, "b" * 32], "n": [1, 2]})
    first, second = encode_rows(rows.slice(0, 1)), encode_rows(rows.slice(1, 1))
    (tmp_path / "seg-000000000003.log").write_bytes(old_spool_record(first))
    (tmp_path / "seg-000000000004.log").write_bytes(
        old_spool_record(second) + old_spool_record(b"torn")[:7]
    )
    spool = Spool(tmp_path)
    got = list(spool.recover())
    assert [seq for seq, _ in got] == [3, 4]
    assert pa.concat_tables([decode_rows(p) for _, p in got]).equals(rows)
    assert spool.append(b"new") == 5  # numbering continues after the old segments
    spool.close()
