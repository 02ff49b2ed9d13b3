"""Build OTLP trace requests from plain Python: for tests, benchmarks and load generators
that feed the collector without running an agent."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from callward import semconv
from callward.collector.decode import set_any_value


@dataclass
class SpanSpec:
    """One span to build; ids are random unless given."""

    name: str = semconv.tool_call_span_name("read_file")
    attributes: Mapping[str, Any] = field(default_factory=dict)
    trace_id: bytes = b""
    span_id: bytes = b""
    parent_span_id: bytes = b""
    start_ns: int = 0
    end_ns: int = 0
    status_code: int = 0
    status_message: str = ""

    def __post_init__(self) -> None:
        self.trace_id = self.trace_id or os.urandom(16)
        self.span_id = self.span_id or os.urandom(8)
        if not self.start_ns:
            self.start_ns = time.time_ns()
        if not self.end_ns:
            self.end_ns = self.start_ns + 1_000_000


def callward_attributes(i: int = 0, **overrides: Any) -> dict[str, Any]:
    """The attributes the enforcer puts on a tool-call span (a realistic default set)."""
    attrs: dict[str, Any] = {
        semconv.GEN_AI_OPERATION_NAME: semconv.GEN_AI_OPERATION_EXECUTE_TOOL,
        semconv.GEN_AI_TOOL_NAME: "read_file",
        semconv.GEN_AI_TOOL_CALL_ID: f"call-{i}",
        semconv.GEN_AI_AGENT_ID: "agent-7",
        semconv.GEN_AI_CONVERSATION_ID: "session-1",
        semconv.MCP_METHOD_NAME: semconv.MCP_METHOD_TOOLS_CALL,
        semconv.MCP_SESSION_ID: "mcp-1",
        semconv.GEN_AI_TOOL_CALL_ARGUMENTS: json.dumps({"path": f"/srv/data/file-{i}.txt"}),
        semconv.CALLWARD_DECISION: "allow",
        semconv.CALLWARD_RULE: "/tools/read_file",
        semconv.CALLWARD_POLICY_VERSION: "sha256:0123456789abcdef",
        semconv.CALLWARD_GRANT: "files-ro",
        semconv.CALLWARD_SERVER: "filesystem",
        semconv.CALLWARD_OUTCOME: "ok",
        semconv.CALLWARD_DURATION_MS: 1.25,
        semconv.CALLWARD_RESULT_BYTES: 512,
    }
    attrs.update(overrides)
    return attrs


def fill_span(span: Span, spec: SpanSpec) -> None:
    span.name = spec.name
    span.trace_id = spec.trace_id
    span.span_id = spec.span_id
    span.parent_span_id = spec.parent_span_id
    span.start_time_unix_nano = spec.start_ns
    span.end_time_unix_nano = spec.end_ns
    if spec.status_code:
        span.status.code = spec.status_code  # type: ignore[assignment]
        span.status.message = spec.status_message
    for key, value in spec.attributes.items():
        set_any_value(span.attributes.add(key=key).value, value)


def build_request(
    spans: Sequence[SpanSpec],
    resource: Mapping[str, Any] | None = None,
    scope: str = "callward",
) -> ExportTraceServiceRequest:
    """One ExportTraceServiceRequest holding ``spans`` under one resource and scope."""
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (resource or {semconv.SERVICE_NAME: "callward-enforcer"}).items():
        set_any_value(rs.resource.attributes.add(key=key).value, value)
    ss = rs.scope_spans.add()
    ss.scope.name = scope
    for spec in spans:
        fill_span(ss.spans.add(), spec)
    return request


def tool_call_batch(n: int, offset: int = 0) -> ExportTraceServiceRequest:
    """``n`` realistic callward tool-call spans in one request."""
    return build_request([SpanSpec(attributes=callward_attributes(offset + i)) for i in range(n)])
