"""Tests for collector/forward.py against real OTLP receivers on loopback: a gRPC
TraceService server that is stopped and restarted mid-stream, and an OTLP/HTTP server."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1 import trace_pb2

from callward.collector.forward import ENV_HEADERS, Forwarder, count_spans, parse_headers
from callward.collector.forward_queue import ForwardQueue, ForwardStats

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_request(first: int, n: int = 3) -> ExportTraceServiceRequest:
    """A request whose spans carry ids first..first+n-1 (as span_id bytes and span name)."""
    req = ExportTraceServiceRequest()
    scope = req.resource_spans.add().scope_spans.add()
    for i in range(first, first + n):
        span = scope.spans.add()
        span.trace_id = (i + 1).to_bytes(16, "big")
        span.span_id = (i + 1).to_bytes(8, "big")
        span.name = f"execute_tool t{i}"
    return req


def span_numbers(req: ExportTraceServiceRequest) -> list[int]:
    return [
        int.from_bytes(s.span_id, "big") - 1
        for rs in req.resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A plain OTLP/gRPC receiver that records what it got; can refuse or partially accept."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.requests = 0
        self.refuse_with: grpc.StatusCode | None = None
        self.reject_per_request = 0
        self.metadata: dict[str, str] = {}
        self.lock = threading.Lock()

    def Export(self, request, context):
        if self.refuse_with is not None:
            context.abort(self.refuse_with, "refused by test")
        with self.lock:
            self.metadata.update({m.key: m.value for m in context.invocation_metadata()})
            self.requests += 1
            self.received.extend(span_numbers(request))
        response = ExportTraceServiceResponse()
        if self.reject_per_request:
            response.partial_success.rejected_spans = self.reject_per_request
            response.partial_success.error_message = "test rejects some"
        return response


class Backend:
    """Owns a Receiver and the gRPC server around it, restartable on the same port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.receiver = Receiver()
        self.server: grpc.Server | None = None

    def start(self) -> None:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self.receiver, server)
        bound = server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert bound == self.port
        server.start()
        self.server = server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=None).wait()
            self.server = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend(free_port())
    b.start()
    yield b
    b.stop()


def wait_until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Bounded polling for a condition that a background thread makes true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def fast(endpoint: str, queue_dir: Path, **kw) -> Forwarder:
    kw.setdefault("initial_backoff_s", 0.02)
    kw.setdefault("max_backoff_s", 0.2)
    kw.setdefault("timeout_s", 2.0)
    return Forwarder(endpoint, queue_dir, **kw)


def test_delivers_everything_and_empties_the_queue(backend: Backend, tmp_path: Path) -> None:
    fw = fast(backend.endpoint, tmp_path / "q")
    fw.start()
    for i in range(40):
        fw.submit(make_request(i * 3))
    wait_until(lambda: fw.stats.delivered == 120)
    fw.shutdown(2)
    assert sorted(set(backend.receiver.received)) == list(range(120))
    assert fw.stats.queued == 0 and fw.stats.queued_bytes == 0 and fw.stats.dropped == 0
    assert list((tmp_path / "q").glob("seg-*.log")) == []


def test_backend_stopped_and_restarted_mid_stream(backend: Backend, tmp_path: Path) -> None:
    fw = fast(backend.endpoint, tmp_path / "q")
    fw.start()
    for i in range(20):
        fw.submit(make_request(i * 3))
    wait_until(lambda: fw.stats.delivered == 60)
    backend.stop()
    for i in range(20, 50):
        fw.submit(make_request(i * 3))
    wait_until(lambda: fw.stats.retries >= 3)
    assert fw.stats.delivered == 60
    assert fw.stats.queued == 90  # waiting on disk while the backend is down
    assert list((tmp_path / "q").glob("seg-*.log"))
    backend.start()
    wait_until(lambda: fw.stats.delivered >= 150 and fw.stats.queued == 0)
    fw.shutdown(2)
    # at-least-once: every span arrived (duplicates would be allowed, losses are not)
    assert set(backend.receiver.received) == set(range(150))
    assert fw.stats.dropped == 0


def test_queue_full_drops_oldest_segments_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()  # nothing listens yet
    fw = fast(f"grpc://127.0.0.1:{port}", tmp_path / "q", max_queue_bytes=8192, segment_bytes=1024)
    fw.start()
    with caplog.at_level(logging.WARNING, logger="callward.forward"):
        for i in range(200):
            fw.submit(make_request(i * 3))
        assert fw.stats.queued_bytes <= 8192
        assert fw.stats.dropped > 0
        assert fw.stats.dropped + fw.stats.queued == 600
        b = Backend(port)
        b.start()
        try:
            wait_until(lambda: fw.stats.queued == 0)
            fw.shutdown(2)
        finally:
            b.stop()
    got = set(b.receiver.received)
    assert 597 in got and 0 not in got  # the newest survived, the oldest went
    assert fw.stats.delivered == len(got)
    lines = [r.getMessage() for r in caplog.records if "full" in r.getMessage()]
    assert lines and "oldest queued segment" in lines[0] and "dropped" in lines[0]


def test_request_larger_than_queue_is_dropped_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fw = fast(f"127.0.0.1:{free_port()}", tmp_path / "q", max_queue_bytes=4096)
    fw.start()
    with caplog.at_level(logging.WARNING, logger="callward.forward"):
        fw.submit(make_request(0, n=200))
        fw.shutdown(0)
    assert fw.stats.dropped == 200 and fw.stats.queued == 0
    assert any("newest request" in r.getMessage() for r in caplog.records)


def test_queue_survives_a_restart(backend: Backend, tmp_path: Path) -> None:
    down_port = free_port()
    first = fast(f"127.0.0.1:{down_port}", tmp_path / "q")
    first.start()
    for i in range(30):
        first.submit(make_request(i * 3))
    first.shutdown(0.1)
    assert first.stats.delivered == 0
    assert sorted((tmp_path / "q").glob("seg-*.log"))

    recovered = ForwardStats()
    queue = ForwardQueue(tmp_path / "q", 256 * 1024 * 1024, 4 * 1024 * 1024, recovered)
    queue.open()  # what a restart finds, read before any delivery can start
    queue.close()
    assert recovered.queued == 90

    second = fast(backend.endpoint, tmp_path / "q")
    second.start()
    # Delivery may already have begun: whatever it has done, nothing is lost or doubled.
    seen = second.snapshot()
    assert seen.delivered + seen.queued == 90 and seen.dropped == 0
    wait_until(lambda: second.stats.delivered == 90)
    second.shutdown(2)
    assert set(backend.receiver.received) == set(range(90))
    assert list((tmp_path / "q").glob("seg-*.log")) == []


def test_torn_tail_and_foreign_files_are_ignored_on_recovery(
    backend: Backend, tmp_path: Path
) -> None:
    q = tmp_path / "q"
    writer = fast(f"127.0.0.1:{free_port()}", q)
    writer.start()
    for i in range(5):
        writer.submit(make_request(i * 3))
    writer.shutdown(0)
    seg = sorted(q.glob("seg-*.log"))[-1]
    with seg.open("ab") as f:
        f.write(b"\x10\x00\x00\x00garbage")  # a record header cut short by a crash
    (q / "notes.log").write_bytes(b"not a segment")
    (q / "seg-000000000099.log").write_bytes(b"")

    fw = fast(backend.endpoint, q)
    fw.start()
    wait_until(lambda: fw.stats.delivered == 15)
    fw.shutdown(2)
    assert set(backend.receiver.received) == set(range(15))


def test_permanent_refusal_is_dropped_not_retried_forever(
    backend: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    backend.receiver.refuse_with = grpc.StatusCode.INVALID_ARGUMENT
    fw = fast(backend.endpoint, tmp_path / "q")
    fw.start()
    with caplog.at_level(logging.WARNING, logger="callward.forward"):
        fw.submit(make_request(0))
        wait_until(lambda: fw.stats.dropped == 3)
    assert any("refused a batch for good" in r.getMessage() for r in caplog.records)
    backend.receiver.refuse_with = None
    fw.submit(make_request(3))
    wait_until(lambda: fw.stats.delivered == 3)
    fw.shutdown(2)
    assert "INVALID_ARGUMENT" in fw.stats.last_error
    assert backend.receiver.received == [3, 4, 5]
    assert fw.stats.queued == 0 and fw.stats.queued_bytes == 0


def test_partial_success_counts_rejected_spans(backend: Backend, tmp_path: Path) -> None:
    backend.receiver.reject_per_request = 1
    fw = fast(backend.endpoint, tmp_path / "q")
    fw.start()
    fw.submit(make_request(0))
    wait_until(lambda: fw.stats.rejected == 1)
    fw.shutdown(2)
    assert fw.stats.delivered == 2 and fw.stats.dropped == 0


class _HttpReceiver(BaseHTTPRequestHandler):
    failures_left = 0
    received: list[int] = []  # noqa: RUF012 (set per test)
    paths: list[str] = []  # noqa: RUF012

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).paths.append(self.path)
        if type(self).failures_left > 0:
            type(self).failures_left -= 1
            self.send_response(503)
            self.end_headers()
            return
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip

            body = gzip.decompress(body)
        type(self).received.extend(span_numbers(ExportTraceServiceRequest.FromString(body)))
        payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("gzip", [False, True])
def test_otlp_http_endpoint_with_retry(tmp_path: Path, gzip: bool) -> None:
    _HttpReceiver.failures_left = 2
    _HttpReceiver.received = []
    _HttpReceiver.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HttpReceiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fw = fast(f"http://127.0.0.1:{server.server_address[1]}", tmp_path / "q", gzip=gzip)
        fw.start()
        fw.submit(make_request(0))
        wait_until(lambda: fw.stats.delivered == 3)
        fw.shutdown(2)
    finally:
        server.shutdown()
        server.server_close()
    assert _HttpReceiver.received == [0, 1, 2]
    assert fw.stats.retries == 2
    assert set(_HttpReceiver.paths) == {"/v1/traces"}


@pytest.mark.parametrize(
    "endpoint", ["", "localhost", "ftp://x:1", "grpc://:4317", "grpc://host", "::::"]
)
def test_bad_endpoints_are_rejected(endpoint: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="forward endpoint"):
        Forwarder(endpoint, tmp_path)


def test_tiny_queue_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_queue_bytes"):
        Forwarder("127.0.0.1:4317", tmp_path, max_queue_bytes=10)


def test_count_spans() -> None:
    assert count_spans(ExportTraceServiceRequest()) == 0
    assert count_spans(make_request(0, 7)) == 7
    req = make_request(0, 2)
    req.resource_spans.add().scope_spans.add().spans.append(trace_pb2.Span(name="x"))
    assert count_spans(req) == 3


def legacy_record(request: ExportTraceServiceRequest) -> bytes:
    """A record of the queue layout before the segment log (``<n>.seg`` files of
    ``length | crc32 | span count`` + request), assembled by hand."""
    payload = request.SerializeToString()
    return struct.pack("<III", len(payload), zlib.crc32(payload), count_spans(request)) + payload


def test_a_queue_left_in_the_older_layout_is_delivered(backend: Backend, tmp_path: Path) -> None:
    q = tmp_path / "q"
    q.mkdir()
    (q / "000000000000.seg").write_bytes(
        legacy_record(make_request(0)) + legacy_record(make_request(3))
    )
    (q / "000000000001.seg").write_bytes(legacy_record(make_request(6)) + b"\x10\x00torn")
    fw = fast(backend.endpoint, q)
    fw.start()
    wait_until(lambda: fw.stats.delivered == 9)
    fw.shutdown(2)
    assert sorted(backend.receiver.received) == list(range(9))
    assert list(q.glob("*.seg")) == []


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=6), min_size=1, max_size=10),
    max_batch=st.integers(min_value=1, max_value=2000),
)
def test_batches_hold_every_queued_span_once_in_order(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], max_batch: int
) -> None:
    """Whatever the batch size, the batches of a segment are its requests in order, and
    acknowledging them all empties the books."""
    stats = ForwardStats()
    queue = ForwardQueue(tmp_path_factory.mktemp("q"), 1 << 24, 1 << 22, stats)
    queue.open()
    first, expected = 0, []
    with queue.lock:
        for n in sizes:
            queue.put_locked(make_request(first, n).SerializeToString(), n)
            expected += list(range(first, first + n))
            first += n
        segment = queue.take_locked()
    assert segment is not None and stats.queued == len(expected)
    got = []
    for batch in queue.batches(segment, max_batch):
        numbers = span_numbers(ExportTraceServiceRequest.FromString(batch.payload))
        assert len(numbers) == batch.spans
        got += numbers
        with queue.lock:
            queue.acknowledge_locked(segment, batch)
    assert got == expected
    assert stats.queued == 0 and stats.queued_bytes == 0
    queue.release(segment, finished=True)
    assert queue.segments == type(queue.segments)()
    queue.close()


def test_concatenated_records_merge_into_one_request() -> None:
    merged = ExportTraceServiceRequest.FromString(
        make_request(0).SerializeToString() + make_request(3).SerializeToString()
    )
    assert span_numbers(merged) == [0, 1, 2, 3, 4, 5]


def test_headers_reach_the_backend(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_HEADERS, "X-Scope-OrgID=tenant-1,api-key=a%3Db")
    fw = fast(backend.endpoint, tmp_path / "q")
    fw.start()
    fw.submit(make_request(0))
    wait_until(lambda: fw.stats.delivered == 3)
    fw.shutdown(2)
    assert backend.receiver.metadata["x-scope-orgid"] == "tenant-1"
    assert backend.receiver.metadata["api-key"] == "a=b"


def test_parse_headers() -> None:
    assert parse_headers("") == {}
    assert parse_headers(" a=1 , B=x%20y ,") == {"a": "1", "b": "x y"}
    for bad in ("novalue", "=x", "a=1,oops"):
        with pytest.raises(ValueError, match=ENV_HEADERS):
            parse_headers(bad)
