"""Forwarding spans on to an existing OTLP backend (Phoenix, Jaeger, Tempo...).

Promise: at-least-once delivery through a bounded on-disk queue. ``submit`` never blocks
on the backend: it appends the request to the current segment file and returns. A
background thread seals segments and delivers them oldest first, retrying with
exponential backoff while the backend is down; a segment file is deleted only after the
backend acknowledged every request in it. The queue survives a restart (segments are
recovered in order on start; a torn record at the tail of a segment is discarded).

When the queue would exceed ``max_queue_bytes`` the OLDEST whole segment is dropped and a
warning says how many spans and bytes went: for a tracing backend recent spans are worth
more than old ones, and the collector's own store keeps everything regardless.

Headers (an API key, a tenant id such as Tempo's ``X-Scope-OrgID``): the ``headers``
argument, else ``CALLWARD_COLLECTOR_FORWARD_HEADERS`` in the ``OTEL_EXPORTER_OTLP_HEADERS``
format (``key=value,key2=value2``).

Endpoints: ``host:port`` or ``grpc://host:port`` (OTLP/gRPC, plaintext), ``grpcs://host:port``
(OTLP/gRPC over TLS), ``http(s)://host[:port][/path]`` (OTLP/HTTP protobuf; ``/v1/traces``
is appended when the URL has no path).

Segment format: records of ``<u32 length><u32 crc32><u32 span count>`` + an
``ExportTraceServiceRequest`` in protobuf. Concatenated protobuf messages merge, so a batch
is the concatenation of its records' bytes and is sent without re-encoding.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

log = logging.getLogger("callward.forward")

MIB = 1024 * 1024
ENV_HEADERS = "CALLWARD_COLLECTOR_FORWARD_HEADERS"
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_HEADER = struct.Struct("<III")
_SUFFIX = ".seg"

# OTLP spec: these gRPC codes (and HTTP 429/502/503/504) are transient; everything else is
# a permanent rejection of the batch.
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({408, 429, 502, 503, 504})


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
class _Segment:
    path: Path
    size: int = 0
    spans: int = 0
    sealed: bool = False
    dropped: bool = False
    fd: int | None = None
    consumed: int = 0  # bytes of the file already acknowledged by the backend


class _Permanent(Exception):
    """The backend refused the batch for good (the OTLP spec says: do not retry)."""


@dataclass
class _Batch:
    payload: bytes
    spans: int
    end_offset: int


class _Sender:
    """Sends one serialised ExportTraceServiceRequest; raises on failure."""

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout_s: float, gzip: bool):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        parts = urlsplit(endpoint if "://" in endpoint else f"grpc://{endpoint}")
        self.scheme = parts.scheme.lower()
        if self.scheme in ("http", "https"):
            path = parts.path if parts.path not in ("", "/") else "/v1/traces"
            self.url = f"{parts.scheme}://{parts.netloc}{path}"
            self.http: httpx.Client | None = httpx.Client(
                timeout=timeout_s,
                headers={"Content-Type": "application/x-protobuf", **dict(headers)},
            )
            self.gzip = gzip
            return
        if self.scheme not in ("grpc", "grpcs") or not parts.hostname or not parts.port:
            raise ValueError(
                f"forward endpoint {endpoint!r}: expected host:port, grpc://host:port, "
                "grpcs://host:port or http(s)://host[:port][/path]"
            )
        target = f"{parts.hostname}:{parts.port}"
        options = [("grpc.max_send_message_length", 64 * MIB)]
        if self.scheme == "grpcs":
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        self.export = self.channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=lambda payload: payload,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self.http = None

    def send(self, payload: bytes) -> int:
        """Deliver; returns the number of spans the backend rejected (partial success)."""
        if self.http is not None:
            return self._send_http(payload)
        try:
            response = self.export(
                payload,
                timeout=self.timeout_s,
                metadata=self.metadata,
                compression=self.compression,
                wait_for_ready=False,
            )
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            detail = e.details() if hasattr(e, "details") else str(e)
            message = f"gRPC {code.name}: {detail}"
            if code in RETRYABLE_GRPC:
                raise ConnectionError(message) from e
            raise _Permanent(message) from e
        return int(response.partial_success.rejected_spans)

    def _send_http(self, payload: bytes) -> int:
        assert self.http is not None
        headers = {}
        if self.gzip:
            payload = _gzip(payload)
            headers["Content-Encoding"] = "gzip"
        try:
            r = self.http.post(self.url, content=payload, headers=headers)
        except httpx.HTTPError as e:
            raise ConnectionError(f"HTTP {type(e).__name__}: {e}") from e
        if r.status_code in RETRYABLE_HTTP or r.status_code >= 500:
            raise ConnectionError(f"HTTP {r.status_code}")
        if not 200 <= r.status_code < 300:
            raise _Permanent(f"HTTP {r.status_code}: {r.text[:200]}")
        try:
            return int(
                ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans
            )
        except Exception:
            return 0  # a 2xx without a parseable body is an acknowledgement all the same

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        else:
            self.channel.close()


def _gzip(payload: bytes) -> bytes:
    import gzip

    return gzip.compress(payload, compresslevel=5)


def parse_headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (the ``OTEL_EXPORTER_OTLP_HEADERS`` format, values
    URL-encoded) into a dict; used for backends that need an API key or a tenant header."""
    from urllib.parse import unquote

    headers: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{ENV_HEADERS}: expected key=value, got {item.strip()!r}")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


def count_spans(request: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


class Forwarder:
    """Bounded on-disk queue plus a delivery thread to one OTLP endpoint (see module doc)."""

    def __init__(
        self,
        endpoint: str,
        queue_dir: Path,
        max_queue_bytes: int = 256 * MIB,
        *,
        segment_bytes: int = 4 * MIB,
        max_batch_bytes: int = 3 * MIB,
        timeout_s: float = 10.0,
        initial_backoff_s: float = 0.2,
        max_backoff_s: float = 10.0,
        headers: Mapping[str, str] | None = None,
        gzip: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_queue_bytes < 4096:
            raise ValueError("max_queue_bytes must be at least 4096")
        self.endpoint = endpoint
        self.queue_dir = Path(queue_dir)
        self.max_queue_bytes = max_queue_bytes
        # A segment is at most a quarter of the queue, so dropping one frees real room.
        self.segment_bytes = max(1024, min(segment_bytes, max_queue_bytes // 4))
        self.max_batch_bytes = max_batch_bytes
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        if headers is None:
            headers = parse_headers(os.environ.get(ENV_HEADERS, ""))
        self._sender = _Sender(endpoint, headers, timeout_s, gzip)
        self._clock = clock
        self.stats = ForwardStats()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._segments: deque[_Segment] = deque()
        self._next_seq = 0
        self._in_flight: _Segment | None = None
        self._stopping = threading.Event()
        self._drain_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._drop_log = _DropLog()

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover the segments a previous run left and start delivering."""
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._recover()
        self._thread = threading.Thread(target=self._run, name="callward-forward", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds; the rest stays on disk
        for the next start."""
        with self._lock:
            self._seal_current(fsync=True)
            self._drain_deadline = self._clock() + max(0.0, timeout)
            self._stopping.set()
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + self._sender.timeout_s + 1.0)
        self._sender.close()
        self._drop_log.flush()

    # --- producer side -----------------------------------------------------------------

    def submit(self, request: ExportTraceServiceRequest) -> None:
        """Queue ``request`` for delivery; never blocks on the backend."""
        self.submit_serialized(request.SerializeToString(), count_spans(request))

    def submit_serialized(self, payload: bytes, spans: int) -> None:
        """Queue an already-serialised ExportTraceServiceRequest holding ``spans`` spans."""
        record = _HEADER.pack(len(payload), zlib.crc32(payload), spans) + payload
        with self._lock:
            if len(record) > self.max_queue_bytes:
                self._note_drop(spans, len(record), "newest request, larger than the whole queue")
                return
            while self.stats.queued_bytes + len(record) > self.max_queue_bytes:
                if not self._drop_oldest():
                    break
            current = self._current()
            if current.size and current.size + len(record) > self.segment_bytes:
                self._seal_current()
                current = self._current()
            assert current.fd is not None
            try:
                os.write(current.fd, record)
            except OSError as e:
                self._note_drop(spans, len(record), f"newest request, queue write failed: {e}")
                return
            current.size += len(record)
            current.spans += spans
            self.stats.queued += spans
            self.stats.queued_bytes += len(record)
            self._wake.notify()

    # --- queue bookkeeping (lock held) -----------------------------------------------------

    def _recover(self) -> None:
        paths = sorted(self.queue_dir.glob(f"*{_SUFFIX}"))
        for path in paths:
            try:
                seq = int(path.stem)
            except ValueError:
                continue
            size, spans = _scan(path)
            if size == 0:
                path.unlink(missing_ok=True)
                continue
            self._segments.append(_Segment(path, size, spans, sealed=True))
            self.stats.queued += spans
            self.stats.queued_bytes += size
            self._next_seq = max(self._next_seq, seq + 1)
        if self._segments:
            log.info(
                "forward queue recovered %d segment(s), %d span(s) for %s",
                len(self._segments),
                self.stats.queued,
                self.endpoint,
            )
        while self.stats.queued_bytes > self.max_queue_bytes and self._drop_oldest():
            pass

    def _current(self) -> _Segment:
        if self._segments and not self._segments[-1].sealed:
            return self._segments[-1]
        path = self.queue_dir / f"{self._next_seq:012d}{_SUFFIX}"
        self._next_seq += 1
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        segment = _Segment(path, fd=fd)
        self._segments.append(segment)
        return segment

    def _seal_current(self, fsync: bool = False) -> None:
        # No fsync on the hot path: written bytes are in the page cache and survive a crash
        # of this process; the collector's own spool, not this queue, is the durable record.
        if not self._segments or self._segments[-1].sealed:
            return
        segment = self._segments[-1]
        if segment.fd is not None:
            try:
                if fsync:
                    os.fsync(segment.fd)
            finally:
                os.close(segment.fd)
                segment.fd = None
        segment.sealed = True
        if segment.size == 0:
            self._segments.pop()
            segment.path.unlink(missing_ok=True)

    def _drop_oldest(self) -> bool:
        """Drop the oldest segment (sealing it first if it is the only one)."""
        if not self._segments:
            return False
        segment = self._segments[0]
        if not segment.sealed:
            self._seal_current()
            if not self._segments:
                return False
            segment = self._segments[0]
        self._segments.popleft()
        segment.dropped = True
        if segment is not self._in_flight:
            segment.path.unlink(missing_ok=True)
        self.stats.queued -= segment.spans
        self.stats.queued_bytes -= segment.size
        self._note_drop(segment.spans, segment.size, "queue full: oldest queued segment")
        return True

    def _note_drop(self, spans: int, size: int, what: str) -> None:
        self.stats.dropped += spans
        self._drop_log.add(spans, size, what, self.max_queue_bytes, self.endpoint)

    # --- delivery thread -----------------------------------------------------------------

    def _next_segment(self) -> _Segment | None:
        with self._lock:
            while True:
                if self._past_deadline():
                    return None
                if self._segments and not self._segments[0].sealed:
                    self._seal_current()  # idle producer: deliver what is there now
                if self._segments:
                    self._in_flight = self._segments[0]
                    return self._in_flight
                if self._stopping.is_set():
                    return None
                self._wake.wait(0.5)

    def _past_deadline(self) -> bool:
        return self._stopping.is_set() and self._clock() >= self._drain_deadline

    def _run(self) -> None:
        while True:
            segment = self._next_segment()
            if segment is None:
                return
            finished = self._deliver_segment(segment)
            with self._lock:
                self._in_flight = None
                if segment.dropped:
                    segment.path.unlink(missing_ok=True)
                elif finished:
                    self._segments.remove(segment)
                    segment.path.unlink(missing_ok=True)
                    self.stats.queued -= segment.spans
                    self.stats.queued_bytes -= segment.size
                else:
                    return  # stopping; the segment stays on disk for the next start

    def _deliver_segment(self, segment: _Segment) -> bool:
        """True once every batch of ``segment`` is acknowledged (or the segment was dropped)."""
        for batch in _batches(segment.path, self.max_batch_bytes):
            if batch.end_offset <= segment.consumed:
                continue
            if self._past_deadline() or not self._deliver_batch(segment, batch):
                return False
            if segment.dropped:
                return True
        return True

    def _deliver_batch(self, segment: _Segment, batch: _Batch) -> bool:
        backoff = self.initial_backoff_s
        while True:
            if segment.dropped:
                return True
            try:
                rejected = self._sender.send(batch.payload)
            except _Permanent as e:
                with self._lock:
                    self.stats.last_error = str(e)
                    self.stats.dropped += batch.spans
                log.warning(
                    "backend %s refused a batch for good (%s): %d span(s) dropped, not retried",
                    self.endpoint,
                    e,
                    batch.spans,
                )
                return True
            except Exception as e:
                with self._lock:
                    self.stats.retries += 1
                    self.stats.last_error = str(e)
                log.debug("forward to %s failed (%s); retry in %.1fs", self.endpoint, e, backoff)
                wait = backoff * random.uniform(0.5, 1.0)
                if self._stopping.is_set():
                    remaining = self._drain_deadline - self._clock()
                    if remaining <= 0:
                        return False
                    time.sleep(min(wait, remaining))
                else:
                    self._stopping.wait(wait)
                backoff = min(self.max_backoff_s, backoff * 2)
                continue
            with self._lock:
                self.stats.delivered += batch.spans - rejected
                if rejected:
                    self.stats.rejected += rejected
                    log.warning(
                        "backend %s rejected %d span(s) of a batch (partial success)",
                        self.endpoint,
                        rejected,
                    )
                if not segment.dropped:  # a dropped segment was already taken off the books
                    consumed = batch.end_offset - segment.consumed
                    segment.consumed = batch.end_offset
                    segment.spans -= batch.spans
                    segment.size -= consumed
                    self.stats.queued -= batch.spans
                    self.stats.queued_bytes -= consumed
            return True


@dataclass
class _DropLog:
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


def _records(path: Path) -> Iterator[tuple[int, bytes, int]]:
    """(end offset, payload, span count) of each intact record; stops at a torn tail."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, crc, spans = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        end = start + length
        if end > len(data) or zlib.crc32(data[start:end]) != crc:
            log.warning("forward queue segment %s: torn record at byte %d ignored", path, offset)
            return
        yield end, data[start:end], spans
        offset = end


def _scan(path: Path) -> tuple[int, int]:
    size = spans = 0
    for end, _payload, n in _records(path):
        size, spans = end, spans + n
    return size, spans


def _batches(path: Path, max_bytes: int) -> Iterator[_Batch]:
    parts: list[bytes] = []
    spans = size = last_end = 0
    for end, payload, n in _records(path):
        if parts and size + len(payload) > max_bytes:
            yield _Batch(b"".join(parts), spans, last_end)
            parts, spans, size = [], 0, 0
        parts.append(payload)
        spans += n
        size += len(payload)
        last_end = end
    if parts:
        yield _Batch(b"".join(parts), spans, last_end)
