"""End to end against a real tracing backend: enforcer spans and foreign spans go through
the real collector (``callward collector --forward``) into Arize Phoenix, which is stopped
and restarted mid-stream; the forward queue delivers afterwards. Planted secrets of every
kind must not appear in any Parquet file, the DuckDB file, the spool, the forward queue,
or anything Phoenix received.

Phoenix lives in its own virtualenv under ``<repo>/.test-venvs/phoenix`` (created on first
use, reused afterwards), never in the project's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import venv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from callward.enforcer.engine import Decision, Request
from callward.enforcer.telemetry import CallRecorder
from tests.real import require_real
from tests.test_redact import PLANTED

REPO = Path(__file__).resolve().parents[2]
PHOENIX_VENV = REPO / ".test-venvs" / "phoenix"
PHOENIX_SPEC = "arize-phoenix>=11,<22"
READY_MARKER = PHOENIX_VENV / ".callward-ready"
PROJECT = "default"  # spans without openinference.project.name land here

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

SECRETS = [secret for _text, secret in PLANTED.values()]


def progress(message: str) -> None:
    """Progress that shows even under pytest's output capture (installs take minutes)."""
    print(f"[phoenix] {message}", file=sys.__stderr__, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.25)


# --- the Phoenix virtualenv ----------------------------------------------------------------


def phoenix_python() -> Path:
    """The interpreter of the Phoenix virtualenv, created and installed when missing."""
    python = PHOENIX_VENV / "bin" / "python"
    if READY_MARKER.is_file() and READY_MARKER.read_text().strip() == PHOENIX_SPEC:
        return python
    progress(f"creating {PHOENIX_VENV.relative_to(REPO)} and installing {PHOENIX_SPEC}")
    progress("this takes a few minutes the first time and is reused afterwards")
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(PHOENIX_VENV)
    cmd = [str(python), "-m", "pip", "install", "--disable-pip-version-check", PHOENIX_SPEC]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-19:], line]
        if line.startswith(("Collecting", "Installing", "Successfully")):
            progress(line[:120])
    if proc.wait() != 0:
        require_real(
            "Phoenix",
            f"could not install {PHOENIX_SPEC} into {PHOENIX_VENV.relative_to(REPO)} "
            f"(pip exited {proc.returncode}; no package index reachable?): "
            + " | ".join(tail[-3:]),
        )
    READY_MARKER.write_text(PHOENIX_SPEC + "\n")
    progress("Phoenix installed")
    return python


@pytest.fixture(scope="session")
def phoenix_interpreter() -> Path:
    return phoenix_python()


class Phoenix:
    """One Phoenix server on loopback; stop() and start() keep its ports and working dir."""

    def __init__(self, python: Path, workdir: Path) -> None:
        self.python = python
        self.workdir = workdir
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "phoenix.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PHOENIX_", "OTEL_"))},
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.http_port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_WORKING_DIR": str(self.workdir / "data"),
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "phoenix.server.main", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        progress(f"starting Phoenix (pid {self.proc.pid}) on {self.url}, gRPC {self.grpc_port}")
        wait_until(self.ready, timeout=600, what="Phoenix to become ready")
        progress("Phoenix ready")

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"Phoenix exited with {self.proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{self.url}/healthz", timeout=2).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        with socket.socket() as s:
            s.settimeout(1)
            return s.connect_ex(("127.0.0.1", self.grpc_port)) == 0

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.proc = None

    def spans(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 1000}
            if cursor:
                params["cursor"] = cursor
            r = httpx.get(f"{self.url}/v1/projects/{PROJECT}/spans", params=params, timeout=30)
            r.raise_for_status()
            body = r.json()
            out.extend(body["data"])
            cursor = body.get("next_cursor")
            if not cursor:
                return out

    def span_ids(self) -> set[str]:
        return {s["context"]["span_id"] for s in self.spans()}


@pytest.fixture
def phoenix(phoenix_interpreter: Path, tmp_path: Path) -> Iterator[Phoenix]:
    server = Phoenix(phoenix_interpreter, tmp_path / "phoenix")
    server.workdir.mkdir()
    server.start()
    yield server
    server.stop()


# --- the collector -------------------------------------------------------------------------


class CollectorProcess:
    """``callward collector`` as an operator runs it, in a subprocess."""

    def __init__(self, data_dir: Path, forward: str) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log_path = data_dir.parent / "collector.log"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from callward.cli import app; app()",
                "collector",
                "--data-dir",
                str(data_dir),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--forward",
                forward,
                "--flush-interval",
                "0.5",
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("CALLWARD_")},
        )
        log.close()
        channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        try:
            grpc.channel_ready_future(channel).result(timeout=120)
        except grpc.FutureTimeoutError:
            self.stop()
            raise AssertionError("collector did not start:\n" + self.log()) from None
        self.stub = trace_service_pb2_grpc.TraceServiceStub(channel)
        self.channel = channel

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


# --- what we send --------------------------------------------------------------------------


def planted_arguments(n: int) -> dict[str, Any]:
    args: dict[str, Any] = {
        f"{kind}_text": f"see {text} end" for kind, (text, _s) in PLANTED.items()
    }
    args["n"] = n
    args["password"] = "hunter2-plaintext"
    return args


def enforcer_spans(endpoint: str, first: int, count: int) -> list[str]:
    """Spans made by the enforcer's own recorder, exported over OTLP to the collector;
    returns their span ids."""
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=30)
    recorder = CallRecorder("callward-enforcer", exporter, synchronous=True)
    ids = []
    for i in range(first, first + count):
        req = Request(
            tool="query_db",
            arguments=planted_arguments(i),
            server="warehouse",
            grant="analyst",
            agent_id="agent-e2e",
            session_id="session-e2e",
            call_id=f"call-{i}",
        )
        decision = Decision("allow" if i % 2 else "deny", f"/rules/{i % 3}", "", "policy-v7")
        call = recorder.begin(req, decision, mcp_session_id="mcp-e2e")
        assert call is not None
        ctx = call.span.get_span_context()
        ids.append(format(ctx.span_id, "016x"))
        call.end(outcome="ok", duration_ms=3.0, result_bytes=17)
    recorder.shutdown()
    assert recorder.stats.spans_dropped == 0, recorder.stats
    return ids


def foreign_request(first: int) -> tuple[ExportTraceServiceRequest, list[str]]:
    """Spans from some other GenAI-instrumented agent, secrets NOT redacted at the source:
    the collector must redact them itself (arguments and every other string attribute)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        KeyValue(key="service.name", value=AnyValue(string_value="other-agent"))
    )
    scope = rs.scope_spans.add()
    ids = []
    now = time.time_ns()
    for i, (kind, (text, _secret)) in enumerate(PLANTED.items()):
        span = scope.spans.add()
        span.trace_id = (0xABC000 + first + i).to_bytes(16, "big")
        span.span_id = (0xDEF000 + first + i).to_bytes(8, "big")
        span.name = "execute_tool fetch"
        span.start_time_unix_nano = now - 5_000_000
        span.end_time_unix_nano = now
        for key, value in (
            ("gen_ai.operation.name", "execute_tool"),
            ("gen_ai.tool.name", "fetch"),
            ("gen_ai.tool.call.arguments", json.dumps({"kind": kind, "value": text})),
            ("http.request.header.authorization", f"Bearer {text}"),
            ("note", f"raw {text}"),
        ):
            span.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
        ids.append(span.span_id.hex())
    return req, ids


# --- scanning for leaks --------------------------------------------------------------------


def leaks_in_bytes(data: bytes) -> list[str]:
    return [s for s in SECRETS if s.encode() in data]


def leaks_in_store(data_dir: Path) -> dict[str, list[str]]:
    """Every file under the store, raw; plus Parquet and DuckDB contents decoded (their
    pages may be compressed, so a raw scan alone could miss a secret)."""
    found: dict[str, list[str]] = {}
    for path in data_dir.rglob("*"):
        if path.is_file():
            hits = leaks_in_bytes(path.read_bytes())
            if hits:
                found[str(path.relative_to(data_dir))] = hits
    parquet = sorted(data_dir.rglob("*.parquet"))
    assert parquet, "the collector wrote no Parquet file"
    con = duckdb.connect()
    for path in parquet:
        rows = con.execute("select * from read_parquet(?)", [str(path)]).fetchall()
        hits = leaks_in_bytes(repr(rows).encode())
        if hits:
            found[f"{path.name} (decoded)"] = hits
    con.close()
    db = data_dir / "callward.duckdb"
    assert db.is_file(), "the collector wrote no DuckDB file"
    con = duckdb.connect(str(db), read_only=True)
    try:
        tables = con.execute(
            "select schema_name, table_name from duckdb_tables() where database_name = current_database()"
        ).fetchall()
        for schema, table in tables:
            rows = con.execute(f'select * from "{schema}"."{table}"').fetchall()
            hits = leaks_in_bytes(repr(rows).encode())
            if hits:
                found[f"duckdb table {table}"] = hits
    finally:
        con.close()
    return found


def attributes_of(span: dict[str, Any]) -> dict[str, Any]:
    """Phoenix may return attributes flat or nested by dots; flatten to dotted keys."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", span.get("attributes") or {})
    return flat


# --- the test ------------------------------------------------------------------------------


def test_spans_reach_phoenix_across_a_restart_and_no_secret_leaks(
    phoenix: Phoenix, tmp_path: Path
) -> None:
    data_dir = tmp_path / "store"
    collector = CollectorProcess(data_dir, forward=f"127.0.0.1:{phoenix.grpc_port}")
    try:
        endpoint = f"http://127.0.0.1:{collector.port}"

        # Phase 1: Phoenix up.
        sent = enforcer_spans(endpoint, 0, 6)
        foreign, foreign_ids = foreign_request(0)
        response = collector.stub.Export(foreign, timeout=30)
        assert not response.partial_success.rejected_spans, response
        expected = set(sent) | set(foreign_ids)
        wait_until(
            lambda: expected <= phoenix.span_ids(), timeout=180, what="phase-1 spans in Phoenix"
        )

        # Phase 2: Phoenix down; the collector acknowledges and queues on disk.
        phoenix.stop()
        progress("Phoenix stopped; sending while it is down")
        sent_down = enforcer_spans(endpoint, 100, 6)
        foreign_down, foreign_down_ids = foreign_request(100)
        collector.stub.Export(foreign_down, timeout=30)
        queue_dir = data_dir / "forward-queue"
        wait_until(
            lambda: any(p.stat().st_size for p in queue_dir.glob("seg-*.log")),
            timeout=60,
            what="spans waiting in the forward queue",
        )
        queued_leaks = {
            p.name: leaks_in_bytes(p.read_bytes())
            for p in queue_dir.glob("seg-*.log")
            if leaks_in_bytes(p.read_bytes())
        }
        assert queued_leaks == {}

        # Phase 3: Phoenix back (same ports, same data); the queue drains into it.
        phoenix.start()
        expected |= set(sent_down) | set(foreign_down_ids)
        wait_until(
            lambda: expected <= phoenix.span_ids(), timeout=300, what="queued spans in Phoenix"
        )
        spans = phoenix.spans()
    finally:
        collector.stop()

    # What Phoenix holds carries the semantic-convention and callward attributes...
    by_id = {s["context"]["span_id"]: s for s in spans}
    for span_id in sent + sent_down:
        attrs = attributes_of(by_id[span_id])
        assert by_id[span_id]["name"] == "execute_tool query_db"
        assert attrs["gen_ai.operation.name"] == "execute_tool"
        assert attrs["gen_ai.tool.name"] == "query_db"
        assert attrs["gen_ai.agent.id"] == "agent-e2e"
        assert attrs["gen_ai.conversation.id"] == "session-e2e"
        assert attrs["mcp.method.name"] == "tools/call"
        assert attrs["callward.decision"] in ("allow", "deny")
        assert attrs["callward.policy.version"] == "policy-v7"
        assert attrs["callward.grant"] == "analyst"
        assert attrs["callward.server"] == "warehouse"
        arguments = json.loads(attrs["gen_ai.tool.call.arguments"])
        assert arguments["password"] == "[REDACTED:password]"
        assert "[REDACTED:aws_access_key]" in arguments["aws_access_key_text"]
    for span_id in foreign_ids + foreign_down_ids:
        attrs = attributes_of(by_id[span_id])
        assert attrs["gen_ai.tool.name"] == "fetch"
        assert "[REDACTED:" in attrs["gen_ai.tool.call.arguments"]

    # ...and no planted secret reached Phoenix, in its API or its database files.
    assert leaks_in_bytes(json.dumps(spans).encode()) == []
    phoenix_files = {
        str(p.relative_to(phoenix.workdir)): leaks_in_bytes(p.read_bytes())
        for p in (phoenix.workdir / "data").rglob("*")
        if p.is_file()
    }
    assert {k: v for k, v in phoenix_files.items() if v} == {}

    # The store has every span once, redacted, and leaks nowhere (Parquet, DuckDB, spool).
    con = duckdb.connect(str(data_dir / "callward.duckdb"), read_only=True)
    try:
        rows = con.execute("select span_id, arguments, decision from tool_calls").fetchall()
    finally:
        con.close()
    stored = {r[0]: r for r in rows}
    assert expected <= set(stored)
    assert len(rows) == len(stored)
    for span_id in sent:
        assert "[REDACTED:jwt]" in stored[span_id][1]
    assert leaks_in_store(data_dir) == {}


def test_phoenix_venv_is_outside_the_project_environment(phoenix_interpreter: Path) -> None:
    """Phoenix must never be importable from the project's own interpreter."""
    assert READY_MARKER.is_file()
    assert shutil.which("phoenix", path=str(Path(sys.executable).parent)) is None
    assert Path(sys.prefix).resolve() != PHOENIX_VENV.resolve()
