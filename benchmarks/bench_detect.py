"""Detection time over a big store, as a ratio to a plain DuckDB scan of the same store.

    .venv/bin/python benchmarks/bench_detect.py [--data var/bench/gen-10000000] [--calls N]

Without --data it reuses var/bench/gen-<calls> (left by bench_generate.py) or generates it.
It also scores the findings against the store's labels (session-level precision/recall).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter
from pathlib import Path

import duckdb

from callward.datasets.generator import GenerateConfig, generate
from callward.datasets.labels import read_labels
from callward.datasets.scoring import markdown, score
from callward.detectors import detect_report

ROOT = Path(__file__).resolve().parent.parent


def quality(seeds: int) -> None:
    """Session-level precision/recall over several small stores (7 agents, 3 days, 30k calls)."""
    import tempfile

    from callward.datasets.scoring import Scorecard

    total = Scorecard()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(1, seeds + 1):
            d = Path(tmp) / str(seed)
            generate(GenerateConfig(out=d, agents=7, days=3, seed=seed, calls=30_000))
            total.merge(score(detect_report(d).findings, read_labels(d)))
    print(markdown(total))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path)
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument(
        "--quality-seeds",
        type=int,
        default=0,
        help="instead: score detection on this many small generated stores (seeds 1..N)",
    )
    args = ap.parse_args()
    print(f"load average at the start: {load_average()}")
    if args.quality_seeds:
        quality(args.quality_seeds)
        print(f"load average at the end: {load_average()}")
        return
    data = args.data or ROOT / "var" / "bench" / f"gen-{args.calls}"
    if not (data / "tool_calls").exists():
        print(f"generating {args.calls} calls into {data} ...")
        generate(GenerateConfig(out=data, agents=21, days=30, seed=42, calls=args.calls))

    glob = str(data / "tool_calls" / "*" / "*.parquet")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    t, cpu = time.perf_counter(), time.process_time()
    n, sessions, arg_bytes = con.execute(
        "SELECT count(*), count(DISTINCT coalesce(nullif(session_id, ''), trace_id)), "
        f"sum(strlen(arguments)) FROM read_parquet('{glob}')"
    ).fetchone()
    scan_s, scan_cpu = time.perf_counter() - t, time.process_time() - cpu
    print(
        f"baseline scan: {n} calls, {sessions} sessions, {arg_bytes / 1e9:.2f} GB of arguments "
        f"in {scan_s:.2f} s wall, {scan_cpu:.2f} s CPU"
    )

    t, cpu = time.perf_counter(), time.process_time()
    report = detect_report(data)
    detect_s, detect_cpu = time.perf_counter() - t, time.process_time() - cpu
    print(
        f"detect: {len(report.findings)} findings in {detect_s:.1f} s wall, "
        f"{detect_cpu:.1f} s CPU ({n / detect_s:,.0f} calls/s); {report.message}"
    )
    print(
        f"ratio: detection takes {detect_s / scan_s:.1f}x the baseline scan's wall time, "
        f"{detect_cpu / scan_cpu:.1f}x its CPU time"
    )

    labels = read_labels(data)
    if labels:
        print(markdown(score(report.findings, labels)))
        kinds = {(lab.session_key, lab.kind) for lab in labels}
        wrong = Counter(
            (f.pattern, f.agent_id.rsplit("-", 1)[0] or "-", f.explanation.split(" (")[0][:60])
            for f in report.findings
            if (f.session_key, f.kind) not in kinds
        )
        for (pattern, agent, what), count in wrong.most_common(10):
            print(f"false positive x{count}: {pattern} on {agent}: {what}")
    print(f"load average at the end: {load_average()}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
