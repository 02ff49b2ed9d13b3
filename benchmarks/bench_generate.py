"""How long `callward datasets generate` takes, as a ratio to a 1M-call run in the same process.

    .venv/bin/python benchmarks/bench_generate.py [--calls 10000000] [--agents 21] [--days 30]

The big store is kept under var/bench/ (gitignored) for bench_detect.py to reuse.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from callward.datasets.generator import GenerateConfig, generate

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var" / "bench"


def run(out: Path, calls: int, agents: int, days: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    summary = generate(GenerateConfig(out=out, agents=agents, days=days, seed=42, calls=calls))
    return time.perf_counter() - t, summary.rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--agents", type=int, default=21)
    ap.add_argument("--days", type=int, default=30)
    args = ap.parse_args()
    print(f"load average at the start: {load_average()}")
    base_s, base_rows = run(VAR / "gen-1m", 1_000_000, args.agents, args.days)
    print(f"baseline: {base_rows} calls in {base_s:.1f} s ({base_rows / base_s:,.0f} calls/s)")
    big_s, big_rows = run(VAR / f"gen-{args.calls}", args.calls, args.agents, args.days)
    print(f"target:   {big_rows} calls in {big_s:.1f} s ({big_rows / big_s:,.0f} calls/s)")
    print(
        f"ratio: {big_s / base_s:.2f}x the time for {big_rows / base_rows:.2f}x the calls "
        f"(per-call cost {(big_s / big_rows) / (base_s / base_rows):.2f}x the baseline's)"
    )
    shutil.rmtree(VAR / "gen-1m", ignore_errors=True)
    print(f"load average at the end: {load_average()}")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
