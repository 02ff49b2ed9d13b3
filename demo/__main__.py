"""``make demo``: the whole pipeline on a local store, then the dashboard.

1. a labeled multi-agent dataset is generated into the store;
2. the collector starts on that store (OTLP/gRPC on loopback);
3. the enforcer starts with the gateway policy and a short scripted session is checked
   over gRPC, each decision printed;
4. three scripted agents (real MCP SDK clients) call two real MCP servers from PyPI
   through ``callward proxy``: a healthy one, a runaway loop and an exfiltration attempt;
5. the detectors run over the store (a summary here, every finding in a file), and a
   stricter candidate policy is replayed over all recorded calls, the range the
   dashboard's Replay page also starts from;
6. the dashboard starts and its URL is printed. Ctrl-C stops every process started here.

Output is laid out for the terminal's width and fits in 80 columns. ``--no-dashboard``
stops after step 5 (used by the end-to-end test).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
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
# The terminal's width, 80 columns when it cannot be told (a pipe, a CI log).
WIDTH = shutil.get_terminal_size((80, 24)).columns
console = Console(highlight=False, width=WIDTH)
SEVERITIES = ("critical", "high", "medium", "low")
SEVERITY_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}

COLORS = {"allowed": "green", "denied": "red", "approval": "yellow", "error": "magenta"}


def step(n: int, text: str) -> None:
    console.rule(f"[bold]{n}. {text}")


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run a callward command to completion, its Rich output as wide as ours."""
    env = {**os.environ, "COLUMNS": str(WIDTH)}
    return subprocess.run(argv, text=True, capture_output=True, env=env, check=False)


def compact_table(title: str) -> Table:
    """A table without borders, two spaces between columns, so the steps fit in 80 columns."""
    return Table(title=title, title_justify="left", box=None, pad_edge=False, padding=(0, 1))


def fit(text: str, room: int) -> str:
    """``text`` on one line of at most ``room`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def summarize_findings(findings: list[dict[str, object]]) -> Table:
    """One row per detector pattern: how many findings, at which severities, how many agents."""
    by_pattern: dict[tuple[str, str], Counter[str]] = {}
    agents: dict[tuple[str, str], set[str]] = {}
    for f in findings:
        key = (str(f["kind"]), str(f["pattern"]))
        by_pattern.setdefault(key, Counter())[str(f["severity"])] += 1
        agents.setdefault(key, set()).add(str(f.get("agent_id") or "(no agent id)"))
    table = compact_table("findings")
    for col in ("kind", "pattern", "n", "by severity", "agents"):
        table.add_column(col, no_wrap=True)
    order = sorted(
        by_pattern,
        key=lambda k: [-by_pattern[k][s] for s in SEVERITIES] + [k[0], k[1]],
    )
    for key in order:
        counts = by_pattern[key]
        severities = ", ".join(
            f"[{SEVERITY_STYLE[s]}]{counts[s]} {s}[/]" for s in SEVERITIES if counts[s]
        )
        table.add_row(key[0], key[1], str(sum(counts.values())), severities, str(len(agents[key])))
    return table


def grpc_session(port: int) -> None:
    """A short scripted session against the enforcer over gRPC, printing each decision."""
    from callward.enforcer.client import EnforcerClient
    from callward.enforcer.engine import Request

    calls = [("run_python_file", {"file_name": "etl.py"})] * 12 + [
        ("pip_install_package", {"package_name": "left-pad"}),
        ("run_python_code", {"code": "print(42)"}),
        ("get_current_time", {"timezone": "UTC"}),
    ]
    rows: list[list[str]] = []  # [calls, tool, decision, message], runs of the same answer
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
            answer = [tool, f"[{color}]{d.decision}[/]", d.message or "-"]
            if rows and rows[-1][1:] == answer:
                rows[-1][0] = f"{rows[-1][0].split('-')[0]}-{i}"
            else:
                rows.append([str(i), *answer])
    table = compact_table("gRPC Check, agent grpc-client")
    for col in ("calls", "tool", "decision"):
        table.add_column(col, no_wrap=True)
    table.add_column("message")
    for row in rows:
        table.add_row(*row)
    console.print(table)


def main() -> int:
    ap = argparse.ArgumentParser(prog="make demo")
    ap.add_argument("--data", type=Path, default=Path("demo-data"))
    ap.add_argument("--port", type=int, default=8501, help="dashboard port")
    ap.add_argument("--no-dashboard", action="store_true")
    opts = ap.parse_args()

    data: Path = opts.data
    if not opts.no_dashboard and port_in_use(opts.port):
        console.print(
            f"[red]error:[/red] port {opts.port} is already in use, so the dashboard could "
            f"not start. Pick a free one: make demo PORT={opts.port + 100} "
            f"(or python -m callward.demo --port {opts.port + 100})."
        )
        return 2
    # The generated history covers the three days before today; the live traffic is today's.
    today = datetime.now(UTC).date()
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
        outcomes: dict[tuple[str, str, str, str], list[Outcome]] = {}

        def show(o: Outcome) -> None:
            outcomes.setdefault((o.agent, o.server, o.tool, o.verdict), []).append(o)

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
        table = compact_table("tools/call through the proxy")
        rows = [
            (agent, f"{server}/{tool}", str(len(seen)), verdict, seen[0].detail)
            for (agent, server, tool, verdict), seen in outcomes.items()
        ]
        headers = ("agent", "server/tool", "calls", "verdict")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
        room = WIDTH - sum(widths) - 2 * len(widths) - 1
        for col in headers:
            table.add_column(col, no_wrap=True)
        table.add_column("first answer", no_wrap=True)
        for agent, tool, n, verdict, detail in rows:
            color = COLORS.get(verdict, "white")
            table.add_row(agent, tool, n, f"[{color}]{verdict}[/]", fit(detail, room))
        console.print(table)

        # Let the spans reach the store: the proxies flushed at exit; the collector flushes every second.
        time.sleep(3)
        sup.stop_all()  # the collector flushes its spool into Parquet on SIGTERM

        step(5, "Detectors, and a replay of all recorded calls under a stricter policy")
        det = run(callward("detect", "--data", str(store), "--format", "json"))
        if det.returncode:
            raise SystemExit(f"detection failed:\n{det.stderr}")
        findings = json.loads(det.stdout)
        findings_file = data / "findings.json"
        findings_file.write_text(det.stdout)
        console.print(det.stderr.strip())
        if findings:
            console.print(summarize_findings(findings))
        console.print(f"every finding, with its spans and explanation: {findings_file}")

        def replay(*extra: str) -> subprocess.CompletedProcess[str]:
            # No --since/--until: all recorded calls, as the dashboard's Replay page starts.
            return run(callward("replay", "--data", str(store), "--policy", str(CANDIDATE), *extra))

        report = data / "replay.html"
        markdown = data / "replay.md"
        replay("--format", "html", "--out", str(report))
        replay("--format", "markdown", "--out", str(markdown))
        js = replay("--format", "json")
        if js.returncode:
            raise SystemExit(f"replay failed:\n{js.stderr}")
        summary = json.loads(js.stdout)
        fidelity = summary["fidelity"]
        share = fidelity.get("share") if isinstance(fidelity, dict) else fidelity
        console.print(
            f"replayed all recorded calls under {CANDIDATE.name}: {summary['total']} calls, "
            f"{summary['unchanged']} unchanged, {summary['unknown']} unknown, "
            f"fidelity {share} (the dashboard's Replay page starts from the same range)"
        )
        changes = compact_table("what the candidate would change")
        for col in ("recorded", "candidate", "calls"):
            changes.add_column(col)
        for tr in summary["transitions"]:
            changes.add_row(tr["from"], tr["to"], str(tr["count"]))
        console.print(changes if summary["transitions"] else "no decision would change")
        console.print(f"replay report: {report} (and {markdown.name}, beside it)")

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
