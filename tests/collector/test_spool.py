"""The write-ahead spool: framing, torn-tail recovery, corruption, rotation and discard."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from callward.collector.spool import (
    HEADER_SIZE,
    Spool,
    decode_rows,
    encode_rows,
    frame,
    read_records,
)


def recovered(directory: Path) -> list[bytes]:
    return [payload for _, payload in Spool(directory).recover()]


def test_records_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    payloads = [b"first", b"", b"x" * 100_000, bytes(range(256))]
    for p in payloads:
        spool.append(p)
    spool.close()
    assert recovered(tmp_path) == payloads


def test_every_torn_tail_is_dropped_and_truncated(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"kept-1")
    spool.append(b"kept-2")
    spool.close()
    (segment,) = tmp_path.iterdir()
    intact = segment.read_bytes()
    last = frame(b"the record being written when the power went")
    for cut in range(1, len(last)):  # a crash after any number of bytes of the last record
        segment.write_bytes(intact + last[:cut])
        spool = Spool(tmp_path)
        assert [p for _, p in spool.recover()] == [b"kept-1", b"kept-2"]
        assert segment.stat().st_size == len(intact)
        assert spool.torn_bytes_dropped == cut


def test_a_corrupted_record_ends_recovery_of_its_segment(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for p in (b"one", b"two", b"three"):
        spool.append(p)
    spool.close()
    (segment,) = tmp_path.iterdir()
    data = bytearray(segment.read_bytes())
    second = HEADER_SIZE + len(b"one") + HEADER_SIZE  # first payload byte of "two"
    data[second] ^= 0xFF
    segment.write_bytes(bytes(data))
    assert recovered(tmp_path) == [b"one"]


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 3, b"\x00" * 64, b"NOPE" + b"\xff" * 20])
def test_garbage_segments_recover_nothing_without_raising(tmp_path: Path, garbage: bytes) -> None:
    (tmp_path / "seg-000000000001.log").write_bytes(garbage)
    (tmp_path / "not-a-segment.txt").write_bytes(b"ignored")
    assert recovered(tmp_path) == []


def test_oversize_length_field_is_treated_as_torn(tmp_path: Path) -> None:
    header = b"CWS1" + (2**32 - 1).to_bytes(4, "little") + b"\0\0\0\0"
    (tmp_path / "seg-000000000001.log").write_bytes(frame(b"ok") + header + b"short")
    assert recovered(tmp_path) == [b"ok"]


def test_rotation_seals_segments_and_discard_removes_only_sealed_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"a")
    sealed = spool.rotate()
    spool.append(b"b")  # goes to a new segment
    assert len(spool.segments()) == 2
    spool.discard_through(sealed)
    assert len(spool.segments()) == 1
    spool.close()
    assert recovered(tmp_path) == [b"b"]


def test_numbering_continues_after_restart(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    seq = first.append(b"a")
    first.close()
    second = Spool(tmp_path)
    assert second.append(b"b") > seq


def test_a_failed_write_leaves_no_partial_record(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(b"good")
    fd = spool._fd
    assert fd is not None
    os.close(fd)  # the next write fails with EBADF, as a dying disk would
    spool._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(OSError):
        spool.append(b"lost")
    spool.append(b"after")  # a fresh segment
    spool.close()
    assert recovered(tmp_path) == [b"good", b"after"]


def test_rows_round_trip_through_arrow_ipc() -> None:
    table = pa.table({"a": [1, 2], "b": ["x", None]})
    assert decode_rows(encode_rows(table)).equals(table)


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    cut=st.integers(min_value=0, max_value=5000),
)
def test_recovery_is_always_a_prefix_of_what_was_appended(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], cut: int
) -> None:
    directory = tmp_path_factory.mktemp("spool")
    spool = Spool(directory, fsync=False)
    for p in payloads:
        spool.append(p)
    spool.close()
    for segment in directory.iterdir():
        data = segment.read_bytes()
        segment.write_bytes(data[: min(cut, len(data))])
    got = recovered(directory)
    assert got == payloads[: len(got)]
    records, end = read_records(next(iter(directory.iterdir()))) if payloads else ([], 0)
    assert records == got and end == sum(HEADER_SIZE + len(p) for p in got)
