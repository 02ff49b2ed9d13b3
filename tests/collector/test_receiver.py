"""The OTLP/gRPC endpoint over a real loopback server: the standard exporter, gzip,
partial success, malformed and oversize requests, backpressure, and what lands on disk."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import duckdb
import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from callward.collector.config import load_config
from callward.collector.otlp_build import (
    SpanSpec,
    build_request,
    callward_attributes,
    tool_call_batch,
)
from callward.collector.receiver import EXPORT_METHOD
from callward.collector.schema import DUCKDB_FILE
from callward.collector.service import SPOOL_DIR, Collector
from callward.collector.spool import Spool

pytestmark = pytest.mark.timeout(120)


def start(tmp_path: Path, **settings) -> Collector:
    settings.setdefault("decode_workers", 0)  # in-process: quick to start; one test uses the pool
    settings.setdefault("idle_flush_s", 0.0)  # the tests flush by hand
    config = load_config(environ={}, data_dir=tmp_path, listen="127.0.0.1:0", **settings)
    service = Collector(config)
    service.start()
    return service


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    service = start(tmp_path, flush_interval_s=60.0)
    yield service
    service.stop()


def export(port: int, data: bytes, **kwargs) -> ExportTraceServiceResponse:
    with grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 128 * 1024 * 1024)]
    ) as channel:
        call = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None, response_deserializer=None
        )
        return ExportTraceServiceResponse.FromString(call(data, timeout=60, **kwargs))


def stored(data_dir: Path, sql: str = "select count(*) from tool_calls") -> list[tuple]:
    con = duckdb.connect(str(data_dir / DUCKDB_FILE), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_spans_from_the_standard_sdk_exporter_are_stored(tmp_path: Path) -> None:
    service = start(tmp_path, flush_interval_s=60.0)
    provider = TracerProvider(resource=Resource.create({"service.name": "some-agent"}))
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{service.port}", insecure=True)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with (
        tracer.start_as_current_span("invoke_agent"),
        tracer.start_as_current_span(
            "execute_tool search",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
        ),
    ):
        pass
    provider.shutdown()
    service.stop()
    assert stored(
        tmp_path, "select tool, decision, service_name, parent_span_id <> '' from tool_calls"
    ) == [("search", "", "some-agent", True)]


def test_gzip_requests_are_accepted_and_acked_only_once_spooled(
    collector: Collector, tmp_path: Path
) -> None:
    response = export(
        collector.port, tool_call_batch(50).SerializeToString(), compression=grpc.Compression.Gzip
    )
    assert not response.HasField("partial_success")
    # Acknowledged and not flushed yet (flush interval 60 s): it is in the spool on disk.
    assert collector.pending_rows == 50
    spooled = [p for _, p in Spool(tmp_path / SPOOL_DIR).recover()]
    assert len(spooled) == 1
    assert collector.flush() == 50
    assert stored(tmp_path) == [(50,)]


def test_partial_success_counts_rejected_spans_with_a_reason(
    collector: Collector, tmp_path: Path
) -> None:
    good = [SpanSpec(attributes=callward_attributes(i)) for i in range(3)]
    bad = SpanSpec(start_ns=2_000_000, end_ns=1_000_000, attributes=callward_attributes())
    response = export(collector.port, build_request([*good, bad]).SerializeToString())
    assert response.partial_success.rejected_spans == 1
    assert "end_time before start_time" in response.partial_success.error_message
    collector.flush()
    assert stored(tmp_path) == [(3,)]


@pytest.mark.parametrize("data", [b"\xff\xff\xff\xff", b"\x0a\x05abc", bytes(range(200))])
def test_malformed_protobuf_is_invalid_argument_and_the_server_keeps_serving(
    collector: Collector, data: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        export(collector.port, data)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not export(collector.port, tool_call_batch(1).SerializeToString()).HasField(
        "partial_success"
    )
    assert collector.receiver is not None and collector.receiver.stats.malformed_requests == 1


def test_requests_over_64_mib_are_resource_exhausted(collector: Collector) -> None:
    request = build_request(
        [
            SpanSpec(attributes=callward_attributes(**{"blob": "x" * (1024 * 1024)}))
            for _ in range(65)
        ]
    )
    data = request.SerializeToString()
    assert len(data) > 64 * 1024 * 1024
    for compression in (grpc.Compression.NoCompression, grpc.Compression.Gzip):
        with pytest.raises(grpc.RpcError) as info:
            export(collector.port, data, compression=compression)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # gzip: once inflated
    # Just under the limit is fine, and the big values are cut on the way in.
    small = build_request(
        [
            SpanSpec(attributes=callward_attributes(**{"blob": "x" * (1024 * 1024)}))
            for _ in range(60)
        ]
    )
    assert not export(collector.port, small.SerializeToString()).HasField("partial_success")


def test_non_utf8_spans_are_stored(collector: Collector, tmp_path: Path) -> None:
    request = build_request(
        [SpanSpec(attributes=callward_attributes(**{"gen_ai.agent.id": "AG\x01"}))]
    )
    data = request.SerializeToString().replace(b"AG\x01", b"A\xc3\x28")
    assert not export(collector.port, data).HasField("partial_success")
    collector.flush()
    assert stored(tmp_path, "select agent_id from tool_calls") == [("A\ufffd(",)]


def test_a_busy_collector_answers_unavailable(tmp_path: Path) -> None:
    service = start(tmp_path, flush_interval_s=60.0, batch_size=10_000, max_pending_spans=5)
    try:
        export(service.port, tool_call_batch(5).SerializeToString())
        with pytest.raises(grpc.RpcError) as info:
            export(service.port, tool_call_batch(1).SerializeToString())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # OTLP clients retry this
        service.flush()
        export(service.port, tool_call_batch(1).SerializeToString())
    finally:
        service.stop()
    assert stored(tmp_path) == [(6,)]


def test_retried_exports_are_stored_once(collector: Collector, tmp_path: Path) -> None:
    data = tool_call_batch(20).SerializeToString()
    for _ in range(3):
        export(collector.port, data)
    collector.flush()
    export(collector.port, data)
    collector.flush()
    assert stored(tmp_path, "select count(*), count(distinct span_id) from tool_calls") == [
        (20, 20)
    ]


def test_policy_spans_are_kept_as_files(collector: Collector, tmp_path: Path) -> None:
    import hashlib

    doc = json.dumps({"default": "deny", "version": "1"}, separators=(",", ":"), sort_keys=True)
    version = "sha256:" + hashlib.sha256(doc.encode()).hexdigest()[:16]
    spec = SpanSpec(
        name="callward.policy",
        attributes={"callward.policy.version": version, "callward.policy.document": doc},
    )
    export(collector.port, build_request([spec]).SerializeToString())
    assert (tmp_path / "policies" / f"{version}.json").read_text() == doc


def test_rows_reach_parquet_soon_after_exports_pause(tmp_path: Path) -> None:
    """Neither the batch size nor the 60 s interval is reached: the pause alone flushes."""
    import time

    import pyarrow.parquet as pq

    from callward.collector.store import parquet_files

    def rows_in_parquet() -> int:
        return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(tmp_path))

    service = start(tmp_path, flush_interval_s=60.0, batch_size=10_000, idle_flush_s=0.2)
    try:
        export(service.port, tool_call_batch(12).SerializeToString())
        deadline = time.monotonic() + 20  # far below the 60 s interval
        while rows_in_parquet() < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows_in_parquet() == 12
        assert service.pending_rows == 0
    finally:
        service.stop()
    assert stored(tmp_path) == [(12,)]


def test_clean_stop_flushes_everything_and_empties_the_spool(tmp_path: Path) -> None:
    service = start(tmp_path, flush_interval_s=60.0)
    export(service.port, tool_call_batch(30).SerializeToString())
    service.stop()
    assert stored(tmp_path) == [(30,)]
    assert Spool(tmp_path / SPOOL_DIR).segments() == []


def test_restart_recovers_an_unflushed_spool(tmp_path: Path) -> None:
    service = start(tmp_path, flush_interval_s=60.0)
    export(service.port, tool_call_batch(7).SerializeToString())
    # Simulate a crash: the port closes and the writer exits without flushing.
    assert service.server is not None and service.spool is not None
    service.server.stop(None).wait()
    assert service._cond is not None and service._thread is not None
    with service._cond:
        service._pending.clear()
        service._pending_rows = 0
        service._stopping = True
        service._cond.notify_all()
    service._thread.join()
    service.spool.close()
    assert service._lock_fd is not None
    os.close(service._lock_fd)  # what the death of the process would do
    again = start(tmp_path)
    try:
        assert again.stats.recovered_rows == 7
    finally:
        again.stop()
    assert stored(tmp_path) == [(7,)]


# --- the decode pool, forwarding, configuration ------------------------------------------


@pytest.mark.timeout(180)
def test_decode_workers_give_the_same_rows_and_survive_a_dead_worker(tmp_path: Path) -> None:
    import signal
    import time

    inline_dir, pooled_dir = tmp_path / "inline", tmp_path / "pooled"
    request = build_request(
        [SpanSpec(attributes=callward_attributes(i, note=f"n{i}")) for i in range(20)]
        + [SpanSpec(span_id=bytes(8), attributes=callward_attributes())]
    ).SerializeToString()
    results = []
    for data_dir, workers in ((inline_dir, 0), (pooled_dir, 1)):
        service = start(data_dir, decode_workers=workers)
        try:
            response = export(service.port, request)
            assert response.partial_success.rejected_spans == 1
            with pytest.raises(grpc.RpcError) as info:
                export(service.port, b"\xff\xff")
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            if workers:
                executor = service.decoders._executor
                assert executor is not None
                for pid in list(executor._processes):  # type: ignore[attr-defined]
                    os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 60
                while True:  # as an OTLP exporter would: retry UNAVAILABLE
                    try:
                        export(service.port, tool_call_batch(1).SerializeToString())
                        break
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE
                        assert time.monotonic() < deadline
                        time.sleep(0.1)
                assert service.decoders.restarts >= 1
        finally:
            service.stop()
        results.append(
            stored(
                data_dir,
                "select call_id, tool, arguments, attributes from tool_calls where call_id like 'call-%' order by call_id",
            )
        )
    inline, pooled = results
    assert len(inline) == 20 and [r for r in pooled if r in inline] == inline


def test_forwarded_spans_are_redacted_and_reach_another_otlp_receiver(tmp_path: Path) -> None:
    backend = start(tmp_path / "backend")
    secret = "AKIAIOSFODNN7EXAMPLE"
    front = start(tmp_path / "front", forward=f"127.0.0.1:{backend.port}")
    try:
        attrs = callward_attributes(0, **{"gen_ai.tool.call.arguments": json.dumps({"k": secret})})
        export(front.port, build_request([SpanSpec(attributes=attrs)]).SerializeToString())
    finally:
        front.stop()  # drains the forward queue
        backend.stop()
    for data_dir in (tmp_path / "front", tmp_path / "backend"):
        rows = stored(data_dir, "select arguments from tool_calls")
        assert len(rows) == 1 and secret not in rows[0][0] and "[REDACTED:" in rows[0][0]
    for path in (tmp_path / "front").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_config_explicit_beats_environment_beats_default(tmp_path: Path) -> None:
    env = {
        "CALLWARD_COLLECTOR_DATA_DIR": str(tmp_path),
        "CALLWARD_COLLECTOR_BATCH_SIZE": "77",
        "CALLWARD_COLLECTOR_FSYNC": "no",
    }
    config = load_config(environ=env, batch_size=5)
    assert (config.data_dir, config.batch_size, config.fsync) == (tmp_path, 5, False)
    assert load_config(environ=env).batch_size == 77
    assert load_config(environ={}, data_dir=tmp_path).listen == "127.0.0.1:4317"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "data directory is required"),
        ({"data_dir": ".", "listen": "nowhere"}, "HOST:PORT"),
        ({"data_dir": ".", "batch_size": 0}, "batch_size must be positive"),
        ({"data_dir": ".", "decode_workers": -1}, "decode_workers"),
        ({"data_dir": ".", "idle_flush_s": -1}, "idle_flush_s must not be negative"),
        ({"data_dir": ".", "colour": "red"}, "unknown collector setting"),
    ],
)
def test_bad_config_is_refused(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(environ={}, **settings)


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ValueError, match="CALLWARD_COLLECTOR_BATCH_SIZE"):
        load_config(environ={"CALLWARD_COLLECTOR_BATCH_SIZE": "many"}, data_dir=".")


def test_a_second_collector_on_the_same_directory_is_refused(
    collector: Collector, tmp_path: Path
) -> None:
    with pytest.raises(OSError, match="another collector"):
        start(tmp_path)
    assert not export(collector.port, tool_call_batch(1).SerializeToString()).HasField(
        "partial_success"
    )


def test_a_full_disk_answers_unavailable_and_nothing_is_acked(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    assert collector.spool is not None

    def disk_full(payload: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(collector.spool, "append_locked", disk_full)
        with pytest.raises(grpc.RpcError) as info:
            export(collector.port, tool_call_batch(3).SerializeToString())
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # the client keeps the spans
    assert collector.pending_rows == 0
    export(collector.port, tool_call_batch(3).SerializeToString())
    assert collector.pending_rows == 3


def test_a_failed_flush_keeps_rows_in_memory_and_spool_until_it_succeeds(
    collector: Collector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert collector.writer is not None
    export(collector.port, tool_call_batch(4).SerializeToString())
    real_write = collector.writer.write

    def failing(table):
        raise OSError("disk on fire")

    monkeypatch.setattr(collector.writer, "write", failing)
    assert collector.flush() == 0
    assert collector.pending_rows == 4 and collector.stats.flush_failures == 1
    assert [p for _, p in Spool(tmp_path / SPOOL_DIR).recover()]  # still spooled
    monkeypatch.setattr(collector.writer, "write", real_write)
    assert collector.flush() == 4
    assert stored(tmp_path) == [(4,)]
    assert Spool(tmp_path / SPOOL_DIR).segments() == []


def test_the_enforcers_own_spans_round_trip(tmp_path: Path) -> None:
    """The contract with enforcer/telemetry.py: its call span fills the columns and its
    policy span passes the content-hash check and lands in D/policies."""
    from callward.enforcer.engine import Decision, Request
    from callward.enforcer.policy import compile_document
    from callward.enforcer.telemetry import CallRecorder

    service = start(tmp_path)
    policy = compile_document({"version": "1", "default": "deny"})
    exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{service.port}", insecure=True)
    recorder = CallRecorder("enforcer-under-test", exporter, synchronous=True)
    try:
        recorder.publish_policy(policy.version, policy.canonical, "inline")
        request = Request(
            tool="send_mail",
            arguments={"to": "a@example.com", "api_key": "sk-ant-api03-" + "A1b2" * 20},
            server="mail",
            grant="g1",
            agent_id="agent-1",
            session_id="s-1",
            call_id="c-1",
        )
        decision = Decision("deny", "/default", "denied by default", policy.version)
        span = recorder.begin(request, decision, mcp_session_id="m-1")
        assert span is not None
        span.end()
    finally:
        recorder.shutdown()
        service.stop()
    (row,) = stored(
        tmp_path,
        "select tool, decision, rule, message, policy_version, grant, server, agent_id,"
        " session_id, call_id, outcome, service_name, arguments, attributes from tool_calls",
    )
    assert row[:12] == (
        "send_mail", "deny", "/default", "denied by default", policy.version, "g1", "mail",
        "agent-1", "s-1", "c-1", "", "enforcer-under-test",
    )  # fmt: skip
    assert "sk-ant-api03" not in row[12] and json.loads(row[12])["to"] == "a@example.com"
    assert json.loads(row[13])["mcp.session.id"] == "m-1"
    saved = tmp_path / "policies" / f"{policy.version}.json"
    assert json.loads(saved.read_text()) == json.loads(policy.canonical)


def test_a_failed_start_releases_everything(collector: Collector, tmp_path: Path) -> None:
    other = tmp_path / "other"
    config = load_config(
        environ={}, data_dir=other, listen=f"127.0.0.1:{collector.port}", decode_workers=0
    )
    with pytest.raises(OSError):
        Collector(config).start()  # the port is taken
    again = start(other)  # the directory lock was released
    again.stop()
