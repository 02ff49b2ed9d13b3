"""The gRPC enforcer against a real server on a free loopback port."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
import typer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner, Result

from callward.enforcer.policy import CompiledPolicy, compile_document, load_policy
from callward.enforcer.server import (
    MAX_REQUEST_BYTES,
    SERVICE_NAME,
    EnforcerConfig,
    EnforcerServer,
    EnforcerService,
    ListenFailed,
    UnknownCall,
)
from callward.enforcer.server_cli import register
from callward.enforcer.server_config import ENV_OF
from callward.enforcer.telemetry import POLICY_SPAN_NAME, CallRecorder
from callward.proto.callward.v1 import enforcer_pb2 as pb
from callward.proto.callward.v1 import enforcer_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "examples" / "policies" / "seed.json"
T0 = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC).timestamp()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN}-01"

pytestmark = pytest.mark.timeout(60)


class FakeClock:
    """The enforcer's clock, moved by the test (never sent by a caller)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy_of(doc: dict[str, Any]) -> CompiledPolicy:
    return compile_document({"version": "1", **doc})


LIMITED = policy_of(
    {
        "default": "deny",
        "tools": {
            "charge": {
                "require": [{"conditions": [{"path": "args.amount", "op": "lte", "value": 100}]}],
                "limits": [{"counter": "charges", "window": "minute", "max": 3, "scope": "grant"}],
            },
            "wipe": {"deny_if": [{"conditions": [], "on_deny": "needs a human"}]},
            "deploy": {"action": "require_approval"},
        },
    }
)


class Harness:
    """A running server, a stub on it, and the things a test inspects."""

    def __init__(self, server: EnforcerServer, channel: grpc.Channel) -> None:
        self.server = server
        self.service = server.service
        self.channel = channel
        self.stub = pb_grpc.EnforcerStub(channel)

    def check(self, tool: str = "charge", **fields: Any) -> pb.CheckResponse:
        args = fields.pop("args", {"amount": 5})
        fields.setdefault("grant", "g1")
        fields.setdefault("arguments_json", json.dumps(args))
        return self.stub.Check(pb.CheckRequest(tool=tool, **fields), timeout=10)

    def report(self, call_id: str, outcome: str = "ok", **fields: Any) -> pb.ReportResponse:
        return self.stub.Report(
            pb.ReportRequest(call_id=call_id, outcome=outcome, **fields), timeout=10
        )


@pytest.fixture
def serve() -> Iterator[Callable[..., Harness]]:
    started: list[tuple[EnforcerServer, grpc.Channel]] = []

    def start(
        policy: CompiledPolicy = LIMITED,
        *,
        recorder: CallRecorder | None = None,
        clock: Callable[[], float] | None = None,
        **config: Any,
    ) -> Harness:
        cfg = EnforcerConfig(listen="127.0.0.1:0", max_workers=4, **config)
        service = EnforcerService(policy, config=cfg, recorder=recorder, clock=clock or FakeClock())
        server = EnforcerServer(service)
        port = server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return Harness(server, channel)

    yield start
    for server, channel in started:
        channel.close()
        server.stop(grace=0)


def rpc_error(fn: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value


def decisions(h: Harness, n: int, **fields: Any) -> list[int]:
    return [h.check(call_id=f"c{i}", **fields).decision for i in range(n)]


# --------------------------------------------------------------------------- Check / Report


def test_seed_policy_over_grpc(serve: Callable[..., Harness]) -> None:
    seed = load_policy(SEED)
    h = serve(seed)
    got = decisions(h, 11, tool="run_python_file", args={"path": "a.py"})
    assert got == [pb.DECISION_ALLOW] * 10 + [pb.DECISION_DENY]
    last = h.check("run_python_file", call_id="c11")
    assert last.rule == "/tools/run_python_file/limits/0"
    assert last.policy_version == seed.version
    other = h.check("pip_install_package", call_id="x")
    assert (other.decision, other.rule) == (pb.DECISION_DENY, "/default")
    assert "default deny" in other.message


def test_each_decision_kind_with_its_rule(serve: Callable[..., Harness]) -> None:
    h = serve()
    assert h.check(call_id="a").decision == pb.DECISION_ALLOW
    too_much = h.check(call_id="b", args={"amount": 1000})
    assert (too_much.decision, too_much.rule) == (pb.DECISION_DENY, "/tools/charge/require/0")
    wipe = h.check("wipe", call_id="c")
    assert (wipe.decision, wipe.rule, wipe.message) == (
        pb.DECISION_DENY,
        "/tools/wipe/deny_if/0",
        "needs a human",
    )
    deploy = h.check("deploy", call_id="d")
    assert (deploy.decision, deploy.rule) == (
        pb.DECISION_REQUIRE_APPROVAL,
        "/tools/deploy/action",
    )
    assert {too_much.policy_version, wipe.policy_version} == {LIMITED.version}


def test_windows_follow_the_enforcers_clock(serve: Callable[..., Harness]) -> None:
    clock = FakeClock()
    h = serve(clock=clock)
    assert decisions(h, 4) == [pb.DECISION_ALLOW] * 3 + [pb.DECISION_DENY]
    clock.now += 50  # next calendar minute (T0 is 10 s past the minute)
    assert h.check(call_id="later").decision == pb.DECISION_ALLOW


def test_report_ok_keeps_quota_and_error_gives_it_back(serve: Callable[..., Harness]) -> None:
    h = serve()
    assert decisions(h, 3) == [pb.DECISION_ALLOW] * 3
    assert h.check(call_id="full").decision == pb.DECISION_DENY
    assert h.report("c0", "ok", duration_ms=12.5, result_bytes=40).released == 0
    assert h.check(call_id="still-full").decision == pb.DECISION_DENY
    assert h.report("c1", "error", error_type="TimeoutError").released == 1
    assert h.check(call_id="room-again").decision == pb.DECISION_ALLOW
    assert h.check(call_id="full-again").decision == pb.DECISION_DENY
    # A reported call is forgotten: reporting it twice is NOT_FOUND and releases nothing.
    err = rpc_error(lambda: h.report("c1", "error"))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert h.check(call_id="full-once-more").decision == pb.DECISION_DENY


def test_report_of_unknown_or_denied_call_is_not_found(serve: Callable[..., Harness]) -> None:
    h = serve()
    denied = h.check("wipe", call_id="w1")
    assert denied.decision == pb.DECISION_DENY
    for call_id in ("never-seen", "w1"):
        err = rpc_error(partial(h.report, call_id))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        assert "no pending call" in (err.details() or "")


def test_missing_call_id_is_assigned_and_reportable(serve: Callable[..., Harness]) -> None:
    h = serve()
    resp = h.check()
    assert re.fullmatch(r"[0-9a-f]{32}", resp.call_id)
    assert h.check().call_id != resp.call_id
    assert h.report(resp.call_id, "error").released == 1


def test_retried_check_is_idempotent(serve: Callable[..., Harness]) -> None:
    h = serve()
    first = h.check(call_id="same")
    again = h.check(call_id="same")
    assert first == again
    assert decisions(h, 3) == [pb.DECISION_ALLOW] * 2 + [pb.DECISION_DENY]
    err = rpc_error(lambda: h.check(call_id="same", args={"amount": 6}))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


def test_concurrent_checks_never_exceed_the_limit(serve: Callable[..., Harness]) -> None:
    h = serve()
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda i: h.check(call_id=f"p{i}").decision, range(30)))
    assert got.count(pb.DECISION_ALLOW) == 3
    assert h.service.pending_count() == 3


# --------------------------------------------------------------------------- bad input


BAD_ARGUMENTS = [
    ("[1, 2]", "must be a JSON object, got a JSON array"),
    ('"text"', "must be a JSON object, got a JSON string"),
    ("42", "got a JSON number"),
    ("null", "got a JSON null"),
    ("{not json", "not valid JSON"),
    ('{"a": NaN}', "not valid JSON"),
    ('{"a": -1e400}', "out of range for a double"),
    ('{"a": Infinity}', "not valid JSON"),
    ('{"a": 1} trailing', "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"n": ' + "9" * 5000 + "}", "not valid JSON"),
    (" ", "not valid JSON"),
]


@pytest.mark.parametrize(("arguments_json", "says"), BAD_ARGUMENTS)
def test_bad_arguments_are_invalid_argument(
    serve: Callable[..., Harness], arguments_json: str, says: str
) -> None:
    h = serve()
    err = rpc_error(lambda: h.check(call_id="bad", arguments_json=arguments_json))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "arguments_json" in (err.details() or "")
    assert says in (err.details() or "")
    assert h.check(call_id="good").decision == pb.DECISION_ALLOW  # still serving


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tool": ""}, "tool must not be empty"),
        ({"tool": "t" * 257}, "tool is 257 characters long; the limit is 256"),
        ({"server": "s" * 300}, "server is 300 characters long"),
        ({"grant": "g" * 2000}, "grant is 2000 characters long"),
        ({"call_id": "c" * 5000}, "call_id is 5000 characters long"),
    ],
)
def test_bad_names_are_invalid_argument(
    serve: Callable[..., Harness], fields: dict[str, str], says: str
) -> None:
    h = serve()
    msg = pb.CheckRequest(tool="charge", arguments_json="{}")
    for k, v in fields.items():
        setattr(msg, k, v)
    err = rpc_error(lambda: h.stub.Check(msg, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (err.details() or "")
    assert h.check(call_id="good").decision == pb.DECISION_ALLOW


def test_request_over_one_mib_is_invalid_argument(serve: Callable[..., Harness]) -> None:
    h = serve()
    blob = json.dumps({"data": "x" * (MAX_REQUEST_BYTES + 10)})
    err = rpc_error(lambda: h.check(call_id="big", arguments_json=blob))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 1048576 bytes" in (err.details() or "")
    # Just under the limit is fine.
    ok = json.dumps({"amount": 1, "data": "x" * (MAX_REQUEST_BYTES - 200)})
    assert h.check(call_id="fits", arguments_json=ok).decision == pb.DECISION_ALLOW


def test_request_beyond_the_transport_limit_is_refused_by_grpc(
    serve: Callable[..., Harness],
) -> None:
    h = serve()
    huge = json.dumps({"data": "x" * (5 * MAX_REQUEST_BYTES)})
    err = rpc_error(lambda: h.check(call_id="huge", arguments_json=huge))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert h.check(call_id="good").decision == pb.DECISION_ALLOW


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff\xff",  # not protobuf at all
        b"\x32\x02\xff\xfe",  # field 6 (tool) with bytes that are not UTF-8
        b"\x3a\x10{}",  # arguments_json claims 16 bytes, has 2
    ],
)
def test_undecodable_bytes_are_invalid_argument(
    serve: Callable[..., Harness], payload: bytes
) -> None:
    h = serve()
    raw = h.channel.unary_unary(f"/{SERVICE_NAME}/Check")
    err = rpc_error(lambda: raw(payload, timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid callward.v1.CheckRequest" in (err.details() or "")
    assert h.check(call_id="good").decision == pb.DECISION_ALLOW


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"call_id": "", "outcome": "ok"}, "call_id must not be empty"),
        ({"call_id": "c0", "outcome": "maybe"}, 'outcome must be "ok" or "error"'),
        ({"call_id": "c0", "outcome": ""}, 'outcome must be "ok" or "error"'),
        ({"call_id": "c0", "outcome": "ok", "duration_ms": -1.0}, "duration_ms"),
        ({"call_id": "c0", "outcome": "ok", "duration_ms": float("nan")}, "duration_ms"),
        ({"call_id": "c0", "outcome": "ok", "duration_ms": float("inf")}, "duration_ms"),
        ({"call_id": "c0", "outcome": "ok", "result_bytes": -5}, "result_bytes"),
    ],
)
def test_bad_reports_are_invalid_argument_and_keep_the_call(
    serve: Callable[..., Harness], fields: dict[str, Any], says: str
) -> None:
    h = serve()
    h.check(call_id="c0")
    err = rpc_error(lambda: h.stub.Report(pb.ReportRequest(**fields), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (err.details() or "")
    assert h.report("c0", "error").released == 1  # the call is still pending


# --------------------------------------------------------------------------- upkeep


def test_unreported_calls_expire_and_keep_their_quota(serve: Callable[..., Harness]) -> None:
    clock = FakeClock()
    h = serve(clock=clock, pending_ttl_s=5.0)
    h.check(call_id="old")
    clock.now += 3
    h.check(call_id="young")
    clock.now += 3  # "old" is 6 s old, "young" 3 s
    done = h.service.housekeeping()
    assert (done.expired_calls, done.pruned_counters) == (1, 0)
    assert rpc_error(lambda: h.report("old", "error")).code() == grpc.StatusCode.NOT_FOUND
    assert h.report("young", "error").released == 1
    # Still in the same minute: the expired call's unit stays consumed.
    assert decisions(h, 3) == [pb.DECISION_ALLOW] * 2 + [pb.DECISION_DENY]


def test_counters_of_ended_windows_are_pruned(serve: Callable[..., Harness]) -> None:
    clock = FakeClock()
    h = serve(clock=clock)
    decisions(h, 2)
    assert len(h.service.state.counts) == 1
    clock.now += 120
    assert h.service.housekeeping().pruned_counters == 1
    assert h.service.state.counts == {}


def test_pending_map_is_bounded(serve: Callable[..., Harness]) -> None:
    h = serve(max_pending=2)
    decisions(h, 3)
    assert h.service.pending_count() == 2
    assert rpc_error(lambda: h.report("c0")).code() == grpc.StatusCode.NOT_FOUND
    assert h.report("c2").released == 0


@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("check"), st.sampled_from(["g1", "g2"])),
            st.tuples(st.just("report"), st.sampled_from(["ok", "error"])),
            st.tuples(st.just("tick"), st.integers(min_value=1, max_value=40)),
        ),
        max_size=60,
    )
)
def test_no_window_ever_holds_more_than_max_unreleased_calls(
    ops: list[tuple[str, Any]],
) -> None:
    clock = FakeClock()
    service = EnforcerService(LIMITED, clock=clock)
    pending: dict[str, tuple[str, int]] = {}  # call_id -> (grant, window start)
    consumed: list[tuple[str, int]] = []  # calls reported ok keep their unit
    n = 0
    for op, arg in ops:
        if op == "check":
            n += 1
            call_id = f"c{n}"
            resp = service.check(
                pb.CheckRequest(call_id=call_id, tool="charge", grant=arg, arguments_json="{}")
            )
            if resp.decision == pb.DECISION_ALLOW:
                pending[call_id] = (arg, int(clock.now // 60) * 60)
        elif op == "report" and pending:
            call_id = next(iter(pending))
            got = service.report(pb.ReportRequest(call_id=call_id, outcome=arg))
            assert got.released == (1 if arg == "error" else 0)
            unit = pending.pop(call_id)
            if arg == "ok":
                consumed.append(unit)
        elif op == "tick":
            clock.now += arg
        per_window: dict[tuple[str, int], int] = {}
        for unit in [*pending.values(), *consumed]:
            per_window[unit] = per_window.get(unit, 0) + 1
        assert max(per_window.values(), default=0) <= 3
        for (grant, window), count in per_window.items():
            assert service.state.count(("charges", grant, window)) == count


def test_report_for_unknown_call_raises_in_the_service() -> None:
    service = EnforcerService(LIMITED)
    with pytest.raises(UnknownCall):
        service.report(pb.ReportRequest(call_id="nope", outcome="ok"))


# --------------------------------------------------------------------------- health, reflection


def test_health_and_reflection(serve: Callable[..., Harness]) -> None:
    h = serve()
    health = health_pb2_grpc.HealthStub(h.channel)
    for name in ("", SERVICE_NAME):
        got = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
        assert got.status == health_pb2.HealthCheckResponse.SERVING
    db = ProtoReflectionDescriptorDatabase(h.channel)
    assert SERVICE_NAME in db.get_services()
    assert "grpc.health.v1.Health" in db.get_services()
    desc = db.FindFileContainingSymbol(SERVICE_NAME)
    assert desc.name == "callward/v1/enforcer.proto"


def test_second_server_on_the_same_port_fails_clearly(serve: Callable[..., Harness]) -> None:
    h = serve()
    other = EnforcerServer(
        EnforcerService(LIMITED, config=EnforcerConfig(listen=f"127.0.0.1:{h.server.port}"))
    )
    with pytest.raises(ListenFailed, match=str(h.server.port)):
        other.start()


# --------------------------------------------------------------------------- telemetry


def spans_by_name(exporter: InMemorySpanExporter) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in exporter.get_finished_spans():
        out.setdefault(span.name, []).append(span)
    return out


def test_spans_for_each_decision_and_outcome(serve: Callable[..., Harness]) -> None:
    exporter = InMemorySpanExporter()
    recorder = CallRecorder(exporter=exporter, synchronous=True)
    h = serve(recorder=recorder)
    policy_spans = spans_by_name(exporter)[POLICY_SPAN_NAME]
    assert [s.attributes["callward.policy.version"] for s in policy_spans] == [LIMITED.version]

    h.check(
        call_id="c1",
        traceparent=TRACEPARENT,
        agent_id="agent-7",
        session_id="conv-1",
        mcp_session_id="mcp-1",
        args={"amount": 5, "api_key": "sk-live-abcdefghijklmnopqrstuvwx"},
    )
    assert "execute_tool charge" not in spans_by_name(exporter)  # open until Report
    h.check("wipe", call_id="c2", traceparent=TRACEPARENT)
    wipe = spans_by_name(exporter)["execute_tool wipe"][0]  # a denial ends at once
    assert wipe.attributes["callward.decision"] == "deny"
    assert wipe.attributes["callward.rule"] == "/tools/wipe/deny_if/0"

    h.report("c1", "error", duration_ms=7.0, result_bytes=0, error_type="UpstreamError")
    (span,) = spans_by_name(exporter)["execute_tool charge"]
    attrs = span.attributes
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT_SPAN
    assert attrs["gen_ai.tool.call.id"] == "c1"
    assert attrs["gen_ai.agent.id"] == "agent-7"
    assert attrs["gen_ai.conversation.id"] == "conv-1"
    assert attrs["mcp.session.id"] == "mcp-1"
    assert attrs["callward.grant"] == "g1"
    assert attrs["callward.decision"] == "allow"
    assert attrs["callward.policy.version"] == LIMITED.version
    assert attrs["callward.outcome"] == "error"
    assert attrs["error.type"] == "UpstreamError"
    assert attrs["callward.duration_ms"] == 7.0
    assert "sk-live-abcdefghijklmnopqrstuvwx" not in attrs["gen_ai.tool.call.arguments"]
    assert json.loads(attrs["gen_ai.tool.call.arguments"])["amount"] == 5


@pytest.mark.parametrize(
    "traceparent",
    ["", "00-not-a-valid-traceparent-01", "00-" + "f" * 100_000, "00-\u00e9\u0000-01"],
)
def test_span_without_a_valid_traceparent_is_a_root(
    serve: Callable[..., Harness], traceparent: str
) -> None:
    exporter = InMemorySpanExporter()
    h = serve(recorder=CallRecorder(exporter=exporter, synchronous=True))
    h.check("wipe", call_id="w", traceparent=traceparent)
    (span,) = spans_by_name(exporter)["execute_tool wipe"]
    assert span.parent is None


def test_expired_and_shutdown_calls_still_get_their_span(serve: Callable[..., Harness]) -> None:
    exporter = InMemorySpanExporter()
    clock = FakeClock()
    h = serve(recorder=CallRecorder(exporter=exporter, synchronous=True), clock=clock)
    h.check(call_id="e1")
    clock.now += 1000
    h.service.housekeeping()
    h.check(call_id="e2")
    h.server.stop(grace=0)
    closed = {
        s.attributes["gen_ai.tool.call.id"]: s.attributes["callward.pending_closed"]
        for s in spans_by_name(exporter)["execute_tool charge"]
    }
    assert closed == {"e1": "expired", "e2": "shutdown"}


class FailingExporter(SpanExporter):
    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.calls += 1
        raise ConnectionError("collector down")

    def shutdown(self) -> None:
        pass


def test_telemetry_failures_never_fail_a_check(
    serve: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = FailingExporter()
    recorder = CallRecorder(exporter=exporter, synchronous=True)
    h = serve(recorder=recorder)
    assert h.check(call_id="a").decision == pb.DECISION_ALLOW
    assert h.check("wipe", call_id="b").decision == pb.DECISION_DENY
    assert exporter.calls >= 2 and recorder.stats.export_failures >= 2

    def explode(*_a: Any, **_k: Any) -> None:
        raise RuntimeError("tracer broken")

    monkeypatch.setattr(recorder, "begin", explode)
    assert h.check(call_id="c").decision == pb.DECISION_ALLOW
    assert h.report("c", "error").released == 1
    assert h.service.telemetry_errors == 1


# --------------------------------------------------------------------------- the CLI


def run_cli(*args: str) -> Result:
    """The ``enforcer`` command in process (start-up refusals return before serving)."""
    app = typer.Typer()
    register(app)
    app.command("unused")(lambda: None)  # keep "enforcer" a subcommand, as in callward
    return CliRunner().invoke(app, ["enforcer", *args], env={"OTEL_EXPORTER_OTLP_ENDPOINT": ""})


def test_cli_refuses_an_invalid_policy_with_the_report(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        'version: "1"\ntools:\n  t:\n    limits:\n      - {counter: c, window: fortnight, max: -1}\n'
    )
    got = run_cli("--policy", str(bad), "--listen", "127.0.0.1:0")
    assert got.exit_code == 2
    lines = [ln for ln in got.stderr.splitlines() if ln.startswith(str(bad))]
    assert len(lines) == 2
    assert all(re.match(rf"{re.escape(str(bad))}:\d+:\d+: \w+: ", ln) for ln in lines)
    assert "unknown_window" in got.stderr and "negative_max" in got.stderr


def test_cli_refuses_a_missing_policy(tmp_path: Path) -> None:
    got = run_cli("--policy", str(tmp_path / "nope.json"), "--listen", "127.0.0.1:0")
    assert got.exit_code == 2
    assert "unreadable" in got.stderr


class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace endpoint on a loopback port that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[Any] = []
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_cli_serves_exports_and_flushes_on_sigterm() -> None:
    receiver = OtlpReceiver()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callward.cli",
            "enforcer",
            "--policy",
            str(SEED),
            "--listen",
            "127.0.0.1:0",
            "--otlp-endpoint",
            f"http://127.0.0.1:{receiver.port}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": ""},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) policy (sha256:[0-9a-f]+)", line)
        assert match, line
        port = int(match.group(1))
        assert port > 0 and match.group(2) == load_policy(SEED).version
        assert "telemetry on" in line
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.EnforcerStub(channel)
            resp = stub.Check(pb.CheckRequest(tool="run_python_file", call_id="x"), timeout=10)
            assert resp.decision == pb.DECISION_ALLOW
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=30)
        assert proc.returncode == 0, errs
        assert "stopped" in out and "SIGTERM" in errs
        # The unreported call's span and the policy span were flushed before exit.
        names = sorted(span.name for span in receiver.spans)
        assert names == [POLICY_SPAN_NAME, "execute_tool run_python_file"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        receiver.server.stop(0)


def test_cli_port_in_use_or_bad_address_exits_non_zero(serve: Callable[..., Harness]) -> None:
    h = serve()
    for listen in (f"127.0.0.1:{h.server.port}", "192.0.2.1:0"):
        got = run_cli("--policy", str(SEED), "--listen", listen)
        assert got.exit_code == 1, listen
        assert "cannot listen" in got.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--listen", "127.0.0.1:0", "--workers", "0"), "max_workers must be at least 1"),
        (("--listen", "127.0.0.1:99999"), "PORT in 0..65535"),
        (("--listen", "not an address"), "listen must be HOST:PORT"),
        (("--listen", ":50051"), "listen must be HOST:PORT"),
        (("--listen", "127.0.0.1:0", "--pending-ttl", "nan"), "pending_ttl_s"),
    ],
)
def test_cli_refuses_nonsense_settings(args: tuple[str, ...], says: str) -> None:
    got = run_cli("--policy", str(SEED), *args)
    assert got.exit_code == 2
    assert says in got.stderr


def test_cli_takes_unset_settings_from_the_environment() -> None:
    app = typer.Typer()
    register(app)
    app.command("unused")(lambda: None)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "", ENV_OF["listen"]: "127.0.0.1:99999"}
    from_env = CliRunner().invoke(app, ["enforcer", "--policy", str(SEED)], env=env)
    assert from_env.exit_code == 2
    assert "'127.0.0.1:99999'" in from_env.stderr  # the environment's address was used
    env[ENV_OF["max_workers"]] = "0"
    flag_wins = CliRunner().invoke(
        app, ["enforcer", "--policy", str(SEED), "--listen", "127.0.0.1:0"], env=env
    )
    assert flag_wins.exit_code == 2
    assert "max_workers must be at least 1" in flag_wins.stderr  # past the listen check


def test_threads_are_released_after_stop(serve: Callable[..., Harness]) -> None:
    before = {t.name for t in threading.enumerate()}
    h = serve()
    h.server.stop(grace=0)
    leftover = {t.name for t in threading.enumerate()} - before
    assert "enforcer-housekeeping" not in leftover
