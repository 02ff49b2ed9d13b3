"""The OTLP/gRPC TraceService endpoint of the collector.

The handler takes the raw request bytes (not a parsed message) so that it decides how
bad input is answered instead of the gRPC runtime: bytes that are not a protobuf get
INVALID_ARGUMENT, text that is not UTF-8 is repaired (collector/otlp_parse.py), and
spans that cannot be records are reported in ``partial_success`` as the OTLP
specification asks (https://opentelemetry.io/docs/specs/otlp/#partial-success).

An Export is answered only after ``ingest`` returned, i.e. once its rows are fsync'ed in
the spool. Status codes, in one place (:func:`status_for`): INVALID_ARGUMENT is final
for the client; UNAVAILABLE (busy, disk trouble) tells OTLP exporters to retry; the gRPC
runtime itself answers RESOURCE_EXHAUSTED to requests over ``max_request_bytes``.

With authentication on (:mod:`callward.grpc_auth`), an Export without a valid credential
is answered UNAUTHENTICATED before its bytes are decoded: nothing of it is stored or
forwarded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from callward.collector.decode_pool import DecodedExport, DecodeUnavailableError
from callward.collector.otlp_parse import MalformedRequestError
from callward.grpc_auth import OFF, ServerAuth, Unauthenticated
from callward.listen import check_bindable

log = logging.getLogger("callward.collector.receiver")

SERVICE_NAME = "opentelemetry.proto.collector.trace.v1.TraceService"
EXPORT_METHOD = f"/{SERVICE_NAME}/Export"


class BusyError(RuntimeError):
    """The collector is behind on writing; the client should retry later."""


def status_for(error: Exception) -> grpc.StatusCode:
    """The gRPC status an Export failure is answered with."""
    if isinstance(error, MalformedRequestError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, BusyError | DecodeUnavailableError | OSError):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


@dataclass
class ReceiverStats:
    requests: int = 0
    spans_seen: int = 0
    rows_accepted: int = 0
    spans_rejected: int = 0
    malformed_requests: int = 0
    repaired_requests: int = 0
    failed_requests: int = 0
    forward_errors: int = 0
    unauthenticated_requests: int = 0


class TraceReceiver:
    """Decodes and ingests Exports; optionally passes the (redacted) request on, as
    serialized bytes and its span count (``Forwarder.submit_serialized``)."""

    def __init__(
        self,
        decode: Callable[[bytes, int, bool], DecodedExport],
        ingest: Callable[[DecodedExport], None],
        forward: Callable[[bytes, int], None] | None = None,
        clock: Callable[[], int] = time.time_ns,
        auth: ServerAuth = OFF,
    ):
        self.decode = decode
        self.ingest = ingest
        self.forward = forward
        self.clock = clock
        self.auth = auth
        self.stats = ReceiverStats()
        self._stats_lock = threading.Lock()

    def handle(self, data: bytes) -> ExportTraceServiceResponse:
        """Process one serialized Export; raises for a failure of the whole request."""
        result = self.decode(data, self.clock(), self.forward is not None)
        self.ingest(result)
        if self.forward is not None:
            try:
                self.forward(result.forward, result.spans_seen)
            except Exception as e:  # forwarding must never fail what is already stored
                with self._stats_lock:
                    self.stats.forward_errors += 1
                log.warning("forwarding failed: %r", e)
        with self._stats_lock:
            self.stats.requests += 1
            self.stats.spans_seen += result.spans_seen
            self.stats.rows_accepted += result.num_rows
            self.stats.spans_rejected += result.rejected
            self.stats.repaired_requests += int(result.repaired)
        response = ExportTraceServiceResponse()
        if result.rejected:
            # The reasons quote span names, redacted by the decoder like every stored string.
            log.info("Export: %s", result.error_message)
            response.partial_success.rejected_spans = result.rejected
            response.partial_success.error_message = result.error_message
        return response

    def export(self, data: bytes, context: grpc.ServicerContext) -> ExportTraceServiceResponse:
        if self.auth.enabled:
            try:
                self.auth.authenticate(context)
            except Unauthenticated as e:
                with self._stats_lock:
                    self.stats.unauthenticated_requests += 1
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        try:
            return self.handle(data)
        except Exception as e:
            code = status_for(e)
            with self._stats_lock:
                if code == grpc.StatusCode.INVALID_ARGUMENT:
                    self.stats.malformed_requests += 1
                else:
                    self.stats.failed_requests += 1
            if code == grpc.StatusCode.INTERNAL:
                log.exception("Export failed")
            context.abort(code, str(e)[:1000] or type(e).__name__)
            raise  # not reached: abort raises

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.unary_unary_rpc_method_handler(
            self.export,
            request_deserializer=None,  # raw bytes: parsing is ours
            response_serializer=ExportTraceServiceResponse.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {"Export": method})


def serve(
    receiver: TraceReceiver, listen: str, *, max_request_bytes: int, workers: int
) -> tuple[grpc.Server, int]:
    """Start a gRPC server for ``receiver`` on ``listen`` (TLS when ``receiver.auth`` has
    it); returns it and the bound port."""
    try:
        check_bindable(listen)
    except ValueError as e:
        raise OSError(str(e)) from None
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otlp-export"),
        handlers=[receiver.handler()],
        options=[
            ("grpc.max_receive_message_length", max_request_bytes),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            # gRPC shares ports between processes by default; a second collector on the
            # same address should fail to start instead of silently taking half the load.
            ("grpc.so_reuseport", 0),
        ],
    )
    try:
        port = receiver.auth.add_port(server, listen)
    except RuntimeError as e:  # grpc reports a failed bind this way
        raise OSError(f"could not listen on {listen} (address in use?)") from e
    if port == 0:
        raise OSError(f"could not listen on {listen}")
    server.start()
    receiver.auth.warn_if_exposed(f"{listen.rpartition(':')[0]}:{port}", "collector", log)
    return server, port
