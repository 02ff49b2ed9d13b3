"""Forwarding spans on to an existing OTLP backend (Phoenix, Jaeger, Tempo...).

Promise: at-least-once delivery through a bounded on-disk queue. ``submit`` never blocks
on the backend: it appends the request to the queue and returns. A background thread
delivers the queue oldest first, retrying with exponential backoff while the backend is
down; a segment of the queue is deleted only after the backend acknowledged every
request in it. The queue survives a restart.

Three parts, three modules: the queue (:mod:`~callward.collector.forward_queue`: the
segment log, its bound and its books), the transport
(:mod:`~callward.collector.forward_transport`: OTLP/gRPC and OTLP/HTTP export, which
failures are worth a retry, the backoff), and here the :class:`Forwarder` that runs the
delivery thread between them. The transport's public names are re-exported here.

Headers (an API key, a tenant id such as Tempo's ``X-Scope-OrgID``): the ``headers``
argument, else ``CALLWARD_COLLECTOR_FORWARD_HEADERS`` in the ``OTEL_EXPORTER_OTLP_HEADERS``
format (``key=value,key2=value2``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from callward.collector.forward_queue import Batch, ForwardQueue, ForwardStats, QueuedSegment
from callward.collector.forward_transport import (
    ENV_HEADERS,
    EXPORT_METHOD,
    MIB,
    RETRYABLE_GRPC,
    RETRYABLE_HTTP,
    Backoff,
    OtlpTransport,
    PermanentRefusal,
    parse_headers,
    send_with_retries,
)

__all__ = [
    "ENV_HEADERS",
    "EXPORT_METHOD",
    "MIB",
    "RETRYABLE_GRPC",
    "RETRYABLE_HTTP",
    "ForwardStats",
    "Forwarder",
    "count_spans",
    "parse_headers",
]

log = logging.getLogger("callward.forward")


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
        self.max_batch_bytes = max_batch_bytes
        self.backoff = Backoff(initial_backoff_s, max_backoff_s)
        if headers is None:
            headers = parse_headers(os.environ.get(ENV_HEADERS, ""))
        self._transport = OtlpTransport(endpoint, headers, timeout_s, gzip)
        self._clock = clock
        self.stats = ForwardStats()
        self.queue = ForwardQueue(
            self.queue_dir, max_queue_bytes, segment_bytes, self.stats, endpoint
        )
        self.segment_bytes = self.queue.segment_bytes
        self._stopping = threading.Event()
        self._drain_deadline = 0.0
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover the queue a previous run left and start delivering."""
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.queue.open()
        self._thread = threading.Thread(target=self._run, name="callward-forward", daemon=True)
        self._thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout`` seconds; the rest stays on disk
        for the next start."""
        with self.queue.lock:
            self.queue.seal_locked(sync=True)
            self._drain_deadline = self._clock() + max(0.0, timeout)
            self._stopping.set()
            self.queue.wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout + self._transport.timeout_s + 1.0)
        self._transport.close()
        self.queue.close()

    def snapshot(self) -> ForwardStats:
        """A consistent copy of the counters: ``delivered + dropped + queued`` is the
        number of spans submitted (and recovered) so far, even while delivery runs."""
        with self.queue.lock:
            return dataclasses.replace(self.stats)

    # --- producer side -----------------------------------------------------------------

    def submit(self, request: ExportTraceServiceRequest) -> None:
        """Queue ``request`` for delivery; never blocks on the backend."""
        self.submit_serialized(request.SerializeToString(), count_spans(request))

    def submit_serialized(self, payload: bytes, spans: int) -> None:
        """Queue an already-serialised ExportTraceServiceRequest holding ``spans`` spans."""
        with self.queue.lock:
            self.queue.put_locked(payload, spans)

    # --- delivery thread -----------------------------------------------------------------

    def _past_deadline(self) -> bool:
        return self._stopping.is_set() and self._clock() >= self._drain_deadline

    def _next_segment(self) -> QueuedSegment | None:
        with self.queue.lock:
            while True:
                if self._past_deadline():
                    return None
                segment = self.queue.take_locked()
                if segment is not None:
                    return segment
                if self._stopping.is_set():
                    return None
                self.queue.wake.wait(0.5)

    def _run(self) -> None:
        while True:
            segment = self._next_segment()
            if segment is None:
                return
            finished = self._deliver_segment(segment)
            self.queue.release(segment, finished=finished)
            if not finished:
                return  # stopping; the segment stays on disk for the next start

    def _deliver_segment(self, segment: QueuedSegment) -> bool:
        """True once every batch of ``segment`` is acknowledged (or the segment was dropped)."""
        for batch in self.queue.batches(segment, self.max_batch_bytes):
            if self._past_deadline() or not self._deliver_batch(segment, batch):
                return False
            if segment.dropped:
                return True
        return True

    def _deliver_batch(self, segment: QueuedSegment, batch: Batch) -> bool:
        """True when the batch is done with (acknowledged, refused for good, or its
        segment dropped); False when stopping cut the retries short."""
        if segment.dropped:
            return True
        try:
            rejected = send_with_retries(
                self._transport,
                batch.payload,
                self.backoff,
                wait=lambda delay: self._wait_before_retry(segment, delay),
                on_retry=self._note_retry,
            )
        except PermanentRefusal as e:
            with self.queue.lock:
                self.stats.last_error = str(e)
                self.stats.dropped += batch.spans
                self.queue.acknowledge_locked(segment, batch)
            log.warning(
                "backend %s refused a batch for good (%s): %d span(s) dropped, not retried",
                self.endpoint,
                e,
                batch.spans,
            )
            return True
        if rejected is None:
            return segment.dropped
        with self.queue.lock:
            self.stats.delivered += batch.spans - rejected
            self.stats.rejected += rejected
            self.queue.acknowledge_locked(segment, batch)
        if rejected:
            log.warning(
                "backend %s rejected %d span(s) of a batch (partial success)",
                self.endpoint,
                rejected,
            )
        return True

    def _note_retry(self, error: Exception, delay: float) -> None:
        with self.queue.lock:
            self.stats.retries += 1
            self.stats.last_error = str(error)
        log.debug("forward to %s failed (%s); retry in %.1fs", self.endpoint, error, delay)

    def _wait_before_retry(self, segment: QueuedSegment, delay: float) -> bool:
        """Sleep before the next attempt; False to give up (stopping past the deadline, or
        the segment dropped to make room)."""
        if self._stopping.is_set():
            remaining = self._drain_deadline - self._clock()
            if remaining <= 0:
                return False
            time.sleep(min(delay, remaining))
        else:
            self._stopping.wait(delay)
        return not segment.dropped
