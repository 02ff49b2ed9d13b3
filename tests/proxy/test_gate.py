"""The gate: in-process and remote (real gRPC) decisions, fail closed / fail open, listings."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mcp.types import TextContent
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.engine import ALLOW, DENY, REQUIRE_APPROVAL, Decision, Request
from callward.enforcer.policy import compile_document
from callward.enforcer.proxy.gate import (
    Gate,
    Identity,
    InProcessChecker,
    RemoteChecker,
    refusal_result,
)
from callward.enforcer.proxy.upstream import command_upstream
from callward.enforcer.server import EnforcerConfig, EnforcerServer, EnforcerService
from callward.enforcer.telemetry import CallRecorder
from callward.proto.callward.v1 import enforcer_pb2 as pb
from callward.proto.callward.v1 import enforcer_pb2_grpc as pb_grpc
from tests.proxy.conftest import attrs, call_spans, misbehaving_command, relay_session

pytestmark = pytest.mark.timeout(90)

POLICY = compile_document(
    {
        "version": "1",
        "default": "deny",
        "hide": ["secret_*"],
        "tools": {
            "echo": {"limits": [{"counter": "echo", "window": "day", "max": 2, "scope": "grant"}]},
            "fail": {"limits": [{"counter": "fail", "window": "day", "max": 1, "scope": "grant"}]},
        },
    }
)


@pytest.fixture
def call_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.log"
    monkeypatch.setenv("CALL_LOG", str(path))
    return path


def calls(call_log: Path) -> list[str]:
    return call_log.read_text().split() if call_log.exists() else []


def connector() -> Any:
    cmd, args = misbehaving_command()
    return command_upstream(cmd, args)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


@pytest.fixture
def enforcer_target() -> Iterator[str]:
    server = EnforcerServer(
        EnforcerService(POLICY, config=EnforcerConfig(listen="127.0.0.1:0", max_workers=2))
    )
    port = server.start()
    yield f"127.0.0.1:{port}"
    server.stop(grace=0)


class _Misbehaving(pb_grpc.EnforcerServicer):
    """An Enforcer service that is too slow, or that rejects every request."""

    def __init__(self, mode: str):
        self.mode = mode

    def Check(self, request: Any, context: Any) -> Any:
        if self.mode == "reject":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "arguments_json is not an object")
        time.sleep(2.0)
        return pb.CheckResponse(decision=pb.DECISION_ALLOW, rule="/slow", policy_version="v")

    def Report(self, request: Any, context: Any) -> Any:
        return pb.ReportResponse()


@pytest.fixture(params=["slow", "reject"])
def misbehaving_enforcer(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_EnforcerServicer_to_server(_Misbehaving(request.param), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield request.param, f"127.0.0.1:{port}"
    server.stop(grace=0)


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.anyio
async def test_an_authenticating_enforcer_charges_the_proxys_token(
    tmp_path: Path, call_log: Path
) -> None:
    token = "proxy-of-alice-0123456789abcdef"
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"tokens:\n  - token: {token}\n    grant: alice\n")
    config = EnforcerConfig(listen="127.0.0.1:0", max_workers=2, tokens=str(tokens))
    server = EnforcerServer(EnforcerService(POLICY, config=config))
    target = f"127.0.0.1:{server.start()}"
    try:
        with_token = Gate(RemoteChecker(target, timeout=5.0, token=token), policy=POLICY)
        async with relay_session(with_token, connector(), grant="bob") as (session, _):
            echoes = [await session.call_tool("echo", {"text": str(i)}) for i in range(3)]
        assert [e.isError for e in echoes] == [False, False, True]  # alice's 2 a day
        assert {scope for _c, scope, _w in server.service.state.counts} == {"alice"}
        without = Gate(RemoteChecker(target, timeout=5.0), policy=POLICY, fail_open=True)
        async with relay_session(without, connector(), grant="alice") as (session, _):
            refused = await session.call_tool("echo", {"text": "x"})
        assert refused.isError and "UNAUTHENTICATED" in text_of(refused)  # even fail-open
        assert calls(call_log) == ["echo", "echo"]
    finally:
        server.stop(grace=0)


@pytest.mark.anyio
async def test_remote_enforcer_decides_and_gets_reports(
    enforcer_target: str, recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    gate = Gate(RemoteChecker(enforcer_target, timeout=5.0), policy=POLICY, recorder=recorder)
    async with relay_session(gate, connector(), grant="alice") as (session, _):
        echoes = [await session.call_tool("echo", {"text": str(i)}) for i in range(3)]
        fails = [await session.call_tool("fail", {}) for _ in range(2)]
        names = [t.name for t in (await session.list_tools()).tools]
    assert [text_of(e) for e in echoes[:2]] == ["0", "1"]
    assert echoes[2].isError and echoes[2].structuredContent is not None
    assert echoes[2].structuredContent["rule"] == "/tools/echo/limits/0"
    # "fail" allows one call a day, yet both reached the server: the Report of the first
    # (outcome error) gave its quota back at the enforcer.
    assert all(f.isError and not text_of(f).startswith("[POLICY") for f in fails)
    assert calls(call_log) == ["echo", "echo", "fail", "fail"]
    assert "echo" in names
    decisions = [attrs(s)["callward.decision"] for s in call_spans(exporter)]
    assert decisions == ["allow", "allow", "deny", "allow", "allow"]
    assert not any(attrs(s).get("callward.failure_mode") for s in call_spans(exporter))


@pytest.mark.anyio
@pytest.mark.parametrize("fail_open", [False, True])
async def test_unreachable_enforcer_fails_closed_unless_told_otherwise(
    fail_open: bool, recorder: CallRecorder, exporter: InMemorySpanExporter, call_log: Path
) -> None:
    checker = RemoteChecker(_closed_port(), timeout=0.2)
    gate = Gate(checker, policy=POLICY, recorder=recorder, fail_open=fail_open)
    async with relay_session(gate, connector()) as (session, _):
        result = await session.call_tool("echo", {"text": "through?"})
    (span,) = call_spans(exporter)
    assert attrs(span)["callward.failure_mode"] is True
    if fail_open:
        assert text_of(result) == "through?"
        assert calls(call_log) == ["echo"]
        assert attrs(span)["callward.decision"] == "allow"
        assert attrs(span)["callward.outcome"] == "ok"
    else:
        assert result.isError and text_of(result).startswith("[POLICY DENIED] enforcer at")
        assert "unavailable" in text_of(result)
        assert result.structuredContent is not None
        assert result.structuredContent["failure"] == "enforcer_unavailable"
        assert calls(call_log) == []
        assert attrs(span)["callward.decision"] == "deny"


@pytest.mark.anyio
@pytest.mark.parametrize("fail_open", [False, True])
async def test_slow_or_rejecting_enforcer(
    fail_open: bool,
    misbehaving_enforcer: tuple[str, str],
    recorder: CallRecorder,
    exporter: InMemorySpanExporter,
    call_log: Path,
) -> None:
    mode, target = misbehaving_enforcer
    gate = Gate(
        RemoteChecker(target, timeout=0.2), policy=POLICY, recorder=recorder, fail_open=fail_open
    )
    async with relay_session(gate, connector()) as (session, _):
        result = await session.call_tool("echo", {"text": "late"})
    (span,) = call_spans(exporter)
    if mode == "reject":
        # A refusal is an answer, not an outage: denied even when failing open.
        assert result.isError and "enforcer refused the call" in text_of(result)
        assert calls(call_log) == []
        assert attrs(span)["callward.decision"] == "deny"
        assert "callward.failure_mode" not in attrs(span)
    elif fail_open:
        assert text_of(result) == "late"
        assert attrs(span)["callward.decision"] == "allow"
        assert attrs(span)["callward.failure_mode"] is True
    else:
        text = text_of(result)
        assert result.isError and text.startswith("[POLICY DENIED] enforcer at")
        assert "unavailable" in text or "did not answer" in text
        assert calls(call_log) == []
        assert attrs(span)["callward.decision"] == "deny"
        assert attrs(span)["callward.failure_mode"] is True


@pytest.mark.anyio
async def test_in_process_checker_gives_quota_back_only_on_error() -> None:
    clock = {"now": 1_800_000_000.0}
    checker = InProcessChecker(POLICY, clock=lambda: clock["now"])
    gate = Gate(checker, policy=POLICY)
    me = Identity(grant="g")
    first = await gate.check("fail", {}, me)
    assert first.forward
    assert not (await gate.check("fail", {}, me)).forward
    await gate.report(first, "error", 1.0, 0, "tool_error")
    second = await gate.check("fail", {}, me)
    assert second.forward
    await gate.report(second, "ok", 1.0, 10)
    assert not (await gate.check("fail", {}, me)).forward
    assert (await gate.check("fail", {}, Identity(grant="other"))).forward


decisions = st.builds(
    Decision,
    decision=st.sampled_from([DENY, REQUIRE_APPROVAL]),
    rule=st.text(max_size=30),
    message=st.text(max_size=200),
    policy_version=st.text(max_size=30),
)


@given(decisions, st.booleans())
def test_every_refusal_is_an_error_result_software_can_recognise(
    decision: Decision, failure: bool
) -> None:
    from callward.enforcer.proxy.gate import Verdict

    verdict = Verdict(Request(tool="t", arguments={}), decision, None, failure, 0.0)
    result = refusal_result(verdict)
    assert result["isError"] is True
    text = result["content"][0]["text"]
    prefix = "[APPROVAL REQUIRED] " if decision.decision == REQUIRE_APPROVAL else "[POLICY DENIED] "
    assert text.startswith(prefix) and len(text) > len(prefix)
    sc = result["structuredContent"]
    assert (sc["decision"], sc["rule"], sc["policy_version"]) == (
        decision.decision,
        decision.rule,
        decision.policy_version,
    )
    assert ("failure" in sc) == failure


tool_entries = st.lists(
    st.one_of(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["echo", "fail", "secret_a", "secret_", "other", "Secret_x"])}
        ),
        st.just({"description": "no name"}),
        st.just("not an object"),
        st.fixed_dictionaries({"name": st.integers()}),
    ),
    max_size=20,
)


@given(tool_entries)
def test_listings_never_show_a_hidden_tool_and_keep_order(tools: list[Any]) -> None:
    gate = Gate(InProcessChecker(POLICY), policy=POLICY)
    shown = gate.visible(tools)
    names = [t["name"] for t in shown]
    assert not any(n.startswith("secret_") for n in names)
    expected = [
        t["name"]
        for t in tools
        if isinstance(t, dict)
        and isinstance(t.get("name"), str)
        and not t["name"].startswith("secret_")
    ]
    assert names == expected


def test_allow_constant_is_what_the_gate_forwards() -> None:
    from callward.enforcer.proxy.gate import Verdict

    v = Verdict(Request(tool="t", arguments={}), Decision(ALLOW, "/x", "", "v"), None, False, 0.0)
    assert v.forward
    assert not Verdict(v.request, Decision(DENY, "/x", "", "v"), None, False, 0.0).forward
