"""The OTLP/gRPC endpoint with authentication on, over real loopback servers: an Export
without a valid credential is refused and leaves nothing behind; the standard exporter
and the enforcer's own exporter get in with a token; client certificates; the warning on
an exposed address."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from callward.collector.config import load_config
from callward.collector.otlp_build import SpanSpec, build_request, tool_call_batch
from callward.collector.receiver import EXPORT_METHOD
from callward.collector.service import SPOOL_DIR, Collector
from callward.collector.spool import Spool
from callward.enforcer.client import channel_credentials
from callward.enforcer.engine import Request
from callward.enforcer.messages import EnforcerService
from callward.enforcer.policy import compile_document
from callward.enforcer.server_cli import _recorder
from callward.enforcer.telemetry import POLICY_SPAN_NAME
from tests.certs import TestCA
from tests.collector.test_receiver import stored

pytestmark = pytest.mark.timeout(120)

TOKEN = "enforcer-to-collector-0123456789"


def tokens_file(folder: Path) -> Path:
    path = folder / "tokens.json"
    path.write_text(json.dumps({"tokens": [{"token": TOKEN, "grant": "enforcer"}]}))
    return path


def start(data_dir: Path, listen: str = "127.0.0.1:0", **settings: Any) -> Collector:
    config = load_config(
        environ={},
        data_dir=data_dir,
        listen=listen,
        decode_workers=0,
        idle_flush_s=0.0,
        flush_interval_s=60.0,
        **settings,
    )
    service = Collector(config)
    service.start()
    return service


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[Collector]:
    service = start(tmp_path / "data", tokens=str(tokens_file(tmp_path)))
    yield service
    service.stop()


def export(channel: grpc.Channel, data: bytes, metadata: Any = None) -> ExportTraceServiceResponse:
    call = channel.unary_unary(EXPORT_METHOD, request_serializer=None, response_deserializer=None)
    return ExportTraceServiceResponse.FromString(call(data, timeout=30, metadata=metadata))


def nothing_kept(service: Collector) -> None:
    assert service.pending_rows == 0
    assert [p for _, p in Spool(service.data_dir / SPOOL_DIR).recover()] == []
    assert service.flush() == 0
    assert not list(service.data_dir.rglob("*.parquet"))
    policies = service.data_dir / "policies"
    assert not policies.exists() or not any(policies.iterdir())


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", f"Bearer {TOKEN[:-1]}"),),
        (("authorization", TOKEN),),  # no scheme
        (("x-api-key", TOKEN),),
    ],
)
def test_an_export_without_a_valid_token_is_unauthenticated_and_nothing_is_stored(
    guarded: Collector, metadata: Any
) -> None:
    # Tool calls and a policy span: neither a row nor the policy file may be written.
    policy = compile_document({"version": "1", "default": "deny"})
    policy_span = SpanSpec(
        name=POLICY_SPAN_NAME,
        attributes={
            "callward.policy.version": policy.version,
            "callward.policy.document": policy.canonical,
        },
    )
    batch = tool_call_batch(5)
    batch.MergeFrom(build_request([policy_span]))
    with grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        for data in (batch.SerializeToString(), b"\xff\xff\xff"):  # the bytes go unread
            with pytest.raises(grpc.RpcError) as refused:
                export(channel, data, metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The same batch with the token is stored, policy file included.
        export(channel, batch.SerializeToString(), (("authorization", f"Bearer {TOKEN}"),))
    assert guarded.receiver is not None
    stats = guarded.receiver.stats
    assert (stats.unauthenticated_requests, stats.requests, stats.malformed_requests) == (2, 1, 0)
    assert guarded.flush() == 5
    assert (guarded.data_dir / "policies" / f"{policy.version}.json").is_file()


def test_nothing_of_a_refused_export_is_kept(guarded: Collector) -> None:
    with (
        grpc.insecure_channel(f"127.0.0.1:{guarded.port}") as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        export(channel, tool_call_batch(5).SerializeToString())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    nothing_kept(guarded)


def test_the_standard_exporter_with_the_token_is_stored(guarded: Collector) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "agent"}))
    exporter = OTLPSpanExporter(
        endpoint=f"127.0.0.1:{guarded.port}",
        insecure=True,
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"}
    with provider.get_tracer("t").start_as_current_span(
        "execute_tool search", attributes=attributes
    ):
        pass
    provider.shutdown()
    assert guarded.flush() == 1
    assert stored(guarded.data_dir, "select tool from tool_calls") == [("search",)]


@pytest.mark.parametrize("with_header", [True, False])
def test_the_enforcers_exporter_sends_the_token_from_the_otlp_headers_variable(
    guarded: Collector, monkeypatch: pytest.MonkeyPatch, with_header: bool
) -> None:
    if with_header:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{TOKEN}")
    else:
        monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raising=False)
    recorder = _recorder(f"http://127.0.0.1:{guarded.port}")  # what `callward enforcer` runs
    policy = compile_document({"version": "1", "default": "allow"})
    service = EnforcerService(policy, recorder=recorder)
    service.check_call(Request("search", {"q": "x"}, call_id="c-1"), 0)
    service.report_call("c-1", "ok")
    service.close()
    recorder.shutdown()
    assert guarded.receiver is not None
    if with_header:
        assert guarded.flush() == 1
        assert stored(guarded.data_dir, "select call_id, outcome from tool_calls") == [
            ("c-1", "ok")
        ]
        assert (guarded.data_dir / "policies" / f"{policy.version}.json").is_file()
    else:
        assert guarded.receiver.stats.unauthenticated_requests >= 1
        nothing_kept(guarded)


def test_client_certificates_are_required_when_a_client_ca_is_given(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    server = ca.issue("collector", server=True)
    agent = ca.issue("enforcer")
    service = start(
        tmp_path / "data",
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(ca.cert),
    )
    target = f"127.0.0.1:{service.port}"
    batch = tool_call_batch(3).SerializeToString()
    try:
        without = grpc.secure_channel(target, channel_credentials(ca.cert))
        with pytest.raises(grpc.RpcError) as refused:
            export(without, batch)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake failed
        without.close()
        nothing_kept(service)
        with grpc.secure_channel(
            target, channel_credentials(ca.cert, agent.cert, agent.key)
        ) as channel:
            export(channel, batch)
        assert service.flush() == 3
    finally:
        service.stop()


def test_the_enforcers_exporter_presents_a_client_certificate_from_the_otlp_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = TestCA(tmp_path / "ca")
    server, agent = ca.issue("collector", server=True), ca.issue("enforcer")
    service = start(
        tmp_path / "data",
        tls_cert=str(server.cert),
        tls_key=str(server.key),
        tls_client_ca=str(ca.cert),
    )
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca.cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(agent.cert))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(agent.key))
    try:
        recorder = _recorder(f"https://localhost:{service.port}")
        policy = compile_document({"version": "1", "default": "allow"})
        enforcer = EnforcerService(policy, recorder=recorder)
        enforcer.check_call(Request("search", {"q": "x"}, call_id="c-1"), 0)
        enforcer.report_call("c-1", "ok")
        recorder.shutdown()
        assert service.flush() == 1
    finally:
        service.stop()


def test_a_non_loopback_address_without_auth_is_one_loud_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def warned() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "without authentication" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="callward.collector"):
        start(tmp_path / "open", listen="0.0.0.0:0").stop()
    (line,) = warned()
    assert line.levelno == logging.WARNING and "--tokens FILE" in line.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="callward.collector"):
        start(tmp_path / "guarded", listen="0.0.0.0:0", tokens=str(tokens_file(tmp_path))).stop()
        start(tmp_path / "local").stop()
    assert warned() == []


def test_the_auth_settings_come_from_the_environment(tmp_path: Path) -> None:
    env = {
        "CALLWARD_COLLECTOR_DATA_DIR": str(tmp_path),
        "CALLWARD_COLLECTOR_TOKENS": "t.yaml",
        "CALLWARD_COLLECTOR_TLS_CERT": "c.pem",
        "CALLWARD_COLLECTOR_TLS_KEY": "k.pem",
        "CALLWARD_COLLECTOR_TLS_CLIENT_CA": "ca.pem",
    }
    config = load_config(environ=env, tokens="explicit.yaml")
    assert (config.tokens, config.tls_cert, config.tls_key, config.tls_client_ca) == (
        "explicit.yaml", "c.pem", "k.pem", "ca.pem",
    )  # fmt: skip
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        load_config(environ={**env, "CALLWARD_COLLECTOR_TLS_KEY": ""})
