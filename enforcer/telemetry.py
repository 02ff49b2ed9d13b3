"""One OpenTelemetry span per tool call, after the GenAI and MCP semantic conventions.

Used by the gRPC enforcer and the MCP proxy. Recording never breaks enforcement:
every failure here is caught, counted and logged once, never raised into the
decision path. Export goes through the SDK's BatchSpanProcessor and the standard
OTLP exporter, so ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` work as users expect.

Drops are never silent: a failed export, a span the batch queue had no room for, and a
span ended after shutdown are each counted in :class:`TelemetryStats` and logged once.
Arguments are redacted (``callward.redact``) before they become an attribute.

Each call span is assembled by :class:`CallSpan` and handed to the SDK processor as a
``ReadableSpan`` (see its docstring for why); sampling follows the SDK default
(parent-based, always on) unless ``OTEL_TRACES_SAMPLER`` names another sampler, which is
then asked per call. ``OTEL_SPAN_*`` attribute limits do not apply to call spans; their
one large attribute, the arguments, is capped at 64 KiB here.

Every policy version the enforcer loads is also published once as a
``callward.policy`` span carrying the canonical document, so the collector can keep
every enforced version (``D/policies/<version>.json``) for replay, even when enforcer
and collector run on different hosts.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace as trace_api
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from callward import semconv
from callward.enforcer.engine import Decision, Request
from callward.redact import default_redactor, redact_json_text, redact_text

log = logging.getLogger("callward.telemetry")

POLICY_SPAN_NAME = semconv.POLICY_SPAN_NAME  # re-exported: callers import it from here
_UNSET = Status(StatusCode.UNSET)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)


_TRACEPARENT = re.compile(
    r"^\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*$"
)


def _remote_parent(traceparent: str) -> SpanContext | None:
    """The caller's span from a W3C ``traceparent``; None when it is missing or invalid.

    Same rules as the SDK's TraceContextTextMapPropagator (the tests compare the two), at a
    fraction of its cost: it builds and tears down a Context per call."""
    m = _TRACEPARENT.match(traceparent)
    if m is None:
        return None
    version, trace_hex, span_hex, flags_hex, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    return SpanContext(
        trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(flags_hex, 16))
    )


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
# One encoder for every call: json.dumps with options builds a new one each time.
_ARGUMENTS_ENCODER = json.JSONEncoder(ensure_ascii=False, default=str)
DEFAULT_MAX_QUEUE_SIZE = 8192  # spans buffered while the backend is slow; OTEL_BSP_MAX_QUEUE_SIZE


def redact_arguments(arguments: Mapping[str, Any], max_chars: int = MAX_ARGUMENT_CHARS) -> str:
    """Arguments as redacted JSON text (secrets replaced by ``[REDACTED:kind]``).

    Redaction happens before truncation, so a cut can never expose half a secret. Oversize
    arguments become a JSON object that says so (the column stays valid JSON)."""
    text = redact_json_text(_ARGUMENTS_ENCODER.encode(arguments))
    if len(text) <= max_chars:
        return text
    return json.dumps(
        {semconv.CALLWARD_TRUNCATED: True, "chars": len(text), "prefix": text[: max_chars // 2]},
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
        self._inner = getattr(self, "_batch_processor", None)
        self._queue = getattr(self._inner, "_queue", None)  # SDK internals; None: not counted

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return
        with self._emit_lock:
            queue = self._queue
            if getattr(self._inner, "_shutdown", False):
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


_ATTRIBUTE_TYPES = (str, bool, int, float)
# Attributes redacted already (as JSON, or as the decision's free text).
_REDACTED_KEYS = frozenset((semconv.GEN_AI_TOOL_CALL_ARGUMENTS, semconv.CALLWARD_MESSAGE))


def _redact_strings(attrs: dict[str, Any]) -> None:
    """Redact the string attributes of a call span in place (tool name, ids, grant...:
    what a client sent is never trusted to be free of secrets). One screen for all of
    them (``Redactor.clean_texts``), so a call whose strings hold nothing costs one pass."""
    keys = [k for k, v in attrs.items() if type(v) is str and k not in _REDACTED_KEYS]
    values = [attrs[k] for k in keys]
    for key, value, clean in zip(keys, values, default_redactor().clean_texts(values), strict=True):
        if not clean:
            attrs[key] = redact_text(value)


def _attribute_value(value: Any) -> Any:
    """A value OTLP can carry: scalars as they are, anything else as text."""
    return value if type(value) is str or isinstance(value, _ATTRIBUTE_TYPES) else str(value)


class CallSpan:
    """An open span for one call; :meth:`end` records the outcome and closes it once.

    The span is assembled here and handed to the SDK's span processor as a
    ``ReadableSpan`` when it ends, instead of going through ``Tracer.start_span``: the
    SDK's generic span re-validates every attribute under a lock at start and at end, which
    cost about ten times what the call's decision does (benchmarks/telemetry.md). What
    reaches the processor and the exporter is the same SDK object either way, with the
    same resource, ids, parent and sampling decision. ``.span`` is kept for callers that
    set an extra attribute (``call.span.set_attribute(...)``).
    """

    __slots__ = (
        "_attributes",
        "_context",
        "_done",
        "_name",
        "_parent",
        "_recorder",
        "_start",
        "_status",
    )

    def __init__(
        self,
        recorder: CallRecorder,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        start_ns: int,
    ):
        self._recorder = recorder
        self._name = name
        self._context = context
        self._parent = parent
        self._attributes = attributes
        self._start = start_ns
        self._status = _UNSET
        self._done = False

    @property
    def span(self) -> CallSpan:
        return self

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return not self._done and self._context.trace_flags.sampled

    def set_attribute(self, key: str, value: Any) -> None:
        if not self._done:
            self._attributes[str(key)] = _attribute_value(value)

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_status(self, status: Status) -> None:
        if not self._done:
            self._status = status

    def end(
        self,
        outcome: str = "",
        duration_ms: float | None = None,
        result_bytes: int | None = None,
        error_type: str = "",
    ) -> None:
        if self._done:
            return
        recorder = self._recorder
        try:
            attrs = self._attributes
            if outcome:
                attrs[semconv.CALLWARD_OUTCOME] = str(outcome)
            if duration_ms is not None:
                attrs[semconv.CALLWARD_DURATION_MS] = float(duration_ms)
            if result_bytes is not None:
                attrs[semconv.CALLWARD_RESULT_BYTES] = int(result_bytes)
            if error_type:
                attrs[semconv.ERROR_TYPE] = str(error_type)
                self._status = Status(StatusCode.ERROR, str(error_type))
            self._done = True
            recorder.stats.spans_ended += 1
            if not self._context.trace_flags.sampled:
                return  # the sampler said no: nothing to export, nothing dropped
            recorder.processor.on_end(
                ReadableSpan(
                    name=self._name,
                    context=self._context,
                    parent=self._parent,
                    resource=recorder.resource,
                    attributes=attrs,
                    kind=SpanKind.INTERNAL,
                    status=self._status,
                    start_time=self._start,
                    end_time=time.time_ns(),
                    instrumentation_scope=recorder.scope,
                )
            )
        except Exception as e:
            self._done = True
            recorder.stats.record_errors += 1
            recorder.stats.log_once("end", "could not end span: %r", e)


def service_resource(default_service_name: str) -> Resource:
    """The resource of our spans: ``OTEL_RESOURCE_ATTRIBUTES`` and ``OTEL_SERVICE_NAME`` as
    the SDK reads them, with ``default_service_name`` only when the operator set none."""
    resource = Resource.create()
    if str(resource.attributes.get(semconv.SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({semconv.SERVICE_NAME: default_service_name}))
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
        max_queue_size: int | None = None,
    ):
        if max_queue_size is None:
            max_queue_size = max(1, _env_int("OTEL_BSP_MAX_QUEUE_SIZE", DEFAULT_MAX_QUEUE_SIZE))
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
        self.resource = self.provider.resource
        self.scope = InstrumentationScope("callward")
        # Only an operator-chosen sampler (OTEL_TRACES_SAMPLER) is consulted per call.
        self._sampler = self.provider.sampler if os.environ.get("OTEL_TRACES_SAMPLER") else None

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
            attrs: dict[str, Any] = {
                semconv.GEN_AI_OPERATION_NAME: semconv.GEN_AI_OPERATION_EXECUTE_TOOL,
                semconv.GEN_AI_TOOL_NAME: _attribute_value(req.tool),
                semconv.MCP_METHOD_NAME: semconv.MCP_METHOD_TOOLS_CALL,
                semconv.GEN_AI_TOOL_CALL_ARGUMENTS: redact_arguments(req.arguments),
                semconv.CALLWARD_DECISION: _attribute_value(decision.decision),
                semconv.CALLWARD_RULE: _attribute_value(decision.rule),
                semconv.CALLWARD_POLICY_VERSION: _attribute_value(decision.policy_version),
            }
            if decision.message:
                attrs[semconv.CALLWARD_MESSAGE] = redact_text(str(decision.message))
            for key, value in (
                (semconv.GEN_AI_TOOL_CALL_ID, req.call_id),
                (semconv.GEN_AI_AGENT_ID, req.agent_id),
                (semconv.GEN_AI_CONVERSATION_ID, req.session_id),
                (semconv.MCP_SESSION_ID, mcp_session_id),
                (semconv.CALLWARD_GRANT, req.grant),
                (semconv.CALLWARD_SERVER, req.server),
            ):
                if value:
                    attrs[key] = _attribute_value(value)
            if failure_mode:
                attrs[semconv.CALLWARD_FAILURE_MODE] = True
            _redact_strings(attrs)
            name = semconv.tool_call_span_name(attrs[semconv.GEN_AI_TOOL_NAME])
            parent = _remote_parent(traceparent) if traceparent else None
            context = self._new_context(name, parent, attrs)
            span = CallSpan(self, name, context, parent, attrs, start_time_ns or time.time_ns())
            self.stats.spans_started += 1
            return span
        except Exception as e:
            self.stats.record_errors += 1
            self.stats.log_once("begin", "could not record call span: %r", e)
            return None

    def _new_context(
        self, name: str, parent: SpanContext | None, attrs: dict[str, Any]
    ) -> SpanContext:
        """Ids and the sampling decision, as the SDK's tracer would make them."""
        ids = self.provider.id_generator
        trace_id = parent.trace_id if parent is not None else ids.generate_trace_id()
        if self._sampler is None:  # the SDK default, parentbased_always_on, without the call
            sampled = parent is None or parent.trace_flags.sampled
        else:
            result = self._sampler.should_sample(
                trace_api.set_span_in_context(trace_api.NonRecordingSpan(parent))
                if parent is not None
                else None,
                trace_id,
                name,
                SpanKind.INTERNAL,
                attrs,
            )
            sampled = result.decision.is_sampled()
            attrs.update(result.attributes or {})
        return SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=_SAMPLED if sampled else _NOT_SAMPLED,
            trace_state=parent.trace_state if parent is not None else None,
        )

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
                    semconv.CALLWARD_POLICY_VERSION: version,
                    semconv.CALLWARD_POLICY_DOCUMENT: canonical_document,
                    semconv.CALLWARD_POLICY_SOURCE: source,
                    semconv.CALLWARD_POLICY_LOADED_AT: time.time(),
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
