"""The segment log under the spool and the forward queue: framing, torn writes, damage,
restart, rotation, discard, oversize frames."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callward.collector.segment_log import HEADER_SIZE, SegmentLog, frame, scan_bytes


def recovered(directory: Path) -> list[bytes]:
    return [payload for _, payload in SegmentLog(directory).recover()]


def written(tmp_path: Path, payloads: list[bytes]) -> Path:
    log = SegmentLog(tmp_path)
    for p in payloads:
        log.append(p)
    log.close()
    (segment,) = tmp_path.iterdir()
    return segment


def test_frames_survive_a_restart_in_order(tmp_path: Path) -> None:
    payloads = [b"first", b"", b"x" * 100_000, bytes(range(256))]
    written(tmp_path, payloads)
    assert recovered(tmp_path) == payloads


def test_the_format_is_magic_length_crc_payload(tmp_path: Path) -> None:
    segment = written(tmp_path, [b"abc"])
    crc = zlib.crc32(b"abc").to_bytes(4, "little")
    assert segment.read_bytes() == b"CWS1" + (3).to_bytes(4, "little") + crc + b"abc"
    assert segment.name == "seg-000000000001.log"


def test_a_torn_write_at_every_byte_of_the_last_frame_is_cut_off(tmp_path: Path) -> None:
    segment = written(tmp_path, [b"kept-1", b"kept-2"])
    intact = segment.read_bytes()
    last = frame(b"the frame being written when the power went")
    for cut in range(1, len(last)):
        segment.write_bytes(intact + last[:cut])
        log = SegmentLog(tmp_path)
        assert [p for _, p in log.recover()] == [b"kept-1", b"kept-2"], cut
        assert segment.stat().st_size == len(intact)
        assert log.torn_bytes_dropped == cut


def test_a_bad_crc_in_the_middle_skips_that_frame_and_keeps_the_rest(tmp_path: Path) -> None:
    segment = written(tmp_path, [b"one", b"two", b"three"])
    data = bytearray(segment.read_bytes())
    data[HEADER_SIZE + len(b"one") + HEADER_SIZE] ^= 0xFF  # first payload byte of "two"
    segment.write_bytes(bytes(data))
    log = SegmentLog(tmp_path)
    assert [p for _, p in log.recover()] == [b"one", b"three"]
    assert log.damaged_bytes_skipped == HEADER_SIZE + len(b"two")
    assert log.torn_bytes_dropped == 0
    assert segment.stat().st_size == len(data)  # damage is not truncated away


def test_a_truncated_tail_after_damage_is_still_cut(tmp_path: Path) -> None:
    segment = written(tmp_path, [b"one", b"two"])
    data = bytearray(segment.read_bytes())
    data[HEADER_SIZE] ^= 0xFF  # damage "one"
    segment.write_bytes(bytes(data) + frame(b"torn")[:6])
    log = SegmentLog(tmp_path)
    assert [p for _, p in log.recover()] == [b"two"]
    assert segment.stat().st_size == len(data)


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 3, b"\x00" * 64, b"NOPE" + b"\xff" * 20])
def test_garbage_segments_recover_nothing_without_raising(tmp_path: Path, garbage: bytes) -> None:
    (tmp_path / "seg-000000000001.log").write_bytes(garbage)
    (tmp_path / "not-a-segment.txt").write_bytes(b"ignored")
    assert recovered(tmp_path) == []
    assert (tmp_path / "not-a-segment.txt").read_bytes() == b"ignored"


def test_an_oversize_frame_is_refused_on_append_and_unread_on_recovery(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, max_payload=16)
    log.append(b"x" * 16)
    with pytest.raises(ValueError, match="exceeds 16"):
        log.append(b"x" * 17)
    log.append(b"after")
    log.close()
    (segment,) = tmp_path.iterdir()
    with segment.open("ab") as f:
        f.write(frame(b"y" * 17))  # a valid frame, but larger than this log accepts
    assert [p for _, p in SegmentLog(tmp_path, max_payload=16).recover()] == [b"x" * 16, b"after"]


def test_a_length_field_past_the_end_is_treated_as_torn(tmp_path: Path) -> None:
    header = b"CWS1" + (2**32 - 1).to_bytes(4, "little") + b"\0\0\0\0"
    (tmp_path / "seg-000000000001.log").write_bytes(frame(b"ok") + header + b"short")
    assert recovered(tmp_path) == [b"ok"]


def test_rotation_seals_and_discard_removes_only_sealed_segments(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    first = log.append(b"a")
    sealed = log.rotate()
    assert sealed == first and log.open_segment is None
    second = log.append(b"b")
    assert second == first + 1 and log.segments() == [first, second]
    log.discard_through(second)  # the open segment survives
    assert log.segments() == [second]
    with pytest.raises(ValueError):
        log.discard(second)
    log.close()
    assert recovered(tmp_path) == [b"b"]
    log = SegmentLog(tmp_path)
    log.discard(second)
    assert log.segments() == []


def test_numbering_continues_after_restart(tmp_path: Path) -> None:
    first = SegmentLog(tmp_path)
    seq = first.append(b"a")
    first.close()
    assert SegmentLog(tmp_path).append(b"b") > seq


def test_read_gives_end_offsets_and_leaves_the_file_alone(tmp_path: Path) -> None:
    segment = written(tmp_path, [b"ab", b"cde"])
    torn = segment.read_bytes() + b"CWS1\x05"
    segment.write_bytes(torn)
    log = SegmentLog(tmp_path)
    assert log.read(1) == [(HEADER_SIZE + 2, b"ab"), (2 * HEADER_SIZE + 5, b"cde")]
    assert segment.read_bytes() == torn
    assert log.read(99) == []


def test_a_failed_write_leaves_no_partial_frame(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    log.append(b"good")
    fd = log._fd
    assert fd is not None
    os.close(fd)  # the next write fails with EBADF, as a dying disk would
    log._fd = os.open(os.devnull, os.O_RDONLY)
    with pytest.raises(OSError):
        log.append(b"lost")
    log.append(b"after")  # a fresh segment
    log.close()
    assert recovered(tmp_path) == [b"good", b"after"]


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=12),
    rotate_after=st.sets(st.integers(min_value=0, max_value=11)),
)
def test_what_was_appended_is_read_back_in_order(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], rotate_after: set[int]
) -> None:
    directory = tmp_path_factory.mktemp("log")
    log = SegmentLog(directory, sync_each_append=False)
    for i, p in enumerate(payloads):
        log.append(p)
        if i in rotate_after:
            log.rotate(sync=True)
    log.close()
    assert recovered(directory) == payloads


@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=12),
    cut=st.integers(min_value=0, max_value=5000),
)
def test_a_cut_anywhere_recovers_exactly_the_whole_frames_before_it(
    tmp_path_factory: pytest.TempPathFactory, payloads: list[bytes], cut: int
) -> None:
    directory = tmp_path_factory.mktemp("log")
    segment = written(directory, payloads)
    data = segment.read_bytes()
    cut = min(cut, len(data))
    segment.write_bytes(data[:cut])
    whole, end = [], 0
    for p in payloads:
        if end + HEADER_SIZE + len(p) > cut:
            break
        end += HEADER_SIZE + len(p)
        whole.append(p)
    assert recovered(directory) == whole
    assert segment.stat().st_size == end


@given(
    payloads=st.lists(st.binary(min_size=1, max_size=64), min_size=2, max_size=8),
    victim=st.integers(min_value=0),
    flip=st.integers(min_value=1, max_value=255),
)
def test_damage_to_one_frame_loses_only_that_frame(
    payloads: list[bytes], victim: int, flip: int
) -> None:
    frames = [frame(p) for p in payloads]
    victim %= len(frames)
    start = sum(len(f) for f in frames[:victim])
    data = bytearray(b"".join(frames))
    data[start + HEADER_SIZE] ^= flip  # a payload byte: the CRC no longer matches
    got = [p for _end, p in scan_bytes(bytes(data)).frames]
    assert got == payloads[:victim] + payloads[victim + 1 :]
