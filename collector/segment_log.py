"""One append-only, CRC-framed log split into numbered segments: the spool and the
forward queue are both this log, configured differently.

A segment is a file ``seg-<n>.log`` (``n`` on twelve digits, growing, never reused) holding
frames::

    magic "CWS1" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload

This is the format the spool has always written, so a spool left by an older collector is
read as it is.

Promises:

- **Order.** Frames are read back in the order they were appended, segment by segment.
- **Durability is the caller's choice** (``sync_each_append``). With it, :meth:`append`
  returns only after the frame is written and fsync'ed, and a new segment's directory
  entry is fsync'ed before its first frame is written: what a caller acknowledges after
  ``append`` returned survives a crash and a power cut. Without it (the forward queue), a
  frame is in the page cache when ``append`` returns, which survives a crash of the
  process but not of the machine; :meth:`rotate` can still fsync the segment it seals.
- **A failed write leaves no partial frame**: the segment is cut back to where the frame
  started and the next append opens a fresh segment.
- **Recovery** (:meth:`recover`) keeps every intact frame. A crash mid-write leaves at most
  a torn frame at the end of the segment being written; it was never acknowledged and is
  cut off (the file is truncated after the last intact frame). A damaged frame *followed
  by* intact ones (a bad sector, not a crash) is skipped and counted, and the frames after
  it are kept: they may have been acknowledged. Finding the next frame after damage
  means searching for the magic and checking length and CRC, so a payload that happens to
  contain a whole valid frame could be mistaken for one only after damage, with
  probability about 2^-32 per candidate.
- **Discard**: a consumer deletes segments whose frames it has fully consumed
  (:meth:`discard_through`, :meth:`discard`); the segment being written is never deleted.

The log is thread-safe: every mutating method takes :attr:`lock`; the ``*_locked``
variants are for a caller that already holds it to make an append and its own
bookkeeping one atomic step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from callward.collector.durable import fsync_dir

log = logging.getLogger("callward.collector.segment_log")

MAGIC = b"CWS1"
_HEADER = struct.Struct("<4sII")
HEADER_SIZE = _HEADER.size
MAX_FRAME_PAYLOAD = 0xFFFFFFFF
_SEGMENT_RE = re.compile(r"seg-(\d{12})\.log")


def frame(payload: bytes, max_payload: int = MAX_FRAME_PAYLOAD) -> bytes:
    """One frame: header plus payload. A payload over ``max_payload`` bytes is refused."""
    if len(payload) > max_payload:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {max_payload}")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def frame_size(payload_len: int) -> int:
    """Bytes a payload of ``payload_len`` bytes takes on disk."""
    return HEADER_SIZE + payload_len


@dataclass
class SegmentScan:
    """What reading one segment found."""

    frames: list[tuple[int, bytes]]  # (end offset, payload) of each intact frame, in order
    intact_end: int  # where the last intact frame ends: the rest is a torn tail
    skipped_bytes: int  # damaged bytes between intact frames


def _frame_at(data: bytes, pos: int, max_payload: int) -> tuple[int, bytes] | None:
    if pos + HEADER_SIZE > len(data):
        return None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    end = pos + HEADER_SIZE + length
    if magic != MAGIC or length > max_payload or end > len(data):
        return None
    payload = data[pos + HEADER_SIZE : end]
    if zlib.crc32(payload) != crc:
        return None
    return end, payload


def scan_bytes(data: bytes, max_payload: int = MAX_FRAME_PAYLOAD) -> SegmentScan:
    """Every intact frame of a segment's bytes (see the module doc for damage and tails)."""
    frames: list[tuple[int, bytes]] = []
    pos = intact_end = skipped = 0
    while pos < len(data):
        found = _frame_at(data, pos, max_payload)
        if found is not None:
            frames.append(found)
            pos = intact_end = found[0]
            continue
        # Damage or a torn tail: look for the next intact frame.
        candidate = data.find(MAGIC, pos + 1)
        while candidate != -1 and _frame_at(data, candidate, max_payload) is None:
            candidate = data.find(MAGIC, candidate + 1)
        if candidate == -1:
            break  # nothing intact follows: a torn tail
        skipped += candidate - pos
        pos = candidate
    return SegmentScan(frames, intact_end, skipped)


class SegmentLog:
    """A segmented append-only log of CRC-framed payloads (see the module doc)."""

    def __init__(
        self,
        directory: Path,
        *,
        sync_each_append: bool = True,
        max_payload: int = MAX_FRAME_PAYLOAD,
    ):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.sync_each_append = sync_each_append
        self.max_payload = max_payload
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = max(self.segments(), default=0)
        self._size = 0  # bytes in the open segment
        self.bytes_appended = 0
        self.records_appended = 0
        self.torn_bytes_dropped = 0
        self.damaged_bytes_skipped = 0

    @property
    def lock(self) -> threading.Lock:
        """Held by every mutating method; hold it to make an append and other bookkeeping
        one atomic step (then call the ``*_locked`` variants)."""
        return self._lock

    @property
    def open_segment(self) -> int | None:
        """The segment appends currently go to, or None when the next append opens one."""
        return self._seq if self._fd is not None else None

    @property
    def open_segment_bytes(self) -> int:
        return self._size if self._fd is not None else 0

    def segments(self) -> list[int]:
        """Sequence numbers of the segments on disk, oldest first."""
        out = []
        for p in self.directory.iterdir():
            m = _SEGMENT_RE.fullmatch(p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def path(self, seq: int) -> Path:
        return self.directory / f"seg-{seq:012d}.log"

    # --- reading ---------------------------------------------------------------------

    def read(self, seq: int) -> list[tuple[int, bytes]]:
        """``(end offset, payload)`` of each intact frame of segment ``seq`` (empty if it
        is gone). Does not modify the file."""
        try:
            data = self.path(seq).read_bytes()
        except FileNotFoundError:
            return []
        return scan_bytes(data, self.max_payload).frames

    def recover(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(segment, payload)`` for every intact frame left by a previous run,
        cutting torn tails off. Call before the first :meth:`append`."""
        for seq in self.segments():
            for _end, payload in self._recover_segment(seq):
                yield seq, payload

    def _recover_segment(self, seq: int) -> list[tuple[int, bytes]]:
        path = self.path(seq)
        data = path.read_bytes()
        scan = scan_bytes(data, self.max_payload)
        if scan.skipped_bytes:
            self.damaged_bytes_skipped += scan.skipped_bytes
            log.warning("%s: skipped %d damaged byte(s)", path, scan.skipped_bytes)
        if scan.intact_end < len(data):
            self.torn_bytes_dropped += len(data) - scan.intact_end
            log.warning("%s: dropping %d byte(s) of torn tail", path, len(data) - scan.intact_end)
            with open(path, "r+b") as f:
                f.truncate(scan.intact_end)
                f.flush()
                os.fsync(f.fileno())
        return scan.frames

    # --- writing ---------------------------------------------------------------------

    def append(self, payload: bytes) -> int:
        """Write one frame (durably with ``sync_each_append``); returns its segment."""
        with self._lock:
            return self.append_locked(payload)

    def append_locked(self, payload: bytes) -> int:
        """:meth:`append` for a caller already holding :attr:`lock`."""
        record = frame(payload, self.max_payload)
        if self._fd is None:
            self._open_next()
        fd = self._fd
        assert fd is not None
        try:
            view = memoryview(record)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self.sync_each_append:
                os.fsync(fd)
        except OSError:
            # A partial frame mid-segment would read as damage: cut it off, and start the
            # next append in a fresh segment in any case.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, self._size)
            with contextlib.suppress(OSError):
                os.close(fd)
            self._fd = None
            raise
        self._size += len(record)
        self.bytes_appended += len(record)
        self.records_appended += 1
        return self._seq

    def _open_next(self) -> None:
        self._seq += 1
        self._fd = os.open(self.path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._size = 0
        if self.sync_each_append:
            fsync_dir(self.directory)  # the new segment's name must survive a power cut too

    def rotate(self, *, sync: bool = False) -> int:
        """Seal the open segment (fsync'ing it first with ``sync``); returns the newest
        sealed segment number: every frame appended before is in a segment ``<=`` it."""
        with self._lock:
            return self.rotate_locked(sync=sync)

    def rotate_locked(self, *, sync: bool = False) -> int:
        """:meth:`rotate` for a caller already holding :attr:`lock`."""
        sealed = self._seq
        if self._fd is not None:
            try:
                if sync:
                    os.fsync(self._fd)
            finally:
                os.close(self._fd)
                self._fd = None
        return sealed

    def discard(self, seq: int) -> None:
        """Delete one consumed segment (never the open one)."""
        if seq == self.open_segment:
            raise ValueError(f"segment {seq} is still being written")
        self.path(seq).unlink(missing_ok=True)
        if self.sync_each_append:
            fsync_dir(self.directory)

    def discard_through(self, seq: int) -> None:
        """Delete the sealed segments up to ``seq``: their frames are consumed."""
        removed = False
        for s in self.segments():
            if s <= seq and s != self.open_segment:
                self.path(s).unlink(missing_ok=True)
                removed = True
        if removed and self.sync_each_append:
            fsync_dir(self.directory)

    def close(self) -> None:
        with self._lock:
            self.rotate_locked()
