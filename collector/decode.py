"""OTLP spans into tool-call rows (``callward.record.TOOL_CALL_SCHEMA``).

Which spans are tool calls: ``gen_ai.operation.name == "execute_tool"`` or a span name
starting with ``execute_tool`` (the OTel GenAI convention), whoever emitted them. Spans
named ``callward.policy`` carry a policy document and come back as :class:`PolicyDocument`
instead of rows. Every other span is accepted and ignored.

What decoding promises:

- Every string that reaches a row is redacted (``callward.redact``), whatever the span's
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
import itertools
import json
import math
import operator
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from callward import semconv
from callward.collector.otlp_parse import (
    MalformedRequestError,
    parse_raw_attributes,
    repaired_raw_attributes,
)
from callward.record import COLUMNS, DECISIONS, OUTCOMES, TOOL_CALL_SCHEMA
from callward.redact import default_redactor

TOOL_OPERATION = semconv.GEN_AI_OPERATION_EXECUTE_TOOL
POLICY_SPAN_NAME = semconv.POLICY_SPAN_NAME
TRUNCATION_MARKER = "[TRUNCATED:{size} bytes]"
DEFAULT_MAX_VALUE_BYTES = 64 * 1024
DEFAULT_MAX_FUTURE_SKEW_S = 24 * 3600.0
MAX_REASONS = 5

# Attribute -> text column. Numbers, arguments and enums are handled separately below.
_TEXT_COLUMNS = {
    semconv.GEN_AI_TOOL_CALL_ID: "call_id",
    semconv.GEN_AI_AGENT_ID: "agent_id",
    semconv.GEN_AI_CONVERSATION_ID: "session_id",
    semconv.CALLWARD_GRANT: "grant",
    semconv.CALLWARD_SERVER: "server",
    semconv.GEN_AI_TOOL_NAME: "tool",
    semconv.CALLWARD_RULE: "rule",
    semconv.CALLWARD_MESSAGE: "message",
    semconv.CALLWARD_POLICY_VERSION: "policy_version",
    semconv.ERROR_TYPE: "error_type",
}
_ARGUMENTS = semconv.GEN_AI_TOOL_CALL_ARGUMENTS
_DECISION = semconv.CALLWARD_DECISION
_OUTCOME = semconv.CALLWARD_OUTCOME
_DURATION = semconv.CALLWARD_DURATION_MS
_RESULT_BYTES = semconv.CALLWARD_RESULT_BYTES
_OPERATION = semconv.GEN_AI_OPERATION_NAME
_SERVICE_NAME = semconv.SERVICE_NAME
_POLICY_VERSION = semconv.CALLWARD_POLICY_VERSION
_POLICY_DOCUMENT = semconv.CALLWARD_POLICY_DOCUMENT
_VERSION_RE = semconv.POLICY_VERSION_FORM
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
        self.redactor = redactor = default_redactor()
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
    return _is_tool_call(span.name, ((kv.key, kv.value) for kv in span.attributes))


def _is_tool_call(name: str, attributes: Iterable[tuple[str, AnyValue]]) -> bool:
    if name.startswith(TOOL_OPERATION):
        return True
    for key, value in attributes:
        if key == _OPERATION:  # the first one decides
            return value.string_value == TOOL_OPERATION
    return False


def _problem(
    trace_id: bytes, span_id: bytes, start: int, end: int, horizon: int, limits: DecodeLimits
) -> str:
    """Why a span with these fields cannot be stored, or ``""`` when it can (``horizon``:
    the latest start time accepted)."""
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        return "invalid trace_id (must be 16 bytes, not all zero)"
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        return "invalid span_id (must be 8 bytes, not all zero)"
    if start == 0:
        return "missing start_time"
    if end == 0:
        return "missing end_time"
    if end < start:
        return "end_time before start_time"
    if start > horizon:
        return f"start_time more than {limits.max_future_skew_s:g}s in the future"
    return ""


def _policy(attributes: Iterable[KeyValue]) -> PolicyDocument | str:
    attrs = {kv.key: kv.value.string_value for kv in attributes}
    version, document = attrs.get(_POLICY_VERSION, ""), attrs.get(_POLICY_DOCUMENT, "")
    if not _VERSION_RE.fullmatch(version):
        return f"policy span without a valid {_POLICY_VERSION}"
    try:
        canonical = json.dumps(
            json.loads(document), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
    except (ValueError, RecursionError):
        return "policy span whose document is not JSON"
    digest = version.partition(":")[2]
    if hashlib.sha256(canonical.encode()).hexdigest()[: len(digest)] != digest:
        return "policy document does not match its content-hash version"
    return PolicyDocument(version, canonical)


_COLUMN = {name: i for i, name in enumerate(COLUMNS)}
_I_TOOL = _COLUMN["tool"]
_I_ARGUMENTS = _COLUMN["arguments"]
_I_DECISION = _COLUMN["decision"]
_I_OUTCOME = _COLUMN["outcome"]
_I_ERROR_TYPE = _COLUMN["error_type"]
_I_DURATION = _COLUMN["duration_ms"]
_I_RESULT_BYTES = _COLUMN["result_bytes"]
_I_SERVICE = _COLUMN["service_name"]
_I_ATTRIBUTES = _COLUMN["attributes"]
_TIMESTAMP = TOOL_CALL_SCHEMA.field("start_time").type
_NO_COLUMN = -1
# One attribute, decoded: (column index or _NO_COLUMN, column value, key in the attributes
# bag or None, value there, operation flag). The flag is None unless the key is
# gen_ai.operation.name; then it says whether the value is execute_tool.
_Entry = tuple[int, Any, str | None, Any, bool | None]
# Attributes this small are remembered by their serialized bytes: most of a span's
# attributes (agent, tool, decision, rule, policy version, ...) repeat across spans.
_CACHEABLE_ATTRIBUTE_BYTES = 320
_CACHEABLE_BAG_TEXT = 256


@cache
def _empty_table() -> pa.Table:
    """Tables are immutable, and building an empty one costs milliseconds (timezone
    lookups), so the one empty result is built once."""
    return TOOL_CALL_SCHEMA.empty_table()


class _BadAttribute(Exception):
    """An attribute's bytes are not a valid KeyValue (say, invalid UTF-8): the request is
    parsed again strictly, with repair."""


def _last_per_span(
    values: list[Any],
    local: np.ndarray,
    type_: pa.DataType,
    at: np.ndarray,
    codes: np.ndarray,
    owner: np.ndarray,
    n: int,
) -> pa.Array:
    """A column of ``n`` spans from the attributes at positions ``at``: each span takes
    the value of its last such attribute (a repeated key: the last one wins, as in a
    dict), null when it has none. ``values`` are the column's distinct values and
    ``local`` maps a distinct attribute (its code) to its place in ``values``."""
    who = owner[at]
    last = np.ones(len(at), dtype=bool)
    last[:-1] = who[1:] != who[:-1]
    index = np.full(n, -1, dtype=np.int64)
    index[who[last]] = local[codes[at[last]]]
    return pa.array(values, type=type_).take(pa.array(index, mask=index < 0))


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
    kept[semconv.CALLWARD_COLLECTOR_DROPPED_ATTRIBUTES] = len(others) - len(kept)
    return _json_text(kept)


class _Spans:
    """The tool-call spans of one scope, a list per field, filled in one pass."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.trace_ids: list[bytes] = []
        self.span_ids: list[bytes] = []
        self.parents: list[bytes] = []
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.codes: list[int] = []
        self.messages: list[str] = []
        self.counts: list[int] = []  # attributes per span
        self.blobs: list[bytes] = []  # every span's attributes, serialized, in order


_SPAN_FIELDS = operator.attrgetter(
    "name",
    "trace_id",
    "span_id",
    "parent_span_id",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "status.code",
    "status.message",
    "attributes",
)


def _collect_clean(spans: Sequence[Any], horizon: int) -> _Spans | None:
    """:meth:`Decoder._collect` for the usual batch, read field by field in C
    (``attrgetter``): every span named ``execute_tool...`` and fit to be stored. None
    when any span is not (a policy span, another kind of span, a span to reject): the
    caller then takes the span-by-span path, which handles every case."""
    if not spans:
        return None
    fields = list(map(_SPAN_FIELDS, spans))
    names, trace_ids, span_ids, parents, starts, ends, codes, messages, attributes = zip(
        *fields, strict=True
    )
    if not all(map(str.startswith, names, itertools.repeat(TOOL_OPERATION))):
        return None
    if set(map(len, trace_ids)) != {16} or _ZERO_TRACE in trace_ids:
        return None
    if set(map(len, span_ids)) != {8} or _ZERO_SPAN in span_ids:
        return None
    start = np.asarray(starts, dtype=np.uint64)
    end = np.asarray(ends, dtype=np.uint64)
    if not ((start > 0).all() and (end >= start).all() and (start <= horizon).all()):
        return None
    out = _Spans()
    out.names = list(names)
    out.trace_ids = list(trace_ids)
    out.span_ids = list(span_ids)
    out.parents = list(parents)
    out.starts = list(starts)
    out.ends = list(ends)
    out.codes = list(codes)
    out.messages = [m if c else "" for c, m in zip(codes, messages, strict=True)]
    out.counts = list(map(len, attributes))
    out.blobs = list(itertools.chain.from_iterable(attributes))
    return out


class Decoder:
    """Turns OTLP Export requests into tool-call rows. One per collector; reusable.

    Decoding is columnar. A span's attributes are read as their serialized KeyValue
    bytes (:func:`collector.otlp_parse.parse_raw_attributes`); the attributes of all the
    spans of a scope are dictionary-encoded in one Arrow call, each distinct attribute is
    decoded and redacted once (:meth:`_entry`, and remembered across requests when it is
    small: the bytes hold key, value and type, so the cached result is exactly what
    decoding would give again), and the columns are put together with array operations.
    Python work per span is reading its fixed fields; per attribute there is none, except
    for values seen for the first time (call ids, most arguments).
    """

    def __init__(self, limits: DecodeLimits | None = None):
        self.limits = limits or DecodeLimits()
        self._redaction = _Redaction(self.limits)
        self._json_cache: dict[Any, str] = {}
        self._entries: dict[bytes, _Entry] = {}

    def decode(self, request: ExportTraceServiceRequest, now_ns: int) -> DecodeResult:
        """Decode a parsed request (the collector itself uses :meth:`decode_bytes`)."""
        return self.decode_bytes(request.SerializeToString(), now_ns)[0]

    def decode_bytes(self, data: bytes, now_ns: int) -> tuple[DecodeResult, bool]:
        """Decode one serialized Export; returns the result and whether invalid UTF-8 had
        to be repaired. Raises MalformedRequestError for bytes that are not a request."""
        request, repaired = parse_raw_attributes(data)
        try:
            return self._decode(request, now_ns), repaired
        except _BadAttribute:
            pass
        request, repaired = repaired_raw_attributes(data)
        try:
            return self._decode(request, now_ns), repaired
        except _BadAttribute:  # pragma: no cover - the strict parse checked every attribute
            raise MalformedRequestError("an attribute is not a valid KeyValue") from None

    def _decode(self, request: Any, now_ns: int) -> DecodeResult:
        result = DecodeResult(table=_empty_table())
        tables: list[pa.Table] = []
        for rs in request.resource_spans:
            resource = self._resource(rs.resource.attributes)
            service = self._redaction.plain(_as_text(resource.pop(_SERVICE_NAME, "")))
            resource_key = _json_text(resource) if resource else ""
            for ss in rs.scope_spans:
                scope = self._redaction.text(semconv.OTEL_SCOPE_NAME, ss.scope.name)
                spans = self._collect(ss.spans, now_ns, result)
                if spans.names:
                    tables.append(self._table(spans, service, resource, (scope, resource_key)))
        if tables:
            result.table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        return result

    def _resource(self, attributes: Iterable[KeyValue]) -> dict[str, Any]:
        """Resource attributes, redacted; all but service.name get a ``resource.`` prefix."""
        out: dict[str, Any] = {}
        for kv in attributes:
            key = kv.key
            value = self._redaction.value(key, any_value(kv.value))
            if key != _SERVICE_NAME:
                key = semconv.RESOURCE_KEY_PREFIX + self._redaction.plain(key)
            out[key] = value
        return out

    def _reject(self, result: DecodeResult, span: Any, reason: str) -> None:
        result.rejected += 1
        if len(result.reasons) < MAX_REASONS:
            sid = span.span_id.hex() or "?"
            name = clip(self._redaction.plain(span.name), 64)
            result.reasons.append(f"span {sid[:16]} ({name!r}): {reason}")

    @staticmethod
    def _key_values(blobs: Iterable[bytes]) -> Iterator[KeyValue]:
        for blob in blobs:
            try:
                yield KeyValue.FromString(blob)
            except DecodeError:
                raise _BadAttribute from None

    def _collect(self, spans: Sequence[Any], now_ns: int, result: DecodeResult) -> _Spans:
        """The fields of the tool-call spans among ``spans``; policy spans and spans that
        cannot be records are handled here."""
        horizon = now_ns + int(self.limits.max_future_skew_s * 1e9)
        fast = _collect_clean(spans, horizon)
        if fast is not None:
            result.spans_seen += len(fast.names)
            return fast
        out = _Spans()
        for span in spans:
            result.spans_seen += 1
            name = span.name
            blobs = span.attributes
            if not name.startswith(TOOL_OPERATION):
                if name == POLICY_SPAN_NAME:
                    found = _policy(self._key_values(blobs))
                    if isinstance(found, str):
                        self._reject(result, span, found)
                    else:
                        result.policies.append(found)
                    continue
                if not _is_tool_call(name, ((kv.key, kv.value) for kv in self._key_values(blobs))):
                    continue
            trace_id, span_id = span.trace_id, span.span_id
            start, end = span.start_time_unix_nano, span.end_time_unix_nano
            problem = _problem(trace_id, span_id, start, end, horizon, self.limits)
            if problem:
                self._reject(result, span, problem)
                continue
            status = span.status
            code = status.code
            out.names.append(name)
            out.trace_ids.append(trace_id)
            out.span_ids.append(span_id)
            out.parents.append(span.parent_span_id)
            out.starts.append(start)
            out.ends.append(end)
            out.codes.append(code)
            out.messages.append(status.message if code else "")
            out.counts.append(len(blobs))
            out.blobs.extend(blobs)
        return out

    def _attribute_columns(
        self, spans: _Spans
    ) -> tuple[dict[int, pa.Array], list[_Entry], list[bytes], np.ndarray, np.ndarray]:
        """The columns that come from attributes, with what :meth:`_bags` needs: each
        distinct attribute blob's entry, the blobs, each attribute's blob code and the
        span owning it."""
        n = len(spans.names)
        columns: dict[int, pa.Array] = {}
        entries: list[_Entry] = []
        uniques: list[bytes] = []
        codes = np.zeros(0, dtype=np.int64)
        owner = np.zeros(0, dtype=np.int64)
        if not spans.blobs:
            return columns, entries, uniques, codes, owner
        encoded = pa.array(spans.blobs, type=pa.binary()).dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        cached = self._entries.get
        uniques = encoded.dictionary.to_pylist()
        found = [cached(blob) for blob in uniques]
        entries = self._complete(found, uniques) if None in found else found  # type: ignore[assignment]
        owner = np.repeat(np.arange(n), np.asarray(spans.counts, dtype=np.int64))
        entry_column = np.fromiter((e[0] for e in entries), np.int64, len(entries))
        at_column = entry_column[codes]
        members: dict[int, list[int]] = {}  # column -> codes of its distinct values
        for k, entry in enumerate(entries):
            if entry[0] >= 0:
                members.setdefault(entry[0], []).append(k)
        local = np.empty(len(entries), dtype=np.int64)
        for column, ks in members.items():
            local[ks] = np.arange(len(ks))
            columns[column] = _last_per_span(
                [entries[k][1] for k in ks],
                local,
                TOOL_CALL_SCHEMA.field(column).type,
                np.flatnonzero(at_column == column),
                codes,
                owner,
                n,
            )
        return columns, entries, uniques, codes, owner

    def _table(
        self, spans: _Spans, service: str, resource: dict[str, Any], context: tuple[str, str]
    ) -> pa.Table:
        """The rows of ``spans`` as an Arrow table in TOOL_CALL_SCHEMA."""
        n = len(spans.names)
        columns, entries, uniques, codes, owner = self._attribute_columns(spans)
        for column, spec in enumerate(TOOL_CALL_SCHEMA):
            if column in columns and pa.types.is_string(spec.type):
                columns[column] = columns[column].fill_null("")
        empty = pa.array([""] * n, type=pa.string())
        tools = columns[_I_TOOL].to_pylist() if _I_TOOL in columns else [""] * n
        attributes = self._bags(spans, entries, uniques, codes, owner, tools, context, resource)
        columns[_I_TOOL] = pa.array(tools, type=pa.string())
        starts = np.asarray(spans.starts, dtype=np.uint64)
        ends = np.asarray(spans.ends, dtype=np.uint64)
        status_error = np.asarray(spans.codes, dtype=np.int64) == Status.STATUS_CODE_ERROR
        decision = columns.get(_I_DECISION, empty)
        outcome = columns.get(_I_OUTCOME, empty)
        # A span from another agent records a call that ran; its status says how it went.
        failed = pc.or_(pc.not_equal(columns.get(_I_ERROR_TYPE, empty), ""), pa.array(status_error))
        derived = pc.if_else(failed, "error", "ok")
        undecided = pc.and_(pc.equal(outcome, ""), pc.equal(decision, ""))
        columns[_I_OUTCOME] = pc.if_else(undecided, derived, outcome)
        elapsed_ms = pa.array((ends - starts) / 1e6)
        columns[_I_DURATION] = columns.get(_I_DURATION, elapsed_ms).fill_null(elapsed_ms)
        columns[0] = pa.array((starts // _NS_PER_US).astype(np.int64), type=_TIMESTAMP)
        columns[1] = pa.array((ends // _NS_PER_US).astype(np.int64), type=_TIMESTAMP)
        columns[2] = pa.array([t.hex() for t in spans.trace_ids], type=pa.string())
        columns[3] = pa.array([s.hex() for s in spans.span_ids], type=pa.string())
        columns[4] = pa.array(
            [p.hex() if len(p) == 8 else "" for p in spans.parents], type=pa.string()
        )
        columns[_I_SERVICE] = pa.array([service] * n, type=pa.string())
        columns[_I_ATTRIBUTES] = pa.array(attributes, type=pa.string())
        arrays = [
            columns.get(i, empty if pa.types.is_string(f.type) else pa.nulls(n, f.type))
            for i, f in enumerate(TOOL_CALL_SCHEMA)
        ]
        return pa.Table.from_arrays(arrays, schema=TOOL_CALL_SCHEMA)

    def _bags(
        self,
        spans: _Spans,
        entries: list[_Entry],
        uniques: list[bytes],
        codes: np.ndarray,
        owner: np.ndarray,
        tools: list[str],
        context: tuple[str, str],
        resource: dict[str, Any],
    ) -> list[str]:
        """Each span's attributes bag as JSON (fills in ``tools`` from span names where the
        tool attribute is missing). Bags repeat: one is built per distinct combination of
        bag attributes, span name and status in the scope."""
        n = len(spans.names)
        in_bag = np.fromiter((e[2] is not None for e in entries), bool, len(entries))
        bag_at = np.flatnonzero(in_bag[codes]) if len(entries) else np.zeros(0, np.int64)
        bag_codes = codes[bag_at]
        bounds = np.searchsorted(owner[bag_at], np.arange(n + 1)).tolist()
        keys = bag_codes.astype(np.int32).tobytes()
        prefix = TOOL_OPERATION + " "
        plain = self._redaction.plain
        names, status_codes, messages = spans.names, spans.codes, spans.messages
        built: dict[tuple[bytes, str | None, int, str], str] = {}
        out: list[str] = []
        for i in range(n):
            name = names[i]
            tool = tools[i]
            if not tool and name.startswith(prefix):
                tool = tools[i] = plain(name[len(prefix) :])
            odd_name = None if name == prefix + tool else name
            lo, hi = bounds[i], bounds[i + 1]
            key = (keys[4 * lo : 4 * hi], odd_name, status_codes[i], messages[i])
            text = built.get(key)
            if text is None:
                members = bag_codes[lo:hi].tolist()
                text = built[key] = self._attributes(
                    [entries[c] for c in members],
                    [uniques[c] for c in members],
                    odd_name,
                    status_codes[i],
                    messages[i],
                    context,
                    resource,
                )
            out.append(text)
        return out

    def _complete(self, found: list[_Entry | None], uniques: list[bytes]) -> list[_Entry]:
        """``found`` with the attributes not in the cache decoded (and remembered when
        small). Text values of columns seen for the first time (call ids, arguments) are
        screened for anything that could start a secret in one call for all of them
        (``Redactor.clean_texts``); a clean one is its own redacted value, the rest go
        through :meth:`_map` like every other attribute."""
        limit = self.limits.max_value_bytes
        missing: list[tuple[int, KeyValue, int]] = []  # (code, attribute, column or -1)
        texts: list[str] = []
        for k, known in enumerate(found):
            if known is not None:
                continue
            try:
                kv = KeyValue.FromString(uniques[k])
            except DecodeError:
                raise _BadAttribute from None
            kind = _KIND.get(kv.key)
            column = _NO_COLUMN
            if kind.__class__ is str or kind == _K_ARGUMENTS:
                value = kv.value
                text = value.string_value
                if len(text) * 4 <= limit and value.WhichOneof("value") == "string_value":
                    column = _I_ARGUMENTS if kind == _K_ARGUMENTS else _COLUMN[kind]  # type: ignore[index]
                    texts.append(text)
            missing.append((k, kv, column))
        clean = iter(self._redaction.redactor.clean_texts(texts))
        entries = self._entries
        for k, kv, column in missing:
            if column != _NO_COLUMN and next(clean):
                decoded: _Entry = (column, kv.value.string_value, None, None, None)
            else:
                decoded = self._map(kv.key, kv.value)
            found[k] = decoded
            blob = uniques[k]
            if len(blob) <= _CACHEABLE_ATTRIBUTE_BYTES:
                if len(entries) >= _CACHE_SIZE:
                    entries.clear()  # cheaper than an LRU; repeated values come back
                entries[blob] = decoded
        return found  # type: ignore[return-value]

    def _map(self, key: str, v: AnyValue) -> _Entry:
        """Where one attribute goes: a column, the attributes bag, or both (a mapped
        column given a value of the wrong type keeps the original in the bag)."""
        red = self._redaction
        raw: Any = v.string_value  # "" for other kinds; checked below only then
        is_text = bool(raw) or v.WhichOneof("value") == "string_value"
        if not is_text:
            raw = any_value(v)
        kind = _KIND.get(key)
        if kind is None:  # not a column: into the attributes bag, key redacted too
            return (_NO_COLUMN, None, red.plain(key), red.value(key, raw), None)
        if isinstance(kind, str):  # a mapped text column
            if is_text:
                return (_COLUMN[kind], red.plain(raw), None, None, None)
            return (_COLUMN[kind], red.plain(_as_text(raw)), key, red.value(key, raw), None)
        if kind == _K_ARGUMENTS:
            return (_I_ARGUMENTS, red.arguments(raw), None, None, None)
        if kind in (_K_DECISION, _K_OUTCOME):
            allowed = DECISIONS if kind == _K_DECISION else OUTCOMES
            if raw in allowed:
                return (_I_DECISION if kind == _K_DECISION else _I_OUTCOME, raw, None, None, None)
            return (_NO_COLUMN, None, key, red.value(key, raw), None)
        if kind in (_K_DURATION, _K_RESULT_BYTES):
            if kind == _K_DURATION:
                column, number = _I_DURATION, _as_float(raw)
            else:
                column, number = _I_RESULT_BYTES, _as_int(raw)
            if number is None:  # the column stays null; the odd value is kept in the bag
                return (column, None, key, red.value(key, raw), None)
            return (column, number, None, None, None)
        # gen_ai.operation.name: implied by the row, unless it is something else
        operation = is_text and raw == TOOL_OPERATION
        if operation:
            return (_NO_COLUMN, None, None, None, True)
        return (_NO_COLUMN, None, key, red.value(key, raw), False)

    def _attributes(
        self,
        bag: list[_Entry],
        bag_blobs: list[bytes],
        odd_name: str | None,
        code: int,
        message: str,
        context: tuple[str, str],
        resource: dict[str, Any],
    ) -> str:
        """The attributes bag as JSON. Bags repeat across spans (same scope, resource and
        MCP method), so a bag is cached by the attribute bytes and context it comes from."""
        small = len(odd_name or "") + len(message) <= _CACHEABLE_BAG_TEXT and all(
            len(b) <= _CACHEABLE_ATTRIBUTE_BYTES for b in bag_blobs
        )
        ck = (tuple(bag_blobs), odd_name, code, message, context) if small else None
        if ck is not None:
            out = self._json_cache.get(ck)
            if out is not None:
                return out
        red = self._redaction
        others: dict[str, Any] = {entry[2]: entry[3] for entry in bag}  # type: ignore[misc]
        if odd_name is not None:
            others[semconv.OTEL_SPAN_NAME] = red.text(semconv.OTEL_SPAN_NAME, odd_name)
        if code:
            others[semconv.OTEL_STATUS_CODE] = "ERROR" if code == Status.STATUS_CODE_ERROR else "OK"
            if message:
                others[semconv.OTEL_STATUS_DESCRIPTION] = red.text(
                    semconv.OTEL_STATUS_DESCRIPTION, message
                )
        scope = context[0]
        if scope:
            others[semconv.OTEL_SCOPE_NAME] = scope
        if resource:
            others.update(resource)
        out = _bounded_attributes(others, self.limits.max_attributes_bytes)
        if ck is not None:
            if len(self._json_cache) >= _CACHE_SIZE // 8:
                self._json_cache.clear()
            self._json_cache[ck] = out
        return out

    def redact_in_place(self, request: ExportTraceServiceRequest) -> None:
        """Redact every string field of ``request`` (for forwarding), so that what a
        backend receives holds no more than the store does (``collector/redact.py``)."""
        from callward.collector.redact import redact_message

        redact_message(request, self._redaction)
