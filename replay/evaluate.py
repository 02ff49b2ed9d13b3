"""Replay: the decision each recorded call would get under a policy, exactly as the online
enforcer would have made it, computed over the whole table at once.

Three stages, one engine:

1. **Stateless verdict** for every call, vectorized (:mod:`enforcer.vectorize`, which is
   property-tested against :func:`enforcer.engine.decide`). Messages of denied calls come
   from ``decide`` itself, run on one representative call per (tool, rule).
2. **Contention.** Each call the policy would allow reserves one unit of each applicable
   limit, keyed by (counter, scope key, window start), as ``decide`` keys them. A key whose
   attempts never exceed its ``max`` can never refuse a call, whatever the order, so calls
   touching only such keys are allowed without further work.
3. **Sequential pass** over every call that touches at least one contended key, in time
   order, with the real ``decide`` and an ``InMemoryLimitState``. Keys that are not
   contended may be under-counted in that pass, which is harmless: they never fill up.

Limit state follows the online enforcer: a denied call reserves nothing; an allowed call
keeps its quota unless it was executed and failed (``outcome = "error"`` and a recorded
decision other than ``deny``), in which case the quota comes back at the call's
``end_time``, when the enforcer received its Report. A release and a decision at the same
microsecond are applied release first; calls starting at the same microsecond are taken in
``span_id`` order. When several policy versions are replayed together (fidelity), a switch
of version resets the counters whose (window, max, scope) changed, as a reload does.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from enforcer.engine import (
    ALLOW,
    InMemoryLimitState,
    Request,
    applicable_limits,
    decide,
)
from enforcer.policy import CompiledPolicy
from enforcer.vectorize import stateless_verdicts

REPLAY_COLUMNS = ("r_decision", "r_rule", "r_message")
# Columns ``replay`` needs in its input frame.
NEEDED = (
    "start_us",
    "end_us",
    "span_id",
    "agent_id",
    "session_id",
    "grant",
    "server",
    "tool",
    "arguments",
    "decision",
    "outcome",
)
_ROW = "__row"
_VERSION = "__version"

Progress = Callable[[str, float], None]
"""Reports (stage, fraction done); replay never prints."""


class EngineDisagreement(RuntimeError):
    """The vectorized verdict and the engine differ on a call: a bug, never a guess."""


@dataclass(frozen=True)
class ReplayStats:
    """How much of the work each stage did (shown in reports and the benchmark)."""

    calls: int
    pending_limits: int
    contended_keys: int
    sequential_calls: int


def _no_progress(stage: str, fraction: float) -> None:
    return None


def replay(
    calls: pl.DataFrame,
    policies: Mapping[str, CompiledPolicy],
    version_of_row: pl.Series | str,
    *,
    progress: Progress = _no_progress,
) -> tuple[pl.DataFrame, ReplayStats]:
    """Decide every row of ``calls`` and return ``r_decision``, ``r_rule``, ``r_message``
    in row order.

    ``version_of_row`` is either one key of ``policies`` (replay all rows with that policy)
    or a string Series giving each row's key (fidelity: each call with its recorded version).
    """
    missing = [c for c in NEEDED if c not in calls.columns]
    if missing:
        raise ValueError(f"calls lack column(s): {', '.join(missing)}")
    n = calls.height
    if isinstance(version_of_row, str):
        versions: pl.Series | pl.Expr = pl.lit(version_of_row, dtype=pl.String).alias(_VERSION)
    else:
        versions = version_of_row.alias(_VERSION).cast(pl.String)
    frame = calls.select(NEEDED).with_columns(versions).with_row_index(_ROW)
    if n == 0:
        empty = pl.DataFrame(schema=dict.fromkeys(REPLAY_COLUMNS, pl.String))
        return empty, ReplayStats(0, 0, 0, 0)

    progress("policy conditions", 0.0)
    verdicts = _stateless(frame, policies)
    progress("policy conditions", 1.0)
    frame = frame.hstack(verdicts.select("s_decision", "s_rule", "s_entry"))
    messages = _messages(frame, policies)

    progress("rate limits", 0.0)
    sequential_rows, pending, contended = _contended_rows(frame, policies)
    progress("rate limits", 1.0)
    decided = _sequential(frame, sequential_rows, policies, progress)

    out = frame.select(_ROW, "s_decision", "s_rule", _VERSION, "server", "tool").join(
        messages, on=[_VERSION, "server", "tool", "s_rule"], how="left"
    )
    out = out.join(decided, on=_ROW, how="left").sort(_ROW)
    result = out.select(
        pl.coalesce("q_decision", "s_decision").alias("r_decision"),
        pl.coalesce("q_rule", "s_rule").alias("r_rule"),
        pl.coalesce("q_message", "s_message", pl.lit("")).alias("r_message"),
    )
    return result, ReplayStats(n, pending, contended, decided.height)


# --------------------------------------------------------------------------- stage 1


def _stateless(frame: pl.DataFrame, policies: Mapping[str, CompiledPolicy]) -> pl.DataFrame:
    versions = frame.get_column(_VERSION).unique().to_list()
    if len(versions) == 1:
        v = stateless_verdicts(policies[str(versions[0])], frame)
        return pl.concat([frame.select(_ROW), v], how="horizontal")
    parts = []
    for (version,), part in frame.partition_by(_VERSION, as_dict=True).items():
        policy = policies[str(version)]
        v = stateless_verdicts(policy, part)
        parts.append(pl.concat([part.select(_ROW), v], how="horizontal"))
    return pl.concat(parts).sort(_ROW)


def _request(row: Mapping[str, Any]) -> Request:
    return Request(
        tool=row["tool"],
        arguments=json.loads(row["arguments"]),
        server=row["server"],
        grant=row["grant"],
        agent_id=row["agent_id"],
        session_id=row["session_id"],
    )


def _messages(frame: pl.DataFrame, policies: Mapping[str, CompiledPolicy]) -> pl.DataFrame:
    """The engine's message for each refused (version, server, tool, rule), taken from
    ``decide`` on one representative call, which must agree with the vectorized verdict."""
    refused = frame.filter(pl.col("s_decision") != ALLOW)
    keys = [_VERSION, "server", "tool", "s_rule"]
    reps = refused.group_by(keys).agg(pl.all().first())
    rows: dict[str, list[str]] = {k: [] for k in [*keys, "s_message"]}
    for row in reps.iter_rows(named=True):
        d = decide(policies[row[_VERSION]], _request(row), InMemoryLimitState(), 0.0)
        if (d.decision, d.rule) != (row["s_decision"], row["s_rule"]):
            raise EngineDisagreement(
                f"span {row['span_id']}: engine says {d.decision} {d.rule}, "
                f"vectorized verdict says {row['s_decision']} {row['s_rule']}"
            )
        for k in keys:
            rows[k].append(row[k])
        rows["s_message"].append(d.message)
    return pl.DataFrame(rows, schema=dict.fromkeys([*keys, "s_message"], pl.String))


# --------------------------------------------------------------------------- stage 2


def _limit_table(policies: Mapping[str, CompiledPolicy]) -> pl.DataFrame:
    """One row per (version, entry, counter): the limits an allowed call reserves."""
    rows: dict[str, list[Any]] = {
        k: [] for k in (_VERSION, "s_entry", "counter", "window_s", "max", "scope")
    }
    for version, policy in policies.items():
        for index in range(-1, len(policy.tools)):
            entry = None if index < 0 else policy.tools[index]
            seen: set[str] = set()
            for lim in applicable_limits(entry, policy):
                if lim.counter in seen:
                    continue  # decide counts a counter listed twice once
                seen.add(lim.counter)
                for k, v in (
                    (_VERSION, version),
                    ("s_entry", index),
                    ("counter", lim.counter),
                    ("window_s", lim.window_seconds),
                    ("max", lim.max),
                    ("scope", lim.scope),
                ):
                    rows[k].append(v)
    return pl.DataFrame(
        rows,
        schema={
            _VERSION: pl.String,
            "s_entry": pl.Int32,
            "counter": pl.String,
            "window_s": pl.Int64,
            "max": pl.Int64,
            "scope": pl.String,
        },
    )


def _scope_key() -> pl.Expr:
    """The scope key as ``enforcer.engine.scope_key`` builds it."""
    scope = pl.col("scope")
    tool_key = (
        pl.when(pl.col("server") != "")
        .then(pl.col("server") + "/" + pl.col("tool"))
        .otherwise(pl.col("tool"))
    )
    return (
        pl.when(scope == "grant")
        .then(pl.col("grant"))
        .when(scope == "agent")
        .then(pl.col("agent_id"))
        .when(scope == "session")
        .then(pl.col("session_id"))
        .when(scope == "tool")
        .then(tool_key)
        .otherwise(pl.lit(""))
    )


def _contended_rows(
    frame: pl.DataFrame, policies: Mapping[str, CompiledPolicy]
) -> tuple[pl.Series, int, int]:
    """Rows that touch a limit key whose attempts exceed its max; and two counts."""
    limits = _limit_table(policies)
    allowed = frame.filter(pl.col("s_decision") == ALLOW).select(
        _ROW, _VERSION, "s_entry", "start_us", "agent_id", "session_id", "grant", "server", "tool"
    )
    reservations = allowed.join(limits, on=[_VERSION, "s_entry"], how="inner").select(
        _ROW,
        "counter",
        _scope_key().alias("scope_key"),
        ((pl.col("start_us") // (pl.col("window_s") * 1_000_000)) * pl.col("window_s")).alias(
            "window_start"
        ),
        "max",
    )
    key = ["counter", "scope_key", "window_start"]
    # Versions may give one counter different maxima: the smallest one decides contention.
    contended = (
        reservations.group_by(key)
        .agg(pl.len().alias("attempts"), pl.col("max").min().alias("max"))
        .filter(pl.col("attempts") > pl.col("max"))
        .select(key)
    )
    rows = reservations.join(contended, on=key, how="semi").get_column(_ROW).unique()
    pending = reservations.get_column(_ROW).n_unique() if reservations.height else 0
    return rows, pending, contended.height


# --------------------------------------------------------------------------- stage 3


def _sequential(
    frame: pl.DataFrame,
    rows: pl.Series,
    policies: Mapping[str, CompiledPolicy],
    progress: Progress,
) -> pl.DataFrame:
    """Replay the contended calls in time order with the engine itself."""
    schema = {
        _ROW: pl.UInt32,
        "q_decision": pl.String,
        "q_rule": pl.String,
        "q_message": pl.String,
    }
    if rows.len() == 0:
        return pl.DataFrame(schema=schema)
    switches = _version_switches(frame) if len(policies) > 1 else []
    calls = frame.join(pl.DataFrame({_ROW: rows}), on=_ROW, how="semi").sort(
        "start_us", "span_id"
    )
    state = InMemoryLimitState()
    releases: list[tuple[int, int, int, tuple[Any, ...]]] = []  # (end, seq, reserved_at, keys)
    reset_at: dict[str, int] = {}  # counter -> sequence number of its last reset
    current = switches[0][1] if switches else None
    next_switch = 1
    out_row: list[int] = []
    out_decision: list[str] = []
    out_rule: list[str] = []
    out_message: list[str] = []
    total = calls.height
    step = max(total // 100, 1)
    for seq, row in enumerate(calls.iter_rows(named=True)):
        start = row["start_us"]
        while releases and releases[0][0] <= start:
            _, _, reserved_at, keys = heapq.heappop(releases)
            state.release(k for k in keys if reset_at.get(k[0], -1) <= reserved_at)
        while next_switch < len(switches) and switches[next_switch][0] <= start:
            new = switches[next_switch][1]
            if current is not None and new != current:
                old_sigs = policies[current].limit_signatures()
                new_sigs = policies[new].limit_signatures()
                kept = {c for c, sig in new_sigs.items() if old_sigs.get(c) == sig}
                for counter in {k[0] for k in state.counts} | set(old_sigs):
                    if counter not in kept:
                        reset_at[counter] = seq
                state.retain_counters(kept)
            current = new
            next_switch += 1
        policy = policies[row[_VERSION]]
        d = decide(policy, _request(row), state, start / 1_000_000)
        if d.reserved and row["outcome"] == "error" and row["decision"] != "deny":
            heapq.heappush(releases, (row["end_us"], seq, seq, d.reserved))
        out_row.append(row[_ROW])
        out_decision.append(d.decision)
        out_rule.append(d.rule)
        out_message.append(d.message)
        if seq % step == 0:
            progress("sequential pass", seq / total)
    progress("sequential pass", 1.0)
    return pl.DataFrame(
        {
            _ROW: out_row,
            "q_decision": out_decision,
            "q_rule": out_rule,
            "q_message": out_message,
        },
        schema=schema,
    )


def _version_switches(frame: pl.DataFrame) -> list[tuple[int, str]]:
    """(time, version) each time the version in force changes, over the full timeline."""
    timeline = frame.select("start_us", "span_id", _VERSION).sort("start_us", "span_id")
    changed = timeline.filter(pl.col(_VERSION) != pl.col(_VERSION).shift(1).fill_null(""))
    return [(int(t), str(v)) for t, v in changed.select("start_us", _VERSION).iter_rows()]


__all__ = ["REPLAY_COLUMNS", "EngineDisagreement", "ReplayStats", "replay"]
