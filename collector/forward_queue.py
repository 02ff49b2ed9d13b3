"""The forward queue: spans waiting for the backend, bounded, on disk, in order.

It is a :class:`~callward.collector.segment_log.SegmentLog` without an fsync per append:
the collector's own spool, not this queue, is the durable record, so a submit costs a
write into the page cache (which survives a crash of the process, not a power cut) and
the queue fsyncs only the segment it seals at shutdown. Each frame's payload is the
request's span count (u32 LE) followed by an ``ExportTraceServiceRequest`` in protobuf.
Concatenated protobuf messages merge, so a batch is the concatenation of its frames'
requests and is sent without re-encoding.

Delivery is at-least-once: the consumer takes the oldest sealed segment, sends it in
batches, and :meth:`ForwardQueue.acknowledge_locked` counts each batch off; the segment
file is deleted only when every batch of it was acknowledged (:meth:`ForwardQueue.release`).
After a restart a half-delivered segment is sent again from its start.

Bounded: when the queue would exceed ``max_bytes`` the OLDEST whole segment is dropped and
a warning says how many spans and bytes went: for a tracing backend recent spans are
worth more than old ones, and the collector's own store keeps everything regardless. A
segment is at most a quarter of the queue, so dropping one frees real room.

Upgrade: a queue left in the older layout (``<n>.seg`` files of ``length | crc | spans``
records) is copied into the log at start, then deleted.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from callward.collector.segment_log import SegmentLog, frame_size

log = logging.getLogger("callward.forward")

_SPANS = struct.Struct("<I")
_LEGACY_HEADER = struct.Struct("<III")
_LEGACY_SEGMENT_RE = re.compile(r"\d{12}\.seg")


@dataclass
class ForwardStats:
    """Counters in spans (``retries`` in attempts), readable while the forwarder runs."""

    queued: int = 0
    queued_bytes: int = 0
    delivered: int = 0
    dropped: int = 0
    rejected: int = 0  # spans the backend refused in a partial success (not retried)
    retries: int = 0
    last_error: str = ""


@dataclass
class QueuedSegment:
    """The queue's books on one segment of the log."""

    seq: int
    size: int = 0  # bytes of frames not yet acknowledged
    spans: int = 0  # spans not yet acknowledged
    sealed: bool = False
    dropped: bool = False
    consumed: int = 0  # end offset of the last acknowledged frame


@dataclass
class Batch:
    """Consecutive frames of one segment, sent as one request."""

    payload: bytes
    spans: int
    frame_bytes: int
    end_offset: int


class ForwardQueue:
    """The bounded on-disk queue (see the module doc). Thread-safe: :attr:`lock` guards
    the books, :attr:`wake` is notified when something was queued."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        segment_bytes: int,
        stats: ForwardStats,
        endpoint: str = "",
    ):
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = max(1024, min(segment_bytes, max_bytes // 4))
        self.stats = stats
        self.endpoint = endpoint  # for log lines only
        self._log: SegmentLog | None = None
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.segments: deque[QueuedSegment] = deque()
        self.in_flight: QueuedSegment | None = None
        self._drop_log = DropLog()

    @property
    def _segment_log(self) -> SegmentLog:
        assert self._log is not None, "ForwardQueue.open() first"
        return self._log

    def open(self) -> None:
        """Take over what a previous run left (an older layout included)."""
        with self.lock:
            self._log = SegmentLog(self.directory, sync_each_append=False)
            self._import_legacy()
            self._recover()

    def _recover(self) -> None:
        books: dict[int, QueuedSegment] = {}
        for seq, payload in self._segment_log.recover():
            segment = books.setdefault(seq, QueuedSegment(seq, sealed=True))
            segment.size += frame_size(len(payload))
            segment.spans += _spans_of(payload)
        for seq in self._segment_log.segments():
            if seq not in books:
                self._segment_log.discard(seq)  # nothing intact in it
        for seq in sorted(books):
            self.segments.append(books[seq])
            self.stats.queued += books[seq].spans
            self.stats.queued_bytes += books[seq].size
        if self.segments:
            log.info(
                "forward queue recovered %d segment(s), %d span(s) for %s",
                len(self.segments),
                self.stats.queued,
                self.endpoint,
            )
        while self.stats.queued_bytes > self.max_bytes and self.drop_oldest():
            pass

    def _import_legacy(self) -> None:
        paths = sorted(p for p in self.directory.iterdir() if _LEGACY_SEGMENT_RE.fullmatch(p.name))
        for path in paths:
            for spans, request in _legacy_records(path):
                self._segment_log.append_locked(_SPANS.pack(spans) + request)
            self._segment_log.rotate_locked(sync=True)
            path.unlink()

    # --- producer side (lock held by the caller) --------------------------------------

    def put_locked(self, request: bytes, spans: int) -> None:
        """Queue a serialised request; drops the oldest segments to make room."""
        record_bytes = frame_size(_SPANS.size + len(request))
        if record_bytes > self.max_bytes:
            self._note_drop(spans, record_bytes, "newest request, larger than the whole queue")
            return
        while self.stats.queued_bytes + record_bytes > self.max_bytes:
            if not self.drop_oldest():
                break
        current = self._open_segment()
        if current is not None and current.size + record_bytes > self.segment_bytes:
            self.seal_locked()
        try:
            seq = self._segment_log.append_locked(_SPANS.pack(spans) + request)
        except OSError as e:
            # The log has closed the segment; what it already holds is still delivered.
            if current is not None:
                current.sealed = True
            self._note_drop(spans, record_bytes, f"newest request, queue write failed: {e}")
            return
        current = self._open_segment()
        if current is None or current.seq != seq:
            current = QueuedSegment(seq)
            self.segments.append(current)
        current.size += record_bytes
        current.spans += spans
        self.stats.queued += spans
        self.stats.queued_bytes += record_bytes
        self.wake.notify()

    def _open_segment(self) -> QueuedSegment | None:
        if self.segments and not self.segments[-1].sealed:
            return self.segments[-1]
        return None

    def seal_locked(self, *, sync: bool = False) -> None:
        """Seal the segment being written (fsync'ing it with ``sync``) so it can be sent."""
        current = self._open_segment()
        if current is None:
            return
        self._segment_log.rotate_locked(sync=sync)
        current.sealed = True

    def drop_oldest(self) -> bool:
        """Drop the oldest segment (sealing it first if it is the only one)."""
        if not self.segments:
            return False
        if not self.segments[0].sealed:
            self.seal_locked()
        segment = self.segments.popleft()
        segment.dropped = True
        if segment is not self.in_flight:
            self._segment_log.discard(segment.seq)
        self.stats.queued -= segment.spans
        self.stats.queued_bytes -= segment.size
        self._note_drop(segment.spans, segment.size, "queue full: oldest queued segment")
        return True

    def _note_drop(self, spans: int, size: int, what: str) -> None:
        self.stats.dropped += spans
        self._drop_log.add(spans, size, what, self.max_bytes, self.endpoint)

    # --- consumer side ------------------------------------------------------------------

    def take_locked(self) -> QueuedSegment | None:
        """The oldest segment, sealed first if needed (an idle producer: send what is
        there now), marked in flight; None when the queue is empty."""
        if self.segments and not self.segments[0].sealed:
            self.seal_locked()
        if not self.segments:
            return None
        self.in_flight = self.segments[0]
        return self.in_flight

    def batches(self, segment: QueuedSegment, max_bytes: int) -> Iterator[Batch]:
        """The not yet acknowledged frames of ``segment``, in batches of about
        ``max_bytes`` (a frame larger than that is a batch by itself)."""
        parts: list[bytes] = []
        spans = size = frames = last_end = 0
        for end, payload in self._segment_log.read(segment.seq):
            if end <= segment.consumed:
                continue
            request = payload[_SPANS.size :]
            if parts and size + len(request) > max_bytes:
                yield Batch(b"".join(parts), spans, frames, last_end)
                parts, spans, size, frames = [], 0, 0, 0
            parts.append(request)
            spans += _spans_of(payload)
            size += len(request)
            frames += frame_size(len(payload))
            last_end = end
        if parts:
            yield Batch(b"".join(parts), spans, frames, last_end)

    def acknowledge_locked(self, segment: QueuedSegment, batch: Batch) -> None:
        """Count a delivered (or refused for good) batch off the books. The caller holds
        :attr:`lock` and counts the batch as delivered or dropped in the same step, so
        that ``delivered + dropped + queued`` is the number submitted whenever the lock
        is free."""
        if segment.dropped:  # already taken off the books
            return
        segment.consumed = batch.end_offset
        segment.spans -= batch.spans
        segment.size -= batch.frame_bytes
        self.stats.queued -= batch.spans
        self.stats.queued_bytes -= batch.frame_bytes

    def release(self, segment: QueuedSegment, *, finished: bool) -> None:
        """The consumer is done with ``segment``: delete it if every batch was
        acknowledged (or it was dropped meanwhile), else keep it for the next start."""
        with self.lock:
            self.in_flight = None
            if segment.dropped:
                self._segment_log.discard(segment.seq)
            elif finished:
                self.segments.remove(segment)
                self._segment_log.discard(segment.seq)
                self.stats.queued -= segment.spans
                self.stats.queued_bytes -= segment.size

    def close(self) -> None:
        """Seal and fsync what is queued; it stays on disk for the next start."""
        with self.lock:
            if self._log is not None:
                self.seal_locked(sync=True)
                self._log.close()
        self._drop_log.flush()


def _spans_of(payload: bytes) -> int:
    return _SPANS.unpack_from(payload)[0] if len(payload) >= _SPANS.size else 0


def _legacy_records(path: Path) -> Iterator[tuple[int, bytes]]:
    """(span count, request) of each intact record of an older-layout segment."""
    data = path.read_bytes()
    offset = 0
    while offset + _LEGACY_HEADER.size <= len(data):
        length, crc, spans = _LEGACY_HEADER.unpack_from(data, offset)
        start = offset + _LEGACY_HEADER.size
        end = start + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            return
        yield spans, data[start:end]
        offset = end


@dataclass
class DropLog:
    """Logs drops loudly but at most every few seconds, with totals since the last line."""

    interval_s: float = 5.0
    _pending_spans: int = 0
    _pending_bytes: int = 0
    _what: set[str] = field(default_factory=set)
    _last: float = 0.0
    _context: tuple[int, str] = (0, "")

    def add(self, spans: int, size: int, what: str, limit: int, endpoint: str) -> None:
        self._pending_spans += spans
        self._pending_bytes += size
        self._what.add(what)
        self._context = (limit, endpoint)
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if not self._pending_spans and not self._pending_bytes:
            return
        limit, endpoint = self._context
        log.warning(
            "forward queue to %s (limit %d bytes): dropped %d span(s), %d bytes (%s)",
            endpoint,
            limit,
            self._pending_spans,
            self._pending_bytes,
            ", ".join(sorted(self._what)),
        )
        self._pending_spans = self._pending_bytes = 0
        self._what.clear()
