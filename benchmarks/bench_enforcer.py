"""Enforcer benchmark: in-process decisions, gRPC Check next to a raw gRPC echo, spans on/off.

Not a test: it prints figures, each next to a baseline measured in the same run, so the
ratios hold on any machine even when the absolute numbers do not.

    python benchmarks/bench_enforcer.py            # full run (about a minute)
    python benchmarks/bench_enforcer.py --quick    # smaller samples

1. ``decide`` latency, timed call by call, for the seed policy and for the 50-tool policy
   (examples/policies/fifty_tools.yaml) on a mixed workload. Baseline: a plain-Python
   floor timed the same way on the same requests, in turns with ``decide`` round by round
   (one Python call doing a dict lookup keyed by (server, tool) and building a tuple, the
   least any in-process decision can cost). Each policy is also run with its limits
   removed (same rules, no counters, in the same rounds), which gives the limits' share
   of the p50.
2. gRPC Check latency (one caller, sequential) and throughput (several caller threads)
   next to an echo service on the same gRPC stack returning a message of the same size.
   Servers run in their own processes so that the client does not share their GIL; the
   echo and Check samples are interleaved in rounds so that load from elsewhere hits both.
3. Check+Report throughput with one span per call exported (to a discarding exporter
   behind the real BatchSpanProcessor) against the same with telemetry off.

Every verdict is on the median of interleaved rounds; the best round is printed beside
it. The load average is printed at the start and at the end of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import grpc  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from callward.enforcer.engine import InMemoryLimitState, Request, decide  # noqa: E402
from callward.enforcer.policy import (  # noqa: E402
    CompiledPolicy,
    compile_document,
    load_policy,
    parse_text,
)
from callward.enforcer.server import (  # noqa: E402
    SERVER_OPTIONS,
    SERVICE_NAME,
    EnforcerConfig,
    EnforcerServer,
    EnforcerService,
)
from callward.enforcer.telemetry import CallRecorder  # noqa: E402
from callward.proto.callward.v1 import enforcer_pb2 as pb  # noqa: E402
from callward.proto.callward.v1 import enforcer_pb2_grpc as pb_grpc  # noqa: E402

SEED = REPO / "examples" / "policies" / "seed.json"
FIFTY = REPO / "examples" / "policies" / "fifty_tools.yaml"
T0 = 1_800_000_000.0
ECHO_METHOD = "/bench.Echo/Echo"
CHECK_METHOD = f"/{SERVICE_NAME}/Check"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

console = Console(highlight=False, width=130)

# A day of a team's agents, condensed: (server, tool, arguments).
FIFTY_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("filesystem", "read_file", {"path": "/workspace/src/app.py"}),
    ("filesystem", "read_file", {"path": "/etc/passwd"}),
    ("filesystem", "write_file", {"path": "/workspace/notes.md", "content": "todo"}),
    ("filesystem", "write_file", {"path": "/workspace/.env", "content": "KEY=1"}),
    ("filesystem", "list_directory", {"path": "/workspace"}),
    ("filesystem", "delete_file", {"path": "/workspace/tmp.txt"}),
    ("github", "create_issue", {"repo": "acme/api", "title": "flaky test"}),
    ("github", "create_issue", {"repo": "other/repo", "title": "spam"}),
    ("github", "create_pull_request", {"base": "main", "draft": True, "title": "fix"}),
    ("github", "merge_pull_request", {"number": 42}),
    ("github", "push_files", {"branch": "feature/x", "files": [{"path": "a.py"}]}),
    ("github", "get_file_contents", {"repo": "acme/api", "path": "README.md"}),
    ("github", "list_branches", {"repo": "acme/web"}),
    ("github", "add_issue_comment", {"issue": 7, "body": "looks good"}),
    ("slack", "post_message", {"channel": "#eng-builds", "text": "deploy finished"}),
    ("slack", "post_message", {"channel": "#eng-builds", "text": "the password is hunter2"}),
    ("slack", "get_channel_history", {"channel": "#ops-alerts", "limit": 50}),
    ("stripe", "create_charge", {"amount": 2500, "currency": "usd", "customer": "cus_123"}),
    ("stripe", "create_charge", {"amount": 250000, "currency": "usd", "customer": "cus_123"}),
    ("stripe", "create_charge", {"amount": 900, "currency": "jpy", "customer": "cus_9"}),
    ("stripe", "create_refund", {"amount": 1200, "reason": "duplicate"}),
    ("stripe", "list_customers", {"limit": 10}),
    ("postgres", "query", {"sql": "SELECT id, total FROM orders ORDER BY id DESC LIMIT 20"}),
    ("postgres", "query", {"sql": "select 1; drop table orders"}),
    ("postgres", "describe_table", {"table": "orders"}),
    ("", "run_python_file", {"path": "/workspace/jobs/report.py"}),
    ("python", "run_python_code", {"code": "print(sum(range(10)))"}),
    ("python", "run_python_code", {"code": "import subprocess; subprocess.run(['id'])"}),
    ("shell", "execute_command", {"command": "git status", "timeout": 30}),
    ("shell", "execute_command", {"command": "sudo rm -rf /", "timeout": 30}),
    ("fetch", "fetch", {"url": "https://docs.python.org/3/library/json.html"}),
    ("fetch", "fetch", {"url": "http://169.254.169.254/latest/meta-data/"}),
    ("brave", "web_search", {"query": "model context protocol gateway"}),
    ("jira", "create_issue", {"project": "OPS", "summary": "rotate keys"}),
    ("gmail", "send_email", {"to": "bob@acme.com", "attachments": [{"size": 2048}]}),
    ("gmail", "send_email", {"to": "someone@example.org", "subject": "hello"}),
    ("kubernetes", "get_pods", {"namespace": "default"}),
    ("kubernetes", "delete_pod", {"namespace": "prod", "name": "api-7d9"}),
    ("aws", "terminate_instances", {"ids": ["i-0abc"]}),
    ("internal", "reset_admin", {}),
    ("unknown", "do_anything", {"x": 1}),
]


# In-process p50 targets (µs) and the gRPC ones, each judged on the median round.
DECIDE_P50_TARGET_US = {"seed": 1.0, "fifty_tools": 2.0}
CHECK_OVER_ECHO_TARGET = 1.15
SPANS_ON_OVER_OFF_TARGET = 0.90

# --------------------------------------------------------------------------- statistics


def pct(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def summary(samples_ns: list[int]) -> tuple[float, float]:
    s = sorted(samples_ns)
    return pct(s, 0.50), pct(s, 0.99)


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


def without_limits(path: Path) -> CompiledPolicy:
    """The policy at ``path`` with every limit removed: the same rules, no counters."""
    doc, _ = parse_text(path.read_text(encoding="utf-8"), str(path))
    doc.get("all_tools", {}).pop("limits", None)
    for entry in doc.get("tools", {}).values():
        entry.pop("limits", None)
    return compile_document(doc, file=f"{path} (limits removed)")


# --------------------------------------------------------------------------- 1. in process


def seed_requests(n: int) -> list[Request]:
    # run_python_file from many grants, ten calls each: every call is allowed and reserves.
    return [
        Request(
            tool="run_python_file", arguments={"path": "/workspace/job.py"}, grant=f"g{i // 10}"
        )
        for i in range(n)
    ]


def fifty_requests(n: int) -> list[Request]:
    out = []
    for i in range(n):
        server, tool, args = FIFTY_CALLS[i % len(FIFTY_CALLS)]
        out.append(
            Request(
                tool=tool,
                arguments=args,
                server=server,
                grant=f"g{i % 20}",
                agent_id=f"agent-{i % 50}",
                session_id=f"s-{i % 400}",
                call_id=f"c{i}",
            )
        )
    return out


def floor_decide(table: dict[tuple[str, str], str], req: Request, state: Any, now: float) -> Any:
    """The floor: one call, one dict lookup keyed by (server, tool), one tuple built."""
    return (table.get((req.server, req.tool)), now)


def time_calls(
    decide_fn: Callable[[Any, Request, Any, float], Any], policy: Any, requests: list[Request]
) -> tuple[list[int], dict[str, int]]:
    """Each call timed on its own with a fresh limit state; the same loop for floor and decide."""
    state = InMemoryLimitState()
    clock = time.perf_counter_ns
    samples: list[int] = []
    kinds: dict[str, int] = {}
    for i, req in enumerate(requests):
        now = T0 + i * 0.001  # 1000 calls a second: windows roll over now and then
        t = clock()
        d = decide_fn(policy, req, state, now)
        samples.append(clock() - t)
        kind = getattr(d, "decision", "floor")
        kinds[kind] = kinds.get(kind, 0) + 1
    return samples, kinds


def in_process(calls: int, rounds: int, advance: Callable[[], None]) -> dict[str, Any]:
    """Floor and ``decide`` in turns, per policy per round; the median round decides.

    Each policy runs twice per round, as written and with its limits removed, so that
    the limits' share of the p50 is measured under the same load as the p50 itself.
    """
    per_round = max(1, calls // rounds)
    seed_reqs, fifty_reqs = seed_requests(per_round), fifty_requests(per_round)
    workloads = [
        ("seed", load_policy(SEED), seed_reqs),
        ("seed, no limits", without_limits(SEED), seed_reqs),
        ("fifty_tools", load_policy(FIFTY), fifty_reqs),
        ("fifty_tools, no limits", without_limits(FIFTY), fifty_reqs),
    ]
    table = {(r.server, r.tool): r.tool for _, _, reqs in workloads for r in reqs}
    for _, policy, reqs in workloads:  # warm-up: caches, specialised bytecode
        time_calls(floor_decide, table, reqs[: per_round // 10])
        time_calls(decide, policy, reqs[: per_round // 10])
    out: dict[str, Any] = {}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in workloads}
    kinds: dict[str, dict[str, int]] = {}
    for _ in range(rounds):
        for name, policy, reqs in workloads:
            floor_p50 = summary(time_calls(floor_decide, table, reqs)[0])[0]
            samples, kinds[name] = time_calls(decide, policy, reqs)
            p50, p99 = summary(samples)
            runs[name].append((p50, p99, floor_p50))
        advance()
    for name, rows in runs.items():
        # Median round by ratio to its own floor: load hits floor and decide alike.
        ordered = sorted(rows, key=lambda r: r[0] / r[2])
        p50, p99, floor_p50 = ordered[len(ordered) // 2]
        out[name] = {
            "p50": p50,
            "p99": p99,
            "floor_p50": floor_p50,
            "ratio": p50 / floor_p50,
            "ratios": [r[0] / r[2] for r in rows],
            "best_p50": min(r[0] for r in rows),
            "kinds": kinds[name],
        }
    for name in ("seed", "fifty_tools"):
        # Per round: the share of decide's p50 that goes away with the limits.
        shares = [
            (full[0] - bare[0]) / full[0]
            for full, bare in zip(runs[name], runs[f"{name}, no limits"], strict=True)
        ]
        out[name]["limit_shares"] = shares
        out[name]["limit_share"] = statistics.median(shares)
    return out


def timer_cost(n: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t = clock()
        samples.append(clock() - t)
    return samples


def report_in_process(
    results: dict[str, Any], timer: tuple[float, float], calls: int, rounds: int
) -> None:
    t = Table(
        title=f"in-process decide, {rounds} rounds of {calls // rounds} calls per policy, each "
        "call timed; floor and decide in turns; median round (by ratio to its floor)"
    )
    for col in (
        "policy",
        "p50 µs",
        "best-round p50 µs",
        "p99 µs",
        "floor p50 µs",
        "p50 / floor",
        "target p50 (median round)",
        "allow/deny/appr.",
    ):
        t.add_column(col)
    t.add_row(
        "(timer alone)", f"{timer[0] / 1000:.2f}", "", f"{timer[1] / 1000:.2f}", "", "", "", ""
    )
    for name in ("seed", "seed, no limits", "fifty_tools", "fifty_tools, no limits"):
        r = results[name]
        target = DECIDE_P50_TARGET_US.get(name)
        verdict = ""
        if target is not None:
            verdict = f"≤ {target:g} µs ({'met' if r['p50'] / 1000 <= target else 'MISSED'})"
        t.add_row(
            name,
            f"{r['p50'] / 1000:.2f}",
            f"{r['best_p50'] / 1000:.2f}",
            f"{r['p99'] / 1000:.2f}",
            f"{r['floor_p50'] / 1000:.2f}",
            f"{r['ratio']:.2f}",
            verdict,
            "/".join(str(r["kinds"].get(k, 0)) for k in ("allow", "deny", "require_approval")),
        )
    console.print(t)
    for name in ("seed", "seed, no limits", "fifty_tools", "fifty_tools, no limits"):
        r = results[name]
        console.print(
            f"{name}: rounds' p50 / floor: " + ", ".join(f"{x:.2f}" for x in r["ratios"]),
            markup=False,
        )
    for name in ("seed", "fifty_tools"):
        r = results[name]
        console.print(
            f"{name}: limits' share of p50, median of rounds "
            f"{r['limit_share']:.0%} (rounds: "
            + ", ".join(f"{x:.0%}" for x in r["limit_shares"])
            + ")",
            markup=False,
        )


# --------------------------------------------------------------------------- servers


class DiscardingExporter(SpanExporter):
    """Takes spans and drops them: the cost measured is building and batching spans."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Any) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def serve(kind: str) -> None:
    """Child process: run one server, print its port, stop when stdin closes.

    The echo server is built like the enforcer's (same options, same worker pool), so the
    two differ only in what the handler does.
    """
    if kind == "echo":
        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(lambda req, ctx: req)}
        )
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="enforcer"),
            options=SERVER_OPTIONS,
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        print(port, flush=True)
        sys.stdin.read()
        server.stop(0)
        return
    recorder = None
    if kind == "enforcer-spans":
        recorder = CallRecorder(exporter=DiscardingExporter())
    service = EnforcerService(
        load_policy(SEED),
        config=EnforcerConfig(listen="127.0.0.1:0", max_workers=8),
        recorder=recorder,
    )
    enforcer = EnforcerServer(service)
    print(enforcer.start(), flush=True)
    sys.stdin.read()
    enforcer.stop(0)
    if recorder is not None:
        recorder.shutdown()


class Child:
    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)

    def close(self) -> None:
        self.channel.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- 2./3. gRPC


class Calls:
    """Numbered requests, so that every Check has its own call_id and the grant rotates."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.n = 0
        self.lock = threading.Lock()

    def next(self) -> pb.CheckRequest:
        with self.lock:
            self.n += 1
            i = self.n
        return pb.CheckRequest(
            call_id=f"{self.prefix}-{i}",
            agent_id="agent-1",
            session_id="session-1",
            grant=f"g{i // 10}",
            tool="run_python_file",
            arguments_json='{"path": "/workspace/jobs/report.py", "args": ["--since", "7d"]}',
            traceparent=TRACEPARENT,
        )


def sequential(call: Callable[[], Any], n: int) -> list[int]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t = clock()
        call()
        out.append(clock() - t)
    return out


def grpc_latency(
    echo: Child, check: Child, numbering: Calls, rounds: int, per_round: int
) -> dict[str, Any]:
    """Echo and Check timed call by call, alternating within each round.

    The client code is the same for both: a CheckRequest serialised before the clock
    starts, sent as bytes, the answer taken as bytes; so the difference between the two
    is the server's handling (decode, decide, pending map, encode), not the client's.
    Echo and Check alternate call by call (which goes first flips every call), so that
    load from elsewhere falls on both alike; each round gives one p50 ratio and the
    figure is the median round's ratio. ``numbering`` is the one the other workloads on
    ``check`` use, so that no grant is reused and every Check takes the same allowed path.
    """
    echo_call = echo.channel.unary_unary(ECHO_METHOD)
    check_call = check.channel.unary_unary(CHECK_METHOD)
    clock = time.perf_counter_ns
    ratios: list[float] = []
    lat_echo: list[int] = []
    lat_check: list[int] = []
    for _ in range(rounds):
        payloads = [numbering.next().SerializeToString() for _ in range(per_round)]
        e: list[int] = []
        c: list[int] = []
        for i, payload in enumerate(payloads):
            if i % 2:
                t0 = clock()
                echo_call(payload, timeout=10)
                t1 = clock()
                check_call(payload, timeout=10)
                t2 = clock()
                e.append(t1 - t0)
                c.append(t2 - t1)
            else:
                t0 = clock()
                check_call(payload, timeout=10)
                t1 = clock()
                echo_call(payload, timeout=10)
                t2 = clock()
                c.append(t1 - t0)
                e.append(t2 - t1)
        ratios.append(statistics.median(c) / statistics.median(e))
        lat_echo += e
        lat_check += c
    return {
        "echo_lat": summary(lat_echo),
        "check_lat": summary(lat_check),
        "ratios": ratios,
        "ratio": statistics.median(ratios),
        "best_ratio": min(ratios),
        "payload": len(payloads[0]),
    }


def throughput(call: Callable[[], Any], n_per_thread: int, threads: int) -> float:
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(n_per_thread):
                call()
        except BaseException as e:  # a failed call must fail the run, not inflate its rate
            failures.append(e)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    t = time.perf_counter()
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    if failures:
        raise RuntimeError(f"{len(failures)} caller thread(s) failed") from failures[0]
    return n_per_thread * threads / (time.perf_counter() - t)


def run(calls: int, rounds: int, threads: int) -> None:
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    console.print(
        f"[bold]callward enforcer benchmark[/bold] {started}, python {sys.version.split()[0]}, grpcio {grpc.__version__}"
    )
    console.print(f"load average at the start: {load_average()}", markup=False)
    results: dict[str, Any] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("in-process decide", total=2 + rounds * 4)
        # 1. in process
        timer = summary(timer_cost(calls))
        results.update(in_process(calls, rounds, lambda: progress.advance(task)))
        progress.advance(task)

        # 2. gRPC latency, interleaved rounds
        progress.update(task, description="starting servers")
        echo, plain, spans = Child("echo"), Child("enforcer"), Child("enforcer-spans")
        try:
            echo_call = echo.channel.unary_unary(ECHO_METHOD)
            check_plain = pb_grpc.EnforcerStub(plain.channel)
            check_spans = pb_grpc.EnforcerStub(spans.channel)
            plain_calls, spans_calls = Calls("p"), Calls("s")
            payload = plain_calls.next().SerializeToString()

            def do_echo() -> None:
                echo_call(payload, timeout=10)

            def do_check() -> None:
                check_plain.Check(plain_calls.next(), timeout=10)

            def pair(stub: Any, numbering: Calls) -> Callable[[], None]:
                def go() -> None:
                    req = numbering.next()
                    stub.Check(req, timeout=10)
                    stub.Report(
                        pb.ReportRequest(call_id=req.call_id, outcome="ok", duration_ms=3.0),
                        timeout=10,
                    )

                return go

            pair_plain, pair_spans = pair(check_plain, plain_calls), pair(check_spans, spans_calls)
            for warm in (do_echo, do_check, pair_spans):
                sequential(warm, 300)
            progress.advance(task)
            progress.update(task, description="gRPC latency")
            results["grpc"] = grpc_latency(
                echo, plain, plain_calls, rounds, max(1, calls // (10 * rounds))
            )
            progress.advance(task, rounds)

            progress.update(task, description="gRPC throughput")
            tp: dict[str, list[float]] = {"echo": [], "check": [], "pair_off": [], "pair_on": []}
            n_thread = max(1, calls // (40 * rounds))
            for _ in range(rounds):
                tp["echo"].append(throughput(do_echo, n_thread, threads))
                tp["check"].append(throughput(do_check, n_thread, threads))
                progress.advance(task)
                tp["pair_off"].append(throughput(pair_plain, n_thread, threads))
                tp["pair_on"].append(throughput(pair_spans, n_thread, threads))
                progress.advance(task)
            # The workloads of one round run back to back, so each round gives one ratio
            # per pair under the same load; the verdict is on the median round's ratio.
            results["tp"] = tp
            results["tp_ratios"] = {
                "check_over_echo": [c / e for c, e in zip(tp["check"], tp["echo"], strict=True)],
                "on_over_off": [
                    on / off for on, off in zip(tp["pair_on"], tp["pair_off"], strict=True)
                ],
            }
        finally:
            for child in (echo, plain, spans):
                child.close()

    report(results, timer, calls, rounds, threads)
    console.print(f"load average at the end: {load_average()}", markup=False)


def report(
    results: dict[str, Any], timer: tuple[float, float], calls: int, rounds: int, threads: int
) -> None:
    report_in_process(results, timer, calls, rounds)

    lat = results["grpc"]
    e50, e99 = lat["echo_lat"]
    c50, c99 = lat["check_lat"]
    ratio = lat["ratio"]
    g = Table(
        title=f"gRPC, one caller, {lat['payload']}-byte request, {rounds} rounds, "
        "echo and Check alternating call by call (p50 ratio: median of the rounds' ratios)"
    )
    for col in ("service", "p50 µs", "p99 µs", "p50 ratio to echo", "best round"):
        g.add_column(col)
    g.add_row("echo (baseline)", f"{e50 / 1000:.0f}", f"{e99 / 1000:.0f}", "1.00", "")
    met = "met" if ratio <= CHECK_OVER_ECHO_TARGET else "MISSED"
    g.add_row(
        "Enforcer.Check",
        f"{c50 / 1000:.0f}",
        f"{c99 / 1000:.0f}",
        f"{ratio:.3f} (target ≤ {CHECK_OVER_ECHO_TARGET:g}: {met})",
        f"{lat['best_ratio']:.3f}",
    )
    console.print(g)
    console.print(
        "rounds' p50 ratios: " + ", ".join(f"{r:.3f}" for r in lat["ratios"]), markup=False
    )

    tp, tpr = results["tp"], results["tp_ratios"]
    check_ratio = statistics.median(tpr["check_over_echo"])
    on_off = statistics.median(tpr["on_over_off"])
    h = Table(
        title=f"gRPC throughput, {threads} caller threads, {rounds} interleaved rounds "
        "(ratio: median of the rounds' ratios; best round beside)"
    )
    for col in ("workload", "calls/s, median", "calls/s, best", "ratio", "best-round ratio"):
        h.add_column(col)

    def rate(k: str) -> tuple[str, str]:
        return f"{statistics.median(tp[k]):.0f}", f"{max(tp[k]):.0f}"

    h.add_row("echo (baseline)", *rate("echo"), "1.00", "")
    h.add_row(
        "Check",
        *rate("check"),
        f"{check_ratio:.2f} of echo",
        f"{max(tpr['check_over_echo']):.2f}",
    )
    h.add_row("Check+Report, telemetry off (baseline)", *rate("pair_off"), "1.00", "")
    met = "met" if on_off >= SPANS_ON_OVER_OFF_TARGET else "MISSED"
    h.add_row(
        "Check+Report, one span per call exported",
        *rate("pair_on"),
        f"{on_off:.2f} of off (target ≥ {SPANS_ON_OVER_OFF_TARGET:g}: {met})",
        f"{max(tpr['on_over_off']):.2f}",
    )
    console.print(h)
    for key, label in (("check_over_echo", "Check / echo"), ("on_over_off", "spans on / off")):
        console.print(
            f"rounds' throughput ratios, {label}: " + ", ".join(f"{r:.2f}" for r in tpr[key]),
            markup=False,
        )
    console.print(
        json.dumps(
            {
                "seed_p50_us": round(results["seed"]["p50"] / 1000, 2),
                "seed_p50_over_floor": round(results["seed"]["ratio"], 2),
                "seed_limit_share": round(results["seed"]["limit_share"], 2),
                "fifty_p50_us": round(results["fifty_tools"]["p50"] / 1000, 2),
                "fifty_p50_over_floor": round(results["fifty_tools"]["ratio"], 2),
                "fifty_limit_share": round(results["fifty_tools"]["limit_share"], 2),
                "check_over_echo_p50": round(ratio, 3),
                "check_over_echo_throughput": round(check_ratio, 3),
                "spans_on_over_off_throughput": round(on_off, 3),
            }
        ),
        markup=False,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="Enforcer benchmark (not a test).")
    parser.add_argument("--calls", type=int, default=100_000, help="in-process calls per policy")
    parser.add_argument("--rounds", type=int, default=8, help="rounds (interleaved for gRPC)")
    parser.add_argument("--threads", type=int, default=4, help="caller threads for throughput")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls")
    parser.add_argument(
        "--serve", choices=("echo", "enforcer", "enforcer-spans"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    run(args.calls // 10 if args.quick else args.calls, args.rounds, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
