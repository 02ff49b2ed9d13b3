"""Parse OTLP trace requests, tolerating text that is not valid UTF-8.

proto3 ``string`` fields must hold UTF-8 and the protobuf runtime rejects the whole
request otherwise. One agent with a bad byte in one attribute would then lose every
span of its batch, so a request that fails the strict parse is parsed again with a
twin schema whose strings are ``bytes``; invalid sequences become U+FFFD and the
repaired request is re-parsed strictly. Only bytes that are not a protobuf at all
are refused.
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


def _retype(msg: descriptor_pb2.DescriptorProto) -> None:
    for field in msg.field:
        if field.type == descriptor_pb2.FieldDescriptorProto.TYPE_STRING:
            field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
        if field.type_name.startswith("."):
            field.type_name = f".{_TWIN_PREFIX}{field.type_name}"
    for nested in msg.nested_type:
        _retype(nested)


@lru_cache(maxsize=1)
def _lenient_request_class() -> type[Message]:
    pool = descriptor_pool.DescriptorPool()
    for f in _files_in_dependency_order():
        proto = descriptor_pb2.FileDescriptorProto()
        f.CopyToProto(proto)
        proto.name = f"{_TWIN_PREFIX}/{proto.name}"
        proto.package = f"{_TWIN_PREFIX}.{proto.package}"
        proto.dependency[:] = [f"{_TWIN_PREFIX}/{d}" for d in proto.dependency]
        del proto.service[:]
        proto.ClearField("options")
        for msg in proto.message_type:
            msg.ClearField("options")
            _retype(msg)
        pool.Add(proto)
    desc = pool.FindMessageTypeByName(
        f"{_TWIN_PREFIX}.{ExportTraceServiceRequest.DESCRIPTOR.full_name}"
    )
    return message_factory.GetMessageClass(desc)


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
