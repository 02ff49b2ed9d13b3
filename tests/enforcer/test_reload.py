"""Hot reload: valid policies swap in, invalid ones are refused, counters survive as promised."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.policy import load_policy
from callward.enforcer.reload import PolicyReloader
from callward.enforcer.server import SERVICE_NAME, EnforcerService
from callward.enforcer.server_cli import telemetry_wanted
from callward.enforcer.telemetry import POLICY_SPAN_NAME, CallRecorder
from callward.proto.callward.v1 import enforcer_pb2 as pb
from callward.proto.callward.v1 import enforcer_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(60)


def doc(max_a: int = 2, max_b: int = 2, extra_tool: bool = False) -> dict[str, Any]:
    tools: dict[str, Any] = {
        "tool_a": {"limits": [{"counter": "a", "window": "hour", "max": max_a, "scope": "grant"}]},
        "tool_b": {"limits": [{"counter": "b", "window": "hour", "max": max_b, "scope": "grant"}]},
    }
    if extra_tool:
        tools["tool_c"] = {}
    return {"version": "1", "default": "deny", "tools": tools}


def write(path: Path, content: dict[str, Any] | str) -> None:
    text = content if isinstance(content, str) else json.dumps(content, indent=2)
    # Write then rename, as editors and config managers do.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "policy.json"
        write(self.path, doc())
        self.service = EnforcerService(load_policy(self.path))
        self.reloader = PolicyReloader(
            self.path, self.service.swap_policy, lambda: self.service.policy.version
        )
        self.n = 0

    def check(self, tool: str) -> int:
        self.n += 1
        req = pb.CheckRequest(call_id=f"c{self.n}", tool=tool, grant="g", arguments_json="{}")
        return self.service.check(req).decision

    def fill(self, tool: str, times: int) -> list[int]:
        return [self.check(tool) for _ in range(times)]


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


ALLOW, DENY = pb.DECISION_ALLOW, pb.DECISION_DENY


def test_valid_reload_keeps_unchanged_counters_and_resets_changed_ones(setup: Setup) -> None:
    assert setup.fill("tool_a", 3) == [ALLOW, ALLOW, DENY]
    assert setup.fill("tool_b", 3) == [ALLOW, ALLOW, DENY]
    before = setup.service.policy.version
    write(setup.path, doc(max_b=3, extra_tool=True))
    outcome = setup.reloader.check()
    assert outcome is not None and outcome.status == "applied"
    assert outcome.version == setup.service.policy.version != before
    assert outcome.swap is not None
    assert (outcome.swap.kept, outcome.swap.reset) == (("a",), ("b",))
    assert setup.check("tool_a") == DENY  # limit a unchanged: its 2 calls still count
    assert setup.fill("tool_b", 4) == [ALLOW, ALLOW, ALLOW, DENY]  # b changed: counted afresh
    assert setup.check("tool_c") == ALLOW  # the new rule is in force


def test_invalid_policy_is_refused_and_the_old_one_stays(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    setup.fill("tool_a", 2)
    before = setup.service.policy.version
    write(setup.path, '{"version": "2", "tools": {"x": {"limits": [{"window": "year"}]}}}')
    with caplog.at_level(logging.ERROR, logger="callward.enforcer.reload"):
        outcome = setup.reloader.check()
    assert outcome is not None and outcome.status == "refused"
    assert outcome.version == before == setup.service.policy.version
    assert outcome.errors and all(
        re.match(rf"{re.escape(str(setup.path))}:\d+:\d+: \w+: ", e) for e in outcome.errors
    )
    assert any("unsupported_version" in e for e in outcome.errors)
    assert "reload refused" in caplog.text and "unknown_window" in caplog.text
    assert setup.check("tool_a") == DENY  # counters untouched
    assert setup.check("tool_c") == DENY
    # The same broken content is not reported again on every poll.
    os.utime(setup.path)
    assert setup.reloader.check() is None


def test_broken_unreadable_and_hostile_files_are_refused(setup: Setup) -> None:
    before = setup.service.policy.version
    write(setup.path, '{"version": "1", "tools": {')
    outcome = setup.reloader.check()
    assert outcome is not None and outcome.status == "refused"
    assert any(": syntax: " in e for e in outcome.errors)
    setup.path.unlink()
    outcome = setup.reloader.check()
    assert outcome is not None and outcome.status == "refused"
    assert any(": unreadable: " in e for e in outcome.errors)
    setup.path.write_bytes(b'{"version": "1", "tools": {"caf\xe9": {}}}')
    outcome = setup.reloader.check()
    assert outcome is not None and any(": encoding: " in e for e in outcome.errors)
    setup.path.write_text(json.dumps({**doc(), "description": "x" * (5 * 1024 * 1024)}))
    outcome = setup.reloader.check()
    assert outcome is not None and any(": too_large: " in e for e in outcome.errors)
    assert setup.service.policy.version == before
    write(setup.path, doc(extra_tool=True))
    outcome = setup.reloader.check()
    assert outcome is not None and outcome.status == "applied"


def test_untouched_and_equivalent_files_change_nothing(setup: Setup) -> None:
    assert setup.reloader.check() is None
    before = setup.service.policy.version
    write(setup.path, json.dumps(doc(), indent=8))  # other bytes, same canonical policy
    outcome = setup.reloader.check()
    assert outcome is not None and (outcome.status, outcome.version) == ("unchanged", before)
    forced = setup.reloader.check(force=True)
    assert forced is not None and forced.status == "unchanged"


def test_a_reset_counter_is_not_decremented_by_an_older_call(setup: Setup) -> None:
    assert setup.fill("tool_b", 1) == [ALLOW]  # c1 pending, holds a unit of b
    write(setup.path, doc(max_b=3))
    assert setup.reloader.check() is not None
    assert setup.fill("tool_b", 4) == [ALLOW, ALLOW, ALLOW, DENY]
    got = setup.service.report(pb.ReportRequest(call_id="c1", outcome="error"))
    assert got.released == 0  # c1's unit belonged to the old counter
    assert setup.check("tool_b") == DENY


def test_watcher_thread_picks_up_a_change(setup: Setup) -> None:
    setup.reloader.interval_s = 0.05
    setup.reloader.start()
    try:
        write(setup.path, doc(extra_tool=True))
        wait_for(lambda: setup.check("tool_c") == ALLOW)
    finally:
        setup.reloader.stop()


def test_watcher_thread_reloads_when_asked(setup: Setup) -> None:
    # The thread reads its interval once, when it starts: with an hour, nothing but
    # request_reload can wake it within the wait below.
    setup.reloader.interval_s = 3600.0
    setup.reloader.start()
    try:
        write(setup.path, doc(extra_tool=True))
        setup.reloader.request_reload()
        wait_for(lambda: setup.check("tool_c") == ALLOW)
    finally:
        setup.reloader.stop()


def wait_for(condition: Callable[[], bool], limit_s: float = 20.0) -> None:
    """Poll until ``condition`` holds; fails (not times) when it never does."""
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("condition never held")
        time.sleep(0.05)


# --------------------------------------------------------------------------- the real CLI


def test_cli_reloads_on_sighup_and_keeps_old_policy_when_invalid(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        'version: "1"\ndefault: deny\ntools:\n  tool_a:\n    limits:\n'
        "      - {counter: a, window: hour, max: 2, scope: grant}\n"
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "callward.cli",
            "enforcer",
            "--policy",
            str(path),
            "--listen",
            "127.0.0.1:0",
            "--reload-interval",
            "0",  # no polling: only SIGHUP reloads
            "--no-otlp",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    tail = StderrTail(proc)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) policy (sha256:\w+)", line)
        assert match, line
        first = match.group(2)
        with grpc.insecure_channel(f"127.0.0.1:{match.group(1)}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10)
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            assert SERVICE_NAME in ProtoReflectionDescriptorDatabase(channel).get_services()
            stub = pb_grpc.EnforcerStub(channel)

            def check(tool: str, call_id: str) -> pb.CheckResponse:
                req = pb.CheckRequest(tool=tool, call_id=call_id, grant="g")
                return stub.Check(req, timeout=10)

            assert [check("tool_a", f"a{i}").decision for i in range(3)] == [
                ALLOW,
                ALLOW,
                DENY,
            ]
            assert check("tool_c", "c0").decision == DENY

            # A valid new policy: tool_c allowed, limit a unchanged so its counter survives.
            path.write_text(path.read_text() + "  tool_c: {}\n")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: check("tool_c", f"c{time.monotonic_ns()}").decision == ALLOW)
            second = check("tool_c", "c-after").policy_version
            assert second not in (first, "")
            assert check("tool_a", "a-after").decision == DENY

            # An invalid one: refused, errors logged, the second policy stays in force.
            path.write_text(path.read_text() + "  tool_d: {action: explode}\n")
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "reload refused" in tail.text())
            assert check("tool_c", "c-still").policy_version == second
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        errs = tail.join()
        assert re.search(rf"{re.escape(str(path))}:\d+:\d+: invalid_value: action", errs), errs
        assert "SIGINT" in errs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


class StderrTail:
    """Collects a running process's stderr in a thread, so a test can wait for a line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def join(self) -> str:
        self._thread.join(timeout=20)
        return self.text()


def test_each_policy_in_force_is_published_once(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    path = tmp_path / "policy.json"
    write(path, doc())
    service = EnforcerService(
        load_policy(path), recorder=CallRecorder(exporter=exporter, synchronous=True)
    )
    reloader = PolicyReloader(path, service.swap_policy, lambda: service.policy.version)
    first = service.policy.version
    write(path, doc(extra_tool=True))
    assert reloader.check() is not None
    write(path, "not a policy at all: [")
    assert reloader.check() is not None
    spans: list[Any] = [s for s in exporter.get_finished_spans() if s.name == POLICY_SPAN_NAME]
    published = [
        (
            s.attributes["callward.policy.version"],
            json.loads(s.attributes["callward.policy.document"]),
        )
        for s in spans
    ]
    assert [v for v, _ in published] == [first, service.policy.version]
    assert "tool_c" in published[1][1]["tools"]


@pytest.mark.parametrize(
    ("flag", "endpoint", "env", "wanted"),
    [
        (None, None, "", False),
        (None, None, "http://collector:4317", True),
        (None, "http://127.0.0.1:4317", "", True),
        (False, "http://127.0.0.1:4317", "http://collector:4317", False),
        (True, None, "", True),
    ],
)
def test_telemetry_default_follows_the_otlp_configuration(
    monkeypatch: pytest.MonkeyPatch, flag: bool | None, endpoint: str | None, env: str, wanted: bool
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", env)
    assert telemetry_wanted(flag, endpoint) is wanted
