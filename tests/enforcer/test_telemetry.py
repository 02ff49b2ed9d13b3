"""Tests for enforcer/telemetry.py: span names and attributes after the GenAI/MCP semantic
conventions, traceparent parenting, redaction, drop counting (failing exporter, tiny queue),
the OTEL_* variables, and export to a real OTLP/gRPC receiver."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace as trace_api
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from callward.enforcer.engine import Decision, Request
from callward.enforcer.telemetry import (
    MAX_ARGUMENT_CHARS,
    POLICY_SPAN_NAME,
    CallRecorder,
    _remote_parent,
    redact_arguments,
    service_resource,
)
from tests.collector.test_forward import Backend, free_port, wait_until
from tests.test_redact import PLANTED

pytestmark = pytest.mark.timeout(120)

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
ALLOW = Decision("allow", "/rules/0", "", "v1")
DENY = Decision("deny", "/rules/2", "writes to /etc are not allowed", "v1")


def request(**kw: Any) -> Request:
    base: dict[str, Any] = {
        "tool": "read_file",
        "arguments": {"path": "/tmp/a.txt"},
        "server": "fs",
        "grant": "dev",
        "agent_id": "agent-7",
        "session_id": "sess-1",
        "call_id": "call-42",
    }
    base.update(kw)
    return Request(**base)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def recorder(exporter: InMemorySpanExporter) -> Iterator[CallRecorder]:
    rec = CallRecorder("callward-enforcer", exporter, synchronous=True)
    yield rec
    rec.shutdown()


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1
    return spans[0]


def test_span_name_and_semantic_convention_attributes(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    call = recorder.begin(request(), ALLOW, mcp_session_id="mcp-9")
    assert call is not None
    call.end(outcome="ok", duration_ms=12.5, result_bytes=300)
    span = only_span(exporter)
    assert span.name == "execute_tool read_file"
    attrs = dict(span.attributes or {})
    assert attrs == {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": "read_file",
        "gen_ai.tool.call.id": "call-42",
        "gen_ai.agent.id": "agent-7",
        "gen_ai.conversation.id": "sess-1",
        "gen_ai.tool.call.arguments": '{"path": "/tmp/a.txt"}',
        "mcp.method.name": "tools/call",
        "mcp.session.id": "mcp-9",
        "callward.decision": "allow",
        "callward.rule": "/rules/0",
        "callward.policy.version": "v1",
        "callward.grant": "dev",
        "callward.server": "fs",
        "callward.outcome": "ok",
        "callward.duration_ms": 12.5,
        "callward.result_bytes": 300,
    }
    assert span.resource.attributes["service.name"] == "callward-enforcer"
    assert span.status.status_code == StatusCode.UNSET
    assert recorder.stats.spans_started == recorder.stats.spans_ended == 1


def test_deny_and_error_outcome(recorder: CallRecorder, exporter: InMemorySpanExporter) -> None:
    call = recorder.begin(request(call_id="", agent_id=""), DENY, failure_mode=True)
    assert call is not None
    call.end(outcome="error", error_type="PermissionError")
    call.end(outcome="ok")  # a second end is ignored
    span = only_span(exporter)
    attrs = dict(span.attributes or {})
    assert attrs["callward.decision"] == "deny"
    assert attrs["callward.message"] == "writes to /etc are not allowed"
    assert attrs["error.type"] == "PermissionError"
    assert attrs["callward.outcome"] == "error"
    assert attrs["callward.failure_mode"] is True
    assert "gen_ai.tool.call.id" not in attrs and "gen_ai.agent.id" not in attrs
    assert span.status.status_code == StatusCode.ERROR
    assert recorder.stats.spans_ended == 1


def test_traceparent_makes_the_span_a_child(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    call = recorder.begin(request(), ALLOW, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert call is not None
    call.end()
    span = only_span(exporter)
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    assert span.parent.is_remote


@pytest.mark.parametrize(
    "traceparent",
    [
        "garbage",
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        "00-xyz-abc-01",
        "\x00" * 60,
        "9" * 5000,
    ],
)
def test_bad_traceparent_gives_a_root_span(
    recorder: CallRecorder, exporter: InMemorySpanExporter, traceparent: str
) -> None:
    call = recorder.begin(request(), ALLOW, traceparent=traceparent)
    assert call is not None
    call.end()
    span = only_span(exporter)
    assert span.parent is None


def test_arguments_and_message_are_redacted(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    args = {kind: f"value {text}" for kind, (text, _secret) in PLANTED.items()}
    args["password"] = "hunter2"
    decision = Decision("deny", "/rules/1", f"bad key {PLANTED['aws_access_key'][0]}", "v1")
    call = recorder.begin(request(arguments=args), decision)
    assert call is not None
    call.end()
    attrs = dict(only_span(exporter).attributes or {})
    text = str(attrs["gen_ai.tool.call.arguments"])
    for kind, (_text, secret) in PLANTED.items():
        assert secret not in text
        assert f"[REDACTED:{kind}]" in text
    assert json.loads(text)["password"] == "[REDACTED:password]"
    assert attrs["callward.message"] == "bad key [REDACTED:aws_access_key]"


def test_span_name_and_string_attributes_are_redacted(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    """What the client sent (tool name, ids, grant, server) never carries a secret out."""
    token = PLANTED["github_token"][0]
    call = recorder.begin(
        request(tool=f"run {token}", call_id=token, agent_id=f"agent {token}", server=token),
        ALLOW,
        mcp_session_id=token,
    )
    assert call is not None
    call.end(outcome="ok")
    span = only_span(exporter)
    assert token not in span.name and "[REDACTED:github_token]" in span.name
    assert token not in json.dumps(dict(span.attributes or {}))
    assert span.attributes["gen_ai.tool.call.id"] == "[REDACTED:github_token]"


def test_oversize_arguments_are_truncated_after_redaction() -> None:
    secret = PLANTED["github_token"][0]
    text = redact_arguments({"blob": "x" * (MAX_ARGUMENT_CHARS * 2), "token": secret})
    parsed = json.loads(text)
    assert parsed["callward.truncated"] is True
    assert parsed["chars"] > MAX_ARGUMENT_CHARS
    assert len(text) < MAX_ARGUMENT_CHARS
    assert secret not in text


def test_odd_arguments_never_raise(recorder: CallRecorder, exporter: InMemorySpanExporter) -> None:
    circular: dict[str, Any] = {}
    circular["self"] = circular
    assert recorder.begin(request(arguments=circular), ALLOW) is None
    assert recorder.stats.record_errors == 1
    for arguments in ({"b": b"\xff\xfe"}, {"s": "\ud800"}, {"o": object()}, {1: 2}):
        call = recorder.begin(request(arguments=arguments, tool="t" * 10_000), ALLOW)
        assert call is not None
        call.end()
    assert len(exporter.get_finished_spans()) == 4


def test_policy_is_published_once_per_version(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    recorder.publish_policy("v1", '{"version": 1}', "policy.yaml")
    recorder.publish_policy("v1", '{"version": 1}', "policy.yaml")
    recorder.publish_policy("v2", '{"version": 2}')
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [POLICY_SPAN_NAME, POLICY_SPAN_NAME]
    assert [dict(s.attributes or {})["callward.policy.version"] for s in spans] == ["v1", "v2"]


def test_extra_attributes_set_through_span_before_end(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    call = recorder.begin(request(), ALLOW)
    assert call is not None
    assert call.span.is_recording()
    call.span.set_attribute("callward.pending_closed", "expired")
    call.span.set_attributes({"odd": object(), "n": 3})
    call.end(outcome="ok")
    call.span.set_attribute("late", "ignored")
    assert not call.span.is_recording()
    attrs = dict(only_span(exporter).attributes or {})
    assert attrs["callward.pending_closed"] == "expired"
    assert attrs["n"] == 3 and str(attrs["odd"]).startswith("<object")
    assert "late" not in attrs


def test_unsampled_parent_is_respected(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    call = recorder.begin(request(), ALLOW, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-00")
    assert call is not None
    call.end()
    assert exporter.get_finished_spans() == ()
    assert recorder.stats.spans_dropped == 0 and recorder.stats.spans_ended == 1


@pytest.mark.parametrize(("sampler", "exported"), [("always_off", 0), ("always_on", 1)])
def test_otel_traces_sampler_is_consulted(
    monkeypatch: pytest.MonkeyPatch, sampler: str, exported: int
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", sampler)
    exporter = InMemorySpanExporter()
    rec = CallRecorder(exporter=exporter, synchronous=True)
    call = rec.begin(request(), ALLOW, traceparent=f"00-{TRACE_ID}-{PARENT_ID}-01")
    assert call is not None
    call.end()
    rec.shutdown()
    assert len(exporter.get_finished_spans()) == exported


def test_span_ids_are_unique_and_valid(
    recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    for _ in range(200):
        call = recorder.begin(request(), ALLOW)
        assert call is not None
        call.end()
    contexts = [s.context for s in exporter.get_finished_spans()]
    assert all(c is not None and c.is_valid for c in contexts)
    assert len({c.span_id for c in contexts if c is not None}) == 200
    assert len({c.trace_id for c in contexts if c is not None}) == 200


_hex = st.text(alphabet="0123456789abcdef", min_size=0, max_size=34)


@given(
    st.one_of(
        st.builds(
            lambda v, t, s, f, rest: f"{v}-{t}-{s}-{f}{rest}",
            st.sampled_from(["00", "01", "ff", "0g", "cc"]),
            st.one_of(_hex, st.just("0" * 32), st.just(TRACE_ID)),
            st.one_of(_hex, st.just("0" * 16), st.just(PARENT_ID)),
            st.sampled_from(["00", "01", "03", "ff", "1"]),
            st.sampled_from(["", "-", "-extra", " ", "\n"]),
        ),
        st.text(max_size=80),
    )
)
def test_traceparent_parsing_agrees_with_the_sdk_propagator(traceparent: str) -> None:
    """callward parses traceparent itself (for speed); it must decide exactly as the SDK."""
    sdk = trace_api.get_current_span(
        TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    ).get_span_context()
    ours = _remote_parent(traceparent)
    if not sdk.is_valid:
        assert ours is None
    else:
        assert ours is not None
        assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
            sdk.trace_id,
            sdk.span_id,
            sdk.trace_flags,
            sdk.is_remote,
        )


# --- drops ---------------------------------------------------------------------------------


class FailingExporter(SpanExporter):
    def __init__(self, raise_instead: bool = False) -> None:
        self.raise_instead = raise_instead
        self.calls = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        if self.raise_instead:
            raise RuntimeError("backend exploded")
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("raise_instead", [False, True])
def test_failed_exports_are_counted_and_logged_once(
    raise_instead: bool, caplog: pytest.LogCaptureFixture
) -> None:
    rec = CallRecorder(exporter=FailingExporter(raise_instead), synchronous=True)
    with caplog.at_level(logging.WARNING, logger="callward.telemetry"):
        for _ in range(5):
            call = rec.begin(request(), ALLOW)
            assert call is not None
            call.end(outcome="ok")  # never raises into the caller
    rec.shutdown()
    assert rec.stats.export_failures == 5
    assert rec.stats.spans_dropped == 5
    assert rec.stats.spans_ended == 5
    failed = [r for r in caplog.records if "export failed" in r.getMessage()]
    assert len(failed) == 1


class BlockingExporter(SpanExporter):
    """Holds the first export until released, so the processor's queue fills up."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(60)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


def test_tiny_queue_drops_are_counted(caplog: pytest.LogCaptureFixture) -> None:
    blocking = BlockingExporter()
    rec = CallRecorder(exporter=blocking, max_queue_size=4)
    with caplog.at_level(logging.WARNING, logger="callward.telemetry"):
        first = rec.begin(request(), ALLOW)
        assert first is not None
        first.end()
        blocking.entered.wait(30)  # the worker now holds one span and is stuck exporting
        for _ in range(50):
            call = rec.begin(request(), ALLOW)
            assert call is not None
            call.end()  # returns at once although the exporter is stuck
        blocking.release.set()
        assert rec.force_flush(30_000)
    rec.shutdown()
    assert rec.stats.spans_ended == 51
    assert rec.stats.queue_full_drops == 46  # 1 exporting + 4 queued survive
    assert blocking.exported + rec.stats.spans_dropped == 51
    assert any("queue full" in r.getMessage() for r in caplog.records)


def test_otel_bsp_max_queue_size_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "3")
    blocking = BlockingExporter()
    rec = CallRecorder(exporter=blocking)
    first = rec.begin(request(), ALLOW)
    assert first is not None
    first.end()
    blocking.entered.wait(30)
    for _ in range(10):
        call = rec.begin(request(), ALLOW)
        assert call is not None
        call.end()
    blocking.release.set()
    rec.shutdown()
    assert rec.stats.queue_full_drops == 7


def test_spans_after_shutdown_are_counted_as_dropped() -> None:
    exporter = InMemorySpanExporter()
    rec = CallRecorder(exporter=exporter)
    rec.shutdown()
    call = rec.begin(request(), ALLOW)
    assert call is not None
    call.end()
    assert exporter.get_finished_spans() == ()
    assert rec.stats.spans_dropped == 1


# --- OTEL_* environment and a real OTLP receiver -------------------------------------------


def test_otel_service_name_and_resource_attributes_override_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert service_resource("callward-proxy").attributes["service.name"] == "callward-proxy"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci,team=sec")
    res = service_resource("callward-proxy").attributes
    assert res["service.name"] == "callward-proxy" and res["deployment.environment"] == "ci"
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=from-attrs")
    assert service_resource("callward-proxy").attributes["service.name"] == "from-attrs"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gateway-eu")
    assert service_resource("callward-proxy").attributes["service.name"] == "gateway-eu"


def test_default_exporter_follows_otel_exporter_otlp_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = Backend(free_port())
    backend.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{backend.port}")
        monkeypatch.setenv("OTEL_SERVICE_NAME", "env-enforcer")
        rec = CallRecorder()
        call = rec.begin(request(), ALLOW)
        assert call is not None
        call.end(outcome="ok")
        assert rec.force_flush(20_000)
        wait_until(lambda: len(backend.receiver.received) == 1)
        rec.shutdown()
    finally:
        backend.stop()
    assert rec.stats.spans_dropped == 0


def test_unreachable_endpoint_is_counted_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")
    rec = CallRecorder()
    for _ in range(3):
        call = rec.begin(request(), ALLOW)
        assert call is not None
        call.end()
    rec.force_flush(10_000)
    wait_until(lambda: rec.stats.spans_dropped == 3, timeout=60)
    rec.shutdown()
    assert rec.stats.export_failures >= 1
