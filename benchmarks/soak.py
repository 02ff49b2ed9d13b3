"""Soak: the enforcer and the collector under steady traffic for a long time.

    python benchmarks/soak.py [--minutes 30] [--rate 200] [--clients 2]

A real enforcer (``callward enforcer``) and a real collector (``callward collector``) run
as separate processes on loopback; clients send ``Check`` and ``Report`` at a steady
rate, with a rotating mix of allowed, rate-limited and hidden tools and of argument
sizes; the enforcer exports one span per call to the collector. Every few seconds the
resident memory and open file descriptors of both processes are sampled.

At the end both are stopped the way an operator would (SIGTERM), and the store is
counted: every ``Check`` that got an answer must be a row, exactly once (nothing
acknowledged lost, nothing doubled). Figures: calls, rows, the RSS and descriptor count
of each process after warm-up and at the end, and the RSS slope (MiB per hour, a least
squares fit over the samples after warm-up). ``tests/test_soak.py`` runs the same soak
for a few seconds in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import psutil

from callward.demo.processes import free_port, wait_for_port
from callward.enforcer.client import EnforcerClient
from callward.enforcer.engine import Request

POLICY = {
    "version": "1",
    "default": "deny",
    "hide": ["drop_tables"],
    "tools": {
        "read_file": {},
        "send_email": {
            "limits": [{"counter": "mail", "window": "minute", "max": 30, "scope": "agent"}]
        },
        "run_job": {"deny_if": [{"conditions": [{"path": "args.n", "op": "gt", "value": 900}]}]},
    },
}
TOOLS = ("read_file", "send_email", "run_job", "drop_tables", "unknown_tool")
WARMUP_S = 5.0


@dataclass
class Sample:
    at: float
    rss: dict[str, int]
    fds: dict[str, int]


@dataclass
class SoakResult:
    seconds: float
    calls: int
    rows: int
    duplicates: int
    missing: int
    errors: int
    samples: list[Sample] = field(default_factory=list)

    def after_warmup(self) -> list[Sample]:
        kept = [s for s in self.samples if s.at >= WARMUP_S]
        return kept or self.samples[-1:]

    def rss_slope_mib_per_hour(self, name: str) -> float:
        pts = [(s.at, s.rss[name] / 2**20) for s in self.after_warmup()]
        if len(pts) < 2:
            return 0.0
        mx = sum(t for t, _ in pts) / len(pts)
        my = sum(v for _, v in pts) / len(pts)
        den = sum((t - mx) ** 2 for t, _ in pts)
        return 0.0 if den == 0 else sum((t - mx) * (v - my) for t, v in pts) / den * 3600

    def rss_by_fifth(self, name: str) -> list[float]:
        """RSS (MiB) at the end of each fifth of the run after warm-up: whether memory
        levels off shows in these, where a slope only averages."""
        kept = self.after_warmup()
        t0, t1 = kept[0].at, kept[-1].at
        marks = [t0 + (t1 - t0) * k / 5 for k in range(1, 6)]
        return [
            round(next(s for s in kept if s.at >= m - 1e-9).rss[name] / 2**20, 1) for m in marks
        ]

    def summary(self) -> dict[str, object]:
        first, last = self.after_warmup()[0], self.samples[-1]
        return {
            "seconds": round(self.seconds, 1),
            "calls": self.calls,
            "rows": self.rows,
            "missing": self.missing,
            "duplicates": self.duplicates,
            "client_errors": self.errors,
            **{
                f"{name}_{what}": value
                for name in ("enforcer", "collector")
                for what, value in (
                    ("rss_mib_start", round(first.rss[name] / 2**20, 1)),
                    ("rss_mib_end", round(last.rss[name] / 2**20, 1)),
                    ("rss_slope_mib_per_h", round(self.rss_slope_mib_per_hour(name), 1)),
                    ("rss_mib_by_fifth", self.rss_by_fifth(name)),
                    ("fds_start", first.fds[name]),
                    ("fds_end", last.fds[name]),
                )
            },
        }


def _tree(proc: subprocess.Popen[bytes]) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def _measure(proc: subprocess.Popen[bytes]) -> tuple[int, int]:
    rss = fds = 0
    for p in _tree(proc):
        try:
            rss += p.memory_info().rss
            fds += p.num_fds()
        except psutil.NoSuchProcess:
            continue
    return rss, fds


def soak(seconds: float, rate: float, clients: int, work: Path) -> SoakResult:
    """Run the soak for ``seconds`` at about ``rate`` calls per second over all clients."""
    policy = work / "policy.json"
    policy.write_text(json.dumps(POLICY))
    store = work / "store"
    logs = {name: open(work / f"{name}.log", "wb") for name in ("collector", "enforcer")}  # noqa: SIM115
    env = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "200"}
    cport, eport = free_port(), free_port()
    cmd = [sys.executable, "-m", "callward"]
    collector = subprocess.Popen(
        [
            *cmd,
            "collector",
            "--data-dir",
            str(store),
            "--listen",
            f"127.0.0.1:{cport}",
            "--flush-interval",
            "1",
        ],
        stdout=logs["collector"],
        stderr=subprocess.STDOUT,
        env=env,
    )
    enforcer: subprocess.Popen[bytes] | None = None
    try:
        wait_for_port(cport, collector)
        enforcer = subprocess.Popen(
            [
                *cmd,
                "enforcer",
                "--policy",
                str(policy),
                "--listen",
                f"127.0.0.1:{eport}",
                "--otlp-endpoint",
                f"http://127.0.0.1:{cport}",
            ],
            stdout=logs["enforcer"],
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_for_port(eport, enforcer)
        procs = {"enforcer": enforcer, "collector": collector}
        answered: list[str] = []
        errors = [0]
        lock = threading.Lock()
        stop = threading.Event()
        started = time.monotonic()

        def client(k: int) -> None:
            interval = clients / rate
            with EnforcerClient(f"127.0.0.1:{eport}", timeout=10.0) as c:
                i = 0
                while not stop.is_set():
                    tool = TOOLS[i % len(TOOLS)]
                    call_id = f"soak-{k}-{i}-{uuid.uuid4().hex[:8]}"
                    args = {"n": (i * 37) % 1000, "body": "x" * ((i * 131) % 4096)}
                    req = Request(
                        tool, args, grant="soak", agent_id=f"soak-agent-{k % 3}",
                        session_id=f"soak-session-{k}-{i // 50}", call_id=call_id,
                    )  # fmt: skip
                    try:
                        d = c.check(req)
                        if d.allowed:
                            c.report(call_id, "ok" if i % 7 else "error", duration_ms=1.0)
                    except Exception:
                        with lock:
                            errors[0] += 1
                    else:
                        with lock:
                            answered.append(call_id)
                    i += 1
                    time.sleep(max(0.0, started + i * interval - time.monotonic()))

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        samples: list[Sample] = []
        while (elapsed := time.monotonic() - started) < seconds:
            measured = {name: _measure(p) for name, p in procs.items()}
            samples.append(
                Sample(
                    elapsed,
                    {n: m[0] for n, m in measured.items()},
                    {n: m[1] for n, m in measured.items()},
                )
            )
            time.sleep(min(2.0, max(0.1, seconds / 30)))
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        # Stop the way an operator would: the enforcer flushes its spans, then the
        # collector flushes its spool into Parquet.
        for proc in (enforcer, collector):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        rows = duckdb.sql(
            "select call_id, count(*) as n from read_parquet(?, hive_partitioning = true) "
            "where call_id like 'soak-%' group by call_id",
            params=[str(store / "tool_calls" / "**" / "*.parquet")],
        ).fetchall()
        stored = {call_id: n for call_id, n in rows}
        return SoakResult(
            seconds=elapsed,
            calls=len(answered),
            rows=sum(stored.values()),
            duplicates=sum(1 for n in stored.values() if n > 1),
            missing=sum(1 for call_id in answered if call_id not in stored),
            errors=errors[0],
            samples=samples,
        )
    finally:
        for proc in (enforcer, collector):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        for f in logs.values():
            f.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=200.0, help="calls per second, all clients")
    ap.add_argument("--clients", type=int, default=2)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="callward-soak-") as tmp:
        result = soak(opts.minutes * 60, opts.rate, opts.clients, Path(tmp))
    print(json.dumps(result.summary(), indent=2))
    return 0 if result.missing == 0 and result.duplicates == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
