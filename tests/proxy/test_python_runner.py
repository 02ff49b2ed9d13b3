"""The seed's dangerous server, mcp-run-python-code from PyPI, behind the proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mcp.types import TextContent
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.policy import compile_document, load_policy
from callward.enforcer.proxy.gate import Gate, InProcessChecker
from callward.enforcer.proxy.upstream import command_upstream
from callward.enforcer.telemetry import CallRecorder
from tests.proxy.conftest import REPO, attrs, relay_session, spans_by_tool

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180, func_only=True)]

RUNNER_POLICY = load_policy(REPO / "examples" / "policies" / "python_runner.json")
SEED_POLICY = load_policy(REPO / "examples" / "policies" / "seed.json")
ALLOW_ALL = compile_document({"version": "1", "default": "allow"})
MINUTE_START = 1_800_000_000.0 - (1_800_000_000.0 % 60)


def text_of(result: Any) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The server makes its work folder with mkdtemp(): point TMPDIR into the test's dir."""
    work = tmp_path / "server-tmp"
    work.mkdir()
    monkeypatch.setenv("TMPDIR", str(work))
    return work


def runner(python_runner: Path) -> Any:
    return command_upstream(str(python_runner))


async def test_allowed_save_and_run_returns_the_real_result(
    python_runner: Path, workdir: Path, recorder: CallRecorder
) -> None:
    gate = Gate(InProcessChecker(RUNNER_POLICY), policy=RUNNER_POLICY, recorder=recorder)
    async with relay_session(gate, runner(python_runner)) as (session, _):
        result = await session.call_tool(
            "save_to_file_and_run",
            {"file_name": "calc.py", "code": "c = 6 * 7", "variable_to_return": "c"},
        )
    assert text_of(result) == "42" and not result.isError
    assert [p.name for p in workdir.glob("*/calc.py")] == ["calc.py"]


async def test_a_denied_write_outside_the_folder_never_happens(
    python_runner: Path,
    workdir: Path,
    tmp_path: Path,
    recorder: CallRecorder,
    exporter: InMemorySpanExporter,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "planted.py"
    control = outside / "control.py"
    args = {"code": "planted = True", "variable_to_return": "planted"}
    # Control: with nothing in the way, the server does write wherever it is told.
    open_gate = Gate(InProcessChecker(ALLOW_ALL), policy=ALLOW_ALL)
    async with relay_session(open_gate, runner(python_runner)) as (session, _):
        wrote = await session.call_tool("save_to_file_and_run", {**args, "file_name": str(control)})
    assert text_of(wrote) == "True" and control.exists()

    gate = Gate(InProcessChecker(RUNNER_POLICY), policy=RUNNER_POLICY, recorder=recorder)
    async with relay_session(gate, runner(python_runner)) as (session, _):
        absolute = await session.call_tool(
            "save_to_file_and_run", {**args, "file_name": str(target)}
        )
        climbing = await session.call_tool(
            "save_to_file_and_run", {**args, "file_name": "../../outside/planted.py"}
        )
    for denied in (absolute, climbing):
        assert denied.isError
        assert text_of(denied).startswith("[POLICY DENIED] save_to_file_and_run may only write")
        assert denied.structuredContent is not None
        assert denied.structuredContent["rule"] == "/tools/save_to_file_and_run/require/0"
    assert not target.exists()
    assert list(workdir.rglob("*.py")) == []
    spans = spans_by_tool(exporter, "save_to_file_and_run")
    assert [attrs(s)["callward.decision"] for s in spans] == ["deny", "deny"]


async def test_pip_install_is_hidden_and_refused(
    python_runner: Path, workdir: Path, recorder: CallRecorder, exporter: InMemorySpanExporter
) -> None:
    gate = Gate(InProcessChecker(RUNNER_POLICY), policy=RUNNER_POLICY, recorder=recorder)
    async with relay_session(gate, runner(python_runner)) as (session, relay):
        names = {t.name for t in (await session.list_tools()).tools}
        refused = await session.call_tool("pip_install_package", {"package_name": "requests"})
        approval = await session.call_tool("run_python_code", {"code": "x = 1"})
    assert names == {"run_python_code", "save_to_file_and_run", "run_python_file"}
    assert refused.isError and refused.structuredContent is not None
    assert refused.structuredContent["rule"] == "/hide/0"
    assert text_of(approval).startswith("[APPROVAL REQUIRED] running arbitrary code")
    assert relay.stats.forwarded == 2  # initialize and tools/list: no call reached the server
    (span,) = spans_by_tool(exporter, "pip_install_package")
    assert attrs(span)["callward.decision"] == "deny"


async def test_the_seed_limit_lets_exactly_ten_calls_a_minute_per_grant(
    python_runner: Path,
    workdir: Path,
    tmp_path: Path,
    recorder: CallRecorder,
    exporter: InMemorySpanExporter,
) -> None:
    script = tmp_path / "answer.py"
    script.write_text("x = 6 * 7\n")
    clock = {"now": MINUTE_START + 30}
    checker = InProcessChecker(SEED_POLICY, clock=lambda: clock["now"])
    gate = Gate(checker, policy=SEED_POLICY, recorder=recorder)
    call = {"file_name": str(script), "variable_to_return": "x"}
    async with relay_session(gate, runner(python_runner), grant="alice") as (alice, _):
        answers = [await alice.call_tool("run_python_file", call) for _ in range(11)]
        async with relay_session(gate, runner(python_runner), grant="bob") as (bob, _):
            bobs = await bob.call_tool("run_python_file", call)
        clock["now"] = MINUTE_START + 60  # the next calendar minute
        next_minute = await alice.call_tool("run_python_file", call)
        denied_tool = await alice.call_tool(
            "save_to_file_and_run", {"file_name": "a.py", "code": ""}
        )
    assert [text_of(r) for r in answers[:10]] == ["42"] * 10
    eleventh = answers[10]
    assert eleventh.isError and text_of(eleventh).startswith("[POLICY DENIED] rate limit")
    assert eleventh.structuredContent == {
        "decision": "deny",
        "rule": "/tools/run_python_file/limits/0",
        "policy_version": SEED_POLICY.version,
    }
    assert text_of(bobs) == "42"
    assert text_of(next_minute) == "42"
    assert denied_tool.isError and denied_tool.structuredContent is not None
    assert denied_tool.structuredContent["rule"] == "/default"
    # The audit trail: every call, allowed or denied, with its decision and grant.
    runs = spans_by_tool(exporter, "run_python_file")
    got = [(attrs(s)["callward.grant"], attrs(s)["callward.decision"]) for s in runs]
    assert got == [("alice", "allow")] * 10 + [
        ("alice", "deny"),
        ("bob", "allow"),
        ("alice", "allow"),
    ]
    assert all(
        attrs(s).get("callward.outcome") == "ok"
        for s in runs
        if attrs(s)["callward.decision"] == "allow"
    )
    assert len(spans_by_tool(exporter, "save_to_file_and_run")) == 1
