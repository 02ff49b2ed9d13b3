"""The relay between a real SDK client and a real (misbehaving) stdio MCP server."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.shared.exceptions import McpError
from mcp.types import CreateMessageResult, TextContent
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.policy import compile_document
from callward.enforcer.proxy.gate import Gate, InProcessChecker
from callward.enforcer.proxy.relay import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOISE_BURST_GAP,
    PARSE_ERROR,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
)
from callward.enforcer.proxy.upstream import command_upstream
from callward.enforcer.telemetry import CallRecorder
from tests.proxy.conftest import (
    attrs,
    call_spans,
    misbehaving_command,
    raw_relay,
    relay_session,
    spans_by_tool,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

POLICY_DOC: dict[str, Any] = {
    "version": "1",
    "default": "allow",
    "hide": ["secret_tool"],
    "tools": {
        "echo": {
            "deny_if": [
                {
                    "conditions": [{"path": "args.text", "op": "contains", "value": "forbidden"}],
                    "on_deny": "no forbidden words",
                },
                {
                    "conditions": [{"path": "args.text", "op": "contains", "value": "approve"}],
                    "action": "require_approval",
                    "on_deny": "a human must approve this echo",
                },
            ]
        },
        "fail": {"limits": [{"counter": "fail_rate", "window": "day", "max": 1, "scope": "grant"}]},
        "progress": {
            "limits": [{"counter": "progress_rate", "window": "day", "max": 1, "scope": "grant"}]
        },
        "hang": {"limits": [{"counter": "hang_rate", "window": "day", "max": 1, "scope": "grant"}]},
    },
}
POLICY = compile_document(POLICY_DOC)
NOW = 1_800_000_000.0


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("CALL_LOG", str(path))
    return path


def calls(call_log: Path) -> list[str]:
    return call_log.read_text().split() if call_log.exists() else []


def make_gate(recorder: CallRecorder | None, policy: Any = POLICY) -> Gate:
    return Gate(InProcessChecker(policy, clock=lambda: NOW), policy=policy, recorder=recorder)


def connector() -> Any:
    cmd, args = misbehaving_command()
    return command_upstream(cmd, args)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


async def test_allowed_call_reaches_the_server_and_is_recorded(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with relay_session(make_gate(recorder), connector(), grant="alice") as (session, _):
        result = await session.call_tool("echo", {"text": "hello"})
    assert text_of(result) == "hello" and not result.isError
    assert calls(call_log) == ["echo"]
    (span,) = call_spans(exporter)
    a = attrs(span)
    assert a["callward.decision"] == "allow"
    assert a["callward.rule"] == "/tools/echo"
    assert a["callward.outcome"] == "ok"
    assert a["callward.grant"] == "alice"
    assert a["gen_ai.agent.id"] == "test-agent"
    assert a["callward.result_bytes"] > 0


async def test_denied_call_never_reaches_the_server(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with relay_session(make_gate(recorder), connector()) as (session, relay):
        denied = await session.call_tool("echo", {"text": "a forbidden word"})
        approval = await session.call_tool("echo", {"text": "please approve me"})
    assert denied.isError
    assert text_of(denied) == "[POLICY DENIED] no forbidden words"
    assert denied.structuredContent == {
        "decision": "deny",
        "rule": "/tools/echo/deny_if/0",
        "policy_version": POLICY.version,
    }
    assert approval.isError
    assert text_of(approval).startswith("[APPROVAL REQUIRED] a human must approve")
    assert approval.structuredContent is not None
    assert approval.structuredContent["decision"] == "require_approval"
    assert calls(call_log) == []
    assert relay.stats.refused == 2
    decisions = sorted(attrs(s)["callward.decision"] for s in call_spans(exporter))
    assert decisions == ["deny", "require_approval"]
    assert all("callward.outcome" not in attrs(s) for s in call_spans(exporter))


async def test_hidden_tool_is_filtered_and_stays_hidden_after_list_changed(
    recorder: CallRecorder, call_log: Path
) -> None:
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", None)
        if getattr(root, "method", "") == "notifications/tools/list_changed":
            changed.set()

    open_policy = compile_document({**POLICY_DOC, "hide": []})
    # Control: without the hide rule the server does list the tool after "reveal".
    async with relay_session(make_gate(None, open_policy), connector()) as (session, _):
        await session.call_tool("reveal", {})
        names = [t.name for t in (await session.list_tools()).tools]
        assert "secret_tool" in names
    async with relay_session(make_gate(recorder), connector(), message_handler=on_message) as (
        session,
        _,
    ):
        before = [t.name for t in (await session.list_tools()).tools]
        await session.call_tool("reveal", {})
        with anyio.fail_after(10):
            await changed.wait()
        after = [t.name for t in (await session.list_tools()).tools]
        secret = await session.call_tool("secret_tool", {})
    assert "secret_tool" not in before and "secret_tool" not in after
    assert "echo" in after
    assert secret.isError and text_of(secret).startswith("[POLICY DENIED]")
    assert secret.structuredContent is not None
    assert secret.structuredContent["rule"] == "/hide/0"
    assert "secret_tool" not in calls(call_log)[2:]  # the control session's calls came first


async def test_span_is_a_child_of_the_agents_trace(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent_id = "00f067aa0ba902b7"
    async with relay_session(make_gate(recorder), connector()) as (session, _):
        await session.call_tool(
            "echo", {"text": "traced"}, meta={"traceparent": f"00-{trace_id}-{parent_id}-01"}
        )
    (span,) = call_spans(exporter)
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == trace_id
    assert format(span.parent.span_id, "016x") == parent_id


async def test_a_failed_call_gives_its_quota_back(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with relay_session(make_gate(recorder), connector()) as (session, _):
        first = await session.call_tool("fail", {})
        second = await session.call_tool("fail", {})
        ok = await session.call_tool("progress", {})
        over = await session.call_tool("progress", {})
    # "fail" has a limit of 1 per day, but both failures reached the server: the first
    # one's quota came back. "progress" succeeds, so its single unit stays spent.
    assert first.isError and second.isError
    assert not text_of(first).startswith("[POLICY")
    assert calls(call_log) == ["fail", "fail", "progress"]
    assert not ok.isError
    assert over.isError and text_of(over).startswith("[POLICY DENIED] rate limit")
    fails = spans_by_tool(exporter, "fail")
    assert [attrs(s)["callward.outcome"] for s in fails] == ["error", "error"]
    assert {attrs(s)["error.type"] for s in fails} == {"tool_error"}


async def test_malformed_tools_call_gets_invalid_params_and_the_proxy_keeps_serving(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with raw_relay(make_gate(recorder), connector()) as (client, _):
        await client.handshake()
        nameless = await client.request(1, "tools/call", {"arguments": {}})
        empty = await client.request(2, "tools/call", {"name": ""})
        bad_args = await client.request(3, "tools/call", {"name": "echo", "arguments": [1, 2]})
        unknown = await client.request(4, "no/such/method", {})
        fine = await client.request(5, "tools/call", {"name": "echo", "arguments": {"text": "x"}})
    for got in (nameless, empty, bad_args):
        assert got["error"]["code"] == INVALID_PARAMS
    assert "name" in nameless["error"]["message"]
    assert "arguments" in bad_args["error"]["message"]
    # The SDK server's own answer (it validates the method), passed through unchanged.
    assert unknown["error"]["code"] in (-32601, -32602)
    assert "callward" not in unknown["error"]["message"]
    assert fine["result"]["content"][0]["text"] == "x"
    assert calls(call_log) == ["echo"]
    rejected = [s for s in call_spans(exporter) if attrs(s).get("error.type") == "invalid_params"]
    assert len(rejected) == 3
    assert all(attrs(s)["callward.decision"] == "" for s in rejected)


async def test_malformed_json_rpc_gets_a_clear_error(
    recorder: CallRecorder, call_log: Path
) -> None:
    last_line = {"text": ""}
    async with raw_relay(
        make_gate(recorder), connector(), on_malformed=lambda _e: last_line["text"]
    ) as (client, relay):
        await client.handshake()
        last_line["text"] = '{"jsonrpc": "2.0", "id": 7, "method": 5}'
        await client.send_raw(ValueError("invalid JSON-RPC"))
        invalid = await client.next()
        last_line["text"] = "{{{ not json"
        await client.send_raw(ValueError("invalid JSON"))
        garbage = await client.next()
        fine = await client.request(8, "tools/call", {"name": "echo", "arguments": {"text": "y"}})
    assert invalid == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": INVALID_REQUEST, "message": invalid["error"]["message"]},
    }
    assert garbage["error"]["code"] == PARSE_ERROR and "id" not in garbage
    assert fine["result"]["content"][0]["text"] == "y"
    assert relay.stats.errors["malformed"] == 2


async def test_upstream_crash_mid_call_errors_then_the_proxy_recovers(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with relay_session(make_gate(recorder), connector()) as (session, relay):
        with pytest.raises(McpError) as crashed:
            await session.call_tool("crash", {})
        again = await session.call_tool("echo", {"text": "still here"})
    assert crashed.value.error.code == UPSTREAM_UNAVAILABLE
    assert "closed" in crashed.value.error.message
    assert text_of(again) == "still here"
    assert relay.stats.upstream_connects == 2
    (span,) = spans_by_tool(exporter, "crash")
    assert attrs(span)["callward.outcome"] == "error"
    assert attrs(span)["error.type"] == "upstream_closed"


async def test_upstream_that_closes_mid_call(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with relay_session(make_gate(recorder), connector(), call_timeout=20) as (session, _):
        with pytest.raises(McpError) as closed:
            await session.call_tool("close", {})
        again = await session.call_tool("echo", {"text": "reconnected"})
    assert closed.value.error.code == UPSTREAM_UNAVAILABLE
    assert text_of(again) == "reconnected"
    (span,) = spans_by_tool(exporter, "close")
    assert attrs(span)["error.type"] == "upstream_closed"


async def test_upstream_that_hangs_times_out_and_others_go_on(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with relay_session(make_gate(recorder), connector(), call_timeout=1.0) as (session, _):
        with pytest.raises(McpError) as hung:
            await session.call_tool("hang", {})
        after = await session.call_tool("echo", {"text": "next"})
    assert hung.value.error.code == UPSTREAM_TIMEOUT
    assert "within 1 s" in hung.value.error.message
    assert text_of(after) == "next"
    (span,) = spans_by_tool(exporter, "hang")
    assert attrs(span)["error.type"] == "timeout"
    assert attrs(span)["callward.outcome"] == "error"


async def test_progress_and_sampling_pass_through(recorder: CallRecorder, call_log: Path) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async def sample(_ctx: Any, _params: Any) -> CreateMessageResult:
        return CreateMessageResult(
            role="assistant", content=TextContent(type="text", text="hello"), model="m"
        )

    async with relay_session(make_gate(recorder), connector(), sampling_callback=sample) as (
        session,
        _,
    ):
        done = await session.call_tool("progress", {}, progress_callback=on_progress)
        asked = await session.call_tool("ask", {})
        noisy = await session.call_tool("garbage", {})
    assert text_of(done) == "done"
    assert seen == [1, 2, 3]
    assert text_of(asked) == "client said: hello"
    assert text_of(noisy) == "after garbage"


async def test_upstream_stdout_noise_is_one_warning_line_per_burst(
    recorder: CallRecorder, call_log: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server printing to stdout gets one warning per burst, not a traceback per line."""
    caplog.set_level(logging.DEBUG)
    async with relay_session(make_gate(recorder), connector()) as (session, relay):
        first = await session.call_tool("garbage", {"lines": 20})
        await session.call_tool("garbage", {"lines": 5})
        await anyio.sleep(NOISE_BURST_GAP + 0.3)
        await session.call_tool("garbage", {"lines": 7})
        counted = relay.stats.errors.get("upstream_malformed")
    assert text_of(first) == "after garbage"
    noise = [r for r in caplog.records if "not JSON-RPC" in r.getMessage()]
    assert len(noise) == 2, [r.getMessage() for r in noise]
    assert all(r.levelno == logging.WARNING and "\n" not in r.getMessage() for r in noise)
    assert not [r for r in caplog.records if r.exc_info], "no traceback is logged"
    assert "this line is not JSON-RPC" not in caplog.text, "the line itself is not logged"
    assert counted == 32


async def test_a_cancelled_call_keeps_its_quota(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with raw_relay(make_gate(recorder), connector()) as (client, relay):
        await client.handshake()
        await client.send(
            {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "hang"}}
        )
        with anyio.fail_after(20):
            while calls(call_log) != ["hang"]:
                await anyio.sleep(0.05)
        await client.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": 5, "reason": "user gave up"},
            }
        )
        again = await client.request(6, "tools/call", {"name": "hang"})
        fine = await client.request(7, "tools/call", {"name": "echo", "arguments": {"text": "z"}})
    assert again["result"]["isError"] is True
    assert again["result"]["structuredContent"]["rule"] == "/tools/hang/limits/0"
    assert fine["result"]["content"][0]["text"] == "z"
    assert all(doc.get("id") != 5 for doc in client.seen)  # no answer to a cancelled request
    first = spans_by_tool(exporter, "hang")[0]
    assert attrs(first)["error.type"] == "cancelled"
    assert relay.stats.forwarded == 3  # initialize, the first hang, echo


async def test_a_server_that_cannot_start_gets_a_clear_error(recorder: CallRecorder) -> None:
    missing = command_upstream("/nonexistent/callward-test-server")
    async with raw_relay(make_gate(recorder), missing) as (client, _):
        first = await client.request(1, "initialize", {"protocolVersion": "2025-06-18"})
        second = await client.request(2, "tools/list")
    for got in (first, second):
        assert got["error"]["code"] == UPSTREAM_UNAVAILABLE
        assert "could not be started" in got["error"]["message"]


async def test_a_server_that_failed_to_start_is_started_by_the_next_request(
    recorder: CallRecorder, call_log: Path
) -> None:
    attempts: list[int] = []
    real = connector()

    def flaky() -> Any:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("the first start fails")
        return real()

    async with raw_relay(make_gate(recorder), flaky) as (client, relay):
        init = await client.handshake()
        echoed = await client.request(
            2, "tools/call", {"name": "echo", "arguments": {"text": "started"}}
        )
    assert init["result"]["serverInfo"]["name"] == "misbehaving"
    assert echoed["result"]["content"][0]["text"] == "started"
    assert len(attempts) == 2 and relay.stats.upstream_connects == 1


async def test_hostile_meta_never_breaks_a_call(
    recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    async with raw_relay(make_gate(recorder), connector()) as (client, _):
        await client.handshake()
        answers = []
        for i, meta in enumerate(
            [
                {"traceparent": "garbage"},
                {"traceparent": 42},
                "not an object",
                {"progressToken": []},
            ]
        ):
            params = {"name": "echo", "arguments": {"text": str(i)}, "_meta": meta}
            answers.append(await client.request(10 + i, "tools/call", params))
    # A bad trace parent is ignored (the span starts a new trace); a _meta the server's
    # own validation refuses gets the server's error, passed through.
    assert [a["result"]["content"][0]["text"] for a in answers[:2]] == ["0", "1"]
    assert all("error" in a for a in answers[2:])
    spans = call_spans(exporter)
    assert len(spans) == 4 and all(s.parent is None for s in spans)
    outcomes = [attrs(s)["callward.outcome"] for s in spans]
    assert outcomes == ["ok", "ok", "error", "error"]
