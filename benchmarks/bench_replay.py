"""Replay benchmark: 10 million recorded calls, the 50-tool policy as candidate.

Not a test: it prints figures, each next to a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_replay.py [--calls 10000000] [--loop-sample 1000000]
        [--rounds 3]

1. Builds (once, cached under var/bench-replay/, gitignored) a store of ``--calls`` calls
   over 14 days against examples/policies/fifty_tools.yaml: 50 tools on 12 servers, unknown
   and hidden tools, 300 agents, 60 000 sessions, argument pools that hit every predicate
   both ways, and bursts that fill rate limits. Recorded decisions are those of the online
   engine (``decide`` per call in time order, real limit state, failed calls releasing
   their quota at their end, as the gateway runs) under a looser "recorded" variant of the
   policy (kept in D/policies), so the candidate changes things.
2. Runs ``callward replay`` in a child process, timing it and reading its peak RSS.
3. Baseline: a Python loop that calls ``enforcer.engine.decide`` per call, in time order,
   with the limit state and failed-call releases, on the first ``--loop-sample`` calls;
   its time is extrapolated to the whole store and set against ``replay()`` on the same
   in-memory calls (one policy, like the loop). The two run in turns, ``--rounds`` times
   each, and their medians are compared (the machine's load moves both by tens of per
   cent from minute to minute); every round and the first replay() call are printed.
4. Fidelity: replay() under the recorded policy, call by call against the online engine's
   recorded decisions and rules; prints equal / total and exits 1 below 100 %.
"""

from __future__ import annotations

import argparse
import copy
import heapq
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402
from rich.console import Console  # noqa: E402

from callward.collector.schema import PARQUET_DIR, POLICIES_DIR, TOOL_CALL_SCHEMA  # noqa: E402
from callward.enforcer.engine import InMemoryLimitState, Request, decide  # noqa: E402
from callward.enforcer.policy import CompiledPolicy, compile_document, load_policy  # noqa: E402
from callward.replay.evaluate import replay  # noqa: E402
from callward.replay.load import load_calls  # noqa: E402

POLICY = REPO / "examples" / "policies" / "fifty_tools.yaml"
VAR = REPO / "var" / "bench-replay"
START_US = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z
DAYS = 14
POOL = 400  # distinct argument texts per tool
out = Console(highlight=False)

# Values that fall on both sides of the policy's predicates.
STRINGS = [
    "/workspace/src/app.py",
    "/workspace/.env",
    "/etc/passwd",
    "/usr/bin/x",
    "*",
    "a*",
    "acme/api",
    "acme/other",
    "main",
    "dev",
    "release",
    "#eng-build",
    "#random",
    "password=1",
    "SELECT * FROM users",
    "select 1; drop table x",
    "ls -la",
    "sudo rm -rf /",
    "git status",
    "https://example.com",
    "http://169.254.169.254/",
    "ops@acme.com",
    "x@gmail.com",
    "kube-system",
    "default",
    "prod",
    "Done",
    "duplicate",
    "usd",
    "jpy",
    "BEGIN PRIVATE KEY x",
    "import subprocess",
    "print(1)",
    "all@acme.com",
    "acme-secrets",
    "acme-data",
    "OPS",
    "HR",
]


def _argument_pool(policy: CompiledPolicy, rng: np.random.Generator) -> dict[str, list[str]]:
    """Per tool entry key, POOL argument texts touching every path its conditions read."""
    pools: dict[str, list[str]] = {}
    for entry in policy.tools:
        paths = {c.path[1:]: c for r in (*entry.require, *entry.deny_if) for c in r.conditions}
        texts = []
        for i in range(POOL):
            args: dict[str, Any] = {"request_id": int(rng.integers(0, 10**9))}
            for path, cond in paths.items():
                if rng.random() < 0.08:
                    continue  # the key is missing
                if isinstance(cond.value, int | float) and not isinstance(cond.value, bool):
                    value: Any = int(rng.choice([0, 1, 50, 300, 5000, 60000, 200000, 20_000_000]))
                elif isinstance(cond.value, bool):
                    value = bool(rng.random() < 0.5)
                elif isinstance(cond.value, list) and cond.value and rng.random() < 0.7:
                    value = str(rng.choice(cond.value))
                elif cond.op == "contains" and rng.random() < 0.2:
                    value = [str(rng.choice(STRINGS)), str(cond.value)]
                else:
                    value = str(rng.choice(STRINGS)) + ("" if i % 3 else f"/{i}")
                node = args
                for seg in path[:-1]:
                    if seg.isdigit():
                        break
                    node = node.setdefault(seg, {})
                if path and not path[-1].isdigit():
                    node[path[-1]] = value
                elif path:
                    args[path[0]] = [{"size": value}]
            texts.append(json.dumps(args, ensure_ascii=False))
        pools[entry.key] = texts
    return pools


def _recorded_variant(document: dict[str, Any]) -> dict[str, Any]:
    """The policy "in force" while the traffic was recorded: looser than the candidate."""
    doc = copy.deepcopy(document)
    for name, body in doc["tools"].items():
        for lim in body.get("limits", []):
            lim["max"] = lim["max"] * 2
        if name.startswith("slack/"):
            body.pop("deny_if", None)
    doc["tools"].pop("aws/terminate_instances", None)
    return doc


def build_store(data: Path, calls: int, seed: int = 7) -> None:
    rng = np.random.default_rng(seed)
    candidate = load_policy(POLICY)
    recorded = compile_document(_recorded_variant(candidate.document))
    pools = _argument_pool(candidate, rng)
    names = [t.key.replace("*", "x") for t in candidate.tools]
    names += [
        "unknown/tool_a",
        "other/thing",
        "github/list_branches",
        "kubernetes/get_pods",
        "debug/dump",
        "stripe/x_admin",
    ]
    weights = rng.pareto(2.0, len(names)) + 0.5
    weights /= weights.sum()
    tool_idx = rng.choice(len(names), size=calls, p=weights).astype(np.int32)
    sessions = rng.integers(0, 60_000, size=calls).astype(np.int32)
    agents = sessions % 300
    grants = agents % 20
    start = START_US + rng.integers(0, DAYS * 86400 * 1_000_000, size=calls, dtype=np.int64)
    # Bursts: 1 % of calls from a few agents hammering slack and shell inside one minute.
    burst = rng.random(calls) < 0.01
    hot = names.index("slack/post_message")
    tool_idx[burst] = np.where(
        rng.random(int(burst.sum())) < 0.5, hot, names.index("shell/execute_command")
    )
    agents[burst] = rng.integers(0, 5, size=int(burst.sum()))
    sessions[burst] = agents[burst]
    start[burst] = (
        START_US
        + (rng.integers(0, DAYS * 24 * 60, size=int(burst.sum())) // 997) * 60_000_000
        + rng.integers(0, 60_000_000, size=int(burst.sum()))
    )
    duration = (rng.lognormal(12.5, 1.0, size=calls)).astype(np.int64)
    failed = rng.random(calls) < 0.03
    servers, _, short = zip(*(n.rpartition("/") for n in names), strict=True)
    pool_keys = [
        next((t.key for t in candidate.tools if t.key.replace("*", "x") == n), None) for n in names
    ]
    flat: list[str] = []
    for key in pool_keys:
        flat.extend(pools[key] if key is not None else ['{"q": 1}'] * POOL)
    arg_idx = tool_idx.astype(np.int64) * POOL + rng.integers(0, POOL, size=calls)
    frame = pl.DataFrame(
        {
            "start_us": start,
            "end_us": start + duration,
            # Decimal digits zero-padded to 16 are valid lowercase hex span ids.
            "span_id": pl.Series(np.arange(1, calls + 1, dtype=np.int64))
            .cast(pl.String)
            .str.zfill(16),
            "agent_id": pl.Series(agents).cast(pl.String).str.replace(r"^", "agent-"),
            "session_id": pl.Series(sessions).cast(pl.String).str.replace(r"^", "sess-"),
            "grant": pl.Series(grants).cast(pl.String).str.replace(r"^", "grant-"),
            "server": pl.Series(
                np.array(servers, dtype=object)[tool_idx].tolist(), dtype=pl.String
            ),
            "tool": pl.Series(np.array(short, dtype=object)[tool_idx].tolist(), dtype=pl.String),
            "arguments": pl.Series(flat, dtype=pl.String).gather(arg_idx),
            "failed": failed,
        }
    )
    # Recorded decisions: the online engine, call by call in time order under the looser
    # policy, as the gateway runs. Outcomes are drawn before deciding: an allowed call that
    # fails gives its quota back at its end, as live; a call not allowed has no outcome.
    decided = online_decisions(frame, recorded, frame["failed"])
    frame = frame.hstack(decided).with_columns(
        pl.when(pl.col("r_decision") == "allow")
        .then(pl.when(pl.col("failed")).then(pl.lit("error")).otherwise(pl.lit("ok")))
        .otherwise(pl.lit(""))
        .alias("outcome")
    )
    table = frame.select(
        pl.from_epoch("start_us", time_unit="us").dt.replace_time_zone("UTC").alias("start_time"),
        pl.from_epoch("end_us", time_unit="us").dt.replace_time_zone("UTC").alias("end_time"),
        pl.col("span_id").str.zfill(32).alias("trace_id"),
        "span_id",
        pl.lit("").alias("parent_span_id"),
        (pl.lit("call-") + pl.col("span_id")).alias("call_id"),
        "agent_id",
        "session_id",
        "grant",
        "server",
        "tool",
        "arguments",
        pl.col("r_decision").alias("decision"),
        pl.col("r_rule").alias("rule"),
        pl.col("r_message").alias("message"),
        pl.lit(recorded.version).alias("policy_version"),
        "outcome",
        pl.when(pl.col("outcome") == "error")
        .then(pl.lit("ToolError"))
        .otherwise(pl.lit(""))
        .alias("error_type"),
        ((pl.col("end_us") - pl.col("start_us")) / 1000).alias("duration_ms"),
        pl.lit(512, dtype=pl.Int64).alias("result_bytes"),
        pl.lit("callward-enforcer").alias("service_name"),
        pl.lit("{}").alias("attributes"),
    ).with_columns(pl.col("start_time").dt.strftime("%Y-%m-%d").alias("__date"))
    for (day,), part in table.partition_by("__date", as_dict=True).items():
        folder = data / PARQUET_DIR / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        arrow = part.drop("__date").to_arrow().cast(TOOL_CALL_SCHEMA)
        pq.write_table(arrow, folder / "part-0.parquet", compression="zstd")
    (data / POLICIES_DIR).mkdir(parents=True, exist_ok=True)
    (data / POLICIES_DIR / f"{recorded.version}.json").write_text(recorded.canonical)
    (VAR / "recorded.yaml").write_text(yaml.safe_dump(recorded.document))


def online_decisions(calls: pl.DataFrame, policy: CompiledPolicy, fails: pl.Series) -> pl.DataFrame:
    """The online engine over ``calls``: ``decide`` per call in time order with real limit
    state, an allowed call whose ``fails`` is true releasing its quota at its end.

    Returns ``r_decision``, ``r_rule``, ``r_message`` in the row order of ``calls``.
    """
    order = calls.with_row_index("__row").with_columns(fails.alias("__fails"))
    order = order.sort("start_us", "span_id")
    n = calls.height
    decisions: list[str] = [""] * n
    rules: list[str] = [""] * n
    messages: list[str] = [""] * n
    state = InMemoryLimitState()
    releases: list[tuple[int, int, tuple[Any, ...]]] = []
    for seq, r in enumerate(order.iter_rows(named=True)):
        while releases and releases[0][0] <= r["start_us"]:
            state.release(heapq.heappop(releases)[2])
        req = Request(
            r["tool"],
            json.loads(r["arguments"]),
            r["server"],
            r["grant"],
            r["agent_id"],
            r["session_id"],
        )
        d = decide(policy, req, state, r["start_us"] / 1_000_000)
        if d.reserved and r["__fails"]:
            heapq.heappush(releases, (r["end_us"], seq, d.reserved))
        i = r["__row"]
        decisions[i], rules[i], messages[i] = d.decision, d.rule, d.message
    return pl.DataFrame(
        {"r_decision": decisions, "r_rule": rules, "r_message": messages},
        schema=dict.fromkeys(("r_decision", "r_rule", "r_message"), pl.String),
    )


def engine_loop(calls: pl.DataFrame, policy: CompiledPolicy) -> float:
    """The baseline: decide each call in time order, releasing failed calls at their end."""
    rows = calls.sort("start_us", "span_id")
    t = time.perf_counter()
    state = InMemoryLimitState()
    releases: list[tuple[int, int, tuple[Any, ...]]] = []
    for seq, r in enumerate(rows.iter_rows(named=True)):
        while releases and releases[0][0] <= r["start_us"]:
            state.release(heapq.heappop(releases)[2])
        req = Request(
            r["tool"],
            json.loads(r["arguments"]),
            r["server"],
            r["grant"],
            r["agent_id"],
            r["session_id"],
        )
        d = decide(policy, req, state, r["start_us"] / 1_000_000)
        if d.reserved and r["outcome"] == "error" and r["decision"] != "deny":
            heapq.heappush(releases, (r["end_us"], seq, d.reserved))
    return time.perf_counter() - t


def replay_fidelity(calls: pl.DataFrame, recorded: CompiledPolicy) -> tuple[int, int]:
    """Calls on which ``replay()`` under the recorded policy gives the recorded decision and
    rule (those of the online engine), and the number of calls."""
    decided, _ = replay(calls, {recorded.version: recorded}, recorded.version)
    same = (decided["r_decision"].cast(pl.String) == calls["decision"].cast(pl.String)) & (
        decided["r_rule"].cast(pl.String).fill_null("")
        == calls["rule"].cast(pl.String).fill_null("")
    )
    return int(same.fill_null(False).sum()), calls.height


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min, {os.cpu_count()} CPUs)"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=10_000_000)
    ap.add_argument("--loop-sample", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="replay() and loop runs, in turns")
    args = ap.parse_args()
    out.print(f"load average at the start: {load_average()}")
    data = VAR / f"store-online-{args.calls}"
    VAR.mkdir(parents=True, exist_ok=True)
    if not (data / PARQUET_DIR).is_dir():
        out.print(f"building a store of {args.calls:,} calls in {data} (once)")
        t = time.perf_counter()
        build_store(data, args.calls)
        out.print(f"  built in {time.perf_counter() - t:.1f} s")

    # 1. The command, end to end, in its own process: wall time and peak RSS.
    report = VAR / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "callward.cli",
        "replay",
        "--data",
        str(data),
        "--policy",
        str(POLICY),
        "--format",
        "json",
        "--out",
        str(report),
    ]
    t = time.perf_counter()
    subprocess.run(cmd, check=False, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    cli_s = time.perf_counter() - t
    rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 / 1024
    doc = json.loads(report.read_text())

    # 2. replay() against the per-call engine loop, on the same in-memory calls, taken
    # in turns (replay, loop, replay, loop, ...) so that both meet the same machine; the
    # medians are compared, and every round is printed.
    policy = load_policy(POLICY)
    calls = load_calls(data).frame.filter(pl.col("decision") != "")
    sample = calls.sort("start_us").head(args.loop_sample)
    replays: list[float] = []
    loops: list[float] = []
    for r in range(args.rounds):
        t = time.perf_counter()
        _, stats = replay(calls, {"candidate": policy}, "candidate")
        replays.append(time.perf_counter() - t)
        loops.append(engine_loop(sample, policy) * calls.height / sample.height)
        out.print(
            f"  round {r + 1}: replay() {replays[-1]:.2f} s, loop {loops[-1]:.0f} s "
            f"(extrapolated), {loops[-1] / replays[-1]:.1f} x"
        )
    replay_s = statistics.median(replays)
    loop_full_s = statistics.median(loops)
    loop_s = loop_full_s * sample.height / calls.height

    out.print(f"calls in store                 {calls.height:>14,}")
    out.print(f"callward replay (end to end)   {cli_s:>12.1f} s   target <= 30 s")
    out.print(f"  peak RSS                     {rss_gb:>12.2f} GB  target <= 4 GB")
    out.print(f"  fidelity                     {doc['fidelity']['share']!s:>14}")
    out.print(f"  changed / newly denied       {doc['changed']:>10,} / {doc['newly_denied']:,}")
    out.print(
        f"replay() one policy, in memory {replay_s:>12.2f} s   (median of {args.rounds}, "
        f"first {replays[0]:.2f} s)"
    )
    out.print(
        f"  calls needing the sequential pass {stats.sequential_calls:>9,} "
        f"({100 * stats.sequential_calls / calls.height:.2f} %), contended keys {stats.contended_keys:,}"
    )
    out.print(
        f"engine loop on {sample.height:,} calls    {loop_s:>12.1f} s "
        f"-> {loop_full_s:.0f} s for {calls.height:,} (median)"
    )
    out.print(f"speed-up, replay() vs loop     {loop_full_s / replay_s:>12.1f} x   target >= 50 x")
    out.print(f"speed-up, whole command vs loop {loop_full_s / cli_s:>11.1f} x")

    # 3. Fidelity against the online engine: replay() under the recorded policy, call by
    # call against the decisions (and rules) the engine loop recorded.
    recorded = compile_document(_recorded_variant(policy.document))
    equal, total = replay_fidelity(calls, recorded)
    out.print(
        f"fidelity, replay() vs the online engine {equal:,} / {total:,} "
        f"= {100 * equal / total:.4f} %   target 100 %"
    )
    out.print(f"load average at the end: {load_average()}")
    if equal != total:
        sys.exit(1)


if __name__ == "__main__":
    main()
