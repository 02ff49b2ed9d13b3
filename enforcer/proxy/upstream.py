"""How the proxy reaches the real server: a child process over stdio, or a streamable-HTTP URL.

A connector is a zero-argument callable returning an async context manager that yields
the SDK's ``(read_stream, write_stream)`` pair of :class:`SessionMessage`. The relay
opens one connection per client session and opens it again if the server dies, so a
connector must be callable more than once.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TextIO

import httpx
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage

UpstreamStreams = tuple[
    ObjectReceiveStream[SessionMessage | Exception], ObjectSendStream[SessionMessage]
]
Connector = Callable[[], AbstractAsyncContextManager[UpstreamStreams]]


class _ParseFailureFilter(logging.Filter):
    """Drops the SDK's traceback for each stdout line of a server that is not JSON-RPC.

    The SDK also hands the parse error to the relay, which warns once per burst of such
    lines (:meth:`Relay._upstream_noise`); its own record is a full traceback per line.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to parse JSONRPC message")


logging.getLogger("mcp.client.stdio").addFilter(_ParseFailureFilter())


def command_upstream(
    command: str,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    cwd: str | None = None,
    errlog: TextIO | None = None,
) -> Connector:
    """Launch ``command args…`` as a child and speak MCP on its stdin/stdout.

    The child inherits the proxy's whole environment (the SDK's default passes only a
    handful of variables), because servers commonly read API keys from it.
    """
    params = StdioServerParameters(
        command=command,
        args=list(args),
        env=dict(os.environ) if env is None else env,
        cwd=cwd,
    )

    def connect() -> AbstractAsyncContextManager[UpstreamStreams]:
        return stdio_client(params, errlog=errlog or sys.stderr)

    return connect


def url_upstream(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    read_timeout: float = 300.0,
) -> Connector:
    """Speak streamable HTTP to ``url`` (for example ``http://127.0.0.1:8000/mcp``)."""

    @asynccontextmanager
    async def connect() -> AsyncIterator[UpstreamStreams]:
        async with (
            httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout, read=read_timeout),
                follow_redirects=False,
            ) as client,
            streamable_http_client(url, http_client=client) as (read, write, _session_id),
        ):
            yield read, write

    return connect


__all__ = ["Connector", "UpstreamStreams", "command_upstream", "url_upstream"]
