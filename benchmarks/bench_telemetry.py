"""Telemetry benchmark: what one span per call costs the enforcer, in process, and what
redaction costs. Not a test: every figure is printed next to a baseline measured in the
same run (interleaved rounds, medians), so the ratios hold on any machine.

    python benchmarks/bench_telemetry.py            # about a minute
    python benchmarks/bench_telemetry.py --quick

1. Decision throughput (``decide`` on the 50-tool policy, mixed workload) with telemetry
   off (baseline) against decide + one span per call:
   - "bare SDK span (floor)": a plain SDK span with as many attributes, none of callward's
     code (what any OTel-SDK recorder costs);
   - "span, discarding exporter": the real CallRecorder and batch processor, exporter that
     drops batches: the cost on the decision path itself (attributes, redaction, queueing);
   - "span, OTLP/gRPC": the real OTLP exporter sending to a receiver in another process
     that acknowledges and discards: adds the export thread's serialisation and gRPC work,
     which shares the interpreter lock with the deciding thread. This is the honest figure
     for an enforcer exporting its own spans.
2. Redaction per call (``redact_json_text`` on tool arguments), against ``json.dumps`` of
   the same arguments (the serialisation the span needs anyway), and against detect-secrets'
   line scanner on the same text (why callward/redact.py has its own matcher).

Every ratio is the median of the rounds' ratios, the modes (and the three redaction
measures) run in turns within each round. The load average is printed at the start and
at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from opentelemetry.sdk.trace import ReadableSpan  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from callward.enforcer.engine import InMemoryLimitState, Request, decide  # noqa: E402
from callward.enforcer.policy import load_policy  # noqa: E402
from callward.enforcer.telemetry import CallRecorder  # noqa: E402
from callward.redact import redact_json_text  # noqa: E402

FIFTY = REPO / "examples" / "policies" / "fifty_tools.yaml"
console = Console(highlight=False)

# A mixed day of tool calls: (server, tool, arguments).
CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("filesystem", "read_file", {"path": "/workspace/src/app.py"}),
    ("filesystem", "write_file", {"path": "/workspace/notes.md", "content": "todo"}),
    ("github", "create_issue", {"repo": "acme/api", "title": "flaky test"}),
    ("github", "get_file_contents", {"repo": "acme/api", "path": "README.md"}),
    ("slack", "post_message", {"channel": "#eng-builds", "text": "deploy finished"}),
    ("stripe", "create_charge", {"amount": 2500, "currency": "usd", "customer": "cus_123"}),
    ("postgres", "query", {"sql": "SELECT id, total FROM orders ORDER BY id DESC LIMIT 20"}),
    ("shell", "execute_command", {"command": "git status", "timeout": 30}),
    ("fetch", "fetch", {"url": "https://docs.python.org/3/library/json.html"}),
    ("gmail", "send_email", {"to": "bob@acme.com", "subject": "weekly report"}),
    ("kubernetes", "get_pods", {"namespace": "default"}),
    ("unknown", "do_anything", {"x": 1}),
]

REDACTION_CASES: dict[str, dict[str, Any]] = {
    "typical, no secret": {"path": "/workspace/src/app.py", "mode": "r", "limit": 100},
    "URL + query": {"url": "https://api.example.com/v1/items?page=2", "method": "GET"},
    "SQL": {"sql": "SELECT id, total FROM orders WHERE customer = 'cus_123' LIMIT 20"},
    "with secrets": {
        "url": "postgres://admin:s3cr3t@db.internal/app",
        "headers": {"Authorization": "Bearer ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"},
        "api_key": "Zx9qL2mP8vR4tY7w",
    },
}


class DiscardingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


# --------------------------------------------------------------------------- OTLP sink


def serve_sink(port_file: Path) -> None:
    """A TraceService that acknowledges and discards (run in its own process)."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    class Sink(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Sink(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def start_sink(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / "sink.port"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(port_file)])
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError("OTLP sink did not start")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


# --------------------------------------------------------------------------- 1. spans


def requests(n: int) -> list[Request]:
    return [
        Request(
            tool=CALLS[i % len(CALLS)][1],
            arguments=CALLS[i % len(CALLS)][2],
            server=CALLS[i % len(CALLS)][0],
            grant="dev",
            agent_id=f"agent-{i % 7}",
            session_id=f"s{i % 50}",
            call_id=f"c{i}",
        )
        for i in range(n)
    ]


POLICY = load_policy(FIFTY)


def run_mode(reqs: list[Request], recorder: CallRecorder | None) -> float:
    """Calls per second of decide (+ begin/end of the call's span)."""
    policy = POLICY
    state = InMemoryLimitState()
    now = 1_800_000_000.0
    start = time.perf_counter()
    for i, req in enumerate(reqs):
        decision = decide(policy, req, state, now + i * 0.01)
        if recorder is not None:
            span = recorder.begin(req, decision)
            if span is not None:
                span.end(outcome="ok", duration_ms=1.0, result_bytes=128)
    if recorder is not None:
        recorder.force_flush(60_000)  # timed: every span exported, not merely queued
    return len(reqs) / (time.perf_counter() - start)


def run_sdk_floor(reqs: list[Request], tracer_provider: Any) -> float:
    """decide + a bare SDK span with as many attributes as ours, none of our code: the floor
    any OTel-SDK-based recorder pays."""
    policy = POLICY
    state = InMemoryLimitState()
    now = 1_800_000_000.0
    attrs = {f"attr.{i}": f"value {i}" for i in range(13)}
    end_attrs = {"end.a": "ok", "end.b": 1.0, "end.c": 128}
    tracer = tracer_provider.get_tracer("bench")
    start = time.perf_counter()
    for i, req in enumerate(reqs):
        decide(policy, req, state, now + i * 0.01)
        span = tracer.start_span(f"execute_tool {req.tool}", attributes=attrs)
        span.set_attributes(end_attrs)
        span.end()
    tracer_provider.force_flush(60_000)
    return len(reqs) / (time.perf_counter() - start)


def bench_spans(calls: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    sink, port = start_sink(tmp)
    try:
        # Queues hold a whole round, so no span is dropped and every one is paid for.
        discarding = CallRecorder("bench", DiscardingExporter(), max_queue_size=calls + 1)
        otlp = CallRecorder(
            "bench",
            OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}", insecure=True),
            max_queue_size=calls + 1,
        )
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        floor_provider = TracerProvider()
        floor_provider.add_span_processor(
            BatchSpanProcessor(DiscardingExporter(), max_queue_size=calls + 1)
        )
        modes: dict[str, Callable[[list[Request]], float]] = {
            "off": lambda r: run_mode(r, None),
            "bare SDK span (floor), discarding": lambda r: run_sdk_floor(r, floor_provider),
            "span, discarding exporter": lambda r: run_mode(r, discarding),
            "span, OTLP/gRPC": lambda r: run_mode(r, otlp),
        }
        reqs = requests(calls)
        results: dict[str, list[float]] = {m: [] for m in modes}
        with Progress(console=console) as progress:
            task = progress.add_task("decide with spans on/off", total=rounds * len(modes))
            for _ in range(rounds):
                for mode, fn in modes.items():  # interleaved: load from elsewhere hits all
                    results[mode].append(fn(reqs))
                    progress.advance(task)
        discarding.shutdown()
        floor_provider.shutdown()
        otlp.force_flush(30_000)
        otlp.shutdown()
        dropped = discarding.stats.spans_dropped + otlp.stats.spans_dropped
    finally:
        sink.terminate()
        sink.wait(10)
    medians = {m: statistics.median(v) for m, v in results.items()}
    # Each round's modes ran back to back: one ratio to "off" per round, the median kept.
    ratios = {
        m: statistics.median(r / off for r, off in zip(v, results["off"], strict=True))
        for m, v in results.items()
    }
    return {"medians": medians, "ratios": ratios, "dropped": dropped}


# --------------------------------------------------------------------------- 2. redaction


REDACTION_ROUNDS = 5


def per_call_us(fns: Sequence[tuple[Callable[[], object], int]]) -> list[list[float]]:
    """µs per call of each ``(fn, n)``, in turns over ``REDACTION_ROUNDS`` rounds."""
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(REDACTION_ROUNDS):
        for out, (fn, n) in zip(samples, fns, strict=True):
            start = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - start) / n * 1e6)
    return samples


def _scan(scan_line: Callable[[str], Any], text: str) -> list[Any]:
    return list(scan_line(text))


def bench_redaction(n: int) -> list[tuple[str, float, float, float, float]]:
    from detect_secrets.core.scan import scan_line
    from detect_secrets.settings import default_settings

    rows = []
    with default_settings():
        for name, args in REDACTION_CASES.items():
            text = json.dumps(args)
            dumps, ours, ds = per_call_us(
                [
                    (functools.partial(json.dumps, args), n),
                    (functools.partial(redact_json_text, text), n),
                    (functools.partial(_scan, scan_line, text), max(50, n // 20)),
                ]
            )
            ratio = statistics.median(o / d for o, d in zip(ours, dumps, strict=True))
            med = statistics.median
            rows.append((name, med(dumps), med(ours), ratio, med(ds)))
    return rows


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description="Telemetry benchmark (not a test).")
    parser.add_argument("--calls", type=int, default=20_000, help="calls per round and mode")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a fifth of the calls")
    parser.add_argument("--serve-sink", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink)
        return 0
    calls = args.calls // 5 if args.quick else args.calls
    import tempfile

    console.print(f"load average at the start: {load_average()}")
    with tempfile.TemporaryDirectory() as tmp:
        spans = bench_spans(calls, args.rounds, Path(tmp))
    med = spans["medians"]
    base = med["off"]
    table = Table(
        title=f"decide + span per call, {calls} calls x {args.rounds} interleaved rounds "
        "(medians; x off: median of the rounds' ratios)"
    )
    for col in ("mode", "calls/s", "x off", "span cost µs/call"):
        table.add_column(col, justify="right" if col != "mode" else "left")
    for mode, rate in med.items():
        extra = (1 / rate - 1 / base) * 1e6
        table.add_row(
            mode,
            f"{rate:,.0f}",
            f"{spans['ratios'][mode]:.3f}",
            f"{extra:.1f}" if mode != "off" else "",
        )
    console.print(table)
    console.print(f"spans dropped during the run: {spans['dropped']}")

    rows = bench_redaction(2_000 if args.quick else 10_000)
    table = Table(
        title=f"redaction per call, µs (median of {REDACTION_ROUNDS} rounds, the three in turns)"
    )
    for col in (
        "arguments",
        "json.dumps",
        "redact_json_text",
        "x dumps",
        "detect-secrets scan_line",
    ):
        table.add_column(col, justify="right" if col != "arguments" else "left")
    for name, dumps, ours, ratio, ds in rows:
        table.add_row(name, f"{dumps:.1f}", f"{ours:.1f}", f"{ratio:.1f}", f"{ds:.0f}")
    console.print(table)
    console.print(f"load average at the end: {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
