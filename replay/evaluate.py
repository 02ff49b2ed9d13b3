"""Replay: the decision each recorded call would get under a policy, exactly as the online
enforcer would have made it, computed over the whole table at once.

Four stages, one engine:

1. **Stateless verdict** for every call, vectorized (:mod:`enforcer.vectorize`, which is
   property-tested against :func:`enforcer.engine.decide`). Messages of denied calls come
   from ``decide`` itself, run on one representative call per (tool, rule).
2. **Contention.** Each call the policy would allow reserves one unit of each applicable
   limit, keyed by (counter, scope key, window start), as ``decide`` keys them. A key whose
   attempts never exceed its ``max`` can never refuse a call, whatever the order, so calls
   touching only such keys are allowed without further work.
3. **Settling without the engine loop** (``_settle``): a contended call whose rank among
   the attempts on each of its contended keys is below ``max`` is allowed whatever came
   before; a key whose calls touch no other contended key is settled by counting alone.
4. **Sequential pass** over the remaining contended calls, in time order, with the real
   ``decide`` and an ``InMemoryLimitState`` (certainly allowed calls only add their
   reservations). Keys that are not contended may be under-counted in that pass, which is
   harmless: they never fill up.

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from enforcer.engine import (
    DENY,
    CounterKey,
    Decision,
    InMemoryLimitState,
    Request,
    applicable_limits,
    counter_key,
    decide,
)
from enforcer.policy import CompiledPolicy, Limit
from enforcer.vectorize import (
    DECISION_CODES,
    UNREADABLE,
    EngineDisagreement,
    Interner,
    argument_codes,
    request_of,
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
    codes: np.ndarray | None = None,
) -> tuple[pl.DataFrame, ReplayStats]:
    """Decide every row of ``calls`` and return ``r_decision``, ``r_rule``, ``r_message``
    in row order (``r_decision`` is null for a call whose arguments cannot be read).

    ``version_of_row`` is either one key of ``policies`` (replay all rows with that policy)
    or a string Series giving each row's key (fidelity: each call with its recorded version).
    ``codes`` is :func:`enforcer.vectorize.argument_codes` of ``calls`` when the caller
    replays the same calls more than once.
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
    verdicts = _stateless(calls, policies, versions, version_of_row, rules, messages, scopes, codes)
    progress("policy conditions", 1.0)

    progress("rate limits", 0.0)
    contention = _contended_rows(calls, verdicts, policies, versions, scopes)
    progress("rate limits", 1.0)
    sequential = _sequential(calls, contention, verdicts, policies, versions, progress)
    for i, d in (*sequential.items(), *contention.refused.items()):
        if d is None:
            verdicts.decision[i] = UNREADABLE
            continue
        verdicts.decision[i] = DECISION_CODES.index(d.decision)
        verdicts.rule[i] = rules(d.rule)
        verdicts.message[i] = messages(d.message)

    names = pl.Series([*DECISION_CODES, None], dtype=pl.String)
    decision = np.where(verdicts.decision < 0, len(DECISION_CODES), verdicts.decision)
    unreadable = verdicts.decision == UNREADABLE
    result = pl.DataFrame(
        {
            "r_decision": names.gather(decision),
            "r_rule": pl.Series(rules.values, dtype=pl.String).gather(verdicts.rule),
            "r_message": pl.Series(messages.values, dtype=pl.String).gather(verdicts.message),
        }
    )
    if unreadable.any():
        mask = pl.Series(unreadable)
        result = result.with_columns(
            pl.when(mask).then(None).otherwise(pl.col(c)).alias(c) for c in REPLAY_COLUMNS
        )
    return result, ReplayStats(n, contention.pending, contention.contended_keys, len(sequential))


# --------------------------------------------------------------------------- stage 1


def _stateless(
    calls: pl.DataFrame,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    version_of_row: pl.Series | str,
    rules: Interner,
    messages: Interner,
    scopes: Interner,
    arguments: np.ndarray | None,
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
        parts = [(i, np.flatnonzero(per_row == i)) for i in np.unique(per_row).tolist()]
        if len(parts) == 1:
            parts = [(parts[0][0], None)]  # one version: no copy of the frame
        elif arguments is None:
            arguments = argument_codes(calls)
    for vi, rows in parts:
        part = calls if rows is None else calls[pl.Series(rows)]
        part_codes = arguments if rows is None or arguments is None else arguments[rows]
        v = stateless_verdicts(policies[versions[vi]], part, codes=part_codes)
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


@dataclass
class _Contention:
    """What the limit stage found: the rows that touch a contended key, and among them the
    rows no limit can refuse (with the engine keys of the contended counters they fill)."""

    rows: np.ndarray
    pending: int
    contended_keys: int
    certainly_allowed: dict[int, tuple[CounterKey, ...]]
    # Calls refused by a full counter, found without the sequential pass: row -> the
    # engine's decision for that counter (see ``_settle``).
    refused: dict[int, Decision] = field(default_factory=dict)


def _contended_rows(
    calls: pl.DataFrame,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    scopes: Interner,
) -> _Contention:
    """Rows that touch a limit key whose attempts exceed its max; and two counts.

    A key is (counter, scope kind, scope value, window start) in integers; the scope kind
    only separates values of different columns, which the engine would merge only for one
    counter whose scope changed between versions, and a reload resets such a counter.
    """
    nothing = _Contention(np.zeros(0, dtype=np.int64), 0, 0, {})
    allowed = np.flatnonzero(codes.decision == 0)
    if allowed.size == 0:
        return nothing
    group = codes.version[allowed].astype(np.int64) * 1_000_003 + codes.entry[allowed] + 1
    order = np.argsort(group, kind="stable")
    allowed, group = allowed[order], group[order]
    starts = calls.get_column("start_us").to_numpy()
    scope_values: dict[str, np.ndarray] = {}
    counters = Interner()
    pieces: list[tuple[np.ndarray, ...]] = []
    limits: list[Limit] = []  # the limit behind each piece
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
                window = _windows(starts[rows], lim.window_seconds)
                kind = ("tool", "global", "grant", "agent", "session").index(lim.scope)
                counter = np.uint64(counters(lim.counter) * 8 + kind)
                # One 64-bit key per (counter, scope value, window start), mixed like a hash.
                # Two keys that collide are merged, which can only make a key look
                # contended: exact still (and ``_settle`` checks for it).
                with np.errstate(over="ignore"):
                    key = (
                        value.view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                        + window.view(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
                        + counter * np.uint64(0x165667B19E3779F9)
                    )
                pieces.append((rows, key, np.full(rows.size, len(limits), dtype=np.int32)))
                limits.append(lim)
                del value, window
    if not pieces:
        return nothing
    rows = np.concatenate([p[0] for p in pieces])
    key = np.concatenate([p[1] for p in pieces])
    piece = np.concatenate([p[2] for p in pieces])
    del pieces
    maxima = np.array([lim.max for lim in limits], dtype=np.int64)
    reservations = pl.DataFrame({"key": key, "max": maxima[piece]})
    # Versions may give one counter different maxima: the smallest one decides contention.
    contended_max = (
        reservations.group_by("key")
        .agg(pl.len().alias("attempts"), pl.col("max").min().alias("max"))
        .filter(pl.col("attempts") > pl.col("max"))
        .select("key", "max")
    )
    contended = contended_max.get_column("key")
    # Boolean masks rather than np.unique: linear, no sort of millions of rows.
    mask = np.zeros(calls.height, dtype=bool)
    mask[rows] = True
    pending = int(mask.sum())
    mask[:] = False
    if not contended.len():
        return _Contention(np.flatnonzero(mask), pending, 0, {})
    hit = reservations.select(pl.col("key").is_in(contended.implode())).to_series().to_numpy()
    mask[rows[hit]] = True
    settled = _settle(
        calls,
        _Reservations(rows[hit], key[hit], piece[hit], contended_max, limits),
        codes,
        policies,
        versions,
        scopes,
    )
    if settled is None:
        return _Contention(np.flatnonzero(mask), pending, contended.len(), {})
    certain, refused, alone = settled
    mask[alone] = False
    return _Contention(np.flatnonzero(mask), pending, contended.len(), certain, refused)


def _windows(starts_us: np.ndarray, window_seconds: int) -> np.ndarray:
    """Window starts as the engine computes them: ``int(now // w) * w`` on float seconds
    (numpy's float floor division follows Python's, and int64 microseconds up to 2**53
    convert to float exactly, as ``start_us / 1_000_000`` does in Python)."""
    now = starts_us / 1_000_000
    return np.floor_divide(now, window_seconds).astype(np.int64) * window_seconds


@dataclass
class _Reservations:
    """The reservations of contended keys: row, 64-bit key, limit (index into ``limits``);
    ``contended`` gives each key's ``max``."""

    rows: np.ndarray
    key: np.ndarray
    piece: np.ndarray
    contended: pl.DataFrame
    limits: list[Limit]


def _settle(
    calls: pl.DataFrame,
    res: _Reservations,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    scopes: Interner,
) -> tuple[dict[int, tuple[CounterKey, ...]], dict[int, Decision], np.ndarray] | None:
    """Contended calls whose limit verdict needs no sequential pass, from their rank among
    the attempts on each contended key (in replay order: start time, then span id).

    * **Certainly allowed**: the rank is below the key's ``max`` in every contended key the
      call touches. A key's count when a call is decided is at most the number of attempts
      before it (a denied attempt reserves nothing; releases and reloads only lower it), so
      nothing decided before can refuse it. The sequential pass only adds its reservations.
    * **Alone on a key**: a key whose calls touch no other contended key, replayed under
      one policy version throughout (no reload resets). Nothing outside the key can change
      its count or refuse its calls (their other keys never fill up), so the count is
      simulated on integers per key (``_refused_alone``: allowed while below ``max``, a
      failed call gives its unit back at its end time, releases first). Those calls leave
      the sequential pass; a refusal's rule and message are the engine's, from ``decide``
      run on one representative per limit with that counter full.

    Returns (row -> engine keys of its contended counters, for the certainly allowed;
    row -> decision, for the refused; rows that leave the sequential pass), or None when
    a 64-bit key merges two engine keys (a hash collision): ranks would then be wrong.
    """
    rows, piece, limits = res.rows, res.piece, res.limits
    kind = np.array(
        [("tool", "global", "grant", "agent", "session").index(lim.scope) for lim in limits],
        dtype=np.int8,
    )[piece]
    taken = pl.Series(rows)
    scope = pl.Series(scopes.values or [""], dtype=pl.String).gather(codes.scope_tool[rows])
    for k, column in ((2, "grant"), (3, "agent_id"), (4, "session_id")):
        if (kind == k).any():
            values = calls.get_column(column).gather(taken)
            scope = pl.select(
                pl.when(pl.Series(kind == k)).then(values).otherwise(scope)
            ).to_series()
    scope = pl.select(pl.when(pl.Series(kind == 1)).then(pl.lit("")).otherwise(scope)).to_series()
    counter = np.array([lim.counter for lim in limits], dtype=object)[piece]
    seconds = np.array([lim.window_seconds for lim in limits], dtype=np.int64)[piece]
    starts = calls.get_column("start_us").gather(taken)
    gives_back = (
        calls.select((pl.col("outcome") == "error") & (pl.col("decision") != "deny"))
        .to_series()
        .gather(taken)
    )
    frame = pl.DataFrame(
        {
            "row": rows,
            "key": res.key,
            "piece": piece,
            "counter": pl.Series(counter, dtype=pl.String),
            "scope": scope,
            "window": _windows(starts.to_numpy(), seconds),
            "start": starts,
            "end": calls.get_column("end_us").gather(taken),
            "span": calls.get_column("span_id").gather(taken),
            "gives_back": gives_back,
        }
    )
    frame = frame.join(res.contended, on="key").sort("key", "start", "span")
    distinct = frame.group_by("key").agg(
        pl.struct("counter", "scope", "window").n_unique().alias("n"),
        pl.col("row", "piece").first(),
    )
    if distinct.height and int(distinct.get_column("n").max()) > 1:  # type: ignore[arg-type]
        return None
    # A switch of version anywhere in the timeline may reset a counter (a reload).
    one_version = bool((codes.version == codes.version[0]).all())
    rank = pl.int_range(pl.len()).over("key")
    frame = frame.with_columns(rank.alias("rank"), (pl.len().over("row") == 1).alias("single"))
    alone_keys = frame.filter(pl.lit(one_version) & pl.col("single").all().over("key"))
    full = _refused_alone(alone_keys)
    refusable = frame.filter(pl.col("rank") >= pl.col("max")).get_column("row").unique()
    safe = frame.filter(
        ~pl.col("row").is_in(refusable.implode())
        & ~pl.col("row").is_in(alone_keys.get_column("row").implode())
    )
    # The engine's own key for each contended key, from one call that reserves it.
    engine_key: dict[int, CounterKey] = {}
    needed = calls.select("start_us", "tool", "server", "grant", "agent_id", "session_id")
    for k, r, p in distinct.select("key", "row", "piece").iter_rows():
        start, tool, server, grant, agent, session = needed.row(int(r))
        request = Request(tool, {}, server, grant, agent, session)
        engine_key[k] = counter_key(limits[int(p)], request, start / 1_000_000)
    certain: dict[int, list[CounterKey]] = {}
    for r, k in safe.select("row", "key").iter_rows():
        certain.setdefault(r, []).append(engine_key[k])
    refused: dict[int, Decision] = {}
    if full.height:
        answers: dict[int, Decision] = {}
        for p, r, k, m in (
            full.group_by("piece").agg(pl.col("row", "key", "max").first()).iter_rows()
        ):
            answers[p] = _refusal(
                calls, int(r), engine_key[k], int(m), limits[p], codes, policies, versions
            )
        for r, p in full.select("row", "piece").iter_rows():
            refused[r] = answers[p]
    alone = alone_keys.get_column("row").to_numpy()
    return {r: tuple(keys) for r, keys in certain.items()}, refused, alone


def _refused_alone(frame: pl.DataFrame) -> pl.DataFrame:
    """The calls refused on keys that are alone (sorted by key, then replay order).

    On such a key the count is the key's own business: a call is allowed while fewer than
    ``max`` are held, holds one unit, and gives it back at its end time when it was executed
    and failed (a release at the same microsecond as a decision comes first). Only the
    count is simulated here, per key, on integers; the refusal itself (rule and message) is
    the engine's (``_refusal``).
    """
    if frame.height == 0:
        return frame
    keys = frame.get_column("key").to_list()
    starts = frame.get_column("start").to_list()
    ends = frame.get_column("end").to_list()
    gives = frame.get_column("gives_back").to_list()
    maxima = frame.get_column("max").to_list()
    refused = np.zeros(frame.height, dtype=bool)
    current = None
    held = 0
    releases: list[int] = []
    for i, k in enumerate(keys):
        if k != current:
            current, held, releases = k, 0, []
        start = starts[i]
        while releases and releases[0] <= start:
            heapq.heappop(releases)
            held -= 1
        if held >= maxima[i]:
            refused[i] = True
            continue
        held += 1
        if gives[i]:
            heapq.heappush(releases, ends[i])
    return frame.filter(pl.Series(refused))


def _refusal(
    calls: pl.DataFrame,
    row: int,
    key: CounterKey,
    maximum: int,
    limit: Limit,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
) -> Decision:
    """The engine's decision for ``row`` when ``key`` is full; it must be that limit's."""
    state = InMemoryLimitState()
    state.counts[key] = maximum
    policy = policies[versions[int(codes.version[row])]]
    d = decide(policy, request_of(calls.row(row, named=True)), state, calls["start_us"][row] / 1e6)
    if d.decision != DENY or d.rule != limit.pointer:
        raise EngineDisagreement(
            f"call {row}: the engine says {d.decision} {d.rule} with counter {key} full, "
            f"the limit analysis expected a refusal by {limit.pointer}"
        )
    return d


# --------------------------------------------------------------------------- stage 3


def _sequential(
    calls: pl.DataFrame,
    contention: _Contention,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    progress: Progress,
) -> dict[int, Any]:
    """Replay the contended calls in time order with the engine itself (calls that are
    certainly allowed only add their reservations)."""
    rows = contention.rows
    certain = contention.certainly_allowed
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
        certain_keys = certain.get(index)
        if certain_keys is not None:  # allowed whatever came before: its verdict stands
            state.add(certain_keys)
            if outcome == "error" and recorded != "deny":
                heapq.heappush(releases, (end, seq, seq, certain_keys))
            continue
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
