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

import numpy as np
import polars as pl

from enforcer.engine import InMemoryLimitState, Request, applicable_limits, decide
from enforcer.policy import CompiledPolicy
from enforcer.vectorize import (
    DECISION_CODES,
    UNREADABLE,
    EngineDisagreement,
    Interner,
    stateless_verdicts,
)

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
SCOPE_COLUMNS = {"grant": "grant", "agent": "agent_id", "session": "session_id"}

Progress = Callable[[str, float], None]
"""Reports (stage, fraction done); replay never prints."""


@dataclass(frozen=True)
class ReplayStats:
    """How much of the work each stage did (shown in reports and the benchmark)."""

    calls: int
    pending_limits: int
    contended_keys: int
    sequential_calls: int


@dataclass
class _Codes:
    """Replayed verdicts of every call as codes into shared string tables."""

    decision: np.ndarray
    rule: np.ndarray
    message: np.ndarray
    entry: np.ndarray
    scope_tool: np.ndarray  # code of the engine's "tool" scope key
    version: np.ndarray  # index into the list of versions


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
    in row order (``r_decision`` is null for a call whose arguments cannot be read).

    ``version_of_row`` is either one key of ``policies`` (replay all rows with that policy)
    or a string Series giving each row's key (fidelity: each call with its recorded version).
    """
    missing = [c for c in NEEDED if c not in calls.columns]
    if missing:
        raise ValueError(f"calls lack column(s): {', '.join(missing)}")
    n = calls.height
    if n == 0:
        empty = pl.DataFrame(schema=dict.fromkeys(REPLAY_COLUMNS, pl.String))
        return empty, ReplayStats(0, 0, 0, 0)
    versions = list(policies)
    rules, messages, scopes = Interner(), Interner(), Interner()
    progress("policy conditions", 0.0)
    codes = _stateless(calls, policies, versions, version_of_row, rules, messages, scopes)
    progress("policy conditions", 1.0)

    progress("rate limits", 0.0)
    rows, pending, contended = _contended_rows(calls, codes, policies, versions, scopes)
    progress("rate limits", 1.0)
    sequential = _sequential(calls, rows, codes, policies, versions, progress)
    for i, d in sequential.items():
        if d is None:
            codes.decision[i] = UNREADABLE
            continue
        codes.decision[i] = DECISION_CODES.index(d.decision)
        codes.rule[i] = rules(d.rule)
        codes.message[i] = messages(d.message)

    names = pl.Series([*DECISION_CODES, None], dtype=pl.String)
    decision = np.where(codes.decision < 0, len(DECISION_CODES), codes.decision)
    unreadable = codes.decision == UNREADABLE
    result = pl.DataFrame(
        {
            "r_decision": names.gather(decision),
            "r_rule": pl.Series(rules.values, dtype=pl.String).gather(codes.rule),
            "r_message": pl.Series(messages.values, dtype=pl.String).gather(codes.message),
        }
    )
    if unreadable.any():
        mask = pl.Series(unreadable)
        result = result.with_columns(
            pl.when(mask).then(None).otherwise(pl.col(c)).alias(c) for c in REPLAY_COLUMNS
        )
    return result, ReplayStats(n, pending, contended, len(sequential))


# --------------------------------------------------------------------------- stage 1


def _stateless(
    calls: pl.DataFrame,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    version_of_row: pl.Series | str,
    rules: Interner,
    messages: Interner,
    scopes: Interner,
) -> _Codes:
    n = calls.height
    codes = _Codes(
        decision=np.zeros(n, dtype=np.int8),
        rule=np.zeros(n, dtype=np.int32),
        message=np.zeros(n, dtype=np.int32),
        entry=np.zeros(n, dtype=np.int32),
        scope_tool=np.zeros(n, dtype=np.int32),
        version=np.zeros(n, dtype=np.int32),
    )
    parts: list[tuple[int, np.ndarray | None]]
    if isinstance(version_of_row, str):
        parts = [(versions.index(version_of_row), None)]
    else:
        index = {v: i for i, v in enumerate(versions)}
        per_row = version_of_row.replace_strict(index, return_dtype=pl.Int32).to_numpy()
        codes.version[:] = per_row
        parts = [(i, np.flatnonzero(per_row == i)) for i in sorted(set(per_row.tolist()))]
    for vi, rows in parts:
        part = calls if rows is None else calls[pl.Series(rows)]
        v = stateless_verdicts(policies[versions[vi]], part)
        rule_map = np.array([rules(r) for r in v.rules.values] or [0], dtype=np.int32)
        message_map = np.array([messages(m) for m in v.messages.values], dtype=np.int32)
        scope_map = np.array(
            [scopes(f"{s}/{t}" if s else t) for s, t in v.pairs] or [0], dtype=np.int32
        )
        target = slice(None) if rows is None else rows
        codes.decision[target] = v.decision
        codes.rule[target] = rule_map[v.rule]
        codes.message[target] = message_map[v.message]
        codes.entry[target] = v.entry
        codes.scope_tool[target] = scope_map[v.pair]
    return codes


# --------------------------------------------------------------------------- stage 2


def _hash_codes(column: pl.Series) -> np.ndarray:
    """A 64-bit hash per value. Equal strings get equal codes; two different strings that
    collide only merge two keys, which can make a key look contended (more calls go to the
    sequential pass, where the engine uses the real keys), never less: still exact."""
    return column.hash(seed=0).to_numpy().view(np.int64)


def _contended_rows(
    calls: pl.DataFrame,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    scopes: Interner,
) -> tuple[np.ndarray, int, int]:
    """Rows that touch a limit key whose attempts exceed its max; and two counts.

    A key is (counter, scope kind, scope value, window start) in integers; the scope kind
    only separates values of different columns, which the engine would merge only for one
    counter whose scope changed between versions, and a reload resets such a counter.
    """
    allowed = np.flatnonzero(codes.decision == 0)
    if allowed.size == 0:
        return np.zeros(0, dtype=np.int64), 0, 0
    group = codes.version[allowed].astype(np.int64) * 1_000_003 + codes.entry[allowed] + 1
    order = np.argsort(group, kind="stable")
    allowed, group = allowed[order], group[order]
    starts = calls.get_column("start_us").to_numpy()
    scope_values: dict[str, np.ndarray] = {}
    counters = Interner()
    pieces: list[tuple[np.ndarray, ...]] = []
    for vi, version in enumerate(versions):
        policy = policies[version]
        for index in range(-1, len(policy.tools)):
            g = vi * 1_000_003 + index + 1
            lo, hi = np.searchsorted(group, [g, g + 1])
            if lo == hi:
                continue
            rows = allowed[lo:hi]
            seen: set[str] = set()
            entry = None if index < 0 else policy.tools[index]
            for lim in applicable_limits(entry, policy):
                if lim.counter in seen:
                    continue  # decide counts a counter listed twice once
                seen.add(lim.counter)
                if lim.scope == "tool":
                    value = codes.scope_tool[rows].astype(np.int64)
                elif lim.scope == "global":
                    value = np.zeros(rows.size, dtype=np.int64)
                else:
                    column = SCOPE_COLUMNS[lim.scope]
                    if column not in scope_values:
                        scope_values[column] = _hash_codes(calls.get_column(column))
                    value = scope_values[column][rows]
                window = starts[rows] // (lim.window_seconds * 1_000_000) * lim.window_seconds
                kind = ("tool", "global", "grant", "agent", "session").index(lim.scope)
                pieces.append(
                    (
                        rows,
                        np.full(rows.size, counters(lim.counter) * 8 + kind, dtype=np.int64),
                        value,
                        window,
                        np.full(rows.size, lim.max, dtype=np.int64),
                    )
                )
    if not pieces:
        return np.zeros(0, dtype=np.int64), 0, 0
    rows = np.concatenate([p[0] for p in pieces])
    # One 64-bit key per (counter, scope value, window start), mixed like a hash. Two keys
    # that collide are merged, which can only make a key look contended: exact still.
    with np.errstate(over="ignore"):
        key = (
            np.concatenate([p[2] for p in pieces]).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
            + np.concatenate([p[3] for p in pieces]).view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
            + np.concatenate([p[1] for p in pieces]).view(np.uint64) * np.uint64(0x165667B19E3779F9)
        )
    reservations = pl.DataFrame({"key": key, "max": np.concatenate([p[4] for p in pieces])})
    del pieces
    # Versions may give one counter different maxima: the smallest one decides contention.
    contended = (
        reservations.group_by("key")
        .agg(pl.len().alias("attempts"), pl.col("max").min().alias("max"))
        .filter(pl.col("attempts") > pl.col("max"))
        .get_column("key")
    )
    # Boolean masks rather than np.unique: linear, no sort of millions of rows.
    mask = np.zeros(calls.height, dtype=bool)
    mask[rows] = True
    pending = int(mask.sum())
    mask[:] = False
    if contended.len():
        hit = reservations.select(pl.col("key").is_in(contended.implode())).to_series()
        mask[rows[hit.to_numpy()]] = True
    return np.flatnonzero(mask), pending, contended.len()


# --------------------------------------------------------------------------- stage 3


def _sequential(
    calls: pl.DataFrame,
    rows: np.ndarray,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    progress: Progress,
) -> dict[int, Any]:
    """Replay the contended calls in time order with the engine itself."""
    if rows.size == 0:
        return {}
    switches = _version_switches(calls, codes) if len(versions) > 1 else []
    subset = (
        calls.select(NEEDED)[pl.Series(rows)]
        .with_columns(pl.Series("__row", rows), pl.Series("__v", codes.version[rows]))
        .sort("start_us", "span_id")
    )
    state = InMemoryLimitState()
    releases: list[tuple[int, int, int, tuple[Any, ...]]] = []  # (end, seq, reserved_at, keys)
    reset_at: dict[str, int] = {}  # counter -> sequence number of its last reset
    current = switches[0][1] if switches else None
    next_switch = 1
    decided: dict[int, Any] = {}
    total = subset.height
    step = max(total // 100, 1)
    # Only entries with a condition on ``args`` need the arguments decoded: decide never
    # reads them otherwise, so an empty mapping gives the same decision, faster.
    reads_args = {
        (vi, index): any(
            c.path[0] == "args" for r in (*t.require, *t.deny_if) for c in r.conditions
        )
        for vi, version in enumerate(versions)
        for index, t in enumerate(policies[version].tools)
    }
    columns = (
        "start_us",
        "end_us",
        "__row",
        "__v",
        "__e",
        "tool",
        "server",
        "grant",
        "agent_id",
        "session_id",
        "arguments",
        "outcome",
        "decision",
    )
    subset = subset.with_columns(pl.Series("__e", codes.entry[subset.get_column("__row")]))
    for seq, row in enumerate(subset.select(columns).iter_rows()):
        start, end, index, vi, entry, tool, server, grant, agent, session = row[:10]
        arguments_text, outcome, recorded = row[10:]
        while releases and releases[0][0] <= start:
            _, _, reserved_at, keys = heapq.heappop(releases)
            state.release(k for k in keys if reset_at.get(k[0], -1) <= reserved_at)
        while next_switch < len(switches) and switches[next_switch][0] <= start:
            new = switches[next_switch][1]
            if current is not None and new != current:
                old_sigs = policies[versions[current]].limit_signatures()
                new_sigs = policies[versions[new]].limit_signatures()
                kept = {c for c, sig in new_sigs.items() if old_sigs.get(c) == sig}
                for counter in {k[0] for k in state.counts} | set(old_sigs):
                    if counter not in kept:
                        reset_at[counter] = seq
                state.retain_counters(kept)
            current = new
            next_switch += 1
        arguments: Any = {}
        if reads_args.get((vi, entry), False):
            try:
                arguments = json.loads(arguments_text)
            except ValueError:
                decided[index] = None  # unreadable arguments: no decision, no quota
                continue
        request = Request(tool, arguments, server, grant, agent, session)
        d = decide(policies[versions[vi]], request, state, start / 1_000_000)
        if d.reserved and outcome == "error" and recorded != "deny":
            heapq.heappush(releases, (end, seq, seq, d.reserved))
        decided[index] = d
        if seq % step == 0:
            progress("sequential pass", seq / total)
    progress("sequential pass", 1.0)
    return decided


def _version_switches(calls: pl.DataFrame, codes: _Codes) -> list[tuple[int, int]]:
    """(time, version index) each time the version in force changes, over the timeline."""
    timeline = (
        calls.select("start_us", "span_id")
        .with_columns(pl.Series("__v", codes.version))
        .sort("start_us", "span_id")
    )
    changed = timeline.filter(pl.col("__v") != pl.col("__v").shift(1).fill_null(-1))
    return [(int(t), int(v)) for t, v in changed.select("start_us", "__v").iter_rows()]


__all__ = ["REPLAY_COLUMNS", "EngineDisagreement", "ReplayStats", "replay"]
