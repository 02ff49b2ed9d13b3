"""A small typed client of the enforcer's gRPC API, for gateways (``--enforcer HOST:PORT``).

Every call has a deadline. Failures come back as two kinds of exception so that a
gateway can apply its failure mode (open or closed) in one place:
:class:`EnforcerUnavailable` when the enforcer could not answer in time, and
:class:`EnforcerRejected` when it answered that the request itself is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from callward.enforcer.engine import ALLOW, DENY, REQUIRE_APPROVAL, Decision, Request
from callward.grpc_auth import bearer_metadata
from callward.proto.callward.v1 import enforcer_pb2 as pb
from callward.proto.callward.v1 import enforcer_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT_S = 0.2

_FROM_PROTO = {
    pb.DECISION_ALLOW: ALLOW,
    pb.DECISION_DENY: DENY,
    pb.DECISION_REQUIRE_APPROVAL: REQUIRE_APPROVAL,
}
# Codes that say "the enforcer did not decide", as opposed to "your request is wrong".
_UNAVAILABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)


class EnforcerError(Exception):
    """Base of the client's errors; ``code`` is the gRPC status (None if not a gRPC error)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class EnforcerUnavailable(EnforcerError):
    """No decision: the enforcer is down, too slow for the deadline, or failed internally."""


class EnforcerRejected(EnforcerError):
    """The enforcer refused the request (INVALID_ARGUMENT, ALREADY_EXISTS ...)."""


def _error(e: grpc.RpcError, what: str, target: str) -> EnforcerError:
    code = e.code() if isinstance(e, grpc.Call) else None
    details = (e.details() if isinstance(e, grpc.Call) else None) or str(e)
    name = code.name if code is not None else "error"
    message = f"enforcer {target}: {what} failed with {name}: {details}"
    if code is None or code in _UNAVAILABLE_CODES:
        return EnforcerUnavailable(message, code)
    return EnforcerRejected(message, code)


def channel_credentials(
    ca: str | Path = "", cert: str | Path = "", key: str | Path = ""
) -> grpc.ChannelCredentials:
    """TLS to a server whose certificate ``ca`` signed ("" = the system roots), presenting
    the client certificate ``cert`` with its ``key`` when given (PEM files)."""

    def read(path: str | Path) -> bytes | None:
        return Path(path).read_bytes() if path else None

    return grpc.ssl_channel_credentials(
        root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
    )


class EnforcerClient:
    """One channel to one enforcer. Thread-safe; close it (or use ``with``) when done.

    ``token`` is sent as ``authorization: Bearer <token>`` with every call; ``tls_ca``
    (the CA of the enforcer's certificate) turns on TLS, and ``tls_cert``/``tls_key`` add a
    client certificate for an enforcer started with ``--tls-client-ca``.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        options: Sequence[tuple[str, Any]] = (),
        token: str = "",
        tls_ca: str | Path = "",
        tls_cert: str | Path = "",
        tls_key: str | Path = "",
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._metadata = bearer_metadata(token)
        if tls_ca or tls_cert:
            credentials = channel_credentials(tls_ca, tls_cert, tls_key)
            self._channel = grpc.secure_channel(target, credentials, options=list(options))
        else:
            self._channel = grpc.insecure_channel(target, options=list(options))
        self._stub = pb_grpc.EnforcerStub(self._channel)

    def check(
        self,
        req: Request,
        traceparent: str = "",
        timeout: float | None = None,
        *,
        mcp_session_id: str = "",
    ) -> Decision:
        """Ask for a decision. Set ``req.call_id`` to be able to :meth:`report` the call.

        Raises :class:`EnforcerUnavailable` on a deadline or connection failure and
        :class:`EnforcerRejected` when the enforcer refuses the request.
        """
        msg = pb.CheckRequest(
            call_id=req.call_id,
            agent_id=req.agent_id,
            session_id=req.session_id,
            grant=req.grant,
            server=req.server,
            tool=req.tool,
            arguments_json=json.dumps(dict(req.arguments), ensure_ascii=False),
            traceparent=traceparent,
            mcp_session_id=mcp_session_id,
        )
        try:
            resp = self._stub.Check(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            raise _error(e, "Check", self.target) from None
        decision = _FROM_PROTO.get(resp.decision)
        if decision is None:
            raise EnforcerUnavailable(
                f"enforcer {self.target}: Check returned no decision ({resp.decision})"
            )
        return Decision(decision, resp.rule, resp.message, resp.policy_version)

    def report(
        self,
        call_id: str,
        outcome: str,
        duration_ms: float = 0.0,
        result_bytes: int = 0,
        error_type: str = "",
        timeout: float | None = None,
    ) -> bool:
        """Report how an allowed call went (``"ok"`` or ``"error"``; an error gives its quota
        back). Returns False when the enforcer no longer holds the call (NOT_FOUND)."""
        msg = pb.ReportRequest(
            call_id=call_id,
            outcome=outcome,
            duration_ms=duration_ms,
            result_bytes=result_bytes,
            error_type=error_type,
        )
        try:
            self._stub.Report(
                msg,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as e:
            if isinstance(e, grpc.Call) and e.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise _error(e, "Report", self.target) from None
        return True

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> EnforcerClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EnforcerClient",
    "EnforcerError",
    "EnforcerRejected",
    "EnforcerUnavailable",
    "channel_credentials",
]
