"""The write-ahead spool: what the collector has acknowledged but not yet put in Parquet.

An append-only log split into numbered segments (``seg-<n>.log``). Each record is::

    magic "CWS1" | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload

:meth:`Spool.append` returns only after the record is written and fsync'ed, so a caller
that acknowledges afterwards never acknowledges anything a crash can take back. The
writer seals the current segment (:meth:`Spool.rotate`), turns the sealed records into
Parquet, and only then deletes the sealed segments (:meth:`Spool.discard_through`).

Recovery (:meth:`Spool.recover`) reads every segment in order. A crash can leave at most
a torn record at the end of a segment (a record is written whole and fsync'ed before the
next one starts); reading stops at the first record whose header, length or CRC does
not check out, and the file is truncated there. Such a record was never acknowledged.

Payloads are Arrow IPC streams of tool-call rows (:func:`encode_rows`); the spool itself
does not care what they hold.
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
from pathlib import Path

import pyarrow as pa

from callward.collector.durable import fsync_dir

log = logging.getLogger("callward.collector.spool")

MAGIC = b"CWS1"
_HEADER = struct.Struct("<4sII")
HEADER_SIZE = _HEADER.size
MAX_RECORD_BYTES = 0xFFFFFFFF
_SEGMENT_RE = re.compile(r"seg-(\d{12})\.log")


def encode_rows(table: pa.Table) -> bytes:
    """Rows as an Arrow IPC stream (fast to write, exact types back)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_rows(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(payload)).read_all()


def frame(payload: bytes) -> bytes:
    """One spool record: header plus payload."""
    if len(payload) > MAX_RECORD_BYTES:
        raise ValueError(f"spool record of {len(payload)} bytes exceeds {MAX_RECORD_BYTES}")
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload


def read_records(path: Path) -> tuple[list[bytes], int]:
    """The intact records of one segment and the offset where the intact part ends."""
    data = path.read_bytes()
    records: list[bytes] = []
    pos = 0
    while pos + HEADER_SIZE <= len(data):
        magic, length, crc = _HEADER.unpack_from(data, pos)
        end = pos + HEADER_SIZE + length
        if magic != MAGIC or end > len(data):
            break
        payload = data[pos + HEADER_SIZE : end]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        pos = end
    return records, pos


class Spool:
    """A segmented, fsync'ed append-only log. Thread-safe."""

    def __init__(self, directory: Path, *, fsync: bool = True):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._seq = max(self.segments(), default=0)
        self.bytes_appended = 0
        self.records_appended = 0
        self.torn_bytes_dropped = 0

    def segments(self) -> list[int]:
        """Sequence numbers of the segments on disk, oldest first."""
        out = []
        for p in self.directory.iterdir():
            m = _SEGMENT_RE.fullmatch(p.name)
            if m:
                out.append(int(m.group(1)))
        return sorted(out)

    def _path(self, seq: int) -> Path:
        return self.directory / f"seg-{seq:012d}.log"

    def recover(self) -> Iterator[tuple[int, bytes]]:
        """Yield ``(segment, payload)`` for every intact record left by a previous run,
        truncating torn tails. Call before the first :meth:`append`."""
        for seq in self.segments():
            path = self._path(seq)
            records, good = read_records(path)
            size = path.stat().st_size
            if good < size:
                self.torn_bytes_dropped += size - good
                log.warning("spool %s: dropping %d byte(s) of torn tail", path.name, size - good)
                with open(path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())
            for payload in records:
                yield seq, payload

    def _open_next(self) -> None:
        self._seq += 1
        self._fd = os.open(self._path(self._seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        if self._fsync:
            fsync_dir(self.directory)  # the new segment's name must survive a power cut too

    def append(self, payload: bytes) -> int:
        """Write one record durably; returns the segment it went to."""
        with self._lock:
            return self.append_locked(payload)

    def rotate(self) -> int:
        """Seal the current segment; returns the newest sealed segment number.

        Every record appended before this call is in a segment ``<=`` the returned number.
        """
        with self._lock:
            return self.rotate_locked()

    def rotate_locked(self) -> int:
        """:meth:`rotate` for a caller already holding :attr:`lock`."""
        sealed = self._seq
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        return sealed

    @property
    def lock(self) -> threading.Lock:
        """Held by :meth:`append`; hold it to make an append and other bookkeeping atomic."""
        return self._lock

    def append_locked(self, payload: bytes) -> int:
        """:meth:`append` for a caller already holding :attr:`lock`."""
        record = frame(payload)
        if self._fd is None:
            self._open_next()
        fd = self._fd
        assert fd is not None
        before = os.fstat(fd).st_size
        try:
            view = memoryview(record)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            if self._fsync:
                os.fsync(fd)
        except OSError:
            # A partial record mid-segment would hide every later record from recovery:
            # cut it off, and start the next append in a fresh segment in any case.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            os.close(fd)
            self._fd = None
            raise
        self.bytes_appended += len(record)
        self.records_appended += 1
        return self._seq

    def discard_through(self, seq: int) -> None:
        """Delete sealed segments up to ``seq``: their records are safely in Parquet."""
        removed = False
        for s in self.segments():
            if s <= seq and not (s == self._seq and self._fd is not None):
                self._path(s).unlink(missing_ok=True)
                removed = True
        if removed and self._fsync:
            fsync_dir(self.directory)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
