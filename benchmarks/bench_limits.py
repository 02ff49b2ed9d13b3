"""Sliding-window limits: what they cost next to calendar windows, online and in replay.

Not a test: it prints figures, each next to a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_limits.py [--calls 200000] [--rounds 5]

1. ``decide`` per call, timed over the same requests under two policies that differ only
   in ``"sliding": true`` on their limits (a per-agent limit on the tool and a policy-wide
   one). Calendar and sliding run in turns, ``--rounds`` times each; the verdict is the
   ratio of the medians.
2. ``decide_table`` (replay's batch entry point) on ``--calls`` calls spread over two
   hours, 200 agents, bursts that fill the limits, 2 % failed calls: the calendar policy
   uses the counting shortcuts, the sliding one the sequential pass. Ratio of the medians.
3. Agreement: each batch result against the online engine's loop (``decide`` per call in
   time order, failed calls releasing at their end, as the gateway runs), call by call.
   Exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import heapq
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from callward.enforcer.batch import decide_table  # noqa: E402
from callward.enforcer.engine import InMemoryLimitState, Request, decide  # noqa: E402
from callward.enforcer.policy import CompiledPolicy, compile_document  # noqa: E402

T0_US = 1_800_000_000 * 1_000_000


def policy(sliding: bool) -> CompiledPolicy:
    def limit(counter: str, window: str, maximum: int, scope: str) -> dict[str, Any]:
        out: dict[str, Any] = {"counter": counter, "window": window, "max": maximum}
        out["scope"] = scope
        if sliding:
            out["sliding"] = True
        return out

    return compile_document(
        {
            "version": "1",
            "default": "allow",
            "tools": {
                "send_email": {"limits": [limit("mail", "minute", 5, "agent")]},
                "read_file": {},
            },
            "all_tools": {"limits": [limit("all", "hour", 400, "agent")]},
        }
    )


def calls(n: int, seed: int = 7) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    agents = rng.integers(0, 200, n)
    # Two hours of traffic; a third of the calls in bursts of a few seconds.
    start = rng.integers(0, 7200 * 1_000_000, n)
    burst = rng.random(n) < 0.33
    start[burst] = (start[burst] // 60_000_000) * 60_000_000 + rng.integers(
        -3_000_000, 3_000_000, int(burst.sum())
    )
    start = np.sort(start) + T0_US
    tools = np.where(rng.random(n) < 0.6, "send_email", "read_file")
    return pl.DataFrame(
        {
            "start_us": start,
            "end_us": start + rng.integers(1_000, 2_000_000, n),
            "span_id": [f"{i:016x}" for i in range(n)],
            "agent_id": [f"agent-{a}" for a in agents],
            "session_id": [f"s-{a}" for a in agents],
            "grant": ["team"] * n,
            "server": ["mail"] * n,
            "tool": tools,
            "arguments": ["{}"] * n,
            "fails": rng.random(n) < 0.02,
        }
    )


def online(frame: pl.DataFrame, p: CompiledPolicy) -> list[str]:
    """The gateway's order of work, call by call: the oracle the batch must equal."""
    state = InMemoryLimitState()
    releases: list[tuple[int, int, Any]] = []
    out = []
    rows = frame.select("start_us", "end_us", "tool", "server", "grant", "agent_id", "fails")
    for seq, (start, end, tool, server, grant, agent, fails) in enumerate(rows.iter_rows()):
        while releases and releases[0][0] <= start:
            state.release(heapq.heappop(releases)[2])
        d = decide(p, Request(tool, {}, server, grant, agent, f"s-{agent[6:]}"), state, start / 1e6)
        if d.reserved and fails:
            heapq.heappush(releases, (end, seq, d.reserved))
        out.append(d.decision)
    return out


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    frame = calls(args.calls)
    policies = {False: policy(False), True: policy(True)}

    sample = frame.head(50_000)
    requests = [
        (Request(t, {}, "mail", "team", a, "s"), s / 1e6)
        for t, a, s in sample.select("tool", "agent_id", "start_us").iter_rows()
    ]

    def per_call(p: CompiledPolicy) -> None:
        state = InMemoryLimitState()
        for req, now in requests:
            decide(p, req, state, now)

    rounds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.rounds):
        for sliding in (False, True):
            rounds[sliding].append(timed(lambda s=sliding: per_call(policies[s])) / len(requests))
    cal, sli = (statistics.median(rounds[k]) * 1e6 for k in (False, True))
    print(f"decide per call: calendar {cal:.2f} µs, sliding {sli:.2f} µs, ratio {sli / cal:.2f}")

    batch: dict[bool, list[float]] = {False: [], True: []}
    results: dict[bool, list[str]] = {}
    for _ in range(args.rounds):
        for sliding in (False, True):
            p = policies[sliding]
            t = time.perf_counter()
            decided, _ = decide_table(frame, {"v": p}, "v", with_messages=False)
            batch[sliding].append(time.perf_counter() - t)
            results[sliding] = decided.get_column("decision").cast(pl.String).to_list()
    cal, sli = (statistics.median(batch[k]) for k in (False, True))
    n = frame.height
    print(
        f"decide_table on {n:,} calls: calendar {cal:.2f} s ({n / cal:,.0f} calls/s), "
        f"sliding {sli:.2f} s ({n / sli:,.0f} calls/s), ratio {sli / cal:.2f}"
    )
    wrong = 0
    for sliding in (False, True):
        expected = online(frame, policies[sliding])
        diff = sum(a != b for a, b in zip(expected, results[sliding], strict=True))
        denied = sum(d == "deny" for d in expected)
        kind = "sliding" if sliding else "calendar"
        print(f"{kind}: {denied:,} calls denied by a limit online; batch differs on {diff}")
        wrong += diff
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
