"""Collector-side redaction of a whole OTLP request, for what leaves the collector.

The rules live in :mod:`callward.redact` (shared by the enforcer and the collector); the
names below are re-exported so existing imports keep working. What this module adds is
the walk over a forwarded ``ExportTraceServiceRequest``: every string field of every
message in it is redacted, whatever its place (span and event names, attribute keys and
values at any depth of arrays and maps, link and span trace state, resource, scope name
and version, schema URLs, status messages, entity references), so that what a backend
and the forward queue receive holds no more than the store does. The walk goes by the
protobuf descriptors rather than a list of known fields, so a field a later OTLP version
adds is covered without a change here.

One exception, on purpose: the document of a ``callward.policy`` span is forwarded
verbatim, because its version is the hash of its content (docs/redaction.md).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from callward import semconv
from callward.redact import (
    BUILTIN_KINDS,
    ENV_PATTERNS,
    MARKER_PREFIX,
    MIN_ENTROPY_BITS,
    MIN_SECRET_LENGTH,
    Redactor,
    SecretKind,
    count_redactions,
    default_redactor,
    load_patterns,
    looks_random,
    marker,
    redact_json_text,
    redact_text,
    shannon_entropy,
)

if TYPE_CHECKING:
    from callward.collector.decode import _Redaction

__all__ = [
    "BUILTIN_KINDS",
    "ENV_PATTERNS",
    "MARKER_PREFIX",
    "MIN_ENTROPY_BITS",
    "MIN_SECRET_LENGTH",
    "Redactor",
    "SecretKind",
    "count_redactions",
    "default_redactor",
    "load_patterns",
    "looks_random",
    "marker",
    "redact_json_text",
    "redact_message",
    "redact_text",
    "shannon_entropy",
]

_STRING = FieldDescriptor.TYPE_STRING
_BYTES = FieldDescriptor.TYPE_BYTES
_MESSAGE = FieldDescriptor.TYPE_MESSAGE
_KEY_VALUE = "opentelemetry.proto.common.v1.KeyValue"
_ANY_VALUE = "opentelemetry.proto.common.v1.AnyValue"
_SPAN = "opentelemetry.proto.trace.v1.Span"
_ARGUMENTS = semconv.GEN_AI_TOOL_CALL_ARGUMENTS
_POLICY_DOCUMENT = semconv.CALLWARD_POLICY_DOCUMENT


@cache
def _repeated(field: FieldDescriptor) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf 6; ``label`` before it
    if isinstance(flag, bool):
        return flag
    return bool(field.label == FieldDescriptor.LABEL_REPEATED)


def redact_message(message: Message, redaction: _Redaction) -> None:
    """Redact every string of ``message`` (an OTLP request or any part of one) in place."""
    _Walk(redaction).message(message, "")


class _Walk:
    def __init__(self, redaction: _Redaction):
        self.red = redaction

    def message(self, message: Message, key: str) -> None:
        name = message.DESCRIPTOR.full_name
        if name == _KEY_VALUE:
            self.key_value(message)  # type: ignore[arg-type]
            return
        if name == _ANY_VALUE:
            self.any_value(message, key)
            return
        policy = name == _SPAN and message.name == semconv.POLICY_SPAN_NAME  # type: ignore[attr-defined]
        for field, value in message.ListFields():
            if field.type == _STRING:
                if _repeated(field):
                    value[:] = [self.red.plain(v) for v in value]
                else:
                    redacted = self.red.plain(value)
                    if redacted != value:
                        setattr(message, field.name, redacted)
            elif field.type == _MESSAGE:
                if not _repeated(field):
                    self.message(value, key)
                elif policy and field.name == "attributes":
                    for kv in value:
                        if kv.key != _POLICY_DOCUMENT:
                            self.key_value(kv)
                else:
                    for item in value:
                        self.message(item, key)

    def key_value(self, kv: Any) -> None:
        key = kv.key
        clean_key = self.red.plain(key)
        if clean_key != key:
            kv.key = clean_key
        if kv.HasField("value"):
            self.any_value(kv.value, key)

    def any_value(self, value: Any, key: str) -> None:
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            redacted = self.red.arguments(text) if key == _ARGUMENTS else self.red.text(key, text)
            if redacted != text:
                value.string_value = redacted
        elif kind == "bytes_value":
            try:
                text = value.bytes_value.decode("utf-8")
            except UnicodeDecodeError:
                return  # not text; stored as base64, where no rule looks (docs/redaction.md)
            redacted = self.red.text(key, text)
            if redacted != text:
                value.bytes_value = redacted.encode("utf-8")
        elif kind == "array_value":
            for item in value.array_value.values:
                self.any_value(item, key)
        elif kind == "kvlist_value":
            for kv in value.kvlist_value.values:
                self.key_value(kv)
        elif (
            kind is not None and key and value.WhichOneof("value") in ("int_value", "double_value")
        ):
            redacted = self.red.value(
                key, value.int_value if kind == "int_value" else value.double_value
            )
            if isinstance(redacted, str):  # a numeric PIN under a password name
                value.string_value = redacted
