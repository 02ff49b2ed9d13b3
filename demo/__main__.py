"""``make demo``: the whole pipeline on a local store, then the dashboard.

1. a labeled multi-agent dataset is generated into the store;
2. the collector starts on that store (OTLP/gRPC on loopback);
3. the enforcer starts with the gateway policy and a short scripted session is checked
   over gRPC, each decision printed;
4. three scripted agents (real MCP SDK clients) call two real MCP servers from PyPI
   through ``callward proxy``: a healthy one, a runaway loop and an exfiltration attempt;
5. the detectors run over the store, and a stricter candidate policy is replayed;
6. the dashboard starts and its URL is printed. Ctrl-C stops every process started here.

``--no-dashboard`` stops after step 5 (used by the end-to-end test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table

from callward.bundled import example_policy
from callward.demo.agents import SCRIPTS, Outcome, run_agent
from callward.demo.processes import Supervisor, callward, free_port, wait_for_port
from callward.demo.servers import ensure_server

POLICY = example_policy("gateway.yaml")
CANDIDATE = example_policy("gateway_strict.yaml")
WIDTH = max(shutil.get_terminal_size((160, 40)).columns, 120)
console = Console(highlight=False, width=WIDTH)

COLORS = {"allowed": "green", "denied": "red", "approval": "yellow", "error": "magenta"}


def step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a callward command to completion, its Rich output as wide as ours."""
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    return subprocess.run(argv, text=True, capture_output=True, env=env, check=False)


def grpc_session(port: int) -> None:
    """A short scripted session against the enforcer over gRPC, printing each decision."""
    from callward.enforcer.client import EnforcerClient
    from callward.enforcer.engine import Request

    calls = [("run_python_file", {"file_name": "etl.py"})] * 12 + [
        ("pip_install_package", {"package_name": "left-pad"}),
        ("run_python_code", {"code": "print(42)"}),
        ("get_current_time", {"timezone": "UTC"}),
    ]
    table = Table("#", "tool", "decision", "rule", "message", title="gRPC Check, agent grpc-client")
    with EnforcerClient(f"127.0.0.1:{port}", timeout=2.0) as client:
        for i, (tool, args) in enumerate(calls, 1):
            call_id = f"grpc-{uuid.uuid4().hex[:12]}"
            req = Request(
                tool,
                args,
                grant="batch",
                agent_id="grpc-client",
                session_id="grpc-demo",
                call_id=call_id,
            )
            d = client.check(req)
            if d.allowed:
                client.report(call_id, "ok", duration_ms=3.0, result_bytes=64)
            color = {"allow": "green", "deny": "red"}.get(d.decision, "yellow")
            table.add_row(str(i), tool, f"[{color}]{d.decision}[/]", d.rule, d.message)
    console.print(table)


def main() -> int:
    ap = argparse.ArgumentParser(prog="make demo")
    ap.add_argument("--data", type=Path, default=Path("demo-data"))
    ap.add_argument("--port", type=int, default=8501, help="dashboard port")
    ap.add_argument("--no-dashboard", action="store_true")
    opts = ap.parse_args()

    data: Path = opts.data
    # The generated history covers the three days before today; the live traffic is today's.
    today = datetime.now(UTC).date()
    live = f"{today.isoformat()}T00:00:00Z"
    store = data / "store"
    if data.exists():
        shutil.rmtree(data)
    store.mkdir(parents=True)
    sup = Supervisor(data / "logs")
    try:
        step(1, "Generating a labeled multi-agent dataset into the store")
        gen = run(
            callward(
                "datasets",
                "generate",
                "--out",
                str(store),
                "--agents",
                "8",
                "--days",
                "3",
                "--seed",
                "7",
                "--start",
                (today - timedelta(days=3)).isoformat(),
            )
        )
        console.print(gen.stdout.strip()[-1500:] or gen.stderr.strip()[-1500:])
        if gen.returncode:
            raise SystemExit(f"dataset generation failed:\n{gen.stderr}")

        step(2, "Starting the collector (OTLP/gRPC -> spool -> Parquet + DuckDB)")
        cport = free_port()
        collector = sup.start(
            "collector",
            callward(
                "collector",
                "--data-dir",
                str(store),
                "--listen",
                f"127.0.0.1:{cport}",
                "--flush-interval",
                "1",
            ),
        )
        wait_for_port(cport, collector)
        otlp = f"http://127.0.0.1:{cport}"
        console.print(f"collector listening on 127.0.0.1:{cport}, store {store}")

        step(3, "Starting the enforcer and checking a scripted session over gRPC")
        eport = free_port()
        enforcer = sup.start(
            "enforcer",
            callward(
                "enforcer",
                "--policy",
                str(POLICY),
                "--listen",
                f"127.0.0.1:{eport}",
                "--otlp-endpoint",
                otlp,
            ),
        )
        wait_for_port(eport, enforcer)
        grpc_session(eport)

        step(4, "Three agents call real MCP servers through callward proxy")
        console.print("installing the MCP servers from PyPI (first run only)…")
        servers = {
            "python": [str(ensure_server("mcp-run-python-code"))],
            "time": [str(ensure_server("mcp-server-time")), "--local-timezone", "UTC"],
        }
        table = Table(
            "agent", "server", "tool", "verdict", "detail", title="tools/call through the proxy"
        )

        def show(o: Outcome) -> None:
            color = COLORS.get(o.verdict, "white")
            table.add_row(o.agent, o.server, o.tool, f"[{color}]{o.verdict}[/]", o.detail)

        async def agents() -> None:
            for agent, (grant, per_server) in SCRIPTS.items():
                for server, calls in per_server.items():
                    await run_agent(
                        agent,
                        server,
                        calls,
                        grant=grant,
                        policy=POLICY,
                        server_command=servers[server],
                        otlp_endpoint=otlp,
                        callward_argv=callward(),
                        on_outcome=show,
                        errlog=server_log,
                    )

        with open(data / "logs" / "mcp-servers.log", "w") as server_log:
            anyio.run(agents)
        console.print(table)

        # Let the spans reach the store: the proxies flushed at exit; the collector flushes every second.
        time.sleep(3)
        sup.stop_all()  # the collector flushes its spool into Parquet on SIGTERM

        step(5, "Detectors, and a replay of today's traffic under a stricter candidate policy")
        det = run(callward("detect", "--data", str(store)))
        console.print(det.stdout.strip()[-4000:] or det.stderr.strip())
        report = data / "replay.html"

        def replay(*extra: str) -> subprocess.CompletedProcess[str]:
            return run(
                callward(
                    "replay",
                    "--data",
                    str(store),
                    "--policy",
                    str(CANDIDATE),
                    "--since",
                    live,
                    *extra,
                )
            )

        rep = replay()
        console.print(rep.stdout.strip()[-4000:] or rep.stderr.strip())
        replay("--format", "html", "--out", str(report))
        js = replay("--format", "json")
        if js.returncode == 0:
            summary = json.loads(js.stdout)
            fidelity = summary["fidelity"]
            share = fidelity.get("share") if isinstance(fidelity, dict) else fidelity
            console.print(
                f"replay: {summary['total']} calls today, {summary['unchanged']} unchanged, "
                f"{summary['unknown']} unknown, fidelity {share}"
            )
        console.print(f"replay report: {report}")

        if opts.no_dashboard:
            return 0
        step(6, "Dashboard")
        dash = sup.start(
            "dashboard", callward("dashboard", "--data", str(store), "--port", str(opts.port))
        )
        wait_for_port(opts.port, dash, timeout=90)
        console.print(f"[bold green]dashboard: http://127.0.0.1:{opts.port}[/]  (Ctrl-C to stop)")
        while dash.poll() is None:
            time.sleep(0.5)
        return dash.returncode or 0
    except KeyboardInterrupt:
        console.print("\nstopping…")
        return 0
    finally:
        sup.stop_all()


if __name__ == "__main__":
    sys.exit(main())
