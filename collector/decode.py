"""OTLP spans into tool-call rows (collector/schema.py's TOOL_CALL_SCHEMA).

Which spans are tool calls: ``gen_ai.operation.name == "execute_tool"`` or a span name
starting with ``execute_tool`` (the OTel GenAI convention), whoever emitted them. Spans
named ``callward.policy`` carry a policy document and come back as :class:`PolicyDocument`
instead of rows. Every other span is accepted and ignored.

What decoding promises:

- Every string that reaches a row is redacted (``collector.redact``), whatever the span's
  source, and no longer than ``max_value_bytes`` (cut there, with a ``[TRUNCATED:<n>
  bytes]`` marker appended).
- Odd attribute types never fail a span: a mapped column takes a value of the wrong
  type as JSON text (or null for numbers), arrays and maps become JSON.
- A span is rejected, with a reason, only when it cannot be a record: a trace or span id
  of the wrong length or all zero, a missing start or end time, an end before the start,
  or a start further in the future than ``max_future_skew_s``.

Decoding is pure: the clock is an argument, nothing is written here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from collector.redact import default_redactor
from collector.schema import DECISIONS, OUTCOMES, TOOL_CALL_SCHEMA

TOOL_OPERATION = "execute_tool"
POLICY_SPAN_NAME = "callward.policy"
TRUNCATION_MARKER = "[TRUNCATED:{size} bytes]"
DEFAULT_MAX_VALUE_BYTES = 64 * 1024
DEFAULT_MAX_FUTURE_SKEW_S = 24 * 3600.0
MAX_REASONS = 5

# Attribute -> text column. Numbers, arguments and enums are handled separately below.
_TEXT_COLUMNS = {
    "gen_ai.tool.call.id": "call_id",
    "gen_ai.agent.id": "agent_id",
    "gen_ai.conversation.id": "session_id",
    "callward.grant": "grant",
    "callward.server": "server",
    "gen_ai.tool.name": "tool",
    "callward.rule": "rule",
    "callward.message": "message",
    "callward.policy.version": "policy_version",
    "error.type": "error_type",
}
_ARGUMENTS = "gen_ai.tool.call.arguments"
_DECISION = "callward.decision"
_OUTCOME = "callward.outcome"
_DURATION = "callward.duration_ms"
_RESULT_BYTES = "callward.result_bytes"
_OPERATION = "gen_ai.operation.name"
_SERVICE_NAME = "service.name"
_POLICY_VERSION = "callward.policy.version"
_POLICY_DOCUMENT = "callward.policy.document"
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,127}")
# How each attribute key is handled: a column name (text columns) or one of these codes.
_K_ARGUMENTS, _K_DECISION, _K_OUTCOME, _K_DURATION, _K_RESULT_BYTES, _K_OPERATION = range(6)
_KIND: dict[str, str | int] = {
    **_TEXT_COLUMNS,
    _ARGUMENTS: _K_ARGUMENTS,
    _DECISION: _K_DECISION,
    _OUTCOME: _K_OUTCOME,
    _DURATION: _K_DURATION,
    _RESULT_BYTES: _K_RESULT_BYTES,
    _OPERATION: _K_OPERATION,
}
_EMPTY_ROW: dict[str, Any] = {
    **{column: "" for column in _TEXT_COLUMNS.values()},
    "arguments": "",
    "decision": "",
    "outcome": "",
    "duration_ms": None,
    "result_bytes": None,
}
_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_NS_PER_US = 1000
# Values this short are cached: ids, tool names and enums repeat across spans.
_CACHEABLE_CHARS = 256
_CACHE_SIZE = 8192  # per cache; unique values (call ids) churn it, repeated ones stay


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds applied while decoding (see collector/README.md)."""

    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    max_future_skew_s: float = DEFAULT_MAX_FUTURE_SKEW_S

    @property
    def max_attributes_bytes(self) -> int:
        return 4 * self.max_value_bytes


@dataclass(frozen=True)
class PolicyDocument:
    """A policy version announced by an enforcer (a ``callward.policy`` span)."""

    version: str
    document: str


@dataclass
class DecodeResult:
    """Rows of the tool-call spans of one request, what was rejected and why."""

    table: pa.Table
    policies: list[PolicyDocument] = field(default_factory=list)
    spans_seen: int = 0
    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def error_message(self) -> str:
        """The OTLP ``partial_success.error_message``: a count and the first reasons."""
        if not self.rejected:
            return ""
        head = "; ".join(self.reasons[:MAX_REASONS])
        more = " ..." if self.rejected > MAX_REASONS else ""
        return f"{self.rejected} span(s) rejected: {head}{more}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes plus a marker saying the original size."""
    if len(text) * 4 <= limit:
        return text
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore") + TRUNCATION_MARKER.format(size=len(raw))


class _Redaction:
    """Redacts with the shared redactor, caching short values and bounding huge ones."""

    def __init__(self, limits: DecodeLimits):
        self.limit = limits.max_value_bytes
        redactor = default_redactor()
        self._redact_value = redactor.redact_value
        self._redact_text = redactor.redact_text
        self._redact_json = redactor.redact_json_text
        # (key, value) -> redacted, clipped text. Ids, tool names and enums repeat across
        # spans; the cache is cleared when full rather than tracked as an LRU (cheaper).
        self._cache: dict[tuple[str, str], str] = {}
        self.plain_cache: dict[str, str] = {}  # the same for values under non-secret keys

    def _bounded(self, redact: Callable[[str], Any], value: str) -> str:
        """``redact(value)`` cut to the limit. Only a little more than is kept is redacted,
        so a secret straddling the cut is still caught without running the patterns over
        megabytes that are about to be dropped; the marker gives the original size."""
        limit = self.limit
        if len(value) * 4 <= limit:
            out = redact(value)
            return out if isinstance(out, str) else str(out)
        head = value[: 4 * limit]
        out = redact(head)
        out = out if isinstance(out, str) else str(out)
        raw = out.encode("utf-8")
        if head is value and len(raw) <= limit:
            return out
        size = len(value.encode("utf-8"))
        return raw[:limit].decode("utf-8", "ignore") + TRUNCATION_MARKER.format(size=size)

    def text(self, key: str, value: str) -> str:
        """A string attribute, redacted (key-aware: a value under a key like ``password``
        is replaced whole) and cut to the limit."""
        ck = (key, value)
        out = self._cache.get(ck)
        if out is not None:
            return out
        out = self._bounded(lambda v: self._redact_value(key, v), value)
        if len(value) <= _CACHEABLE_CHARS:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            self._cache[ck] = out
        return out

    def plain(self, value: str) -> str:
        """A value of a mapped column (ids, names: keys that name no secret), redacted by
        the secret patterns and cut to the limit. The hot path: callers look in
        :attr:`plain_cache` first."""
        out = self.plain_cache.get(value)
        if out is None:
            out = self._bounded(self._redact_text, value)
            if len(value) <= _CACHEABLE_CHARS:
                if len(self.plain_cache) >= _CACHE_SIZE:
                    self.plain_cache.clear()
                self.plain_cache[value] = out
        return out

    def value(self, key: str, value: Any) -> Any:
        """Any attribute value (scalars, lists, maps), every string in it redacted and cut."""
        if isinstance(value, str):
            return self.text(key, value)
        if isinstance(value, list):
            return [self.value(key, v) for v in value]
        if isinstance(value, dict):
            return {self.text("", k): self.value(k, v) for k, v in value.items()}
        return self._redact_value(key, value)

    def arguments(self, value: Any) -> str:
        text = value if isinstance(value, str) else _json_text(value)
        return self._bounded(self._redact_json, text)


def any_value(v: AnyValue) -> Any:
    """An OTLP AnyValue as plain JSON-able Python (bytes as base64, non-finite floats as text)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        d = v.double_value
        return d if math.isfinite(d) else repr(d)
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(v.bytes_value).decode("ascii")
    return None


def set_any_value(target: AnyValue, value: Any) -> None:
    """Write plain Python back into an AnyValue (the inverse of :func:`any_value`)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, list):
        target.array_value.SetInParent()
        del target.array_value.values[:]
        for item in value:
            set_any_value(target.array_value.values.add(), item)
    elif isinstance(value, dict):
        target.kvlist_value.SetInParent()
        del target.kvlist_value.values[:]
        for k, item in value.items():
            set_any_value(target.kvlist_value.values.add(key=k).value, item)
    else:
        target.Clear()


def _json_text(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else _json_text(value)


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return None


def is_tool_call(span: Span) -> bool:
    """True for an ``execute_tool`` span of the OTel GenAI conventions."""
    if span.name.startswith(TOOL_OPERATION):
        return True
    for kv in span.attributes:
        if kv.key == _OPERATION:
            return kv.value.string_value == TOOL_OPERATION
    return False


def _check_span(span: Span, now_ns: int, limits: DecodeLimits) -> str:
    """Why ``span`` cannot be stored, or ``""`` when it can."""
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return "invalid trace_id (must be 16 bytes, not all zero)"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return "invalid span_id (must be 8 bytes, not all zero)"
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if start == 0:
        return "missing start_time"
    if end == 0:
        return "missing end_time"
    if end < start:
        return "end_time before start_time"
    if start > now_ns + int(limits.max_future_skew_s * 1e9):
        return f"start_time more than {limits.max_future_skew_s:g}s in the future"
    return ""


def _policy(span: Span) -> PolicyDocument | str:
    attrs = {kv.key: kv.value.string_value for kv in span.attributes}
    version, document = attrs.get(_POLICY_VERSION, ""), attrs.get(_POLICY_DOCUMENT, "")
    if not _VERSION_RE.fullmatch(version):
        return "policy span without a valid callward.policy.version"
    try:
        canonical = json.dumps(
            json.loads(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (ValueError, RecursionError):
        return "policy span whose document is not JSON"
    algo, _, digest = version.partition(":")
    if algo == "sha256" and not hashlib.sha256(canonical.encode()).hexdigest().startswith(digest):
        return "policy document does not match its content-hash version"
    return PolicyDocument(version, canonical)


_ROW_TYPE = pa.struct(list(TOOL_CALL_SCHEMA))


class _Columns:
    """Rows of one request as dicts, converted to Arrow in one call (in C++, not per value)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def table(self) -> pa.Table:
        if not self.rows:
            return TOOL_CALL_SCHEMA.empty_table()
        rows = pa.array(self.rows, type=_ROW_TYPE)
        return pa.Table.from_struct_array(rows).cast(TOOL_CALL_SCHEMA)


def _bounded_attributes(others: dict[str, Any], budget: int) -> str:
    text = _json_text(others)
    if len(text) <= budget // 4 or len(text.encode("utf-8")) <= budget:
        return text
    kept: dict[str, Any] = {}
    used = 2
    for key in sorted(others):
        piece = len(_json_text({key: others[key]}).encode("utf-8"))
        if used + piece > budget:
            continue
        kept[key] = others[key]
        used += piece
    kept["callward.collector.dropped_attributes"] = len(others) - len(kept)
    return _json_text(kept)


class Decoder:
    """Turns ExportTraceServiceRequests into tool-call rows. One per collector; reusable."""

    def __init__(self, limits: DecodeLimits | None = None):
        self.limits = limits or DecodeLimits()
        self._redaction = _Redaction(self.limits)
        self._json_cache: dict[Any, str] = {}

    def decode(self, request: ExportTraceServiceRequest, now_ns: int) -> DecodeResult:
        cols = _Columns()
        result = DecodeResult(table=pa.table({}))
        for rs in request.resource_spans:
            resource = self._resource(rs.resource.attributes)
            service = self._redaction.plain(_as_text(resource.pop(_SERVICE_NAME, "")))
            for ss in rs.scope_spans:
                scope = self._redaction.text("otel.scope.name", ss.scope.name)
                for span in ss.spans:
                    result.spans_seen += 1
                    self._span(span, service, resource, scope, now_ns, cols, result)
        result.table = cols.table()
        return result

    def _resource(self, attributes: Iterable[KeyValue]) -> dict[str, Any]:
        """Resource attributes, redacted; all but service.name get a ``resource.`` prefix."""
        out: dict[str, Any] = {}
        for kv in attributes:
            value = self._redaction.value(kv.key, any_value(kv.value))
            out[kv.key if kv.key == _SERVICE_NAME else f"resource.{kv.key}"] = value
        return out

    def _reject(self, result: DecodeResult, span: Span, reason: str) -> None:
        result.rejected += 1
        if len(result.reasons) < MAX_REASONS:
            sid = span.span_id.hex() or "?"
            result.reasons.append(f"span {sid[:16]} ({clip(span.name, 64)!r}): {reason}")

    def _span(
        self,
        span: Span,
        service: str,
        resource: dict[str, Any],
        scope: str,
        now_ns: int,
        cols: _Columns,
        result: DecodeResult,
    ) -> None:
        name = span.name
        if name == POLICY_SPAN_NAME:
            found = _policy(span)
            if isinstance(found, str):
                self._reject(result, span, found)
            else:
                result.policies.append(found)
            return
        if not is_tool_call(span):
            return
        problem = _check_span(span, now_ns, self.limits)
        if problem:
            self._reject(result, span, problem)
            return
        red = self._redaction
        row: dict[str, Any] = dict(_EMPTY_ROW)
        others: dict[str, Any] = {}
        plain, plain_get = red.plain, red.plain_cache.get
        for kv in span.attributes:
            key = kv.key
            v = kv.value
            raw: Any = v.string_value  # "" for other kinds; checked below only then
            is_text = bool(raw) or v.WhichOneof("value") == "string_value"
            if not is_text:
                raw = any_value(v)
            kind = _KIND.get(key)
            if kind is None:  # not a column: into the attributes bag
                others[key] = red.text(key, raw) if is_text else red.value(key, raw)
            elif kind.__class__ is str:  # a mapped text column (the hot path)
                if is_text:
                    out = plain_get(raw)
                    row[kind] = out if out is not None else plain(raw)
                else:
                    row[kind] = plain(_as_text(raw))
                    others[key] = red.value(key, raw)
            elif kind == _K_ARGUMENTS:
                row["arguments"] = red.arguments(raw)
            elif kind in (_K_DECISION, _K_OUTCOME):
                column = "decision" if kind == _K_DECISION else "outcome"
                allowed = DECISIONS if kind == _K_DECISION else OUTCOMES
                if raw in allowed:
                    row[column] = raw
                else:
                    others[key] = red.value(key, raw)
            elif kind == _K_DURATION:
                row["duration_ms"] = _as_float(raw)
                if row["duration_ms"] is None:
                    others[key] = red.value(key, raw)
            elif kind == _K_RESULT_BYTES:
                row["result_bytes"] = _as_int(raw)
                if row["result_bytes"] is None:
                    others[key] = red.value(key, raw)
            elif raw != TOOL_OPERATION:  # _K_OPERATION: implied by the row, unless odd
                others[key] = red.value(key, raw)
        tool = row["tool"]
        if not tool and name.startswith(TOOL_OPERATION + " "):
            tool = row["tool"] = plain(name[len(TOOL_OPERATION) + 1 :])
        if name != TOOL_OPERATION + " " + tool:
            others["otel.span.name"] = red.text("otel.span.name", name)
        status = span.status
        code = status.code
        if code:
            others["otel.status_code"] = "ERROR" if code == Status.STATUS_CODE_ERROR else "OK"
            if status.message:
                others["otel.status_description"] = red.text(
                    "otel.status_description", status.message
                )
        if not row["outcome"] and not row["decision"]:
            # A span from another agent records a call that ran; its status says how it went.
            failed = bool(row["error_type"]) or code == Status.STATUS_CODE_ERROR
            row["outcome"] = "error" if failed else "ok"
        if scope:
            others["otel.scope.name"] = scope
        if resource:
            others.update(resource)
        start, end = span.start_time_unix_nano, span.end_time_unix_nano
        if row["duration_ms"] is None:
            row["duration_ms"] = (end - start) / 1e6
        parent = span.parent_span_id
        row["start_time"] = start // _NS_PER_US
        row["end_time"] = end // _NS_PER_US
        row["trace_id"] = span.trace_id.hex()
        row["span_id"] = span.span_id.hex()
        row["parent_span_id"] = parent.hex() if len(parent) == 8 else ""
        row["service_name"] = service
        row["attributes"] = self._attributes_json(others)
        cols.rows.append(row)

    def _attributes_json(self, others: dict[str, Any]) -> str:
        """The attributes bag as JSON. Bags repeat across spans (same scope, resource and
        MCP method), so bags of plain scalars are cached by their items."""
        try:
            # Types are part of the key: True == 1 == 1.0, but their JSON differs.
            ck: Any = (tuple(others.items()), tuple(map(type, others.values())))
            out = self._json_cache.get(ck)
        except TypeError:  # a list or map value: not hashable, not cached
            return _bounded_attributes(others, self.limits.max_attributes_bytes)
        if out is None:
            out = _bounded_attributes(others, self.limits.max_attributes_bytes)
            if len(self._json_cache) >= _CACHE_SIZE // 8:
                self._json_cache.clear()
            self._json_cache[ck] = out
        return out

    def redact_in_place(self, request: ExportTraceServiceRequest) -> None:
        """Redact every attribute of every span and resource of ``request`` (for forwarding),
        so that what a backend receives is what the store holds."""
        red = self._redaction
        for rs in request.resource_spans:
            self._redact_attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if span.name == POLICY_SPAN_NAME:
                        continue  # the policy document is content-addressed; kept verbatim
                    self._redact_attributes(span.attributes)
                    for event in span.events:
                        self._redact_attributes(event.attributes)
                    if span.status.message:
                        span.status.message = red.text("", span.status.message)

    def _redact_attributes(self, attributes: Iterable[KeyValue]) -> None:
        red = self._redaction
        for kv in attributes:
            raw = any_value(kv.value)
            if kv.key == _ARGUMENTS:
                clean: Any = red.arguments(raw)
            else:
                clean = red.value(kv.key, raw)
            if clean != raw:
                set_any_value(kv.value, clean)
