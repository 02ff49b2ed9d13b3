"""The proxy on streamable HTTP: ``http://HOST:PORT/mcp`` in front of an upstream server.

The SDK's :class:`StreamableHTTPSessionManager` does the transport (sessions and their
ids, SSE streams, the 4 MiB body limit, DELETE, idle expiry); each MCP session gets its
own :class:`~enforcer.proxy.relay.Relay` and its own upstream connection, because MCP
sessions are stateful on the server too.

In front of it, two checks answer before any MCP processing:

* ``Origin`` (the MCP transport spec asks servers to validate it against DNS
  rebinding): absent or a loopback origin is accepted, as is any origin on the
  configured allow-list; anything else gets 403.
* ``Authorization: Bearer <token>`` when a tokens file is configured: a missing or
  unknown token gets 401 with ``WWW-Authenticate: Bearer``. A session stays bound to
  the token that opened it (the SDK answers 404 to another credential).

Then a POST body is classified by :mod:`enforcer.proxy.framing` from its raw bytes; a
body the gateway cannot accept (a ``tools/call`` with an unusable id, a batch, deep
nesting, a repeated key, text that is not UTF-8 …) is answered with its JSON-RPC error
and status 400, and never reaches the SDK or the upstream. A session's identity is
pinned by the relay at ``initialize``: a later request with another
``X-Callward-Agent`` header is refused.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.message import ServerMessageMetadata, SessionMessage
from starlette.applications import Starlette
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from callward.auth import TokenTable
from callward.enforcer.proxy.framing import classify
from callward.enforcer.proxy.gate import Gate, Identity
from callward.enforcer.proxy.relay import DEFAULT_CALL_TIMEOUT, Relay
from callward.enforcer.proxy.stdio import DEFAULT_MAX_MESSAGE_BYTES
from callward.enforcer.proxy.upstream import Connector

log = logging.getLogger("callward.proxy")

AGENT_HEADER = "x-callward-agent"
MCP_PATH = "/mcp"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# An Origin header as browsers serialize it (RFC 6454): scheme, host and, only when
# not the default, a port of ASCII digits. Anything else, such as "http://localhost:"
# or a path, is not an origin a browser sends and is refused.
_SERIALIZED_ORIGIN = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^/:@?#\[\]]+)(?::(?P<port>[0-9]{1,5}))?"
)
_MAX_HEADER_VALUE = 256


def origin_allowed(origin: str | None, allowed: Sequence[str] = ()) -> bool:
    """Whether a request with this ``Origin`` header may use the proxy.

    No Origin (a non-browser client) and loopback origins are allowed; others only
    when listed exactly (scheme://host[:port]) or as ``scheme://host:*``.
    """
    if origin is None or origin == "":
        return True
    if origin in allowed or "*" in allowed:
        return True
    for entry in allowed:
        if entry.endswith(":*") and origin.startswith(entry[:-1]):
            rest = origin[len(entry) - 1 :]
            if rest.isascii() and rest.isdigit():
                return True
    match = _SERIALIZED_ORIGIN.fullmatch(origin)
    if match is None or int(match["port"] or 0) > 65535:
        return False
    host = match["host"].strip("[]")
    return match["scheme"] in ("http", "https") and host in LOOPBACK_HOSTS


class _RelayServer:
    """What the SDK's session manager runs for each session: a relay to the upstream.

    It stands where the manager expects a low-level ``Server``; only ``run`` and
    ``create_initialization_options`` are called.
    """

    def __init__(self, gate: Gate, connector: Connector, call_timeout: float):
        self.gate = gate
        self.connector = connector
        self.call_timeout = call_timeout
        self.relays: list[Relay] = []

    def create_initialization_options(self) -> None:
        return None

    async def run(self, read: Any, write: Any, _options: Any, stateless: bool = False) -> None:
        relay = Relay(self.gate, self.connector, http_identity, call_timeout=self.call_timeout)
        self.relays.append(relay)
        try:
            await relay.run(read, write)
        finally:
            self.relays.remove(relay)


def _header(headers: Any, name: str) -> str:
    value = headers.get(name) or ""
    return str(value)[:_MAX_HEADER_VALUE]


def http_identity(message: SessionMessage, client_name: str) -> Identity:
    """Identity from the HTTP request that carried the message."""
    meta = message.metadata
    request = meta.request_context if isinstance(meta, ServerMessageMetadata) else None
    if not isinstance(request, HTTPRequest):
        return Identity(agent_id=client_name)
    user = request.scope.get("user")
    grant = user.access_token.client_id if isinstance(user, AuthenticatedUser) else ""
    grant = request.scope.get("callward.grant", grant)
    session = _header(request.headers, "mcp-session-id")
    agent = _header(request.headers, AGENT_HEADER) or client_name
    return Identity(grant=grant, agent_id=agent, session_id=session, mcp_session_id=session)


class ProxyHTTP:
    """The ASGI application of ``callward proxy --listen``."""

    def __init__(
        self,
        gate: Gate,
        connector: Connector,
        *,
        tokens: TokenTable | None = None,
        grant: str = "",
        allowed_origins: Sequence[str] = (),
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ):
        self.tokens = tokens
        self.grant = grant
        self.max_message_bytes = max_message_bytes
        self.allowed_origins = tuple(allowed_origins)
        self.server = _RelayServer(gate, connector, call_timeout)
        self.manager = StreamableHTTPSessionManager(
            app=self.server,  # type: ignore[arg-type]
            max_request_body_size=max_message_bytes,
        )
        self.app = Starlette(
            routes=[Route(MCP_PATH, endpoint=_ASGIEndpoint(self._gatekeeper))],
            lifespan=self._lifespan,
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with self.manager.run():
            yield

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    async def _gatekeeper(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = HTTPRequest(scope)
        origin = request.headers.get("origin")
        if not origin_allowed(origin, self.allowed_origins):
            log.warning("refused a request from origin %r", origin[:100] if origin else origin)
            await _refuse(403, "origin not allowed", scope, receive, send)
            return
        if self.tokens is not None:
            bearer = self.tokens.from_authorization(request.headers.get("authorization"))
            if bearer is None:
                await _refuse(
                    401,
                    "a valid bearer token is required",
                    scope,
                    receive,
                    send,
                    {"WWW-Authenticate": 'Bearer realm="callward"'},
                )
                return
            token = AccessToken(
                token="[redacted]",
                client_id=bearer.grant,
                scopes=[],
                subject=bearer.fingerprint,
            )
            scope["user"] = AuthenticatedUser(token)
            scope["callward.grant"] = bearer.grant
        else:
            scope["callward.grant"] = self.grant
        if request.method == "POST":
            body = await _read_body(receive, self.max_message_bytes)
            receive = _replay(body, receive)
            refusal = classify(body) if len(body) <= self.max_message_bytes else None
            if refusal is not None:
                log.warning("refused a message from the client: %s", refusal.reason)
                error = {"code": refusal.code, "message": refusal.reason}
                answer = {"jsonrpc": "2.0", "id": refusal.id, "error": error}
                await JSONResponse(answer, status_code=400)(scope, receive, send)
                return
        await self.manager.handle_request(scope, receive, send)


class _ASGIEndpoint:
    """Starlette runs a route endpoint that is not a function as a raw ASGI app, which
    the session manager needs (it streams SSE itself)."""

    def __init__(self, handler: Any):
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


async def _read_body(receive: Receive, limit: int) -> bytes:
    """The request body, read up to one byte past ``limit`` (the SDK answers 413 to that)."""
    body = bytearray()
    while len(body) <= limit:
        message = await receive()
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return bytes(body)


def _replay(body: bytes, then: Receive) -> Receive:
    """A ``receive`` that hands the already read body on, then the connection's own."""
    sent = False

    async def receive() -> Any:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive


async def _refuse(
    status: int,
    message: str,
    scope: Scope,
    receive: Receive,
    send: Send,
    headers: dict[str, str] | None = None,
) -> None:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}
    await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)


def bound_socket(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free one (read it back with getsockname)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def uvicorn_server(app: ProxyHTTP, log_level: str = "warning") -> uvicorn.Server:
    config = uvicorn.Config(
        app, log_level=log_level, lifespan="on", access_log=False, timeout_graceful_shutdown=3
    )
    return uvicorn.Server(config)


__all__ = [
    "AGENT_HEADER",
    "MCP_PATH",
    "ProxyHTTP",
    "bound_socket",
    "http_identity",
    "origin_allowed",
    "uvicorn_server",
]
