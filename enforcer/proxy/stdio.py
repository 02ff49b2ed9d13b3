"""The proxy on stdio: an MCP client launches ``callward proxy -- CMD …`` as its server.

The SDK's :func:`mcp.server.stdio.stdio_server` does the framing on our stdin/stdout;
we only hand it a line source that refuses oversize lines. The SDK reads a whole line
into memory whatever its size, so without the bound one runaway client message (or a
hostile one) could exhaust the proxy's memory. A line over ``max_message_bytes`` is
skipped without being buffered and stands in as a ``callward/oversize`` message, which
the relay answers with a JSON-RPC error carrying the request's id when the id can be
read from the line's first bytes (clients write ``id`` before ``params``).

Every line within the bound is classified from its raw bytes by
:mod:`enforcer.proxy.framing` before the SDK sees it: a line the gateway cannot accept
(deep nesting, invalid UTF-8, a repeated key, a ``tools/call`` with an unusable id, a
batch …) never reaches the SDK's parser and stands in as a ``callward/refused``
notification that the relay answers with the refusal's JSON-RPC error.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable
from typing import Any, cast

import anyio
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage

from callward.enforcer.proxy.framing import Refusal, classify
from callward.enforcer.proxy.gate import Gate, Identity
from callward.enforcer.proxy.relay import (
    DEFAULT_CALL_TIMEOUT,
    OVERSIZE_METHOD,
    REFUSED_METHOD,
    Relay,
)
from callward.enforcer.proxy.upstream import Connector

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""The largest JSON-RPC message (one line) the proxy accepts from a client: 4 MiB,
the same bound the SDK puts on a streamable-HTTP request body."""

_ID_IN_PREFIX = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,18})')
_PREFIX_BYTES = 512


class BoundedLines:
    """Lines of a byte source, at most ``limit`` bytes each, as an async iterator of text.

    ``screen`` (framing's :func:`classify` unless told otherwise) judges each line;
    a refused line is replaced by its stand-in. ``last_line`` is the most recent line
    handed out: the SDK reader parses one line
    and waits until its (unbuffered) stream is read before taking the next, so when the
    relay receives a parse error, ``last_line`` is the text that failed.
    """

    def __init__(
        self,
        source: Any,
        limit: int = DEFAULT_MAX_MESSAGE_BYTES,
        chunk: int = 65536,
        screen: Callable[[bytes], Refusal | None] | None = classify,
    ):
        self.source = source
        self.screen = screen
        self.limit = limit
        self.chunk = chunk
        self.last_line = ""
        self._buf = bytearray()
        self._eof = False

    def __aiter__(self) -> BoundedLines:
        return self

    async def _fill(self) -> bool:
        if self._eof:
            return False
        data = await self.source.read1(self.chunk)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    async def __anext__(self) -> str:
        while True:
            nl = self._buf.find(b"\n")
            if 0 <= nl <= self.limit:
                raw = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                if not raw.strip():
                    continue
                return self._checked(raw)
            if nl > self.limit or len(self._buf) > self.limit:
                return await self._skip_oversize()
            if not await self._fill():
                if self._buf.strip():
                    raw = bytes(self._buf)
                    self._buf.clear()
                    return self._checked(raw)
                raise StopAsyncIteration

    def _checked(self, raw: bytes) -> str:
        """The line itself when framing accepts it, else its refusal's stand-in."""
        refusal = self.screen(raw) if self.screen is not None else None
        if refusal is not None:
            self.last_line = ""
            return refused_stand_in(refusal)
        self.last_line = raw.decode("utf-8", errors="replace")
        return self.last_line

    async def _skip_oversize(self) -> str:
        prefix = bytes(self._buf[:_PREFIX_BYTES])
        size = 0
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                size += nl + 1
                del self._buf[: nl + 1]
                break
            size += len(self._buf)
            self._buf.clear()
            if not await self._fill():
                break
        self.last_line = ""
        return oversize_stand_in(prefix, size, self.limit)


def oversize_stand_in(prefix: bytes, size: int, limit: int) -> str:
    """The JSON-RPC message that replaces a line too large to read."""
    params = {"bytes": size, "limit": limit}
    match = _ID_IN_PREFIX.search(prefix)
    if match is not None:
        try:
            rid = json.loads(match.group(1))
        except ValueError:
            rid = None
        if isinstance(rid, str | int):
            msg = {"jsonrpc": "2.0", "id": rid, "method": OVERSIZE_METHOD, "params": params}
            return json.dumps(msg) + "\n"
    return json.dumps({"jsonrpc": "2.0", "method": OVERSIZE_METHOD, "params": params}) + "\n"


def refused_stand_in(refusal: Refusal) -> str:
    """The JSON-RPC message that replaces a line framing refused."""
    params = {"code": refusal.code, "message": refusal.reason, "id": refusal.id}
    return json.dumps({"jsonrpc": "2.0", "method": REFUSED_METHOD, "params": params}) + "\n"


def stdio_identity(grant: str, session_id: str | None = None) -> Any:
    """Identity of a stdio connection: one session id per proxy process."""
    sid = session_id or uuid.uuid4().hex

    def identify(_message: SessionMessage, client_name: str) -> Identity:
        return Identity(grant=grant, agent_id=client_name, session_id=sid)

    return identify


async def serve_stdio(
    gate: Gate,
    connector: Connector,
    *,
    grant: str = "",
    call_timeout: float = DEFAULT_CALL_TIMEOUT,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> Relay:
    """Serve one MCP client on this process's stdin/stdout until it closes stdin."""
    lines = BoundedLines(anyio.wrap_file(sys.stdin.buffer), max_message_bytes)
    relay = Relay(
        gate,
        connector,
        stdio_identity(grant),
        call_timeout=call_timeout,
        on_malformed=lambda _exc: lines.last_line or None,
    )
    async with stdio_server(stdin=cast(Any, lines)) as (read, write):
        await relay.run(read, write)
    return relay


__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "BoundedLines",
    "oversize_stand_in",
    "refused_stand_in",
    "serve_stdio",
    "stdio_identity",
]
