"""The attacks of the proxy-hardening issue, on a real proxy in front of a recording server.

The recording upstream (``servers/recording.py``) answers anything with a method and an
id, whatever the id's type, as a lenient server does, and writes down every line it
gets; each test asserts on what reached it. Each of these attacks got through before
the proxy classified messages itself: the forwarded line shows up in the record.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp.types import JSONRPCMessage
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.policy import compile_document
from callward.enforcer.proxy.framing import INVALID_REQUEST, classify, usable_id
from callward.enforcer.proxy.gate import Gate, InProcessChecker
from callward.enforcer.proxy.http import ProxyHTTP
from callward.enforcer.proxy.relay import POLICY_REFUSED
from callward.enforcer.proxy.stdio import BoundedLines
from callward.enforcer.proxy.tokens import parse_tokens
from callward.enforcer.proxy.upstream import command_upstream
from callward.enforcer.telemetry import CallRecorder
from tests.proxy.conftest import REPO, SERVERS_DIR, attrs, http_proxy, raw_relay, spans_by_tool

pytestmark = pytest.mark.timeout(120)

RECORDING = SERVERS_DIR / "recording.py"
POLICY_DOC: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "hide": ["secret_tool"],
    "tools": {"echo": {}, "hang": {}, "prompts:get": {}},
}
TOKEN = "attack-token-0123456789"
UNUSABLE_IDS: list[Any] = [1.5, True, {}, [], None, 2**60]


def init(rid: Any, name: str) -> dict[str, Any]:
    params = {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": name, "version": "1"},
    }
    return {"jsonrpc": "2.0", "id": rid, "method": "initialize", "params": params}


def call(rid: Any, tool: str = "echo") -> dict[str, Any]:
    params = {"name": tool, "arguments": {}}
    return {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": params}


def request(rid: Any, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
    if params is not None:
        doc["params"] = params
    return doc


DEEP = (
    b'{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"a":'
    + b"[" * 3000
    + b"]" * 3000
    + b"}}}"
)


def recorded(log: Path) -> list[dict[str, Any]]:
    """What reached the upstream, as JSON (every line the proxy forwarded is JSON)."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


def recorded_calls(log: Path) -> list[Any]:
    return [d.get("id") for d in recorded(log) if d.get("method") == "tools/call"]


@pytest.fixture
def record_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "record.jsonl"
    monkeypatch.setenv("RECORD_LOG", str(path))
    return path


# --------------------------------------------------------------------------- stdio


class StdioClient:
    """A raw client: JSON lines to the proxy's stdin, answers from its stdout."""

    def __init__(self, proc: Any):
        self.proc = proc
        self.buf = b""

    async def send_raw(self, raw: bytes) -> None:
        await self.proc.stdin.send(raw + b"\n")

    async def send(self, doc: Any) -> None:
        await self.send_raw(json.dumps(doc).encode())

    async def answer(self) -> dict[str, Any]:
        with anyio.fail_after(30):
            while b"\n" not in self.buf:
                self.buf += await self.proc.stdout.receive()
        line, _, self.buf = self.buf.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        return doc

    async def ask(self, doc: Any) -> dict[str, Any]:
        await self.send(doc)
        return await self.answer()


@asynccontextmanager
async def stdio_proxy(tmp_path: Path) -> AsyncIterator[StdioClient]:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(POLICY_DOC))
    args = [sys.executable, "-m", "callward.enforcer.proxy", "--policy", str(policy)]
    args += ["--", sys.executable, str(RECORDING)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    async with await anyio.open_process(
        args, cwd=str(REPO), env=env, stderr=subprocess.DEVNULL
    ) as proc:
        client = StdioClient(proc)
        assert (await client.ask(init(0, "agent-a")))["result"]["serverInfo"]["name"] == "recording"
        await client.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        yield client
        assert proc.stdin is not None
        await proc.stdin.aclose()
        with anyio.fail_after(30):
            await proc.wait()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stdio_a_call_with_an_unusable_id_is_refused_and_never_forwarded(
    tmp_path: Path, record_log: Path
) -> None:
    async with stdio_proxy(tmp_path) as client:
        answers = [await client.ask(call(rid)) for rid in UNUSABLE_IDS]
        alive = await client.ask(call(99))
    for got in answers:
        assert got["error"]["code"] == INVALID_REQUEST and got.get("id") is None
    assert alive["result"]["content"][0]["text"] == "ran"
    assert recorded_calls(record_log) == [99]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stdio_shapes_outside_the_spec_are_refused_and_the_proxy_keeps_serving(
    tmp_path: Path, record_log: Path
) -> None:
    """Deep nesting used to kill the proxy with RecursionError; a repeated key let the
    server run another tool than the policy saw; a batch went through undecided."""
    async with stdio_proxy(tmp_path) as client:
        await client.send_raw(DEEP)
        deep = await client.answer()
        await client.send_raw(
            b'{"jsonrpc":"2.0","id":7,"method":"tools/call",'
            b'"params":{"name":"echo","name":"secret_tool","arguments":{}}}'
        )
        repeated = await client.answer()
        batch = await client.ask([call(8)])
        await client.send_raw(b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":"\xff"}')
        not_utf8 = await client.answer()
        reserved = await client.ask(request(10, "callward/refused"))
        alive = await client.ask(request(6, "ping"))
    assert deep["error"]["code"] == INVALID_REQUEST
    assert repeated["error"]["code"] == INVALID_REQUEST
    assert batch["error"]["code"] == INVALID_REQUEST
    assert not_utf8["error"]["code"] == -32700
    assert reserved["error"]["code"] == INVALID_REQUEST
    assert alive == {"jsonrpc": "2.0", "id": 6, "result": {}}
    assert recorded_calls(record_log) == []


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stdio_ids_in_flight_are_unique_and_identity_is_pinned(
    tmp_path: Path, record_log: Path
) -> None:
    async with stdio_proxy(tmp_path) as client:
        await client.send(call(10, "hang"))  # stays in flight: the server never answers it
        ping = await client.ask(request(10, "ping"))
        listing = await client.ask(request("10", "tools/list"))
        second = await client.ask(init(11, "agent-b"))
        tools = await client.ask(request(12, "tools/list"))
    assert ping["error"]["code"] == INVALID_REQUEST and "id" not in ping
    assert listing["error"]["code"] == INVALID_REQUEST and "id" not in listing
    assert second["id"] == 11 and second["error"]["code"] == INVALID_REQUEST
    assert [t["name"] for t in tools["result"]["tools"]] == ["echo", "hang"]
    seen = [(d.get("method"), d.get("id")) for d in recorded(record_log)]
    assert ("ping", 10) not in seen and ("tools/list", "10") not in seen
    assert [d for d in recorded(record_log) if d.get("method") == "initialize"] == [
        init(0, "agent-a")
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_stdio_read_methods_are_governed_by_the_policy(
    tmp_path: Path, record_log: Path
) -> None:
    """Under default deny, resources/read and completion/complete are refused; prompts/get
    passes because the policy names it (as prompts:get)."""
    async with stdio_proxy(tmp_path) as client:
        read = await client.ask(request(20, "resources/read", {"uri": "file:///etc/passwd"}))
        complete = await client.ask(
            request(21, "completion/complete", {"ref": {"type": "ref/prompt", "name": "p"}})
        )
        prompt = await client.ask(request(22, "prompts/get", {"name": "p"}))
    assert read["error"]["code"] == POLICY_REFUSED and read["id"] == 20
    assert read["error"]["data"]["decision"] == "deny"
    assert complete["error"]["code"] == POLICY_REFUSED
    assert prompt == {"jsonrpc": "2.0", "id": 22, "result": {}}
    methods = [d.get("method") for d in recorded(record_log)]
    assert "resources/read" not in methods and "completion/complete" not in methods
    assert "prompts/get" in methods


# --------------------------------------------------------------------------- HTTP


def proxy_app() -> ProxyHTTP:
    policy = compile_document(POLICY_DOC)
    gate = Gate(InProcessChecker(policy, clock=lambda: 1_800_000_000.0), policy=policy)
    tokens = parse_tokens({"tokens": [{"token": TOKEN, "grant": "alice"}]})
    upstream = command_upstream(sys.executable, [str(RECORDING)])
    return ProxyHTTP(gate, upstream, tokens=tokens)


HEADERS = {
    "Accept": "application/json, text/event-stream",
    "Content-Type": "application/json",
    "Authorization": f"Bearer {TOKEN}",
}


def rpc_body(resp: httpx.Response) -> Any:
    """The JSON-RPC answer of a POST, sent as JSON or as one SSE event."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        data = [ln[5:].strip() for ln in resp.text.splitlines() if ln.startswith("data:")]
        return json.loads(data[-1])
    return resp.json()


class HTTPSession:
    def __init__(self, url: str, http: Any):
        self.url = url
        self.http = http
        self.headers = dict(HEADERS)

    def open(self, agent: str) -> None:
        first = self.http.post(
            self.url, json=init(0, "x"), headers={**self.headers, "X-Callward-Agent": agent}
        )
        assert first.status_code == 200, first.text
        self.headers["Mcp-Session-Id"] = first.headers["mcp-session-id"]
        self.headers["Mcp-Protocol-Version"] = "2025-06-18"
        note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        headers = {**self.headers, "X-Callward-Agent": agent}
        assert self.http.post(self.url, json=note, headers=headers).status_code == 202

    def post(self, body: bytes, agent: str = "agent-a") -> httpx.Response:
        headers = {**self.headers, "X-Callward-Agent": agent}
        response: httpx.Response = self.http.post(self.url, content=body, headers=headers)
        return response


@pytest.fixture(scope="module")
def proxy_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """One HTTP proxy for the module, served from its own thread and event loop, so
    that hypothesis can drive it from plain (synchronous) tests."""
    log = tmp_path_factory.mktemp("http") / "record.jsonl"
    previous = os.environ.get("RECORD_LOG")
    os.environ["RECORD_LOG"] = str(log)
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, str] = {}

    async def serve() -> None:
        async with http_proxy(proxy_app()) as url:
            box["url"] = url
            ready.set()
            await anyio.to_thread.run_sync(stop.wait)

    thread = threading.Thread(target=anyio.run, args=(serve,), daemon=True)
    thread.start()
    assert ready.wait(60)
    try:
        yield box["url"], log
    finally:
        stop.set()
        thread.join(30)
        if previous is None:
            os.environ.pop("RECORD_LOG", None)
        else:
            os.environ["RECORD_LOG"] = previous


@pytest.fixture
def session(proxy_url: tuple[str, Path]) -> Iterator[HTTPSession]:
    with httpx.Client(timeout=30) as http:
        s = HTTPSession(proxy_url[0], http)
        s.open("agent-a")
        yield s


def test_http_a_call_with_an_unusable_id_is_refused_not_accepted(
    session: HTTPSession, proxy_url: tuple[str, Path]
) -> None:
    """It used to be taken for a notification: 202 and forwarded with no decision."""
    for rid in UNUSABLE_IDS:
        resp = session.post(json.dumps(call(rid)).encode())
        assert resp.status_code == 400 and resp.json()["error"]["code"] == INVALID_REQUEST
    deep = session.post(DEEP)
    assert deep.status_code == 400
    alive = session.post(json.dumps(call("alive")).encode())
    assert rpc_body(alive)["result"]["content"][0]["text"] == "ran"
    calls = recorded_calls(proxy_url[1])
    assert "alive" in calls and all(usable_id(c) for c in calls)


def test_http_a_session_keeps_the_agent_it_opened_with(
    session: HTTPSession, proxy_url: tuple[str, Path]
) -> None:
    before = len(recorded_calls(proxy_url[1]))
    other = rpc_body(session.post(json.dumps(call("as-b")).encode(), agent="agent-b"))
    same = rpc_body(session.post(json.dumps(call("as-a")).encode(), agent="agent-a"))
    assert other["id"] == "as-b" and other["error"]["code"] == INVALID_REQUEST
    assert same["result"]["content"][0]["text"] == "ran"
    assert recorded_calls(proxy_url[1])[before:] == ["as-a"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"method": st.sampled_from(["tools/call", "resources/read", "ping", "notifications/x"])},
    optional={
        "jsonrpc": st.just("2.0") | json_values,
        "id": json_values,
        "params": st.fixed_dictionaries({"name": st.sampled_from(["echo", "secret_tool"])})
        | json_values,
        "result": json_values,
    },
)
bodies = (
    messages.map(lambda d: json.dumps(d).encode())
    | st.lists(messages, max_size=2).map(lambda d: json.dumps(d).encode())
    | st.binary(max_size=200)
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(bodies)
def test_http_fuzzed_bodies_never_crash_or_slip_past_the_policy(
    session: HTTPSession, proxy_url: tuple[str, Path], body: bytes
) -> None:
    resp = session.post(body)
    assert resp.status_code in (200, 202, 400), (resp.status_code, resp.text)
    if classify(body) is not None:
        assert resp.status_code == 400
    for doc in recorded(proxy_url[1]):
        if doc.get("method") in ("tools/call", "resources/read"):
            assert usable_id(doc.get("id")) and doc.get("params", {}).get("name") != "secret_tool"
            assert doc.get("method") != "resources/read"
    ping = session.post(json.dumps(request("alive", "ping")).encode())
    assert rpc_body(ping) == {"jsonrpc": "2.0", "id": "alive", "result": {}}


# --------------------------------------------------------------------------- stdio framing


@given(st.lists(st.binary(max_size=80) | bodies, max_size=8), st.integers(1, 64))
def test_every_line_the_sdk_gets_is_a_message_it_can_read(lines: list[bytes], size: int) -> None:
    """Whatever a client writes, the stdio reader hands on JSON-RPC the SDK parses
    (the line itself, or a stand-in the relay answers): nothing raises on the way."""

    class Source:
        def __init__(self, data: bytes):
            self.data = data

        async def read1(self, n: int) -> bytes:
            out, self.data = self.data[: min(n, size)], self.data[min(n, size) :]
            return out

    data = b"".join(line.replace(b"\n", b" ") + b"\n" for line in lines)

    async def collect() -> list[str]:
        return [line async for line in BoundedLines(Source(data), limit=4096)]

    for line in anyio.run(collect):
        JSONRPCMessage.model_validate_json(line)


# --------------------------------------------------------------------------- audit of reads


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_read_methods_are_audited_and_conditions_see_their_params(
    recorder: CallRecorder, exporter: InMemorySpanExporter, record_log: Path
) -> None:
    """A decided read gets a span like a tool call, and ``args.uri`` is what a rule sees."""
    doc = {
        "version": "1",
        "default": "allow",
        "tools": {
            "resources:read": {
                "deny_if": [
                    {"conditions": [{"path": "args.uri", "op": "contains", "value": "passwd"}]}
                ]
            }
        },
    }
    policy = compile_document(doc)
    gate = Gate(
        InProcessChecker(policy, clock=lambda: 1_800_000_000.0), policy=policy, recorder=recorder
    )
    upstream = command_upstream(sys.executable, [str(RECORDING)])
    async with raw_relay(gate, upstream) as (client, _relay):
        await client.handshake()
        denied = await client.request(1, "resources/read", {"uri": "file:///etc/passwd"})
        allowed = await client.request(2, "resources/read", {"uri": "file:///x"})
    assert denied["error"]["code"] == POLICY_REFUSED
    assert allowed["result"]["contents"][0]["text"] == "server content"
    spans = spans_by_tool(exporter, "resources:read")
    assert sorted(attrs(s)["callward.decision"] for s in spans) == ["allow", "deny"]
    reads = [
        d["params"]["uri"] for d in recorded(record_log) if d.get("method") == "resources/read"
    ]
    assert reads == ["file:///x"]
