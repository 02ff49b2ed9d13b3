"""Real MCP servers in their own virtualenvs, and ways to drive the proxy with a real client.

The servers come from PyPI into ``<repo>/.test-venvs/<name>`` (created once, reused
after). ``mcp-run-python-code`` only starts with ``mcp<2``, so its venv pins it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client.session import ClientSession
from mcp.shared.memory import create_client_server_memory_streams
from mcp.shared.message import SessionMessage
from mcp.types import Implementation, JSONRPCMessage
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.demo import servers as demo_servers
from callward.enforcer.proxy.gate import Gate
from callward.enforcer.proxy.http import ProxyHTTP, bound_socket, uvicorn_server
from callward.enforcer.proxy.relay import Relay
from callward.enforcer.proxy.stdio import stdio_identity
from callward.enforcer.proxy.upstream import Connector
from callward.enforcer.telemetry import CallRecorder
from tests.real import require_real

REPO = Path(__file__).resolve().parents[2]
SERVERS_DIR = Path(__file__).resolve().parent / "servers"
MISBEHAVING = SERVERS_DIR / "misbehaving.py"


def ensure_server(name: str) -> Path:
    """The console script of a real server, installing its venv on first use."""
    try:
        return demo_servers.ensure_server(name)
    except demo_servers.ServerInstallFailed as e:
        require_real(f"the MCP server {name} from PyPI", str(e))


@pytest.fixture(scope="session")
def time_server() -> Path:
    return ensure_server("mcp-server-time")


@pytest.fixture(scope="session")
def python_runner() -> Path:
    return ensure_server("mcp-run-python-code")


@pytest.fixture(scope="session")
def mcp_proxy_bin() -> Path:
    return ensure_server("mcp-proxy")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def recorder(exporter: InMemorySpanExporter) -> Iterator[CallRecorder]:
    rec = CallRecorder("callward-proxy", exporter, synchronous=True)
    yield rec
    rec.shutdown()


def call_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name.startswith("execute_tool")]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def misbehaving_command() -> tuple[str, list[str]]:
    return sys.executable, [str(MISBEHAVING)]


@asynccontextmanager
async def relay_session(
    gate: Gate,
    connector: Connector,
    *,
    grant: str = "tester",
    call_timeout: float = 30.0,
    client_name: str = "test-agent",
    sampling_callback: Any = None,
    message_handler: Any = None,
) -> AsyncIterator[tuple[ClientSession, Relay]]:
    """A real SDK client session through a relay (the stdio proxy's core) to ``connector``."""
    async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
        relay = Relay(gate, connector, stdio_identity(grant), call_timeout=call_timeout)
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run, s_read, s_write)
            async with ClientSession(
                c_read,
                c_write,
                client_info=Implementation(name=client_name, version="1.0"),
                sampling_callback=sampling_callback,
                message_handler=message_handler,
            ) as session:
                await session.initialize()
                yield session, relay
            tg.cancel_scope.cancel()


class RawClient:
    """JSON-RPC by hand over the relay's streams, for messages the SDK client cannot send."""

    def __init__(self, read: Any, write: Any):
        self.read = read
        self.write = write
        self.seen: list[dict[str, Any]] = []

    async def send(self, doc: dict[str, Any]) -> None:
        await self.write.send(SessionMessage(JSONRPCMessage.model_validate(doc)))

    async def send_raw(self, item: Any) -> None:
        await self.write.send(item)

    async def next(self) -> dict[str, Any]:
        with anyio.fail_after(30):
            item = await self.read.receive()
        assert isinstance(item, SessionMessage), item
        doc: dict[str, Any] = item.message.model_dump(by_alias=True, exclude_none=True)
        self.seen.append(doc)
        return doc

    async def response(self, rid: Any) -> dict[str, Any]:
        while True:
            doc = await self.next()
            if doc.get("id") == rid and ("result" in doc or "error" in doc):
                return doc

    async def request(self, rid: Any, method: str, params: dict[str, Any] | None = None) -> Any:
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            msg["params"] = params
        await self.send(msg)
        return await self.response(rid)

    async def handshake(self) -> dict[str, Any]:
        got = await self.request(
            0,
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw-agent", "version": "1"},
            },
        )
        await self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return got


@asynccontextmanager
async def raw_relay(
    gate: Gate,
    connector: Connector,
    *,
    grant: str = "tester",
    call_timeout: float = 30.0,
    on_malformed: Any = None,
) -> AsyncIterator[tuple[RawClient, Relay]]:
    async with create_client_server_memory_streams() as ((c_read, c_write), (s_read, s_write)):
        relay = Relay(
            gate,
            connector,
            stdio_identity(grant),
            call_timeout=call_timeout,
            on_malformed=on_malformed,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run, s_read, s_write)
            yield RawClient(c_read, c_write), relay
            tg.cancel_scope.cancel()


@asynccontextmanager
async def http_proxy(app: ProxyHTTP) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port; yields the /mcp URL."""
    sock = bound_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = uvicorn_server(app, log_level="error")
    done = anyio.Event()

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        with anyio.fail_after(20):
            while not server.started:
                await anyio.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/mcp"
        finally:
            server.should_exit = True
            with anyio.move_on_after(10):
                await done.wait()
            tg.cancel_scope.cancel()
    sock.close()


def env_with(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env


def spans_by_tool(exporter: InMemorySpanExporter, tool: str) -> Sequence[ReadableSpan]:
    return [s for s in call_spans(exporter) if attrs(s).get("gen_ai.tool.name") == tool]
