"""The gRPC enforcer: a thin adapter between the wire and the service core.

The core (:mod:`callward.enforcer.service`) decides, reserves and holds pending calls;
:mod:`callward.enforcer.messages` turns protobuf messages into its requests; this module
only serves them: the handlers, the one mapping from error kind to gRPC status code
(:data:`STATUS_OF`), health and reflection, start and stop.

What it promises, on top of the core's promises (one lock around decide+reserve, pending
calls, a retried ``call_id`` answered with its first decision, telemetry never failing a
Check):

- A request that is malformed, oversize or names no tool gets ``INVALID_ARGUMENT`` with
  a message saying what is wrong, and the server keeps serving; bytes that do not parse
  get it too (gRPC itself would answer INTERNAL).
- Any other failure is logged and answered ``INTERNAL`` without detail.
- With authentication on (a tokens file, client certificates: :mod:`callward.grpc_auth`),
  a Check or Report without a valid credential is answered ``UNAUTHENTICATED`` before its
  bytes are looked at, and never reaches the service; health and reflection stay open.
  Bound to an address other than loopback without it, the server logs one warning.

The names this module has always exported (the config, the service, the error kinds)
are re-exported here so that importers of ``callward.enforcer.server`` keep working.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callward.auth import Principal
from callward.enforcer.housekeeping import HousekeepingLoop
from callward.enforcer.messages import (
    MAX_ID_CHARS,
    MAX_NAME_CHARS,
    EnforcerService,
    parse_arguments,
    to_request,
)
from callward.enforcer.server_config import EnforcerConfig, make_server_config
from callward.enforcer.service import (
    OUTCOMES,
    CallIdConflict,
    EnforcerCore,
    Housekeeping,
    InvalidRequest,
    NotYourCall,
    PolicySwap,
    RequestRejected,
    UnknownCall,
)
from callward.grpc_auth import ServerAuth, Unauthenticated, load_server_auth
from callward.listen import check_bindable
from callward.proto.callward.v1 import enforcer_pb2 as pb

log = logging.getLogger("callward.enforcer")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Enforcer"].full_name
MAX_REQUEST_BYTES = 1024 * 1024
"""Largest Check/Report accepted; bigger ones get INVALID_ARGUMENT."""
TRANSPORT_MAX_BYTES = 4 * MAX_REQUEST_BYTES
"""gRPC's own receive limit, kept above :data:`MAX_REQUEST_BYTES` so that a request a little
over the limit still reaches the handler and gets a clear INVALID_ARGUMENT (beyond this,
gRPC itself answers RESOURCE_EXHAUSTED)."""


# --------------------------------------------------------------------------- status codes


STATUS_OF: Mapping[type[RequestRejected], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownCall: grpc.StatusCode.NOT_FOUND,
    CallIdConflict: grpc.StatusCode.ALREADY_EXISTS,
    NotYourCall: grpc.StatusCode.PERMISSION_DENIED,
}
"""The one mapping from error kind to gRPC status code."""


def status_for(error: RequestRejected) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        code = STATUS_OF.get(kind)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- handlers


class _Undecodable:
    """Stands in for a request whose bytes could not be parsed, so the handler can answer
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _lenient_parser(cls: Any) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name
    from_string = cls.FromString

    def parse(data: bytes) -> Any:
        if len(data) > MAX_REQUEST_BYTES:
            return _Undecodable(
                f"request is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES} bytes (1 MiB)"
            )
        try:
            return from_string(data)
        except Exception as e:
            return _Undecodable(f"request is not a valid {name}: {e}")

    return parse


def _unary(
    fn: Callable[[Any, Principal | None], Any], auth: ServerAuth
) -> Callable[[Any, grpc.ServicerContext], Any]:
    authenticate = auth.authenticate if auth.enabled else None

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        principal = None
        if authenticate is not None:
            try:
                principal = authenticate(context)
            except Unauthenticated as e:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, str(e))
        try:
            if type(request) is _Undecodable:
                raise InvalidRequest(request.reason)
            return fn(request, principal)
        except RequestRejected as e:
            context.abort(status_for(e), str(e))
        except Exception:
            log.exception("internal error while handling a request")
            context.abort(grpc.StatusCode.INTERNAL, "internal enforcer error (logged)")

    return handle


def _handlers(service: EnforcerService, auth: ServerAuth) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                _unary(service.check, auth),
                request_deserializer=_lenient_parser(pb.CheckRequest),
                response_serializer=pb.CheckResponse.SerializeToString,
            ),
            "Report": grpc.unary_unary_rpc_method_handler(
                _unary(service.report, auth),
                request_deserializer=_lenient_parser(pb.ReportRequest),
                response_serializer=pb.ReportResponse.SerializeToString,
            ),
        },
    )


# --------------------------------------------------------------------------- the server


class ListenFailed(RuntimeError):
    """The listen address could not be bound (in use, bad host, no permission)."""


SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
    ("grpc.max_send_message_length", TRANSPORT_MAX_BYTES),
    # Without this a second enforcer could silently share the port with the first.
    ("grpc.so_reuseport", 0),
)


class EnforcerServer:
    """A gRPC server around an :class:`EnforcerService`, with health and reflection on.

    ``auth`` defaults to what the config's tokens and TLS files say; reading them raises
    :class:`callward.grpc_auth.AuthInvalid` here, before anything binds.
    """

    def __init__(self, service: EnforcerService, auth: ServerAuth | None = None) -> None:
        self.service = service
        self.config = service.config
        if auth is None:
            c = self.config
            auth = load_server_auth(c.tokens, c.tls_cert, c.tls_key, c.tls_client_ca)
        self.auth = auth
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._upkeep = HousekeepingLoop(service.housekeeping, self.config.housekeeping_interval_s)
        self.port = 0

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Bind, start serving and return the bound port (useful with port 0)."""
        try:
            check_bindable(self.config.listen)
        except (OSError, ValueError) as e:
            raise ListenFailed(str(e)) from None
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="enforcer"
            ),
            options=SERVER_OPTIONS,
        )
        server.add_generic_rpc_handlers((_handlers(self.service, self.auth),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = self.auth.add_port(server, self.config.listen)
        except RuntimeError as e:
            raise ListenFailed(f"cannot listen on {self.config.listen}: {e}") from None
        if port == 0:
            raise ListenFailed(f"cannot listen on {self.config.listen}")
        server.start()
        self._server = server
        self.port = port
        self.auth.warn_if_exposed(self.address, "enforcer", log)
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._upkeep.start()
        return port

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let running ones finish, close pending spans."""
        if self._server is None:
            return
        self.health.enter_graceful_shutdown()
        self._server.stop(self.config.grace_s if grace is None else grace).wait()
        self._server = None
        self._upkeep.stop()
        self.service.close()


__all__ = [
    "MAX_ID_CHARS",
    "MAX_NAME_CHARS",
    "MAX_REQUEST_BYTES",
    "OUTCOMES",
    "SERVICE_NAME",
    "STATUS_OF",
    "CallIdConflict",
    "EnforcerConfig",
    "EnforcerCore",
    "EnforcerServer",
    "EnforcerService",
    "Housekeeping",
    "InvalidRequest",
    "ListenFailed",
    "NotYourCall",
    "PolicySwap",
    "RequestRejected",
    "UnknownCall",
    "make_server_config",
    "parse_arguments",
    "status_for",
    "to_request",
]
