"""Put recorded traffic, a baseline and a candidate side by side, one row per call.

This is where replay decides what it can and cannot say about a call:

* a call is **replayed** when it has a recorded decision and readable arguments; spans
  without a decision (from other instrumentation) never went through the enforcer, so they
  take no quota in replay either;
* it is **UNKNOWN** in the comparison when there is nothing faithful to compare with: no
  recorded decision, unreadable arguments, or (with the recorded decisions as baseline) a
  decision a human changed (an approval attribute);
* for **fidelity**, a call is also UNKNOWN when its policy version is not kept in
  ``D/policies`` or its recorded decision was ``require_approval`` (what happened next
  depended on a person).

Limits need history: calls are read from the start of the UTC day that contains ``since``
(the longest calendar window is a day) so counters are warm, but only calls from ``since``
on are reported. A sliding window has no such start (whether a call an hour before
``since`` was allowed depends on the calls before it), so when any policy of the replay
has a sliding limit every call before ``since`` is read. ``--agent`` and ``--tool`` choose what is reported, never what is replayed, since
a global or per-tool limit is shared with everyone else's calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from callward.enforcer.policy import CompiledPolicy
from callward.enforcer.vectorize import CallCodes
from callward.replay.evaluate import Progress, ReplayStats, replay
from callward.replay.load import (
    LoadedCalls,
    RecordedPolicies,
    SkippedFile,
    load_calls,
    load_recorded_policies,
)

RECORDED = "__recorded__"
# Columns read by the replays and by nothing after them (reports, --decisions-out).
REPLAY_ONLY = ("arguments", "end_us", "grant", "outcome")

UNKNOWN_REASONS = (
    "no_decision",
    "unreadable_arguments",
    "human_approval",
    "unknown_policy_version",
)


@dataclass(frozen=True)
class ReplayRequest:
    """What to replay: one typed config, filled by the CLI or by a test."""

    data_dir: Path
    candidate: CompiledPolicy
    baseline: CompiledPolicy | None = None
    since: datetime | None = None
    until: datetime | None = None
    agent: str | None = None
    tool: str | None = None
    skip_bad_files: bool = False


@dataclass
class Comparison:
    """Everything a report needs. ``calls`` holds one row per reported call."""

    request: ReplayRequest
    calls: pl.DataFrame
    stats: ReplayStats
    fidelity_stats: ReplayStats
    files_read: int
    skipped_files: tuple[SkippedFile, ...]
    invalid_policy_files: tuple[SkippedFile, ...]
    recorded_versions: tuple[str, ...] = ()
    first_call_us: int | None = None
    last_call_us: int | None = None
    notes: list[str] = field(default_factory=list)


def _warmup_start(since: datetime | None, policies: list[CompiledPolicy]) -> datetime | None:
    if since is None or any(lim.sliding for p in policies for lim in p.all_limits()):
        return None
    return since.replace(hour=0, minute=0, second=0, microsecond=0)


def compare(req: ReplayRequest, progress: Progress | None = None) -> Comparison:
    """Replay the store under the candidate (and the baseline, and each recorded version)."""
    report = progress or (lambda stage, fraction: None)
    report("reading the store", 0.0)
    recorded: RecordedPolicies = load_recorded_policies(req.data_dir)
    policies = [req.candidate, *([req.baseline] if req.baseline else [])]
    loaded: LoadedCalls = load_calls(
        req.data_dir,
        since=_warmup_start(req.since, [*policies, *recorded.by_version.values()]),
        until=req.until,
        skip_bad_files=req.skip_bad_files,
    )
    report("reading the store", 1.0)
    calls = loaded.frame
    files_read, skipped_files = loaded.files_read, loaded.skipped
    del loaded  # the frame is reshaped below: let go of the loaded one
    since_us = int(req.since.timestamp() * 1_000_000) if req.since else None
    in_report = pl.lit(True) if since_us is None else pl.col("start_us") >= since_us
    if req.agent is not None:
        in_report = in_report & (pl.col("agent_id") == req.agent)
    if req.tool is not None:
        in_report = in_report & (pl.col("tool") == req.tool)
    calls = calls.with_row_index("__call").with_columns(
        in_report.alias("in_report"),
        (pl.col("decision") != "").alias("replayable"),
    )

    everything = bool(calls.get_column("replayable").all())
    # Filtering copies every column; most stores need none, so skip it when it is a no-op.
    replayable = calls if everything else calls.filter(pl.col("replayable"))
    # Signatures (server, tool, arguments) are numbered once, for every replay of them.
    codes = CallCodes(replayable)
    candidate, stats = replay(
        replayable, {"candidate": req.candidate}, "candidate", progress=report, codes=codes
    )
    replayed = replayable.select("__call").hstack(candidate)
    if req.baseline is not None:
        base, _ = replay(
            replayable, {"baseline": req.baseline}, "baseline", progress=report, codes=codes
        )
        base = base.rename(
            {"r_decision": "b_decision", "r_rule": "b_rule", "r_message": "b_message"}
        )
    else:
        base = replayable.select(
            pl.col("decision").alias("b_decision"),
            pl.col("rule").alias("b_rule"),
            pl.lit(None, dtype=pl.String).alias("b_message"),
        )
    replayed = replayed.hstack(base)

    fidelity, fidelity_stats = _fidelity(replayable, recorded.by_version, report, codes)
    replayed = replayed.hstack(fidelity)
    del replayable, codes, candidate, base, fidelity
    # The replays are done: the columns only they read are dropped before the result
    # columns are added, which is when the process holds the most memory.
    calls = calls.drop(REPLAY_ONLY)

    if everything:
        calls = calls.hstack(replayed.drop("__call")).drop("__call")
    else:
        calls = calls.join(replayed, on="__call", how="left").drop("__call")
    no_decision = (calls.get_column("decision") == "").to_numpy()
    unreadable = calls.get_column("r_decision").is_null().to_numpy()
    approval = calls.get_column("approval").to_numpy()
    recorded_approval = (calls.get_column("decision") == "require_approval").to_numpy()
    calls = calls.hstack(
        [
            _first_reason(
                "unknown_reason",
                [
                    ("no_decision", no_decision),
                    ("unreadable_arguments", unreadable),
                    ("human_approval", approval if req.baseline is None else None),
                ],
            ),
            _first_reason(
                "fidelity_unknown_reason",
                [
                    ("no_decision", no_decision),
                    ("unreadable_arguments", unreadable),
                    ("human_approval", approval | recorded_approval),
                    (
                        "unknown_policy_version",
                        calls.get_column("f_decision").is_null().to_numpy(),
                    ),
                ],
            ),
        ]
    )
    # Filtering copies every column: skip it when every call is reported.
    filtered = since_us is not None or req.agent is not None or req.tool is not None
    reported = calls.filter(pl.col("in_report")) if filtered else calls
    first = reported.get_column("start_us").min() if reported.height else None
    last = reported.get_column("start_us").max() if reported.height else None
    return Comparison(
        request=req,
        calls=reported,
        stats=stats,
        fidelity_stats=fidelity_stats,
        files_read=files_read,
        skipped_files=skipped_files,
        invalid_policy_files=recorded.invalid,
        recorded_versions=tuple(sorted(recorded.by_version)),
        first_call_us=int(first) if isinstance(first, int) else None,
        last_call_us=int(last) if isinstance(last, int) else None,
    )


def _first_reason(name: str, reasons: list[tuple[str, np.ndarray | None]]) -> pl.Series:
    """Per call, the first reason whose mask holds (None: never), else null. Built from
    boolean arrays and named at the end: a Polars expression over the whole frame, or a
    chain of string literals, copies gigabytes on tens of millions of calls."""
    size = len(next(m for _, m in reasons if m is not None))
    code = np.zeros(size, dtype=np.uint32)
    for i in range(len(reasons), 0, -1):
        mask = reasons[i - 1][1]
        if mask is not None:
            code[mask] = i
    # An Enum: four bytes per call instead of a string view of sixteen.
    names = [n for n, _ in reasons]
    labels = pl.Series(name, [None, *names], dtype=pl.Enum(names))
    return labels.gather(code)


def _fidelity(
    replayable: pl.DataFrame,
    policies: dict[str, CompiledPolicy],
    progress: Progress,
    codes: CallCodes,
) -> tuple[pl.DataFrame, ReplayStats]:
    """Each call replayed under its own recorded policy version (null when unknown)."""
    known = pl.col("policy_version").is_in(list(policies))
    mask = replayable.select(known.alias("k")).get_column("k")
    if not bool(mask.any()):
        empty = pl.DataFrame(
            {
                "f_decision": pl.repeat(None, replayable.height, dtype=pl.String, eager=True),
                "f_rule": pl.repeat(None, replayable.height, dtype=pl.String, eager=True),
            }
        )
        return empty, ReplayStats(0, 0, 0, 0)
    everything = bool(mask.all())
    subset = replayable if everything else replayable.filter(mask)
    result, stats = replay(
        subset,
        policies,
        subset.get_column("policy_version"),
        progress=progress,
        codes=codes if everything else codes.take(np.flatnonzero(mask.to_numpy())),
        with_messages=False,
    )
    result = result.select(
        pl.col("r_decision").alias("f_decision"), pl.col("r_rule").alias("f_rule")
    )
    if subset.height == replayable.height:
        return result, stats
    placed = (
        replayable.select(pl.arange(0, replayable.height, dtype=pl.UInt32).alias("__i"))
        .filter(mask)
        .hstack(result)
    )
    full = (
        pl.DataFrame({"__i": pl.arange(0, replayable.height, dtype=pl.UInt32, eager=True)})
        .join(placed, on="__i", how="left")
        .sort("__i")
    )
    return full.select("f_decision", "f_rule"), stats


__all__ = ["RECORDED", "UNKNOWN_REASONS", "Comparison", "ReplayRequest", "compare"]
