"""Parse OTLP trace requests, tolerating text that is not valid UTF-8.

proto3 ``string`` fields must hold UTF-8 and the protobuf runtime rejects the whole
request otherwise. One agent with a bad byte in one attribute would then lose every
span of its batch, so a request that fails the strict parse is parsed again with a
twin schema whose strings are ``bytes``; invalid sequences become U+FFFD and the
repaired request is re-parsed strictly. Only bytes that are not a protobuf at all
are refused.

The collector's hot path parses with a second twin (:func:`parse_raw_attributes`) in
which a span's ``attributes`` stay serialized ``KeyValue`` bytes: the decoder maps each
distinct attribute once and recognises it again by its bytes, instead of building Python
objects for every attribute of every span.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    DESCRIPTOR as TRACE_SERVICE_FILE,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

_TWIN_PREFIX = "callward_lenient"
_RAW_PREFIX = "callward_raw_attributes"


class MalformedRequestError(ValueError):
    """The bytes are not an OTLP ExportTraceServiceRequest."""


def _files_in_dependency_order() -> list[Any]:
    ordered: list[Any] = []

    def visit(f: Any) -> None:
        if f in ordered:
            return
        for dep in f.dependencies:
            visit(dep)
        ordered.append(f)

    visit(TRACE_SERVICE_FILE)
    return ordered


def _rename(msg: descriptor_pb2.DescriptorProto, prefix: str) -> None:
    msg.ClearField("options")
    for field in msg.field:
        if field.type_name.startswith("."):
            field.type_name = f".{prefix}{field.type_name}"
    for nested in msg.nested_type:
        _rename(nested, prefix)


def _strings_as_bytes(msg: descriptor_pb2.DescriptorProto) -> None:
    for field in msg.field:
        if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
    for nested in msg.nested_type:
        _strings_as_bytes(nested)


def _span_attributes_as_bytes(msg: descriptor_pb2.DescriptorProto) -> None:
    # KeyValue messages and bytes share the wire encoding (length-delimited), so a span's
    # attributes parse as the serialized KeyValue of each attribute.
    if msg.name == "Span":
        for field in msg.field:
            if field.name == "attributes":
                field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                field.ClearField("type_name")


def _twin_request_class(prefix: str, retype: Any) -> type[Message]:
    """ExportTraceServiceRequest re-declared under ``prefix`` with ``retype`` applied to
    every message type; parses the same wire bytes into differently typed fields."""
    pool = descriptor_pool.DescriptorPool()
    for f in _files_in_dependency_order():
        proto = descriptor_pb2.FileDescriptorProto()
        f.CopyToProto(proto)
        proto.name = f"{prefix}/{proto.name}"
        proto.package = f"{prefix}.{proto.package}"
        proto.dependency[:] = [f"{prefix}/{d}" for d in proto.dependency]
        del proto.service[:]
        proto.ClearField("options")
        for msg in proto.message_type:
            _rename(msg, prefix)
            retype(msg)
        pool.Add(proto)
    desc = pool.FindMessageTypeByName(f"{prefix}.{ExportTraceServiceRequest.DESCRIPTOR.full_name}")
    return message_factory.GetMessageClass(desc)


@lru_cache(maxsize=1)
def _lenient_request_class() -> type[Message]:
    return _twin_request_class(_TWIN_PREFIX, _strings_as_bytes)


@lru_cache(maxsize=1)
def raw_attributes_request_class() -> type[Message]:
    """The request type whose spans hold their attributes as serialized KeyValue bytes."""
    return _twin_request_class(_RAW_PREFIX, _span_attributes_as_bytes)


@cache
def _string_fields(strict: Descriptor) -> frozenset[str]:
    return frozenset(f.name for f in strict.fields if f.type == FieldDescriptor.TYPE_STRING)


def _repair(lenient: Message, strict: Descriptor) -> None:
    """Replace invalid UTF-8 in every field that is a string in the strict schema."""
    strings = _string_fields(strict)
    for field, value in lenient.ListFields():
        repeated = field.is_repeated
        if field.message_type is not None:
            sub = strict.fields_by_name[field.name].message_type
            for item in value if repeated else (value,):
                _repair(item, sub)
        elif field.name in strings:
            fix = lambda b: b.decode("utf-8", "replace").encode("utf-8")  # noqa: E731
            if repeated:
                value[:] = [fix(b) for b in value]
            else:
                setattr(lenient, field.name, fix(value))


def parse_request(data: bytes) -> tuple[ExportTraceServiceRequest, bool]:
    """Parse ``data``; returns the request and whether invalid UTF-8 had to be repaired."""
    try:
        return ExportTraceServiceRequest.FromString(data), False
    except DecodeError:
        pass
    try:
        lenient = _lenient_request_class().FromString(data)
    except DecodeError as e:
        raise MalformedRequestError(f"not an OTLP ExportTraceServiceRequest: {e}") from None
    _repair(lenient, ExportTraceServiceRequest.DESCRIPTOR)
    try:
        return ExportTraceServiceRequest.FromString(lenient.SerializeToString()), True
    except DecodeError as e:  # pragma: no cover - the repair makes every string valid
        raise MalformedRequestError(f"request could not be repaired: {e}") from None


def parse_raw_attributes(data: bytes) -> tuple[Message, bool]:
    """Parse ``data`` into :func:`raw_attributes_request_class`; returns the request and
    whether invalid UTF-8 had to be repaired. Anything the strict parse would refuse (or
    repair) outside the attributes goes through :func:`parse_request` first; attribute
    bytes are checked by whoever parses them (``KeyValue.FromString``), and on failure
    the caller re-parses with ``repair=True``."""
    raw_class = raw_attributes_request_class()
    try:
        return raw_class.FromString(data), False
    except DecodeError:
        pass
    request, repaired = parse_request(data)
    return raw_class.FromString(request.SerializeToString()), repaired


def repaired_raw_attributes(data: bytes) -> tuple[Message, bool]:
    """:func:`parse_raw_attributes` after a full strict parse (with UTF-8 repair): every
    attribute of the result is a valid KeyValue."""
    request, repaired = parse_request(data)
    return raw_attributes_request_class().FromString(request.SerializeToString()), repaired
