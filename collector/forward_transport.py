"""Sending one OTLP trace export to a backend, and the retry schedule around it.

:class:`OtlpTransport` sends an already-serialised ``ExportTraceServiceRequest`` over
OTLP/gRPC or OTLP/HTTP (protobuf) and sorts failures the way the OTLP spec does:
transient ones (gRPC ``UNAVAILABLE`` and friends, HTTP 429/502/503/504, connection errors)
raise :class:`ConnectionError` and are worth retrying; anything else raises
:class:`PermanentRefusal` and must not be retried. :func:`send_with_retries` retries with
exponential backoff and jitter until the send succeeds, is refused for good, or the
caller's ``wait`` says to give up. The transport knows nothing of queues or files.

Endpoints: ``host:port`` or ``grpc://host:port`` (OTLP/gRPC, plaintext), ``grpcs://host:port``
(OTLP/gRPC over TLS), ``http(s)://host[:port][/path]`` (OTLP/HTTP protobuf; ``/v1/traces``
is appended when the URL has no path).
"""

from __future__ import annotations

import gzip as gzip_module
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import grpc
import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

MIB = 1024 * 1024
ENV_HEADERS = "CALLWARD_COLLECTOR_FORWARD_HEADERS"
EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

# OTLP spec: these gRPC codes (and HTTP 429/502/503/504) are transient; everything else is
# a permanent rejection of the batch.
RETRYABLE_GRPC = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
RETRYABLE_HTTP = frozenset({408, 429, 502, 503, 504})


class PermanentRefusal(Exception):
    """The backend refused the batch for good (the OTLP spec says: do not retry)."""


def parse_headers(text: str) -> dict[str, str]:
    """``key=value,key2=value2`` (the ``OTEL_EXPORTER_OTLP_HEADERS`` format, values
    URL-encoded) into a dict; used for backends that need an API key or a tenant header."""
    headers: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{ENV_HEADERS}: expected key=value, got {item.strip()!r}")
        headers[unquote(key.strip()).lower()] = unquote(value.strip())
    return headers


class OtlpTransport:
    """Sends one serialised ExportTraceServiceRequest; raises on failure."""

    def __init__(self, endpoint: str, headers: Mapping[str, str], timeout_s: float, gzip: bool):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.gzip = gzip
        parts = urlsplit(endpoint if "://" in endpoint else f"grpc://{endpoint}")
        self.scheme = parts.scheme.lower()
        self.http: httpx.Client | None = None
        if self.scheme in ("http", "https"):
            path = parts.path if parts.path not in ("", "/") else "/v1/traces"
            self.url = f"{parts.scheme}://{parts.netloc}{path}"
            self.http = httpx.Client(
                timeout=timeout_s,
                headers={"Content-Type": "application/x-protobuf", **dict(headers)},
            )
            return
        if self.scheme not in ("grpc", "grpcs") or not parts.hostname or not parts.port:
            raise ValueError(
                f"forward endpoint {endpoint!r}: expected host:port, grpc://host:port, "
                "grpcs://host:port or http(s)://host[:port][/path]"
            )
        target = f"{parts.hostname}:{parts.port}"
        options = [("grpc.max_send_message_length", 64 * MIB)]
        if self.scheme == "grpcs":
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.metadata = tuple((k.lower(), v) for k, v in headers.items())
        self.compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        self.export = self.channel.unary_unary(
            EXPORT_METHOD,
            request_serializer=lambda payload: payload,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )

    def send(self, payload: bytes) -> int:
        """Deliver; returns the number of spans the backend rejected (partial success)."""
        if self.http is not None:
            return self._send_http(payload)
        try:
            response = self.export(
                payload,
                timeout=self.timeout_s,
                metadata=self.metadata,
                compression=self.compression,
                wait_for_ready=False,
            )
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            detail = e.details() if hasattr(e, "details") else str(e)
            message = f"gRPC {code.name}: {detail}"
            if code in RETRYABLE_GRPC:
                raise ConnectionError(message) from e
            raise PermanentRefusal(message) from e
        return int(response.partial_success.rejected_spans)

    def _send_http(self, payload: bytes) -> int:
        assert self.http is not None
        headers = {}
        if self.gzip:
            payload = gzip_module.compress(payload, compresslevel=5)
            headers["Content-Encoding"] = "gzip"
        try:
            r = self.http.post(self.url, content=payload, headers=headers)
        except httpx.HTTPError as e:
            raise ConnectionError(f"HTTP {type(e).__name__}: {e}") from e
        if r.status_code in RETRYABLE_HTTP or r.status_code >= 500:
            raise ConnectionError(f"HTTP {r.status_code}")
        if not 200 <= r.status_code < 300:
            raise PermanentRefusal(f"HTTP {r.status_code}: {r.text[:200]}")
        try:
            return int(
                ExportTraceServiceResponse.FromString(r.content).partial_success.rejected_spans
            )
        except Exception:
            return 0  # a 2xx without a parseable body is an acknowledgement all the same

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
        else:
            self.channel.close()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling
    from ``initial_s`` up to ``max_s`` (jitter keeps many collectors from retrying in step)."""

    initial_s: float
    max_s: float

    def delays(self, rng: Callable[[float, float], float] = random.uniform) -> Iterator[float]:
        d = self.initial_s
        while True:
            yield d * rng(0.5, 1.0)
            d = min(self.max_s, d * 2)


def send_with_retries(
    transport: OtlpTransport,
    payload: bytes,
    backoff: Backoff,
    wait: Callable[[float], bool],
    on_retry: Callable[[Exception, float], None],
) -> int | None:
    """Send until it is acknowledged (returns the rejected span count), refused for good
    (raises :class:`PermanentRefusal`), or ``wait(delay)`` returns False before a retry
    (returns None: the caller gave up, nothing was acknowledged)."""
    for delay in backoff.delays():
        try:
            return transport.send(payload)
        except PermanentRefusal:
            raise
        except Exception as e:  # transient by the OTLP rules, or a local transport error
            on_retry(e, delay)
            if not wait(delay):
                return None
    raise AssertionError("unreachable: delays() never ends")
