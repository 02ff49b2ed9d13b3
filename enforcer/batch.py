"""Decide a whole table of calls in time order, exactly as the online enforcer would have.

:func:`decide_table` is the one batch entry point of the engine: replay uses it on
recorded calls, the dataset generator on drawn ones. It gives, for every row, the decision
that calling :func:`enforcer.engine.decide` per call in time order with an
``InMemoryLimitState`` would give, limit state included; a property test
(tests/enforcer/test_batch.py) holds the two equal. Four stages, one engine:

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
keeps its quota unless it fails upstream (``fails``: the caller says which calls would, if
executed), in which case the quota comes back at the call's ``end_us``, when the enforcer
receives its Report. A release and a decision at the same microsecond are applied release
first; calls starting at the same microsecond are taken in ``span_id`` order. When rows
carry several policy versions, the version in force changes where the timeline's version
changes, and that switch resets the counters a reload resets
(:func:`callward.enforcer.limits.carry_over`). Window starts, counter keys, release and the
reload rule all come from :mod:`callward.enforcer.limits`, as the online engine's do.
"""

from __future__ import annotations

import bisect
import heapq
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from callward.enforcer import limits as limit_rules
from callward.enforcer.engine import DENY, Decision, Request, applicable_limits, decide
from callward.enforcer.limits import CounterKey, InMemoryLimitState, counter_key
from callward.enforcer.policy import CompiledPolicy, Limit
from callward.enforcer.vectorize import (
    DECISION_CODES,
    UNREADABLE,
    CallCodes,
    EngineDisagreement,
    Interner,
    dense_codes,
    positions,
    request_of,
    stateless_classes,
)

BATCH_COLUMNS = ("decision", "rule", "message")
# Columns ``decide_table`` needs in its input frame.
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
    "fails",
)
SCOPE_COLUMNS = {"grant": "grant", "agent": "agent_id", "session": "session_id"}

Progress = Callable[[str, float], None]
"""Reports (stage, fraction done); the batch never prints."""


@dataclass(frozen=True)
class BatchStats:
    """How much of the work each stage did (shown in replay reports and the benchmarks)."""

    calls: int
    pending_limits: int
    contended_keys: int
    sequential_calls: int


@dataclass
class _Codes:
    """Verdicts as classes: per call a class and a policy version, per class a
    verdict as codes into shared string tables (as in ``VerdictClasses``). A call whose
    verdict the limits decide moves to a class added for that verdict."""

    klass: np.ndarray  # per call
    version: np.ndarray  # per call: index into the list of versions
    one_version: bool  # every call has the same version
    decision: np.ndarray  # per class from here on
    rule: np.ndarray
    message: np.ndarray
    entry: np.ndarray
    scope_tool: np.ndarray  # code of the engine's "tool" scope key
    _own_klass: bool = False

    def entry_of(self, rows: np.ndarray) -> np.ndarray:
        return self.entry[self.klass[rows]]

    def scope_of(self, rows: np.ndarray) -> np.ndarray:
        return self.scope_tool[self.klass[rows]]

    def add(self, decision: np.ndarray, rule: np.ndarray, message: np.ndarray) -> np.ndarray:
        """New classes for verdicts the limits gave (no entry or scope is read after
        them); returns their numbers."""
        base, k = self.decision.size, decision.size
        self.decision = np.concatenate([self.decision, decision.astype(np.int8)])
        self.rule = np.concatenate([self.rule, rule.astype(np.int32)])
        self.message = np.concatenate([self.message, message.astype(np.int32)])
        self.entry = np.concatenate([self.entry, np.full(k, -1, dtype=np.int32)])
        self.scope_tool = np.concatenate([self.scope_tool, np.zeros(k, dtype=np.int32)])
        return np.arange(base, base + k, dtype=np.int32)

    def move(self, rows: np.ndarray, classes: np.ndarray) -> None:
        if not self._own_klass:  # the numbers may be the signature numbers, shared
            self.klass, self._own_klass = self.klass.copy(), True
        self.klass[rows] = classes


def _no_progress(stage: str, fraction: float) -> None:
    return None


def decide_table(
    calls: pl.DataFrame,
    policies: Mapping[str, CompiledPolicy],
    version_of_row: pl.Series | str,
    *,
    progress: Progress = _no_progress,
    codes: CallCodes | None = None,
    with_messages: bool = True,
) -> tuple[pl.DataFrame, BatchStats]:
    """Decide every row of ``calls`` in time order and return ``decision``, ``rule``,
    ``message`` in row order (``decision`` is null for a call whose arguments cannot be
    read), as Categorical columns: what the online enforcer would have answered each call.

    ``version_of_row`` is either one key of ``policies`` (decide all rows with that
    policy) or a string Series giving each row's key (the version in force at the row's
    start; a change of version over the timeline is a reload).
    ``codes`` is :class:`enforcer.vectorize.CallCodes` of ``calls`` when the caller
    decides the same calls more than once. Without ``with_messages`` the result has no
    ``message`` (a fidelity replay compares decisions and rules only; the column would
    be one more string per call at the moment the caller holds the most memory).
    """
    missing = [c for c in NEEDED if c not in calls.columns]
    if missing:
        raise ValueError(f"calls lack column(s): {', '.join(missing)}")
    n = calls.height
    if n == 0:
        empty = pl.DataFrame(schema=dict.fromkeys(BATCH_COLUMNS, pl.String))
        return empty, BatchStats(0, 0, 0, 0)
    versions = list(policies)
    rules, messages, scopes = Interner(), Interner(), Interner()
    progress("policy conditions", 0.0)
    verdicts = _stateless(calls, policies, versions, version_of_row, rules, messages, scopes, codes)
    progress("policy conditions", 1.0)

    progress("rate limits", 0.0)
    contention = _contended_rows(calls, verdicts, policies, versions, scopes)
    progress("rate limits", 1.0)
    sequential = _sequential(calls, contention, verdicts, policies, versions, progress)
    if contention.answers:
        ans = contention.answers
        added = verdicts.add(
            np.array([DECISION_CODES.index(d.decision) for d in ans]),
            np.array([rules(d.rule) for d in ans]),
            np.array([messages(d.message) for d in ans]),
        )
        verdicts.move(contention.refused_rows, added[contention.refused_answer])
    if sequential:
        rows = np.fromiter(sequential, dtype=np.int64, count=len(sequential))
        ds = list(sequential.values())
        added = verdicts.add(
            np.array([UNREADABLE if d is None else DECISION_CODES.index(d.decision) for d in ds]),
            np.array([0 if d is None else rules(d.rule) for d in ds]),
            np.array([0 if d is None else messages(d.message) for d in ds]),
        )
        verdicts.move(rows, added)

    # Categorical columns, gathered per class and then per call: a gather of four-byte
    # codes per call, where a string column would copy a sixteen-byte view per call (and
    # they compare with strings all the same).
    decision = np.where(verdicts.decision < 0, len(DECISION_CODES), verdicts.decision)
    per_class = {
        "decision": _categories([*DECISION_CODES, None]).gather(positions(decision)),
        "rule": _categories(rules.values).gather(positions(verdicts.rule)),
    }
    if with_messages:
        per_class["message"] = _categories(messages.values).gather(positions(verdicts.message))
    unreadable = verdicts.decision == UNREADABLE
    if unreadable.any():  # no decision, no rule, no message
        per_class = {
            name: c.scatter(np.flatnonzero(unreadable), None) for name, c in per_class.items()
        }
    index = pl.DataFrame({"__k": positions(verdicts.klass)})
    result = index.select(
        pl.lit(c).gather(pl.col("__k")).alias(name) for name, c in per_class.items()
    )
    return result, BatchStats(n, contention.pending, contention.contended_keys, len(sequential))


def _categories(values: Sequence[str | None]) -> pl.Series:
    """``values`` as a Categorical Series, to gather codes from."""
    return pl.Series(values, dtype=pl.String).cast(pl.Categorical)


# --------------------------------------------------------------------------- stage 1


def _stateless(
    calls: pl.DataFrame,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    version_of_row: pl.Series | str,
    rules: Interner,
    messages: Interner,
    scopes: Interner,
    call_codes: CallCodes | None,
) -> _Codes:
    n = calls.height
    version = np.zeros(n, dtype=np.int32)
    if call_codes is None:
        call_codes = CallCodes(calls)
    parts: list[tuple[int, np.ndarray | None]]
    if isinstance(version_of_row, str):
        parts = [(versions.index(version_of_row), None)]
    else:
        index = {v: i for i, v in enumerate(versions)}
        version = version_of_row.replace_strict(index, return_dtype=pl.Int32).to_numpy()
        parts = [(i, np.flatnonzero(version == i)) for i in np.unique(version).tolist()]
        if len(parts) == 1:
            parts = [(parts[0][0], None)]  # one version: no copy of the frame
    klass = np.zeros(n, dtype=np.int32) if len(parts) > 1 else None
    tables: list[tuple[np.ndarray, ...]] = []
    offset = 0
    for vi, rows in parts:
        part = calls if rows is None else calls[pl.Series(rows)]
        part_codes = call_codes if rows is None else call_codes.take(rows)
        classes = stateless_classes(policies[versions[vi]], part, codes=part_codes)
        v = classes.table  # per class
        rule_map = np.array([rules(r) for r in v.rules.values] or [0], dtype=np.int32)
        message_map = np.array([messages(m) for m in v.messages.values], dtype=np.int32)
        scope_map = np.array(
            [scopes(f"{s}/{t}" if s else t) for s, t in v.pairs] or [0], dtype=np.int32
        )
        tables.append(
            (
                v.decision,
                _mapped(rule_map, v.rule),
                _mapped(message_map, v.message),
                v.entry,
                scope_map[v.pair],
            )
        )
        if klass is None:
            klass = classes.klass
        else:
            klass[rows] = classes.klass + offset
        offset += v.decision.size
    assert klass is not None
    decision, rule, message, entry, scope_tool = (
        np.concatenate(t) for t in zip(*tables, strict=True)
    )
    return _Codes(klass, version, len(parts) == 1, decision, rule, message, entry, scope_tool)


def _mapped(table: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``table[codes]``, without the gather when the table maps every code to itself."""
    if np.array_equal(table, np.arange(table.size)):
        return codes
    return table[codes]


# --------------------------------------------------------------------------- stage 2

_KINDS = ("tool", "global", "grant", "agent", "session")
# Beyond this many microseconds from the epoch, ``start_us / 1e6`` may round across a
# whole second, so window starts are then computed on floats as the engine does.
_EXACT_INT_WINDOWS_US = 2**32 * 1_000_000


@dataclass
class _Contention:
    """What the limit stage found: the rows that touch a contended key, and among them the
    rows no limit can refuse (with the engine keys of the contended counters they fill)."""

    rows: np.ndarray
    pending: int
    contended_keys: int
    certainly_allowed: dict[int, tuple[CounterKey, ...]]
    # Calls refused by a full counter, found without the sequential pass: rows, and per
    # row the index into ``answers`` of the engine's decision for that counter.
    refused_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    refused_answer: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))
    answers: list[Decision] = field(default_factory=list)


def _contended_rows(
    calls: pl.DataFrame,
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
    scopes: Interner,
) -> _Contention:
    """Rows that touch a limit key whose attempts exceed its max; and two counts.

    A key is (counter, scope kind, scope value, window start); the scope kind only
    separates values of different columns, which the engine would merge only for one
    counter whose scope changed between versions, and a reload resets such a counter.
    Keys are counted in two steps so that no step groups millions of strings: a cheap
    count per hash bucket first (two keys sharing a bucket only add up, so a key below its
    ``max`` in its bucket is below it for certain), then an exact count of the few rows
    left, on the scope values themselves.
    """
    nothing = _Contention(np.zeros(0, dtype=np.int64), 0, 0, {})
    allowed = np.flatnonzero((codes.decision == 0)[codes.klass])
    if allowed.size == 0:
        return nothing
    if calls.height < 2**31:
        allowed = allowed.astype(np.int32)  # half the bytes to gather, here and below
    # Allowed rows grouped by (version, entry), one slice per group: a stable sort of
    # small integers (a radix sort when they fit in 16 bits).
    width = max(len(policies[v].tools) for v in versions) + 1
    group = codes.entry_of(allowed).astype(np.int64) + 1
    if len(versions) > 1:
        group += codes.version[allowed].astype(np.int64) * width
    small = np.int16 if len(versions) * width < 2**15 else np.int64
    order = np.argsort(group.astype(small), kind="stable")
    starts = calls.get_column("start_us").to_numpy()
    span = (int(starts.min()), int(starts.max()))
    int_windows = span[0] > -_EXACT_INT_WINDOWS_US and span[1] < _EXACT_INT_WINDOWS_US
    # Start times are read while the rows are in ascending order (a sequential read, where
    # the grouped order would make it a random one), as minutes: every window (a minute,
    # an hour, a day) is a whole number of minutes counted from the epoch.
    times = starts[allowed]
    if int_windows:
        times //= 60_000_000
        base = int(times.min()) if times.size else 0
        times -= base
        times = times.astype(np.int32)
    else:
        base = 0
    times = times[order]
    allowed = allowed[order]
    del order
    sizes = np.bincount(group, minlength=len(versions) * width)
    bounds = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes)])
    del group
    by_counter: dict[str, list[tuple[int, Limit]]] = {}
    limited = np.zeros(len(versions) * width, dtype=bool)
    for vi, version in enumerate(versions):
        policy = policies[version]
        for index in range(-1, len(policy.tools)):
            g = vi * width + index + 1
            entry = None if index < 0 else policy.tools[index]
            seen: set[str] = set()
            for lim in applicable_limits(entry, policy):
                if lim.counter in seen:
                    continue  # decide counts a counter listed twice once
                seen.add(lim.counter)
                by_counter.setdefault(lim.counter, []).append((g, lim))
                limited[g] = True
    pending = int(sizes[limited].sum())
    if not by_counter:
        return nothing
    if any(lim.sliding for groups in by_counter.values() for _, lim in groups):
        # A sliding window has no start to group calls by, so no count settles a call
        # without its predecessors: every call under a limit goes to the sequential pass,
        # where the engine itself decides it.
        under = [allowed[bounds[g] : bounds[g + 1]] for g in np.flatnonzero(limited)]
        rows = np.sort(np.concatenate(under)).astype(np.int64)
        return _Contention(rows, pending, 0, {})
    columns = _GroupedColumns(calls, codes, allowed, times, base, int_windows)
    del times
    limits: list[Limit] = []
    found: list[pl.DataFrame] = []
    n_keys = 0  # exact keys (counter, scope kind, scope value, window start) over max
    for groups in by_counter.values():
        # Slices of the grouped allowed rows, adjacent ones under one limit merged.
        segments: list[tuple[int, int, Limit]] = []
        for g, lim in groups:
            lo, hi = int(bounds[g]), int(bounds[g + 1])
            if hi == lo:
                continue
            if segments and segments[-1][1] == lo and segments[-1][2] is lim:
                segments[-1] = (segments[-1][0], hi, lim)
            else:
                segments.append((lo, hi, lim))
        total = sum(hi - lo for lo, hi, _ in segments)
        threshold = min((lim.max for _, _, lim in segments), default=0)
        if total <= threshold:
            continue  # fewer attempts in all than the smallest max: never contended
        # The smallest max of the counter for every reservation: a key's rows must pass
        # or fail together, and the smallest max of its versions decides its contention.
        offsets = np.cumsum([0] + [hi - lo for lo, hi, _ in segments])
        candidates = columns.busy_windows(segments, offsets, threshold)
        if candidates is not None and candidates.size == 0:
            continue
        survivors = _over_max_in_buckets(columns.mixed(segments, offsets, candidates), threshold)
        if candidates is not None:
            survivors = candidates[survivors]
        if survivors.size == 0:
            continue
        segment = np.searchsorted(offsets, survivors, side="right") - 1
        los = np.array([lo for lo, _, _ in segments], dtype=np.int64)
        rows = allowed[los[segment] + survivors - offsets[segment]]
        # One piece per limit object (equal limits of two versions stay two pieces).
        distinct = list({id(lim): lim for _, _, lim in segments}.values())
        number = {id(lim): len(limits) + i for i, lim in enumerate(distinct)}
        piece_of_segment = np.array([number[id(lim)] for _, _, lim in segments], dtype=np.int32)
        limits.extend(distinct)
        exact, keys = _exact_keys(
            calls,
            codes,
            rows,
            piece_of_segment[segment],
            limits,
            starts,
            int_windows,
            scopes,
            n_keys,
        )
        found.append(exact)
        n_keys += keys
    del columns
    contended = pl.concat(found) if found else pl.DataFrame()
    if contended.height == 0:
        return _Contention(np.zeros(0, dtype=np.int64), pending, 0, {})
    mask = np.zeros(calls.height, dtype=bool)
    mask[contended.get_column("row").to_numpy()] = True
    certain, refused_rows, refused_answer, answers, alone = _settle(
        calls, contended, limits, codes, policies, versions
    )
    mask[alone] = False
    return _Contention(
        np.flatnonzero(mask),
        pending,
        n_keys,
        certain,
        refused_rows,
        refused_answer,
        answers,
    )


class _GroupedColumns:
    """Per allowed row (in grouped order): window numbers, computed once per window length,
    and scope values, hashed once per column; each limit takes slices, not gathers.

    ``times`` are the rows' start minutes counted from minute ``base`` (int32), or, when
    the times are too far from the epoch for integer windows, their start times in
    microseconds (``base`` 0), from which windows are computed on floats as the engine
    does."""

    def __init__(
        self,
        calls: pl.DataFrame,
        codes: _Codes,
        allowed: np.ndarray,
        times: np.ndarray,
        base: int,
        int_windows: bool,
    ) -> None:
        self._calls, self._codes, self._allowed = calls, codes, allowed
        self._times, self._base, self._int_windows = times, base, int_windows
        self._hashes: dict[str, np.ndarray] = {}
        self._compacts: dict[int, tuple[np.ndarray, int, int] | None] = {}

    def _compact(self, seconds: int) -> tuple[np.ndarray, int, int] | None:
        """``int(now // seconds)`` per allowed row as the engine computes it, counted from
        the first window: (int32 numbers, how many windows, the first window's number);
        None when there are too many windows to count in a table."""
        if seconds not in self._compacts:
            if self._int_windows:  # windows of whole minutes: floor(floor(t/60)/k) = floor(t/60k)
                minutes = seconds // 60
                head = self._base // minutes
                number = self._times + np.int32(self._base - head * minutes)
                number //= np.int32(minutes)
            else:
                absolute = limit_rules.window_numbers(self._times, seconds, False)
                head = int(absolute.min()) if absolute.size else 0
                absolute -= head
                number = absolute
            size = int(number.max()) + 1 if number.size else 1
            compact = None
            if size < 1 << 26:
                compact = (number.astype(np.int32, copy=False), size, head)
            self._compacts[seconds] = compact
        return self._compacts[seconds]

    def window_starts(self, seconds: int, where: np.ndarray) -> np.ndarray:
        """The engine's window start (seconds from the epoch) of the rows at ``where``."""
        compact = self._compact(seconds)
        if compact is None and self._int_windows:
            minutes = self._times[where].astype(np.int64) + self._base
            return minutes // (seconds // 60) * seconds
        if compact is None:
            return limit_rules.window_starts(self._times[where], seconds, False)
        number, _, head = compact
        return (number[where].astype(np.int64) + head) * seconds

    def _values(self, scope: str, at: np.ndarray) -> np.ndarray:
        if scope == "tool":
            return self._codes.scope_of(self._allowed[at]).astype(np.uint64)
        if scope == "global":
            return np.zeros(at.size, dtype=np.uint64)
        column = self._calls.get_column(SCOPE_COLUMNS[scope])
        if at.size * 4 < self._calls.height:  # few rows: hash only theirs
            return column.gather(positions(self._allowed[at])).hash(seed=0).to_numpy()
        if scope not in self._hashes:
            self._hashes[scope] = column.hash(seed=0).to_numpy()
        return self._hashes[scope][self._allowed[at]]

    def busy_windows(
        self, segments: list[tuple[int, int, Limit]], offsets: np.ndarray, maximum: int
    ) -> np.ndarray | None:
        """Positions (segments laid end to end) of the reservations in a window that holds
        more than ``maximum`` attempts of the counter in all, whatever the scope value: a
        key never holds more than its window. None when the segments' windows differ.

        Attempts are counted per window with one read of each segment; most counters
        have no busy window at all and cost nothing more.
        """
        if len({lim.window_seconds for _, _, lim in segments}) != 1:
            return None
        compact = self._compact(segments[0][2].window_seconds)
        if compact is None:
            return None
        number, size, _ = compact
        counts = np.zeros(size, np.int64)
        for lo, hi, _ in segments:
            counts += np.bincount(number[lo:hi], minlength=size)
        busy = counts > maximum
        if not busy.any():
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(np.concatenate([busy[number[lo:hi]] for lo, hi, _ in segments]))

    def mixed(
        self,
        segments: list[tuple[int, int, Limit]],
        offsets: np.ndarray,
        at: np.ndarray | None,
    ) -> list[np.ndarray]:
        """Per segment, a 64-bit mix of (scope kind, scope value, window start) for its
        reservations (all, or those at positions ``at``): equal engine keys give equal
        mixes (different keys may share one, which only adds up)."""
        out = []
        for i, (lo, hi, lim) in enumerate(segments):
            if at is None:
                where = np.arange(lo, hi)
            else:
                a, b = np.searchsorted(at, offsets[i : i + 2])
                where = at[a:b] - offsets[i] + lo
            if where.size == 0:
                continue
            seconds = lim.window_seconds
            start = self.window_starts(seconds, where).view(np.uint64)
            kind = np.uint64(_KINDS.index(lim.scope) * 0x165667B19E3779F9 % 2**64)
            with np.errstate(over="ignore"):
                value = self._values(lim.scope, where) * np.uint64(0x9E3779B97F4A7C15)
                start *= np.uint64(0xC2B2AE3D27D4EB4F)
                value ^= start
                value += kind
            out.append(value)
        return out


def _over_max_in_buckets(parts: list[np.ndarray], maximum: int) -> np.ndarray:
    """The positions (in ``parts`` laid end to end) of the reservations whose hash bucket
    holds more than ``maximum`` attempts. A key shares its bucket only with other keys, so
    every reservation of a key over ``maximum`` is among them."""
    size = sum(p.size for p in parts)
    if size <= maximum:
        return np.zeros(0, dtype=np.int64)
    bits = min(max(int(size * 2).bit_length(), 10), 22)
    shift = np.uint64(64 - bits)
    buckets = []
    with np.errstate(over="ignore"):
        for part in parts:
            part *= np.uint64(0xFF51AFD7ED558CCD)
            part >>= shift
            buckets.append(part.view(np.int64))
    bucket = buckets[0] if len(buckets) == 1 else np.concatenate(buckets)
    del buckets, parts
    counts = np.bincount(bucket, minlength=1 << bits)
    return np.flatnonzero(counts[bucket] > maximum)


def _exact_keys(
    calls: pl.DataFrame,
    codes: _Codes,
    rows: np.ndarray,
    piece: np.ndarray,
    limits: list[Limit],
    starts: np.ndarray,
    int_windows: bool,
    scopes: Interner,
    first_key: int,
) -> tuple[pl.DataFrame, int]:
    """The reservations (of one counter) left by the bucket count whose exact key holds
    more attempts than the smallest ``max`` of the key (versions may give one counter
    different maxima): ``row``, ``piece``, ``key`` (numbered from ``first_key``) and
    ``max``; and how many keys that makes."""
    kind = np.array([_KINDS.index(lim.scope) for lim in limits], dtype=np.int8)[piece]
    taken = positions(rows)
    scope = pl.Series(scopes.values or [""], dtype=pl.String).gather(codes.scope_of(rows))
    for k, column in ((2, "grant"), (3, "agent_id"), (4, "session_id")):
        if (kind == k).any():
            values = calls.get_column(column).gather(taken).cast(pl.String)
            scope = pl.select(
                pl.when(pl.Series(kind == k)).then(values).otherwise(scope)
            ).to_series()
    scope = pl.select(pl.when(pl.Series(kind == 1)).then(pl.lit("")).otherwise(scope)).to_series()
    seconds = np.array([lim.window_seconds for lim in limits], dtype=np.int64)[piece]
    maxima = np.array([lim.max for lim in limits], dtype=np.int64)[piece]
    window = limit_rules.window_starts(starts[rows], seconds, int_windows)
    key, _ = dense_codes(pl.Series(kind), scope, pl.Series(window))
    attempts = np.bincount(key)
    least = np.full(attempts.size, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(least, key, maxima)
    over = attempts > least
    keep = over[key]
    number = np.cumsum(over) - 1 + first_key  # contended keys numbered densely
    frame = pl.DataFrame(
        {
            "row": rows[keep],
            "piece": piece[keep],
            "key": number[key[keep]],
            "max": least[key[keep]],
        }
    )
    return frame, int(over.sum())


def _settle(
    calls: pl.DataFrame,
    contended: pl.DataFrame,
    limits: list[Limit],
    codes: _Codes,
    policies: Mapping[str, CompiledPolicy],
    versions: list[str],
) -> tuple[dict[int, tuple[CounterKey, ...]], np.ndarray, np.ndarray, list[Decision], np.ndarray]:
    """Contended calls whose limit verdict needs no sequential pass, from their rank among
    the attempts on each contended key (in time order: start time, then span id).

    * **Certainly allowed**: the rank is below the key's ``max`` in every contended key the
      call touches. A key's count when a call is decided is at most the number of attempts
      before it (a denied attempt reserves nothing; releases and reloads only lower it), so
      nothing decided before can refuse it. The sequential pass only adds its reservations.
    * **Alone on a key**: a key whose calls touch no other contended key, decided under
      one policy version throughout (no reload resets). Nothing outside the key can change
      its count or refuse its calls (their other keys never fill up), so the count is
      simulated on integers per key (``_refused_alone``: allowed while below ``max``, a
      failed call gives its unit back at its end time, releases first). Those calls leave
      the sequential pass; a refusal's rule and message are the engine's, from ``decide``
      run on one representative per limit with that counter full.

    ``contended`` has one row per reservation of a contended key (``row``, ``piece``: the
    index into ``limits``, ``key``, ``max``). Returns (row -> engine keys of its contended
    counters, for the certainly allowed; the refused rows, the index into the answers of
    each, the answers; rows that leave the sequential pass).
    """
    taken = positions(contended.get_column("row").to_numpy())
    failed = calls.get_column("fails").gather(taken)
    frame = contended.select("row", "piece", "key", "max").with_columns(
        calls.get_column("start_us").gather(taken).alias("start"),
        calls.get_column("end_us").gather(taken).alias("end"),
        failed.alias("gives_back"),
    )
    frame = frame.sort("key", "start")
    tie = (pl.col("key") == pl.col("key").shift(1)) & (pl.col("start") == pl.col("start").shift(1))
    if frame.select(tie.any()).item():  # calls of one key at the same microsecond
        span = calls.get_column("span_id").gather(positions(frame.get_column("row").to_numpy()))
        frame = frame.with_columns(span.alias("span")).sort("key", "start", "span").drop("span")
    # A switch of version anywhere in the timeline may reset a counter (a reload).
    one_version = codes.one_version
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
    firsts = frame.group_by("key").agg(pl.col("row", "piece").first())
    for k, r, p in firsts.select("key", "row", "piece").iter_rows():
        start, tool, server, grant, agent, session = needed.row(int(r))
        request = Request(tool, {}, server, grant, agent, session)
        engine_key[k] = counter_key(limits[int(p)], request, start / 1_000_000)
    certain: dict[int, list[CounterKey]] = {}
    for r, k in safe.select("row", "key").iter_rows():
        certain.setdefault(r, []).append(engine_key[k])
    answers: list[Decision] = []
    refused_rows = np.zeros(0, dtype=np.int64)
    refused_answer = np.zeros(0, dtype=np.int32)
    if full.height:
        first = full.group_by("piece").agg(pl.col("row", "key", "max").first())
        index: dict[int, int] = {}
        for p, r, k, m in first.iter_rows():
            index[p] = len(answers)
            answers.append(
                _refusal(calls, int(r), engine_key[k], int(m), limits[p], codes, policies, versions)
            )
        refused_rows = full.get_column("row").to_numpy()
        refused_answer = (
            full.get_column("piece").replace_strict(index, return_dtype=pl.Int32).to_numpy()
        )
    alone = alone_keys.get_column("row").to_numpy()
    certain_keys = {r: tuple(keys) for r, keys in certain.items()}
    return certain_keys, refused_rows, refused_answer, answers, alone


def _refused_alone(frame: pl.DataFrame) -> pl.DataFrame:
    """The calls refused on keys that are alone (sorted by key, then time order).

    On such a key the count is the key's own business: a call is allowed while fewer than
    ``max`` are held, holds one unit, and gives it back at its end time when it was executed
    and failed (a release at the same microsecond as a decision comes first). Only the
    count is simulated here, per key, on integers; the refusal itself (rule and message) is
    the engine's (``_refusal``).

    The simulation moves by runs, not by calls: with ``held`` units taken, the next
    ``max - held`` calls are allowed whatever is released meanwhile (a release only makes
    room), and once the key is full every call before the next release is refused. So the
    loop turns once per run, about twice per failed call, not once per call.
    """
    if frame.height == 0:
        return frame
    keys = frame.get_column("key").to_numpy()
    bounds = np.flatnonzero(np.diff(keys)) + 1
    firsts = [0, *bounds.tolist()]
    lasts = [*bounds.tolist(), keys.size]
    starts = frame.get_column("start").to_list()
    ends = frame.get_column("end").to_list()
    failing = np.flatnonzero(frame.get_column("gives_back").to_numpy()).tolist()
    maxima = frame.get_column("max").to_list()
    refused = np.zeros(frame.height, dtype=bool)
    f = 0  # next failing call, in order
    for lo, hi in zip(firsts, lasts, strict=True):
        maximum = maxima[lo]
        if hi - lo <= maximum:
            continue
        while f < len(failing) and failing[f] < lo:
            f += 1
        held = 0
        releases: list[int] = []
        i = lo
        while i < hi:
            start = starts[i]
            while releases and releases[0] <= start:
                heapq.heappop(releases)
                held -= 1
            if held < maximum:
                run_end = min(i + maximum - held, hi)
                while f < len(failing) and failing[f] < run_end:
                    heapq.heappush(releases, ends[failing[f]])
                    f += 1
                held += run_end - i
                i = run_end
            else:
                # Full until the next release: every call starting before it is refused.
                j = bisect.bisect_left(starts, releases[0], i, hi) if releases else hi
                refused[i:j] = True
                while f < len(failing) and failing[f] < j:
                    f += 1  # refused calls hold nothing and give nothing back
                i = j
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
        "fails",
    )
    subset = subset.with_columns(
        pl.Series("__e", codes.entry_of(subset.get_column("__row").to_numpy()))
    )
    for seq, row in enumerate(subset.select(columns).iter_rows()):
        start, end, index, vi, entry, tool, server, grant, agent, session = row[:10]
        arguments_text, fails = row[10:]
        while releases and releases[0][0] <= start:
            _, _, reserved_at, keys = heapq.heappop(releases)
            limit_rules.release(state, [k for k in keys if reset_at.get(k[0], -1) <= reserved_at])
        while next_switch < len(switches) and switches[next_switch][0] <= start:
            new = switches[next_switch][1]
            if current is not None and new != current:
                old, now_in_force = policies[versions[current]], policies[versions[new]]
                _, reset = limit_rules.carry_over(state, old, now_in_force)
                for counter in reset:
                    reset_at[counter] = seq
            current = new
            next_switch += 1
        certain_keys = certain.get(index)
        if certain_keys is not None:  # allowed whatever came before: its verdict stands
            state.add(certain_keys)
            if fails:
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
        if d.reserved and fails:
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


__all__ = [
    "BATCH_COLUMNS",
    "NEEDED",
    "BatchStats",
    "EngineDisagreement",
    "Progress",
    "decide_table",
]
