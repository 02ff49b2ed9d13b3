"""One OpenTelemetry span per tool call, after the GenAI and MCP semantic conventions.

Used by the gRPC enforcer and the MCP proxy. Recording never breaks enforcement:
every failure here is caught, counted and logged once, never raised into the
decision path. Export goes through the SDK's BatchSpanProcessor and the standard
OTLP exporter, so ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` work as users expect.

Every policy version the enforcer loads is also published once as a
``callward.policy`` span carrying the canonical document, so the collector can keep
every enforced version (``D/policies/<version>.json``) for replay, even when enforcer
and collector run on different hosts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from collector.redact import redact_json_text, redact_text
from enforcer.engine import Decision, Request

log = logging.getLogger("callward.telemetry")

POLICY_SPAN_NAME = "callward.policy"
_PROPAGATOR = TraceContextTextMapPropagator()


@dataclass
class TelemetryStats:
    """Counters an operator can read (and tests assert on)."""

    spans_started: int = 0
    spans_ended: int = 0
    export_failures: int = 0
    spans_dropped: int = 0
    record_errors: int = 0
    queue_full_drops: int = 0
    _logged: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def count_drop(self, kind: str, msg: str, *args: Any) -> None:
        with self._lock:
            self.spans_dropped += 1
            if kind == "queue_full":
                self.queue_full_drops += 1
        self.log_once(kind, msg + " (counted in stats.spans_dropped)", *args)

    def log_once(self, kind: str, msg: str, *args: Any) -> None:
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(msg, *args)


class _CountingExporter(SpanExporter):
    """Wraps an exporter so that failed exports are counted and logged, never raised."""

    def __init__(self, inner: SpanExporter, stats: TelemetryStats):
        self.inner = inner
        self.stats = stats

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as e:  # an exporter bug must not kill the export thread
            result = SpanExportResult.FAILURE
            self.stats.log_once("export_exc", "span export raised %r; spans dropped", e)
        if result != SpanExportResult.SUCCESS:
            with self.stats._lock:
                self.stats.export_failures += 1
                self.stats.spans_dropped += len(spans)
            self.stats.log_once(
                "export_fail",
                "span export failed; %d span(s) dropped (counted in stats)",
                len(spans),
            )
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


MAX_ARGUMENT_CHARS = 64 * 1024


def redact_arguments(arguments: Mapping[str, Any], max_chars: int = MAX_ARGUMENT_CHARS) -> str:
    """Arguments as redacted JSON text (secrets replaced by ``[REDACTED:kind]``).

    Redaction happens before truncation, so a cut can never expose half a secret. Oversize
    arguments become a JSON object that says so (the column stays valid JSON)."""
    text = redact_json_text(json.dumps(arguments, ensure_ascii=False, default=str))
    if len(text) <= max_chars:
        return text
    return json.dumps(
        {"callward.truncated": True, "chars": len(text), "prefix": text[: max_chars // 2]},
        ensure_ascii=False,
    )


class _CountingBatchProcessor(BatchSpanProcessor):
    """The SDK's batch processor, but a span it drops because its queue is full (or because
    it was shut down) is counted and logged; the SDK itself only drops it."""

    def __init__(self, exporter: SpanExporter, stats: TelemetryStats, **kw: Any):
        super().__init__(exporter, **kw)
        self._stats = stats
        self._max_queue = int(kw.get("max_queue_size") or 2048)
        self._emit_lock = threading.Lock()  # check-then-append must not race another on_end

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._emit_lock:
            inner = getattr(self, "_batch_processor", None)
            queue = getattr(inner, "_queue", None)
            if getattr(inner, "_shutdown", False):
                self._stats.count_drop("shutdown", "span ended after telemetry shutdown; dropped")
            elif queue is not None and len(queue) >= self._max_queue:
                # The SDK's deque discards its oldest span to make room for this one.
                self._stats.count_drop(
                    "queue_full",
                    "span export queue full (%d spans; backend slow or down): dropping spans",
                    self._max_queue,
                )
            super().on_end(span)


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        log.warning("%s is not an integer; using %d", name, default)
        return default


class CallSpan:
    """An open span for one call; :meth:`end` records the outcome and closes it once."""

    __slots__ = ("_done", "_recorder", "span")

    def __init__(self, recorder: CallRecorder, span: Any):
        self._recorder = recorder
        self.span = span
        self._done = False

    def end(
        self,
        outcome: str = "",
        duration_ms: float | None = None,
        result_bytes: int | None = None,
        error_type: str = "",
    ) -> None:
        if self._done:
            return
        self._done = True
        try:
            s = self.span
            if outcome:
                s.set_attribute("callward.outcome", outcome)
            if duration_ms is not None:
                s.set_attribute("callward.duration_ms", float(duration_ms))
            if result_bytes is not None:
                s.set_attribute("callward.result_bytes", int(result_bytes))
            if error_type:
                s.set_attribute("error.type", error_type)
                s.set_status(Status(StatusCode.ERROR, error_type))
            s.end()
            self._recorder.stats.spans_ended += 1
        except Exception as e:
            self._recorder.stats.record_errors += 1
            self._recorder.stats.log_once("end", "could not end span: %r", e)


def service_resource(default_service_name: str) -> Resource:
    """The resource of our spans: ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` as
    the SDK reads them, with ``default_service_name`` only when the operator set none."""
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": default_service_name}))
    return resource


class CallRecorder:
    """Builds and exports the span of each call. ``exporter=None`` means the OTLP/gRPC
    exporter configured from ``OTEL_EXPORTER_OTLP_*`` variables; pass an in-memory exporter in
    tests. ``service_name`` is a default: ``OTEL_SERVICE_NAME`` (or ``service.name`` in
    ``OTEL_RESOURCE_ATTRIBUTES``) overrides it, as in every OTel SDK.

    ``synchronous=True`` exports inline (tests); otherwise a batch processor exports on its
    own thread and a full queue drops spans, counted in ``stats`` and logged."""

    def __init__(
        self,
        service_name: str = "callward-enforcer",
        exporter: SpanExporter | None = None,
        *,
        synchronous: bool = False,
        max_queue_size: int = 8192,
    ):
        self.stats = TelemetryStats()
        self._published: set[str] = set()
        self._lock = threading.Lock()
        self.provider = TracerProvider(resource=service_resource(service_name))
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        wrapped = _CountingExporter(exporter, self.stats)
        if synchronous:
            self.processor: Any = SimpleSpanProcessor(wrapped)
        else:
            self.processor = _CountingBatchProcessor(
                wrapped,
                self.stats,
                max_queue_size=max_queue_size,
                max_export_batch_size=min(512, max_queue_size),
                schedule_delay_millis=_env_int("OTEL_BSP_SCHEDULE_DELAY", 500),
            )
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("callward")

    def begin(
        self,
        req: Request,
        decision: Decision,
        *,
        traceparent: str = "",
        mcp_session_id: str = "",
        failure_mode: bool = False,
        start_time_ns: int | None = None,
    ) -> CallSpan | None:
        """Open the span of one call; returns None (counted) if recording failed."""
        try:
            ctx = _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None
            attrs: dict[str, Any] = {
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": req.tool,
                "mcp.method.name": "tools/call",
                "gen_ai.tool.call.arguments": redact_arguments(req.arguments),
                "callward.decision": decision.decision,
                "callward.rule": decision.rule,
                "callward.policy.version": decision.policy_version,
            }
            if decision.message:
                attrs["callward.message"] = redact_text(decision.message)
            for key, value in (
                ("gen_ai.tool.call.id", req.call_id),
                ("gen_ai.agent.id", req.agent_id),
                ("gen_ai.conversation.id", req.session_id),
                ("mcp.session.id", mcp_session_id),
                ("callward.grant", req.grant),
                ("callward.server", req.server),
            ):
                if value:
                    attrs[key] = value
            if failure_mode:
                attrs["callward.failure_mode"] = True
            span = self.tracer.start_span(
                f"execute_tool {req.tool}",
                context=ctx,
                kind=SpanKind.INTERNAL,
                attributes=attrs,
                start_time=start_time_ns,
            )
            self.stats.spans_started += 1
            return CallSpan(self, span)
        except Exception as e:
            self.stats.record_errors += 1
            self.stats.log_once("begin", "could not record call span: %r", e)
            return None

    def publish_policy(self, version: str, canonical_document: str, source: str = "") -> None:
        """Emit the policy document once per version so the collector can keep it."""
        with self._lock:
            if version in self._published:
                return
            self._published.add(version)
        try:
            span = self.tracer.start_span(
                POLICY_SPAN_NAME,
                attributes={
                    "callward.policy.version": version,
                    "callward.policy.document": canonical_document,
                    "callward.policy.source": source,
                    "callward.policy.loaded_at": time.time(),
                },
            )
            span.end()
        except Exception as e:
            self.stats.record_errors += 1
            self.stats.log_once("policy", "could not publish policy span: %r", e)

    def force_flush(self, timeout_millis: int = 10000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception as e:
            self.stats.log_once("shutdown", "telemetry shutdown failed: %r", e)
