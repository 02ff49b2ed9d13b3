"""The streamable-HTTP proxy: tokens, Origin, identity, bad input, and a real HTTP upstream."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import Implementation, TextContent
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.policy import compile_document
from callward.enforcer.proxy.gate import Gate, InProcessChecker
from callward.enforcer.proxy.http import ProxyHTTP, origin_allowed
from callward.enforcer.proxy.tokens import parse_tokens
from callward.enforcer.proxy.upstream import command_upstream, url_upstream
from callward.enforcer.telemetry import CallRecorder
from tests.proxy.conftest import attrs, call_spans, http_proxy, misbehaving_command

pytestmark = pytest.mark.timeout(120, func_only=True)  # a first install from PyPI is setup

ALICE = "alice-token-0123456789"
BOB = "bob-token-0123456789ab"
TOKENS = parse_tokens(
    {"tokens": [{"token": ALICE, "grant": "alice"}, {"token": BOB, "grant": "bob"}]}
)
POLICY = compile_document(
    {
        "version": "1",
        "default": "deny",
        "hide": ["secret_tool", "convert_time"],
        "tools": {
            "echo": {
                "deny_if": [
                    {"conditions": [{"path": "args.text", "op": "contains", "value": "forbidden"}]}
                ],
                "limits": [{"counter": "echo", "window": "day", "max": 2, "scope": "grant"}],
            },
            "get_current_time": {},
        },
    }
)
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "curl-ish", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("CALL_LOG", str(path))
    return path


def proxy_app(recorder: CallRecorder | None, **kw: Any) -> ProxyHTTP:
    cmd, args = misbehaving_command()
    gate = Gate(
        InProcessChecker(POLICY, clock=lambda: 1_800_000_000.0), policy=POLICY, recorder=recorder
    )
    kw.setdefault("tokens", TOKENS)
    return ProxyHTTP(gate, kw.pop("connector", command_upstream(cmd, args)), **kw)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


@pytest.mark.anyio
async def test_tokens_and_origin_are_checked_before_anything_else(call_log: Path) -> None:
    app = proxy_app(None, allowed_origins=["https://console.example.com"])
    async with http_proxy(app) as url, httpx.AsyncClient(timeout=20) as http:
        missing = await http.post(url, json=INIT, headers=MCP_HEADERS)
        unknown = await http.post(
            url, json=INIT, headers={**MCP_HEADERS, "Authorization": "Bearer not-a-known-token"}
        )
        wrong_scheme = await http.post(
            url, json=INIT, headers={**MCP_HEADERS, "Authorization": f"Basic {ALICE}"}
        )
        auth = {**MCP_HEADERS, "Authorization": f"Bearer {ALICE}"}
        foreign = await http.post(
            url, json=INIT, headers={**auth, "Origin": "https://evil.example"}
        )
        local = await http.post(url, json=INIT, headers={**auth, "Origin": "http://localhost:5173"})
        listed = await http.post(
            url, json=INIT, headers={**auth, "Origin": "https://console.example.com"}
        )
        other_path = await http.post(url.replace("/mcp", "/other"), json=INIT, headers=auth)
    for refused in (missing, unknown, wrong_scheme):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
    assert foreign.status_code == 403
    assert local.status_code == 200 and listed.status_code == 200
    assert "mcp-session-id" in local.headers
    assert other_path.status_code == 404
    assert call_log.exists() is False


@pytest.mark.anyio
async def test_identity_comes_from_token_header_and_session(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with http_proxy(proxy_app(recorder)) as url:
        results: dict[str, Any] = {}
        for token, agent in ((ALICE, "planner"), (BOB, "")):
            headers = {"Authorization": f"Bearer {token}"}
            if agent:
                headers["X-Callward-Agent"] = agent
            async with (
                httpx.AsyncClient(headers=headers, timeout=30) as http,
                streamable_http_client(url, http_client=http) as (read, write, session_id),
                ClientSession(
                    read, write, client_info=Implementation(name="sdk-agent", version="1")
                ) as session,
            ):
                await session.initialize()
                tools = [t.name for t in (await session.list_tools()).tools]
                calls = [await session.call_tool("echo", {"text": f"hi {i}"}) for i in range(3)]
                forbidden = await session.call_tool("echo", {"text": "forbidden"})
                results[token] = (tools, calls, forbidden, session_id())
    for token in (ALICE, BOB):
        tools, calls, forbidden, _sid = results[token]
        assert "secret_tool" not in tools and "echo" in tools
        assert [text_of(c) for c in calls[:2]] == ["hi 0", "hi 1"]
        assert calls[2].isError and calls[2].structuredContent["rule"] == "/tools/echo/limits/0"
        assert forbidden.isError and forbidden.structuredContent["decision"] == "deny"
    # Two echoes per grant reached the server: bob's quota is his own.
    assert call_log.read_text().split() == ["echo"] * 4
    spans = call_spans(exporter)
    by_grant = {
        g: [attrs(s) for s in spans if attrs(s)["callward.grant"] == g] for g in ("alice", "bob")
    }
    assert len(by_grant["alice"]) == len(by_grant["bob"]) == 4
    assert {a["gen_ai.agent.id"] for a in by_grant["alice"]} == {"planner"}
    assert {a["gen_ai.agent.id"] for a in by_grant["bob"]} == {"sdk-agent"}
    assert {a["mcp.session.id"] for a in by_grant["alice"]} == {results[ALICE][3]}
    assert {a["gen_ai.conversation.id"] for a in by_grant["bob"]} == {results[BOB][3]}


@pytest.mark.anyio
async def test_a_session_stays_bound_to_its_token(call_log: Path) -> None:
    async with http_proxy(proxy_app(None)) as url, httpx.AsyncClient(timeout=20) as http:
        opened = await http.post(
            url, json=INIT, headers={**MCP_HEADERS, "Authorization": f"Bearer {ALICE}"}
        )
        sid = opened.headers["mcp-session-id"]
        hijack = await http.post(
            url,
            json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
            headers={
                **MCP_HEADERS,
                "Authorization": f"Bearer {BOB}",
                "Mcp-Session-Id": sid,
                "MCP-Protocol-Version": "2025-06-18",
            },
        )
    assert opened.status_code == 200
    assert hijack.status_code == 404


@pytest.mark.anyio
async def test_oversize_and_malformed_bodies_are_refused_and_the_proxy_goes_on(
    call_log: Path,
) -> None:
    app = proxy_app(None, max_message_bytes=64 * 1024)
    auth = {**MCP_HEADERS, "Authorization": f"Bearer {ALICE}"}
    huge = {**INIT, "params": {**INIT["params"], "padding": "x" * (100 * 1024)}}  # type: ignore[dict-item]
    async with http_proxy(app) as url, httpx.AsyncClient(timeout=20) as http:
        too_big = await http.post(url, content=json.dumps(huge), headers=auth)
        not_json = await http.post(url, content=b"{this is not json", headers=auth)
        not_rpc = await http.post(url, json={"hello": "world"}, headers=auth)
        fine = await http.post(url, json=INIT, headers=auth)
    assert too_big.status_code == 413
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == -32700
    assert not_rpc.status_code == 400
    assert fine.status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def time_over_http(mcp_proxy_bin: Path, time_server: Path) -> Iterator[str]:
    """mcp-server-time exposed as a streamable-HTTP server by mcp-proxy (both from PyPI)."""
    port = _free_port()
    proc = subprocess.Popen(
        [str(mcp_proxy_bin), "--host", "127.0.0.1", "--port", str(port), "--", str(time_server)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("mcp-proxy did not start")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.anyio
async def test_a_real_streamable_http_upstream(
    time_over_http: str, recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    app = proxy_app(recorder, connector=url_upstream(time_over_http))
    async with (
        http_proxy(app) as url,
        httpx.AsyncClient(headers={"Authorization": f"Bearer {ALICE}"}, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write, _),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = [t.name for t in (await session.list_tools()).tools]
        now = await session.call_tool("get_current_time", {"timezone": "Etc/UTC"})
        hidden = await session.call_tool(
            "convert_time",
            {"source_timezone": "Etc/UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
        )
    assert tools == ["get_current_time"]
    assert not now.isError and now.structuredContent is not None
    assert now.structuredContent["timezone"] == "Etc/UTC"
    assert now.structuredContent["datetime"][:4].isdigit()
    assert hidden.isError and hidden.structuredContent is not None
    assert hidden.structuredContent["rule"] == "/hide/1"
    decisions = {
        attrs(s)["gen_ai.tool.name"]: attrs(s)["callward.decision"] for s in call_spans(exporter)
    }
    assert decisions == {"get_current_time": "allow", "convert_time": "deny"}


@given(
    scheme=st.sampled_from(["http", "https", "ftp", "javascript", ""]),
    host=st.sampled_from(["localhost", "127.0.0.1", "[::1]", "evil.example", "localhost.evil"]),
    port=st.one_of(st.none(), st.integers(0, 70000), st.text(max_size=4)),
    tail=st.sampled_from(["", "/", "/path", "@evil.example"]),
)
def test_only_loopback_or_listed_origins_pass(scheme: str, host: str, port: Any, tail: str) -> None:
    origin = f"{scheme}://{host}" + (f":{port}" if port is not None else "") + tail
    allowed = origin_allowed(origin)
    loopback = host in ("localhost", "127.0.0.1", "[::1]")
    good_port = (
        port is None
        or (isinstance(port, int) and port <= 65535)
        or (isinstance(port, str) and port.isascii() and port.isdigit() and int(port) <= 65535)
    )
    # A browser never sends an empty port ("http://localhost:") or non-ASCII digits.
    expected = scheme in ("http", "https") and loopback and good_port and tail == ""
    assert allowed == expected, origin
    assert origin_allowed(origin, [origin])


def test_origin_allow_list_with_port_wildcard() -> None:
    listed = ["https://app.example.com:*"]
    assert origin_allowed("https://app.example.com:8443", listed)
    assert not origin_allowed("https://app.example.com.evil:8443", listed)
    assert not origin_allowed("https://app.example.com:8443/x", listed)
    assert origin_allowed(None) and origin_allowed("")
    assert not origin_allowed("null")


@pytest.mark.anyio
async def test_http_proxy_serves_two_clients_at_once(call_log: Path) -> None:
    async def one(url: str, token: str, out: list[str]) -> None:
        async with (
            httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            out.append(text_of(await session.call_tool("echo", {"text": token[:5]})))

    got: list[str] = []
    async with http_proxy(proxy_app(None)) as url, anyio.create_task_group() as tg:
        tg.start_soon(one, url, ALICE, got)
        tg.start_soon(one, url, BOB, got)
    assert sorted(got) == ["alice", "bob-t"]
