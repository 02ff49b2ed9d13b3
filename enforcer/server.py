"""The gRPC enforcer: a thin adapter between the wire and :func:`enforcer.engine.decide`.

What it promises:

- The enforcer's own clock decides which rate-limit window a call falls in; no time
  sent by a caller is used. ``decide`` and the reservation of quota happen under one
  lock, so two concurrent calls can never both take the last unit of a limit.
- An allowed call stays *pending* (reserved counter keys, open span, start time) until
  its Report or until it expires. Report with outcome ``error`` gives the quota back;
  a pending call that expires or is evicted keeps its quota (it presumably ran).
- A request that is malformed, oversize or names no tool gets ``INVALID_ARGUMENT`` with
  a message saying what is wrong, and the server keeps serving. Error kinds map to gRPC
  status codes in one place (:data:`STATUS_OF`).
- Telemetry never fails a Check: span failures are counted and logged once.

A retried Check with a ``call_id`` that is still pending returns the first decision
again without reserving a second time, so a gateway may retry after a lost response.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from callward.enforcer.engine import (
    ALLOW,
    DENY,
    REQUIRE_APPROVAL,
    CounterKey,
    Decision,
    InMemoryLimitState,
    Request,
    decide,
)
from callward.enforcer.policy import CompiledPolicy
from callward.enforcer.telemetry import CallRecorder, CallSpan
from callward.proto.callward.v1 import enforcer_pb2 as pb

log = logging.getLogger("callward.enforcer")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Enforcer"].full_name
MAX_REQUEST_BYTES = 1024 * 1024
"""Largest Check/Report accepted; bigger ones get INVALID_ARGUMENT."""
TRANSPORT_MAX_BYTES = 4 * MAX_REQUEST_BYTES
"""gRPC's own receive limit, kept above :data:`MAX_REQUEST_BYTES` so that a request a little
over the limit still reaches the handler and gets a clear INVALID_ARGUMENT (beyond this,
gRPC itself answers RESOURCE_EXHAUSTED)."""
MAX_NAME_CHARS = 256
"""Tool and server names longer than this are refused: decisions are cached per name."""
MAX_ID_CHARS = 1024
"""call_id, agent_id, session_id and grant key counters and the pending map."""
OUTCOMES = ("ok", "error")

_DECISION_TO_PROTO = {
    ALLOW: pb.DECISION_ALLOW,
    DENY: pb.DECISION_DENY,
    REQUIRE_APPROVAL: pb.DECISION_REQUIRE_APPROVAL,
}


# --------------------------------------------------------------------------- errors


class RequestRejected(Exception):
    """A request the enforcer refuses; its class says which gRPC status the caller gets."""


class InvalidRequest(RequestRejected):
    """Malformed, oversize or incomplete request."""


class UnknownCall(RequestRejected):
    """Report for a call_id the enforcer does not hold (denied, reported, expired, restarted)."""


class CallIdConflict(RequestRejected):
    """A pending call_id reused for a different request."""


STATUS_OF: Mapping[type[RequestRejected], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownCall: grpc.StatusCode.NOT_FOUND,
    CallIdConflict: grpc.StatusCode.ALREADY_EXISTS,
}
"""The one mapping from error kind to gRPC status code."""


def status_for(error: RequestRejected) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        code = STATUS_OF.get(kind)  # type: ignore[call-overload]
        if code is not None:
            return code
    return grpc.StatusCode.INVALID_ARGUMENT


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EnforcerConfig:
    """How the service holds calls and how the server listens."""

    listen: str = "127.0.0.1:50051"
    max_workers: int = 8
    pending_ttl_s: float = 600.0
    """An allowed call with no Report after this long is closed without an outcome."""
    max_pending: int = 100_000
    """Beyond this many pending calls the oldest is closed early (bounded memory)."""
    housekeeping_interval_s: float = 5.0
    """How often expired pending calls and ended rate-limit windows are dropped."""
    grace_s: float = 2.0

    def validated(self) -> EnforcerConfig:
        host, sep, port = self.listen.rpartition(":")
        # gRPC would silently take a port above 65535 modulo 65536: refuse it here.
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"listen must be HOST:PORT with PORT in 0..65535, got {self.listen!r}")
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if not (self.pending_ttl_s > 0 and math.isfinite(self.pending_ttl_s)):
            raise ValueError("pending_ttl_s must be a positive number of seconds")
        if self.max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if not self.housekeeping_interval_s > 0:
            raise ValueError("housekeeping_interval_s must be positive")
        return self


# --------------------------------------------------------------------------- decoding


_JSON_TYPE = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_arguments(text: str) -> dict[str, Any]:
    """The call's arguments: a JSON object in text; an empty string means no arguments."""
    if text == "":
        return {}
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InvalidRequest("arguments_json is nested too deeply") from None
    except ValueError as e:
        raise InvalidRequest(f"arguments_json is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        kind = _JSON_TYPE.get(type(value), "number")
        raise InvalidRequest(f"arguments_json must be a JSON object, got a JSON {kind}")
    return value


def _bounded(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidRequest(f"{field} is {len(value)} characters long; the limit is {limit}")
    return value


def to_request(msg: pb.CheckRequest, call_id: str) -> Request:
    """Validate a CheckRequest and turn it into the engine's :class:`Request`."""
    if not msg.tool:
        raise InvalidRequest("tool must not be empty")
    return Request(
        tool=_bounded("tool", msg.tool, MAX_NAME_CHARS),
        arguments=parse_arguments(msg.arguments_json),
        server=_bounded("server", msg.server, MAX_NAME_CHARS),
        grant=_bounded("grant", msg.grant, MAX_ID_CHARS),
        agent_id=_bounded("agent_id", msg.agent_id, MAX_ID_CHARS),
        session_id=_bounded("session_id", msg.session_id, MAX_ID_CHARS),
        call_id=call_id,
    )


class _Undecodable:
    """Stands in for a request whose bytes could not be parsed, so the handler can answer
    INVALID_ARGUMENT (gRPC itself would answer INTERNAL)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


def _lenient_parser(cls: Any) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def parse(data: bytes) -> Any:
        if len(data) > MAX_REQUEST_BYTES:
            return _Undecodable(
                f"request is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES} bytes (1 MiB)"
            )
        try:
            return cls.FromString(data)
        except Exception as e:
            return _Undecodable(f"request is not a valid {name}: {e}")

    return parse


# --------------------------------------------------------------------------- the service


class _Pending:
    """An allowed call waiting for its Report."""

    __slots__ = ("decision", "expires_at", "fingerprint", "reserved", "result", "span", "started")

    def __init__(
        self, decision: Decision, fingerprint: int, started: float, expires_at: float
    ) -> None:
        self.decision = decision
        self.reserved: tuple[CounterKey, ...] = decision.reserved
        self.fingerprint = fingerprint
        self.started = started
        self.expires_at = expires_at
        self.span: CallSpan | None = None
        # Set when the call is closed before its span was attached (see _attach_span).
        self.result: tuple[str, float | None, int | None, str] | None = None


@dataclass(frozen=True)
class PolicySwap:
    """What a reload changed: counters kept (unchanged limits) and counters reset."""

    old_version: str
    new_version: str
    kept: tuple[str, ...]
    reset: tuple[str, ...]


@dataclass(frozen=True)
class Housekeeping:
    expired_calls: int
    pruned_counters: int


class EnforcerService:
    """Check and Report over a policy and in-memory counters, independent of gRPC.

    ``clock`` is the enforcer's own clock (epoch seconds); it is injectable so that tests
    can cross a window boundary, never taken from a request.
    """

    def __init__(
        self,
        policy: CompiledPolicy,
        *,
        config: EnforcerConfig | None = None,
        recorder: CallRecorder | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = (config or EnforcerConfig()).validated()
        self.recorder = recorder
        self.clock = clock
        self.state = InMemoryLimitState()
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._policy = policy
        self._windows = _windows_of(policy)
        self.telemetry_errors = 0
        self._telemetry_logged = False
        self._publish(policy)

    @property
    def policy(self) -> CompiledPolicy:
        return self._policy

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    # ----------------------------------------------------------------- Check

    def check(self, msg: pb.CheckRequest) -> pb.CheckResponse:
        start_ns = time.time_ns()
        call_id = _bounded("call_id", msg.call_id, MAX_ID_CHARS) or uuid.uuid4().hex
        req = to_request(msg, call_id)
        fingerprint = hash(
            (req.tool, req.server, req.grant, req.agent_id, req.session_id, msg.arguments_json)
        )
        evicted: list[_Pending] = []
        entry: _Pending | None = None
        with self._lock:
            pending = self._pending.get(call_id)
            if pending is not None:
                if pending.fingerprint != fingerprint:
                    raise CallIdConflict(
                        f"call_id {call_id[:64]!r} is pending with a different request"
                    )
                return _response(pending.decision, call_id)
            now = self.clock()
            decision = decide(self._policy, req, self.state, now)
            if decision.allowed:
                entry = _Pending(decision, fingerprint, now, now + self.config.pending_ttl_s)
                self._pending[call_id] = entry
                while len(self._pending) > self.config.max_pending:
                    evicted.append(self._pending.popitem(last=False)[1])
        span = self._begin(req, decision, msg, start_ns)
        if entry is None:
            if span is not None:
                span.end()
        else:
            self._attach_span(entry, span)
        for old in evicted:
            self._close_unreported(old, "evicted")
        return _response(decision, call_id)

    # ----------------------------------------------------------------- Report

    def report(self, msg: pb.ReportRequest) -> pb.ReportResponse:
        if not msg.call_id:
            raise InvalidRequest("call_id must not be empty")
        if msg.outcome not in OUTCOMES:
            raise InvalidRequest(f'outcome must be "ok" or "error", got {msg.outcome[:32]!r}')
        if not (math.isfinite(msg.duration_ms) and msg.duration_ms >= 0):
            raise InvalidRequest("duration_ms must be a finite number >= 0")
        if msg.result_bytes < 0:
            raise InvalidRequest("result_bytes must be >= 0")
        error_type = _bounded("error_type", msg.error_type, MAX_NAME_CHARS)
        result = (msg.outcome, msg.duration_ms, msg.result_bytes, error_type)
        released = 0
        with self._lock:
            entry = self._pending.pop(msg.call_id, None)
            if entry is None:
                raise UnknownCall(
                    f"no pending call {msg.call_id[:64]!r}: it was denied, already reported, "
                    f"pending longer than {self.config.pending_ttl_s:g} s, or the enforcer restarted"
                )
            if msg.outcome == "error" and entry.reserved:
                self.state.release(entry.reserved)
                released = len(entry.reserved)
            span = entry.span
            if span is None:
                entry.result = result
        if span is not None:
            span.end(*result)
        return pb.ReportResponse(released=released)

    # ----------------------------------------------------------------- reload

    def swap_policy(self, new: CompiledPolicy) -> PolicySwap:
        """Put ``new`` in force; counters of limits whose settings did not change survive."""
        with self._lock:
            old = self._policy
            old_sigs, new_sigs = old.limit_signatures(), new.limit_signatures()
            kept = {c for c, sig in new_sigs.items() if old_sigs.get(c) == sig}
            self.state.retain_counters(kept)
            # A reset counter must not be decremented later by a call reserved before.
            for entry in self._pending.values():
                if entry.reserved:
                    entry.reserved = tuple(k for k in entry.reserved if k[0] in kept)
            self._policy = new
            self._windows = _windows_of(new)
        self._publish(new)
        return PolicySwap(
            old_version=old.version,
            new_version=new.version,
            kept=tuple(sorted(kept)),
            reset=tuple(sorted(set(old_sigs) - kept)),
        )

    # ----------------------------------------------------------------- upkeep

    def housekeeping(self) -> Housekeeping:
        """Close pending calls past their expiry and drop counters of ended windows."""
        expired: list[_Pending] = []
        with self._lock:
            now = self.clock()
            for call_id in list(self._pending):
                entry = self._pending[call_id]
                if entry.expires_at > now:
                    break
                expired.append(self._pending.pop(call_id))
            pruned = self.state.prune(now, self._windows)
        for entry in expired:
            self._close_unreported(entry, "expired")
        return Housekeeping(len(expired), pruned)

    def close(self) -> None:
        """Close every pending call's span (no outcome known) so it is still exported."""
        with self._lock:
            entries = list(self._pending.values())
            self._pending.clear()
        for entry in entries:
            self._close_unreported(entry, "shutdown")

    # ----------------------------------------------------------------- telemetry

    def _begin(
        self, req: Request, decision: Decision, msg: pb.CheckRequest, start_ns: int
    ) -> CallSpan | None:
        if self.recorder is None:
            return None
        try:
            return self.recorder.begin(
                req,
                decision,
                traceparent=msg.traceparent,
                mcp_session_id=msg.mcp_session_id,
                start_time_ns=start_ns,
            )
        except Exception as e:
            self._telemetry_failed(e)
            return None

    def _attach_span(self, entry: _Pending, span: CallSpan | None) -> None:
        # A Report may (in theory) overtake us between the decision and this point.
        with self._lock:
            entry.span = span
            result = entry.result
        if result is not None and span is not None:
            span.end(*result)

    def _close_unreported(self, entry: _Pending, why: str) -> None:
        with self._lock:
            span = entry.span
            if span is None:
                entry.result = ("", None, None, "")
                return
        try:
            span.span.set_attribute("callward.pending_closed", why)
        except Exception as e:
            self._telemetry_failed(e)
        span.end()

    def _publish(self, policy: CompiledPolicy) -> None:
        if self.recorder is None:
            return
        try:
            self.recorder.publish_policy(policy.version, policy.canonical, policy.source)
        except Exception as e:
            self._telemetry_failed(e)

    def _telemetry_failed(self, error: Exception) -> None:
        self.telemetry_errors += 1
        if not self._telemetry_logged:
            self._telemetry_logged = True
            log.warning("telemetry failed (decisions are unaffected; counted): %r", error)


def _windows_of(policy: CompiledPolicy) -> dict[str, int]:
    return {lim.counter: lim.window_seconds for lim in policy.all_limits()}


def _response(decision: Decision, call_id: str) -> pb.CheckResponse:
    return pb.CheckResponse(
        decision=_DECISION_TO_PROTO.get(decision.decision, pb.DECISION_UNSPECIFIED),
        rule=decision.rule,
        message=decision.message,
        policy_version=decision.policy_version,
        call_id=call_id,
    )


# --------------------------------------------------------------------------- the server


class ListenFailed(RuntimeError):
    """The listen address could not be bound (in use, bad host, no permission)."""


def _unary(fn: Callable[[Any], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            if isinstance(request, _Undecodable):
                raise InvalidRequest(request.reason)
            return fn(request)
        except RequestRejected as e:
            context.abort(status_for(e), str(e))
        except Exception:
            log.exception("internal error while handling a request")
            context.abort(grpc.StatusCode.INTERNAL, "internal enforcer error (logged)")

    return handle


def _handlers(service: EnforcerService) -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                _unary(service.check),
                request_deserializer=_lenient_parser(pb.CheckRequest),
                response_serializer=pb.CheckResponse.SerializeToString,
            ),
            "Report": grpc.unary_unary_rpc_method_handler(
                _unary(service.report),
                request_deserializer=_lenient_parser(pb.ReportRequest),
                response_serializer=pb.ReportResponse.SerializeToString,
            ),
        },
    )


SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", TRANSPORT_MAX_BYTES),
    ("grpc.max_send_message_length", TRANSPORT_MAX_BYTES),
    # Without this a second enforcer could silently share the port with the first.
    ("grpc.so_reuseport", 0),
)


class EnforcerServer:
    """A gRPC server around an :class:`EnforcerService`, with health and reflection on."""

    def __init__(self, service: EnforcerService) -> None:
        self.service = service
        self.config = service.config
        self.health = health.HealthServicer()
        self._server: grpc.Server | None = None
        self._stop = threading.Event()
        self._upkeep: threading.Thread | None = None
        self.port = 0

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    def start(self) -> int:
        """Bind, start serving and return the bound port (useful with port 0)."""
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=self.config.max_workers, thread_name_prefix="enforcer"
            ),
            options=SERVER_OPTIONS,
        )
        server.add_generic_rpc_handlers((_handlers(self.service),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        try:
            port = server.add_insecure_port(self.config.listen)
        except RuntimeError as e:
            raise ListenFailed(f"cannot listen on {self.config.listen}: {e}") from None
        if port == 0:
            raise ListenFailed(f"cannot listen on {self.config.listen}")
        server.start()
        self._server = server
        self.port = port
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._upkeep = threading.Thread(
            target=self._housekeeping_loop, name="enforcer-housekeeping", daemon=True
        )
        self._upkeep.start()
        return port

    def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let running ones finish, close pending spans."""
        if self._server is None:
            return
        self.health.enter_graceful_shutdown()
        self._server.stop(self.config.grace_s if grace is None else grace).wait()
        self._server = None
        self._stop.set()
        if self._upkeep is not None:
            self._upkeep.join(timeout=5)
        self.service.close()

    def _housekeeping_loop(self) -> None:
        while not self._stop.wait(self.config.housekeeping_interval_s):
            try:
                done = self.service.housekeeping()
            except Exception:
                log.exception("housekeeping failed")
                continue
            if done.expired_calls:
                log.info("closed %d pending call(s) with no Report", done.expired_calls)


__all__ = [
    "MAX_REQUEST_BYTES",
    "SERVICE_NAME",
    "STATUS_OF",
    "CallIdConflict",
    "EnforcerConfig",
    "EnforcerServer",
    "EnforcerService",
    "Housekeeping",
    "InvalidRequest",
    "ListenFailed",
    "PolicySwap",
    "RequestRejected",
    "UnknownCall",
    "parse_arguments",
    "status_for",
    "to_request",
]
