"""How long each dashboard page's queries take on a 10-million-call store.

Builds the store once (vectorized with NumPy and Polars, about a minute) under var/, then for
each page clears the query cache and times (a) the page's queries called directly and (b) the
whole page rendered by Streamlit's AppTest, both cold. Every figure is also printed as a ratio
against ``SELECT count(*) FROM tool_calls`` on the same store, measured in the same run, so
the numbers travel between machines. The baseline and every page's queries run in turns,
round by round, and so do the renders; each figure is the median of the rounds, and so is
the verdict. Target: every page at most 2 s.

    .venv/bin/python benchmarks/bench_dashboard.py [--calls 10000000] [--store var/bench-dashboard]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from callward.collector.schema import PARQUET_DIR, POLICIES_DIR, TOOL_CALL_SCHEMA  # noqa: E402
from callward.dashboard import findings, queries  # noqa: E402
from callward.dashboard.filters import resolve  # noqa: E402
from callward.enforcer.policy import canonical_json, policy_version  # noqa: E402
from callward.paths import DATA_ENV  # noqa: E402

console = Console()
T0 = datetime(2026, 1, 5, tzinfo=UTC)
DAYS = 30
SERVERS = {
    "filesystem": ["read_file", "write_file", "list_directory", "search_files", "move_file"],
    "github": ["search_code", "get_issue", "create_pull_request", "list_commits"],
    "fetch": ["fetch", "http_get", "http_post"],
    "python": ["run_python_code", "run_python_file", "pip_install_package"],
    "slack": ["post_message", "list_channels"],
    "time": ["get_current_time", "convert_time"],
}
HOSTS = [f"api{i}.example.com" for i in range(40)] + ["paste.evil.example", "drop.evil.example"]
POLICIES = [
    {"version": "1", "default": "allow", "tools": {f"t{i}": {"action": "deny"} for i in range(k)}}
    for k in (1, 2, 3)
]


def _hex(rng: np.random.Generator, n: int, nbytes: int) -> pl.Series:
    raw = rng.integers(0, 256, size=n * nbytes, dtype=np.uint8).tobytes()
    arr = pa.FixedSizeBinaryArray.from_buffers(pa.binary(nbytes), n, [None, pa.py_buffer(raw)])
    return pl.Series(pl.from_arrow(arr.cast(pa.binary()))).bin.encode("hex")


def _day(rng: np.random.Generator, day: int, n: int, agents: int) -> pa.Table:
    """One day of calls: steady agents with a few bursts, some egress, some secrets."""
    tools = [(s, t) for s, ts in SERVERS.items() for t in ts]
    start = T0 + timedelta(days=day)
    seconds = np.sort(rng.uniform(0, 86400, n))
    agent = rng.zipf(1.3, n) % agents
    # A quarter of the days have one agent running away for an hour.
    if day % 4 == 0:
        burst = n // 20
        at = rng.integers(0, 23) * 3600
        seconds[:burst] = np.sort(rng.uniform(at, at + 3600, burst))
        agent[:burst] = (day * 7) % agents
        order = np.argsort(seconds, kind="stable")
        seconds, agent = seconds[order], agent[order]
    # Each agent sticks to a handful of tools, as real agents do.
    agent_tools = np.random.default_rng(agents).integers(0, len(tools), (agents, 4))
    tool_idx = agent_tools[agent, rng.integers(0, 4, n)]
    decision = rng.choice(
        np.array(["allow", "deny", "require_approval", ""]), n, p=[0.9, 0.07, 0.02, 0.01]
    )
    frame = pl.DataFrame(
        {
            "secs": seconds,
            "agent": agent,
            "tool_idx": tool_idx,
            "decision": decision,
            "session": agent * 1000 + (seconds // 1800).astype(np.int64),
            "n": rng.integers(0, 100000, n),
            "host": rng.integers(0, len(HOSTS), n),
            "secret": rng.uniform(0, 1, n) < 0.01,
            "dur": rng.gamma(2.0, 20.0, n),
        }
    )
    server_names = pl.Series([s for s, _ in tools])
    tool_names = pl.Series([t for _, t in tools])
    hosts = pl.Series(HOSTS)
    version = policy_version(POLICIES[min(day // 10, len(POLICIES) - 1)])
    frame = frame.with_columns(
        start_time=pl.lit(start) + pl.duration(microseconds=(pl.col("secs") * 1e6).cast(pl.Int64)),
        agent_id=pl.format("agent-{}", pl.col("agent")),
        session_id=pl.format("sess-{}-{}", pl.lit(day), pl.col("session")),
        server=server_names.gather(frame["tool_idx"]),
        tool=tool_names.gather(frame["tool_idx"]),
        host=hosts.gather(frame["host"]),
    )
    is_web = pl.col("server") == "fetch"
    num = pl.col("n").cast(pl.String)
    arguments = (
        pl.when(is_web & pl.col("secret"))
        .then(
            pl.concat_str(
                pl.lit('{"url": "https://'),
                "host",
                pl.lit("/u/"),
                num,
                pl.lit('", "body": "token=[REDACTED:api_key]"}'),
            )
        )
        .when(is_web)
        .then(
            pl.concat_str(pl.lit('{"url": "https://'), "host", pl.lit("/items/"), num, pl.lit('"}'))
        )
        .when(pl.col("secret"))
        .then(
            pl.concat_str(
                pl.lit('{"path": "/srv/app/.env", "note": "[REDACTED:aws_access_key] '),
                num,
                pl.lit('"}'),
            )
        )
        .otherwise(pl.concat_str(pl.lit('{"path": "/srv/app/src/module_'), num, pl.lit('.py"}')))
    )
    denied = pl.col("decision") == "deny"
    frame = frame.with_columns(
        end_time=pl.col("start_time")
        + pl.duration(microseconds=(pl.col("dur") * 1000).cast(pl.Int64)),
        trace_id=_hex(rng, n, 16),
        span_id=_hex(rng, n, 8),
        parent_span_id=pl.lit(""),
        call_id=_hex(rng, n, 4),
        grant=pl.format("grant-{}", pl.col("agent") % 10),
        arguments=arguments,
        rule=pl.when(denied).then(pl.format("/tools/{}/deny_if/0", "tool")).otherwise(pl.lit("")),
        message=pl.when(denied).then(pl.lit("denied by policy")).otherwise(pl.lit("")),
        policy_version=pl.lit(version),
        outcome=pl.when(pl.col("decision") == "allow").then(pl.lit("ok")).otherwise(pl.lit("")),
        error_type=pl.lit(""),
        duration_ms=pl.col("dur"),
        result_bytes=pl.col("n"),
        service_name=pl.lit("callward-proxy"),
        attributes=pl.lit("{}"),
    )
    return frame.select(TOOL_CALL_SCHEMA.names).to_arrow().cast(TOOL_CALL_SCHEMA)


def build_store(root: Path, calls: int, seed: int = 11) -> None:
    """Write ``calls`` calls over DAYS days in the store layout, unless already there."""
    marker = root / "bench-store.json"
    if marker.exists() and json.loads(marker.read_text()) == {"calls": calls, "layout": 2}:
        return
    rng = np.random.default_rng(seed)
    per_day = calls // DAYS
    with Progress(console=console) as progress:
        task = progress.add_task(f"writing {calls:,} calls", total=DAYS)
        for day in range(DAYS):
            n = per_day + (calls - per_day * DAYS if day == DAYS - 1 else 0)
            table = _day(rng, day, n, agents=200)
            folder = root / PARQUET_DIR / f"date={(T0 + timedelta(days=day)):%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                table, folder / "part-0.parquet", compression="zstd", row_group_size=256 * 1024
            )
            progress.advance(task)
    policies = root / POLICIES_DIR
    policies.mkdir(exist_ok=True)
    for doc in POLICIES:
        (policies / f"{policy_version(doc)}.json").write_text(canonical_json(doc))
    marker.write_text(json.dumps({"calls": calls, "layout": 2}))


def page_queries(data_dir: str) -> dict[str, Callable[[], object]]:
    """The queries each page runs on first render with the default filters."""
    summary = queries.store_summary(data_dir)
    flt = resolve("All data", summary["first_span"], summary["last_span"])
    day = resolve("Last 24 hours", summary["first_span"], summary["last_span"])
    busiest = queries.agent_activity(data_dir, flt)["agent_id"].iloc[0]
    listed = queries.sessions(data_dir, day).iloc[0]
    session, first_day, last_day = (
        listed["session_id"],
        listed["started"].date(),
        listed["ended"].date(),
    )

    def sidebar() -> None:
        queries.store_summary(data_dir)
        queries.filter_options(data_dir)

    def overview() -> None:
        queries.headline(data_dir, flt)
        queries.decisions_over_time(data_dir, flt)
        for column in queries.TOP_COLUMNS:
            queries.top(data_dir, flt, column)
        queries.policy_versions(data_dir, flt)

    def runaway() -> None:
        queries.agent_activity(data_dir, flt)
        queries.agent_timeline(data_dir, flt, busiest)

    def exfiltration() -> None:
        queries.redactions(data_dir, flt)
        queries.destinations(data_dir, flt)

    def sessions() -> None:
        queries.sessions(data_dir, flt)
        queries.session_calls(data_dir, session_id=session, first_day=first_day, last_day=last_day)

    def policies() -> None:
        queries.policy_usage(data_dir)

    return {
        "sidebar (every page)": sidebar,
        "overview": overview,
        "runaway": runaway,
        "exfiltration": exfiltration,
        "sessions": sessions,
        "replay (before a run)": lambda: None,
        "policies": policies,
    }


def timed(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Median wall time of each of ``fns`` over ``repeat`` interleaved rounds, each run cold
    (query cache cleared before it), so that load from elsewhere falls on all of them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            st.cache_data.clear()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(ts) for name, ts in times.items()}


def render_times(data_dir: str, repeat: int) -> dict[str, float]:
    """Cold render time of each page in AppTest (the whole script: sidebar, queries, layout)."""
    from streamlit.testing.v1 import AppTest

    os.environ[DATA_ENV] = data_dir
    app = str(REPO / "dashboard" / "app.py")
    pages = ("overview", "runaway", "exfiltration", "sessions", "replay", "policies")
    times: dict[str, list[float]] = {name: [] for name in pages}
    for _ in range(repeat):  # rounds outside, pages inside: interleaved
        for name in pages:
            at = AppTest.from_file(app, default_timeout=120)
            at.run()  # the overview, then the page under test, both cold
            if name != "overview":
                at.switch_page(f"views/{name}.py")
            st.cache_data.clear()
            t = time.perf_counter()
            at.run()
            times[name].append(time.perf_counter() - t)
            if at.exception:
                raise RuntimeError(f"{name}: {at.exception[0].value}")
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000_000)
    parser.add_argument("--store", type=Path, default=REPO / "var" / "bench-dashboard")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    t = time.perf_counter()
    build_store(args.store, args.calls)
    console.print(f"store ready in {time.perf_counter() - t:.1f} s: {args.store}")
    data_dir = str(args.store.resolve())

    store = queries.connect(data_dir)
    t = time.perf_counter()
    store.refresh()  # first open: the hourly rollups are built from every file, once
    first_open = time.perf_counter() - t
    rows = queries.run(store, "SELECT count(*) AS n FROM tool_calls")["n"].iloc[0]
    sizes = {
        name: queries.run(store, f"SELECT count(*) AS n FROM {name}")["n"].iloc[0]
        for name in ("calls_hourly", "egress_hourly", "redactions_hourly")
    }
    # In the app the detectors run in a background thread; here they run once, up front, and
    # their result is kept next to the store for later runs, so that no detection competes
    # with the pages being timed.
    saved = args.store / "findings.pickle"
    if saved.exists():
        with saved.open("rb") as f:
            kept = pickle.load(f)
        found, detection, reused = kept["findings"], kept["seconds"], " (from an earlier run)"
    else:
        t = time.perf_counter()
        found = findings.load(data_dir, wait_s=3600)
        detection, reused = time.perf_counter() - t, ""
        with saved.open("wb") as f:
            pickle.dump({"findings": found, "seconds": detection}, f)
    fixed = findings.DetectionRunner(lambda _: found)
    fixed.get(data_dir, wait_s=60)
    findings.runner = lambda: fixed  # type: ignore[assignment]

    baseline_sql = "SELECT count(*) FROM tool_calls"
    figures = timed(
        {"baseline": lambda: queries.run(store, baseline_sql), **page_queries(data_dir)},
        args.repeat,
    )
    baseline = figures.pop("baseline")
    renders = render_times(data_dir, args.repeat)

    table = Table(
        title=f"dashboard on {rows:,} calls (median of {args.repeat} interleaved rounds, "
        "cold query cache)"
    )
    for column in ("page", "queries s", "× count(*)", "render s", "× count(*)"):
        table.add_column(column, justify="right" if column != "page" else "left")
    table.add_row("baseline: SELECT count(*)", f"{baseline:.3f}", "1", "", "")
    for name, seconds in figures.items():
        render = renders.get(name.split(" ")[0])
        table.add_row(
            name,
            f"{seconds:.3f}",
            f"{seconds / baseline:,.0f}",
            "" if render is None else f"{render:.3f}",
            "" if render is None else f"{render / baseline:,.0f}",
        )
    console.print(table)
    console.print(
        f"first open (hourly rollups built from every file, once): {first_open:.1f} s "
        f"({first_open / baseline:,.0f} × count(*)); rollup rows: "
        + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    )
    console.print(
        f"detectors (background thread, kept 5 min): {len(found.frame):,} findings in "
        f"{detection:.1f} s ({detection / baseline:,.0f} × count(*)){reused} {found.note or ''}"
    )
    worst = max(renders.values())
    verdict = "met" if worst <= 2 else "NOT met"
    console.print(f"slowest page render: {worst:.2f} s (target ≤ 2 s): {verdict}")
    load = os.getloadavg()
    console.print(
        f"load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
        f"on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
