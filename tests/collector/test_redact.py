"""Tests for collector/redact.py, end to end: a real collector (``callward collector
--forward``, in a subprocess) in front of a real OTLP/gRPC backend on loopback. A secret
is planted in one field of an Export (hypothesis picks the field and the secret, drawn
fresh in the format of a built-in kind or of a ruleset rule), or in every field at once,
and must not appear

(a) in what the backend received,
(b) in the bytes of any file under the data directory (Parquet raw and decoded, spool,
    forward queue, policies, the DuckDB file),
(c) in the collector's log.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from callward import semconv
from callward.collector.decode import set_any_value
from callward.collector.otlp_build import SpanSpec, build_request, callward_attributes
from tests.test_redact import SECRETS

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the backend ---------------------------------------------------------------------------


class Backend(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC TraceService on loopback that keeps every request it got, as bytes."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.lock = threading.Lock()
        self.port = free_port()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        assert self.server.add_insecure_port(f"127.0.0.1:{self.port}") == self.port
        self.server.start()

    def Export(self, request, context):
        with self.lock:
            self.requests.append(request.SerializeToString())
        return ExportTraceServiceResponse()

    def received(self, since: int = 0) -> bytes:
        """Every request from the ``since``-th on, concatenated."""
        with self.lock:
            return b"".join(self.requests[since:])

    def holds_span(self, span_id: bytes) -> bool:
        return span_id in self.received()


# --- the collector -------------------------------------------------------------------------


@dataclass
class Rig:
    backend: Backend
    data_dir: Path
    log_path: Path
    stub: trace_service_pb2_grpc.TraceServiceStub
    proc: subprocess.Popen[bytes]
    secrets: list[str] = field(default_factory=list)  # every secret sent so far

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("redact-e2e")
    backend = Backend()
    data_dir, log_path, port = root / "store", root / "collector.log", free_port()
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from callward.cli import app; app()",
                "collector",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{port}",
                "--forward",
                f"127.0.0.1:{backend.port}",
                "--flush-interval",
                "0.2",
                "--decode-workers",
                "1",
                "--verbose",
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("CALLWARD_")},
        )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        grpc.channel_ready_future(channel).result(timeout=120)
        rig = Rig(
            backend, data_dir, log_path, trace_service_pb2_grpc.TraceServiceStub(channel), proc
        )
        yield rig
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        backend.server.stop(grace=None).wait()
    # Once stopped, everything it left behind, all the secrets of the module's tests.
    assert leaks(rig, rig.secrets) == {}


def parquet_text(data_dir: Path) -> str:
    parts = []
    for path in sorted(data_dir.rglob("*.parquet")):
        parts.append(repr(pq.read_table(path).to_pylist()))
    return "\n".join(parts)


def leaks(rig: Rig, secrets: list[str], since: int = 0) -> dict[str, list[str]]:
    """Where any of ``secrets`` shows: the backend (the requests from the ``since``-th on),
    a file (raw), Parquet (decoded), the log."""
    found: dict[str, list[str]] = {}

    def check(where: str, data: bytes) -> None:
        hits = [s for s in secrets if s.encode() in data]
        if hits:
            found[where] = hits

    check("backend", rig.backend.received(since))
    for path in rig.data_dir.rglob("*"):
        if path.is_file():
            with contextlib.suppress(FileNotFoundError):  # a segment deleted meanwhile
                check(str(path.relative_to(rig.data_dir)), path.read_bytes())
    check("parquet (decoded)", parquet_text(rig.data_dir).encode())
    check("log", rig.log().encode())
    return found


def stored_span_ids(data_dir: Path) -> set[str]:
    ids: set[str] = set()
    for path in data_dir.rglob("*.parquet"):
        with contextlib.suppress(OSError):  # a file being replaced
            ids.update(pq.read_table(path, columns=["span_id"]).column(0).to_pylist())
    return ids


# --- where a secret can sit ----------------------------------------------------------------


def _tool_call(request: ExportTraceServiceRequest) -> Span:
    return request.resource_spans[0].scope_spans[0].spans[0]


def plant(field_name: str, text: str, span_id: bytes) -> ExportTraceServiceRequest:
    """An Export with one tool-call span (and, for some fields, a second span) where
    ``text`` sits in ``field_name``."""
    attrs = callward_attributes(1)
    name = semconv.tool_call_span_name("read_file")
    resource: dict[str, object] = {semconv.SERVICE_NAME: "agent"}
    if field_name == "attribute":
        attrs["note"] = f"see {text} end"
    elif field_name == "arguments":
        attrs[semconv.GEN_AI_TOOL_CALL_ARGUMENTS] = f'{{"query": "{text}"}}'
    elif field_name == "mapped_column":
        attrs[semconv.GEN_AI_TOOL_CALL_ID] = text
    elif field_name == "attribute_key":
        attrs[text] = "value"
    elif field_name == "array":
        attrs["list"] = ["first", text]
    elif field_name == "kvlist":
        attrs["outer"] = {"inner": [{"deep": text}]}
    elif field_name == "span_name":
        name = semconv.tool_call_span_name(text)
        del attrs[semconv.GEN_AI_TOOL_NAME]
    elif field_name == "resource_value":
        resource["deployment"] = text
    elif field_name == "resource_key":
        resource[text] = "prod"
    spec = SpanSpec(name=name, attributes=attrs, span_id=span_id)
    if field_name == "status_message":
        spec.status_code, spec.status_message = Status.STATUS_CODE_ERROR, text
    request = build_request([spec], resource=resource)
    rs = request.resource_spans[0]
    ss = rs.scope_spans[0]
    span = _tool_call(request)
    if field_name == "bytes_value":
        span.attributes.add(key="blob").value.bytes_value = text.encode()
    elif field_name == "event_name":
        span.events.add(name=text, time_unix_nano=span.start_time_unix_nano)
    elif field_name == "event_attribute":
        event = span.events.add(name="retry", time_unix_nano=span.start_time_unix_nano)
        set_any_value(event.attributes.add(key="detail").value, text)
    elif field_name == "link_attribute":
        link = span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8))
        set_any_value(link.attributes.add(key="why").value, text)
    elif field_name == "link_trace_state":
        span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8), trace_state=f"v={text}")
    elif field_name == "trace_state":
        span.trace_state = f"vendor={text}"
    elif field_name == "scope_name":
        ss.scope.name = text
    elif field_name == "scope_version":
        ss.scope.version = text
    elif field_name == "scope_attribute":
        set_any_value(ss.scope.attributes.add(key="lib").value, text)
    elif field_name == "schema_url":
        rs.schema_url = ss.schema_url = f"https://schemas.example/{text}"
    elif field_name == "other_span_name":  # not a tool call: forwarded, never stored
        other = ss.spans.add()
        other.CopyFrom(span)
        other.span_id = os.urandom(8)
        other.name = f"GET {text}"
        del other.attributes[:]
    elif field_name == "rejected_span_name":  # rejected (ends before it starts): logged
        other = ss.spans.add()
        other.CopyFrom(span)
        other.span_id = os.urandom(8)
        other.name = semconv.tool_call_span_name(text)
        other.end_time_unix_nano = other.start_time_unix_nano - 1
    return request


FIELDS = (
    "attribute",
    "arguments",
    "mapped_column",
    "attribute_key",
    "array",
    "kvlist",
    "bytes_value",
    "span_name",
    "other_span_name",
    "rejected_span_name",
    "status_message",
    "event_name",
    "event_attribute",
    "link_attribute",
    "link_trace_state",
    "trace_state",
    "resource_value",
    "resource_key",
    "scope_name",
    "scope_version",
    "scope_attribute",
    "schema_url",
)


# Secrets of every built-in kind and every ruleset rule, on one line (a field such as a
# span name holds one), long enough that "absent" cannot hold by chance.
LONG_SECRETS = SECRETS.map(lambda s: (s[1], s[2])).filter(
    lambda t: len(t[1]) >= 10 and not any(c.isspace() for c in t[0]) and '"' not in t[0]
)


def send(rig: Rig, request: ExportTraceServiceRequest, secrets: list[str]) -> None:
    rig.secrets.extend(secrets)
    stored_id = _tool_call(request).span_id
    rig.stub.Export(request, timeout=30)
    wait_until(lambda: rig.backend.holds_span(stored_id), "the span at the backend")
    wait_until(lambda: stored_id.hex() in stored_span_ids(rig.data_dir), "the row in Parquet")


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(LONG_SECRETS, st.sampled_from(FIELDS))
def test_a_secret_in_any_field_reaches_no_backend_file_or_log(
    rig: Rig, secret: tuple[str, str], field_name: str
) -> None:
    text, hidden = secret
    since = len(rig.backend.requests)
    send(rig, plant(field_name, text, os.urandom(8)), [hidden])
    assert leaks(rig, [hidden], since) == {}, (field_name, text)


def test_every_field_at_once_is_redacted_where_it_is_kept(rig: Rig) -> None:
    """One request with a secret in every field; the forwarded copy keeps each field (a
    marker in its place), so redaction, not dropping, is what kept the secrets out."""
    secret = "ghp_" + "Zq7" * 12
    request = ExportTraceServiceRequest()
    for field_name in FIELDS:
        request.resource_spans.extend(plant(field_name, secret, os.urandom(8)).resource_spans)
    stored = [rs.scope_spans[0].spans[0].span_id for rs in request.resource_spans]
    rig.secrets.append(secret)
    rig.stub.Export(request, timeout=30)
    wait_until(lambda: all(rig.backend.holds_span(s) for s in stored), "every span forwarded")
    wait_until(
        lambda: {s.hex() for s in stored} <= stored_span_ids(rig.data_dir), "every row stored"
    )
    assert leaks(rig, [secret]) == {}
    forwarded = ExportTraceServiceRequest()
    for raw in rig.backend.requests:
        part = ExportTraceServiceRequest.FromString(raw)
        if any(rs.scope_spans[0].spans[0].span_id in stored for rs in part.resource_spans):
            forwarded.MergeFrom(part)
    assert forwarded.SerializeToString().count(b"[REDACTED:github_token]") >= len(FIELDS)
    assert "[REDACTED:github_token]" in rig.log()  # the rejected span's reason, redacted
