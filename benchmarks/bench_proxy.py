"""Latency the MCP proxy adds to one tools/call, against calling the same server directly.

All paths are measured in one run, interleaved round by round so that load on the
machine hits them alike. The server is a trivial stdio MCP server (this script with
``--serve-echo``), so what differs between the paths is only the proxy:

* ``direct``: SDK client -> server (stdio). The baseline.
* ``relay``: SDK client -> relay in this process -> server: the proxy's core
  (decision, listing filter, id bookkeeping) with the in-process engine, spans off.
* ``relay+spans``: the same, recording every call's span (batch processor, in-memory
  exporter) as an audited deployment does.
* ``proxy process``: SDK client -> ``python -m callward.enforcer.proxy`` (stdio) -> server:
  what an MCP client configured with callward sees, one more process and pipe hop.
* ``proxy process + enforcer``: the same with ``--enforcer``, deciding through a real
  ``callward enforcer`` over gRPC on loopback.

The tables pool every call of a path; the verdict (≤ 1 ms added at p50) is on the median
of the rounds' added p50s, each round's path and baseline measured back to back, with the
best round printed beside. The load average is printed at the start and at the end.

Run: ``.venv/bin/python benchmarks/bench_proxy.py [--calls 2000]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
ADDED_P50_TARGET_MS = 1.0  # issue 4: the relay adds at most 1 ms at p50
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

POLICY = {
    "version": "1",
    "default": "deny",
    "tools": {
        "echo": {
            "deny_if": [{"conditions": [{"path": "args.text", "op": "regex", "value": "rm -rf"}]}],
            "limits": [
                {"counter": "echo", "window": "minute", "max": 100_000_000, "scope": "grant"}
            ],
        }
    },
}


def make_echo_server() -> Any:
    """The benchmark's upstream: one tool that answers with its argument."""
    import mcp.types as types
    from mcp.server.lowlevel import Server

    server: Server[Any, Any] = Server("bench-echo")

    @server.list_tools()  # type: ignore[no-untyped-call,untyped-decorator]
    async def list_tools() -> list[types.Tool]:
        return [types.Tool(name="echo", inputSchema={"type": "object"})]

    @server.call_tool(validate_input=False)  # type: ignore[untyped-decorator]
    async def call_tool(name: str, arguments: dict[str, Any]) -> list[types.TextContent]:
        return [types.TextContent(type="text", text=str(arguments.get("text", "")))]

    return server


def serve_echo() -> None:
    from mcp.server.stdio import stdio_server

    server = make_echo_server()

    async def main() -> None:
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())

    anyio.run(main)


@contextlib.asynccontextmanager
async def _in_memory_server() -> AsyncIterator[Any]:
    """(read, write) streams of an echo server running in this process."""
    from mcp.shared.memory import create_client_server_memory_streams

    server = make_echo_server()
    async with (
        create_client_server_memory_streams() as (client_streams, (sr, sw)),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(lambda: server.run(sr, sw, server.create_initialization_options()))
        yield client_streams
        tg.cancel_scope.cancel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echo_command() -> tuple[str, list[str]]:
    return sys.executable, [str(Path(__file__).resolve()), "--serve-echo"]


@contextlib.asynccontextmanager
async def _stdio_session(command: str, args: list[str]) -> AsyncIterator[Any]:
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    params = StdioServerParameters(command=command, args=args, cwd=str(REPO))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def _memory_session() -> AsyncIterator[Any]:
    from mcp.client.session import ClientSession

    async with _in_memory_server() as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@contextlib.asynccontextmanager
async def _relay_session(spans: bool, in_memory: bool = False) -> AsyncIterator[Any]:
    from mcp.client.session import ClientSession
    from mcp.shared.memory import create_client_server_memory_streams
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from callward.enforcer.policy import compile_document
    from callward.enforcer.proxy.gate import Gate, InProcessChecker
    from callward.enforcer.proxy.relay import Relay
    from callward.enforcer.proxy.stdio import stdio_identity
    from callward.enforcer.proxy.upstream import command_upstream
    from callward.enforcer.telemetry import CallRecorder

    policy = compile_document(POLICY)
    recorder = CallRecorder("callward-proxy", InMemorySpanExporter()) if spans else None
    gate = Gate(InProcessChecker(policy), policy=policy, recorder=recorder)
    cmd, args = _echo_command()
    connector: Any = _in_memory_server if in_memory else command_upstream(cmd, args)
    relay = Relay(gate, connector, stdio_identity("bench"))
    async with (
        create_client_server_memory_streams() as ((cr, cw), (sr, sw)),
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(relay.run, sr, sw)
        async with ClientSession(cr, cw) as session:
            await session.initialize()
            yield session
        tg.cancel_scope.cancel()
    if recorder is not None:
        recorder.shutdown()


async def _one_round(
    session: Any, n: int, out: list[float], cpu: list[float] | None = None
) -> None:
    c0 = time.process_time()
    for i in range(n):
        t0 = time.perf_counter()
        result = await session.call_tool("echo", {"text": f"call {i}"})
        out.append((time.perf_counter() - t0) * 1000.0)
        if result.isError:
            raise RuntimeError(f"benchmark call refused: {result.content}")
    if cpu is not None:
        cpu.append((time.process_time() - c0) * 1000.0 / n)


def _pct(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    calls: int, rounds: int, with_enforcer: bool, console: Console
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    policy_file = tmp / "policy.json"
    policy_file.write_text(json.dumps(POLICY))
    cmd, echo_args = _echo_command()
    proxy_args = ["-m", "callward.enforcer.proxy", "--policy", str(policy_file), "--grant", "bench"]
    enforcer_proc: subprocess.Popen[bytes] | None = None
    paths: dict[str, Any] = {}
    results: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        paths["in-memory: direct"] = await stack.enter_async_context(_memory_session())
        paths["in-memory: relay+spans"] = await stack.enter_async_context(
            _relay_session(spans=True, in_memory=True)
        )
        paths["direct"] = await stack.enter_async_context(_stdio_session(cmd, echo_args))
        paths["relay"] = await stack.enter_async_context(_relay_session(spans=False))
        paths["relay+spans"] = await stack.enter_async_context(_relay_session(spans=True))
        paths["proxy process"] = await stack.enter_async_context(
            _stdio_session(sys.executable, [*proxy_args, "--", cmd, *echo_args])
        )
        if with_enforcer:
            port = _free_port()
            enforcer_proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "callward.cli",
                    "enforcer",
                    "--policy",
                    str(policy_file),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--log-level",
                    "warning",
                ],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
            )
            stack.callback(enforcer_proc.terminate)
            deadline = time.monotonic() + 90
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if enforcer_proc.poll() is not None or time.monotonic() > deadline:
                        raise SystemExit("callward enforcer did not start") from None
                    await anyio.sleep(0.2)
            paths["proxy process + enforcer"] = await stack.enter_async_context(
                _stdio_session(
                    sys.executable,
                    [
                        *proxy_args,
                        "--enforcer",
                        f"127.0.0.1:{port}",
                        "--enforcer-timeout",
                        "1",
                        "--",
                        cmd,
                        *echo_args,
                    ],
                )
            )
        for name, session in paths.items():  # warm up every path first
            await _one_round(session, max(50, calls // 20), [])
            results[name] = []
            cpu[name] = []
        per_round = max(1, calls // rounds)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(
                "tools/call round trips", total=per_round * rounds * len(paths)
            )
            for _ in range(rounds):
                for name, session in paths.items():
                    await _one_round(session, per_round, results[name], cpu[name])
                    progress.advance(task, per_round)
    return results, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per path")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    parser.add_argument("--no-enforcer", action="store_true", help="skip the gRPC path")
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve_echo:
        serve_echo()
        return
    console = Console(width=120)
    console.print(f"load average at the start: {_load_average()}")
    results, cpu = anyio.run(run, opts.calls, opts.rounds, not opts.no_enforcer, console)
    _report(
        console,
        results,
        cpu,
        "in-memory: direct",
        [k for k in results if k.startswith("in-memory")],
    )
    _report(console, results, cpu, "direct", [k for k in results if not k.startswith("in-memory")])
    console.print(
        "cpu ms/call: CPU time of this process (the client, plus the relay and, in memory, the "
        "server) per call; on the proxy-process paths the proxy's CPU is in its own process."
    )
    per_round = max(1, opts.calls // opts.rounds)
    for base, path in (("in-memory: direct", "in-memory: relay+spans"), ("direct", "relay+spans")):
        added = _rounds_added(results[path], results[base], per_round)
        cpu_added = _rounds_added(cpu[path], cpu[base], 1)  # one CPU figure per round
        median_added = statistics.median(added)
        verdict = "meets" if median_added <= ADDED_P50_TARGET_MS else "misses"
        console.print(
            f"{path} vs {base}: {median_added:+.3f} ms at p50, median of {len(added)} rounds "
            f"(best round {min(added):+.3f}; rounds "
            + ", ".join(f"{a:+.2f}" for a in added)
            + f"), {statistics.median(cpu_added):+.3f} CPU ms per call "
            f"({verdict} the {ADDED_P50_TARGET_MS:g} ms target)"
        )
    console.print(f"load average at the end: {_load_average()}")


def _load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


def _rounds_added(path: list[float], base: list[float], per_round: int) -> list[float]:
    """Per interleaved round: the path's median minus the baseline's, same round."""
    rounds = len(base) // per_round
    return [
        statistics.median(path[r * per_round : (r + 1) * per_round])
        - statistics.median(base[r * per_round : (r + 1) * per_round])
        for r in range(rounds)
    ]


def _report(
    console: Console,
    results: dict[str, list[float]],
    cpu: dict[str, list[float]],
    base: str,
    names: list[str],
) -> None:
    base50 = statistics.median(results[base])
    base99 = _pct(results[base], 0.99)
    base_cpu = statistics.median(cpu[base])
    table = Table(title=f"baseline {base!r}: {len(results[base])} calls per path")
    cols = ("path", "p50 ms", "p99 ms", "+p50 ms", "p50 ×", "p99 ×", "cpu ms/call", "+cpu ms")
    for col in cols:
        table.add_column(col, justify="left" if col == "path" else "right")
    for name in names:
        xs = results[name]
        p50, p99, c = statistics.median(xs), _pct(xs, 0.99), statistics.median(cpu[name])
        base_row = name == base
        table.add_row(
            name,
            f"{p50:.3f}",
            f"{p99:.3f}",
            "-" if base_row else f"{p50 - base50:+.3f}",
            f"{p50 / base50:.2f}",
            f"{p99 / base99:.2f}",
            f"{c:.3f}",
            "-" if base_row else f"{c - base_cpu:+.3f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
