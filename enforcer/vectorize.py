"""The stateless part of a policy, compiled into column expressions over many calls at once.

Replay needs the verdict of millions of recorded calls. Everything in a decision except
the rate limits depends only on the call itself (tool resolution, ``hide``, ``default``,
``action``, ``require`` and ``deny_if``), so it can be computed for a whole table at once.
This module compiles a :class:`~enforcer.policy.CompiledPolicy` into Polars expressions
that follow :func:`enforcer.engine.decide` step by step, and returns for every call (as
integer codes, :class:`Verdicts`; ``Verdicts.frame()`` gives strings):

* the decision: ``allow`` (meaning: allowed unless a rate limit is full), ``deny``,
  ``require_approval``, or UNREADABLE when a condition needs arguments that are not a
  JSON object;
* the rule: the JSON pointer the engine would name, and the engine's message;
* the entry: the index in ``policy.tools`` of the governing entry (-1 when none), which
  says which limits apply to an allowed call.

It is not a second implementation of the semantics: tool resolution calls
``CompiledPolicy.resolve`` on each distinct (server, tool) pair; verdicts that do not depend
on the arguments come from ``decide`` itself; argument values are read by DuckDB's JSON
functions, which keep the JSON type (a string ``"1"`` is not the number ``1``); and every
condition whose exact meaning a column expression could blur (regular expressions, which
Python and Polars read differently, lists and objects, numbers beyond float precision,
unusual path segments) is evaluated by ``enforcer.engine.holds`` on each distinct value.
A hypothesis property test (tests/enforcer/test_vectorize.py) checks the result against
``decide`` on random policies and calls.

Input contract: ``tool``, ``server``, ``agent_id``, ``session_id``, ``grant`` are non-null
strings and ``arguments`` is the text of a JSON object (the enforcer's own ``json.dumps``
output, so without duplicate keys or trailing commas).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import duckdb
import numpy as np
import polars as pl

from callward.enforcer.engine import (
    ALLOW,
    DENY,
    REQUIRE_APPROVAL,
    InMemoryLimitState,
    Request,
    decide,
    holds,
)
from callward.enforcer.policy import CompiledPolicy, Condition, ToolRule

FIELD_ROOTS = ("tool", "server", "agent_id", "session_id", "grant")
INPUT_COLUMNS = ("tool", "server", "agent_id", "session_id", "grant", "arguments")
DECISION_CODES = (ALLOW, DENY, REQUIRE_APPROVAL)
UNREADABLE = -1
"""Decision code of a call whose arguments are not a readable JSON object."""
# Integers up to 2**53 and decimal texts of 15 significant digits convert to float64
# exactly, so comparing them as floats gives Python's answer.
_SAFE_INT = 2**53
_SAFE_NUMBER_CHARS = 15
_CODE = {d: i for i, d in enumerate(DECISION_CODES)}


@dataclass(frozen=True)
class _ArgColumns:
    """Names of the columns that hold one argument path's value: raw JSON, string, number."""

    raw: str
    text: str
    number: str


class Interner:
    """Strings numbered in order of first appearance (rules, messages, scope keys)."""

    def __init__(self) -> None:
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def __call__(self, value: str) -> int:
        i = self._index.get(value)
        if i is None:
            i = self._index[value] = len(self.values)
            self.values.append(value)
        return i


@dataclass
class Verdicts:
    """Stateless verdicts as codes, one element per call.

    ``decision`` indexes :data:`DECISION_CODES` (or is :data:`UNREADABLE`); ``rule`` and
    ``message`` index ``rules.values`` and ``messages.values``; ``entry`` is the index of the
    governing ``tools`` entry (-1: none); ``pair`` numbers the distinct (server, tool).
    """

    decision: np.ndarray
    rule: np.ndarray
    message: np.ndarray
    entry: np.ndarray
    pair: np.ndarray
    pairs: list[tuple[str, str]]
    rules: Interner
    messages: Interner

    def frame(self) -> pl.DataFrame:
        """The verdicts as strings: ``s_decision``, ``s_rule``, ``s_message``, ``s_entry``."""
        names = pl.Series([*DECISION_CODES, None], dtype=pl.String)
        codes = np.where(self.decision < 0, len(DECISION_CODES), self.decision)
        return pl.DataFrame(
            {
                "s_decision": names.gather(codes),
                "s_rule": pl.Series(self.rules.values, dtype=pl.String).gather(self.rule),
                "s_message": pl.Series(self.messages.values, dtype=pl.String).gather(self.message),
                "s_entry": self.entry,
            }
        )


def json_pointer(path: tuple[str, ...]) -> str | None:
    """The RFC 6901 pointer of an ``args.…`` path, or None when DuckDB could read it
    differently from ``enforcer.engine.lookup`` (digit segments with leading zeros,
    non-ASCII digits, ``-``): those conditions are evaluated by the engine instead."""
    segments = path[1:]
    for seg in segments:
        if seg == "-":
            return None
        if seg.isdigit() and not (seg.isascii() and (seg == "0" or seg[0] != "0")):
            return None
    return "".join("/" + seg.replace("~", "~0").replace("/", "~1") for seg in segments)


def request_of(row: dict[str, Any]) -> Request:
    """The engine's request for one recorded call (``arguments`` is JSON text)."""
    return Request(
        tool=row["tool"],
        arguments=json.loads(row["arguments"]),
        server=row["server"],
        grant=row["grant"],
        agent_id=row["agent_id"],
        session_id=row["session_id"],
    )


_MIX = np.uint64(0x9E3779B97F4A7C15)


def positions(rows: np.ndarray) -> pl.Series:
    """Row numbers as a Series Polars gathers with fast (``UInt32`` when they fit; an
    ``Int64`` Series is converted and checked first, several times slower)."""
    if rows.size == 0 or int(rows.max()) < 2**32 - 1:
        return pl.Series(rows.astype(np.uint32, copy=False), dtype=pl.UInt32)
    return pl.Series(rows)


def dense_codes(*columns: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """Per row, a number naming its values of ``columns`` (equal values, equal numbers,
    numbered from 0), and one row of each number.

    A Categorical column names its values exactly already (its physical codes). String
    columns are hashed, which is cheap and linear where Polars' dictionary encoding is not
    (seconds on ten million texts); a 64-bit hash names a value only if no two values
    collide, so that is proven (:func:`_collision_free`) and on a collision the strings
    are numbered by an exact ranking instead. Never a guess.
    """
    if not len(columns[0]):
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    exact = [_exact_key(c) for c in columns]
    strings = [c for c, key in zip(columns, exact, strict=True) if key is None]
    parts = [key for key in exact if key is not None]
    if strings:
        mixed: np.ndarray | None = None
        for h in _hashes(pl.DataFrame({str(i): c for i, c in enumerate(strings)})):
            if mixed is None:
                mixed = h
            else:
                with np.errstate(over="ignore"):
                    mixed = mixed * _MIX  # a new array: ``to_numpy`` may be read-only
                mixed ^= h
        assert mixed is not None
        first = pl.Series(mixed).arg_unique().to_numpy().astype(np.int64, copy=False)
        code = _lookup(mixed, mixed[first])
        del mixed
        if not _collision_free(strings, code, first):
            ranked = pl.DataFrame(strings).select(pl.struct(pl.all()).rank("dense") - 1)
            code = ranked.to_series().to_numpy().astype(np.int32)
        if not parts:
            return code, _firsts(code, int(code.max()) + 1)
        parts.insert(0, code.astype(np.int64, copy=False))
    return _combined(parts)


def _exact_key(column: pl.Series) -> np.ndarray | None:
    """The physical codes of a Categorical column without nulls (one code per string in
    one mapping for the whole column); None for other columns."""
    if isinstance(column.dtype, pl.Categorical) and not column.null_count():
        return column.to_physical().to_numpy()
    return None


def _collision_free(strings: list[pl.Series], code: np.ndarray, first: np.ndarray) -> bool:
    """Whether no two different rows of ``strings`` share a hashed number.

    Few numbers for many rows (server and tool names): the exact count of distinct rows,
    a Polars group-by that compares strings only within a hash bucket, must equal the
    count of numbers. Many numbers (arguments texts): every row is compared with the
    first row of its number instead, which reads each text once more.
    """
    n = code.size
    if first.size * 64 < n:
        frame = pl.DataFrame({str(i): c for i, c in enumerate(strings)})
        # (group_by is several times faster than unique() or n_unique() here)
        return bool(frame.group_by(frame.columns).len().height == first.size)
    rep = positions(first[code])
    return all(bool(_same(c, c.gather(rep))) for c in strings)


def _combined(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Dense numbers of the rows' tuples of exact non-negative codes, and one row of each
    number. Parts are joined one at a time (``key * base + part``), and the key is made
    dense first whenever the join would leave the range a table indexed by it can cover;
    when even a dense key would overflow 63 bits, the rows are ranked instead."""
    n = parts[0].size
    if n == 0:
        return np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int64)
    small = n // 8 + 1024
    key = parts[0].astype(np.int64)
    top = int(key.max())
    for p in parts[1:]:
        base = int(p.max()) + 1
        if (top + 1) * base > small:
            dense, count = _dense(key)
            key, top = dense.astype(np.int64), count - 1
        if (top + 1) * base >= 2**62:
            frame = pl.DataFrame({str(i): q for i, q in enumerate(parts)})
            ranked = frame.select(pl.struct(pl.all()).rank("dense") - 1).to_series()
            key, top = ranked.to_numpy().astype(np.int64), n
            break
        key *= base
        key += p
        top = top * base + base - 1
    if int(key.max()) <= small:  # a table indexed by the key: numbers and first rows at once
        return _distinct(key)[::-1]
    first = pl.Series(key).arg_unique().to_numpy().astype(np.int64, copy=False)
    wide = key.view(np.uint64)
    return _lookup(wide, wide[first]), first


def _dense(key: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense int32 numbers for exact non-negative int64 keys, and how many there are: a
    table indexed by the key when its range is small beside the rows (a larger one costs
    more in fresh memory and cache misses than a hash table), else Polars' hash table."""
    top = int(key.max())
    if top <= key.size // 8 + 1024:
        present = np.zeros(top + 1, dtype=bool)
        present[key] = True
        number = np.cumsum(present, dtype=np.int32)
        number -= 1
        return number[key], int(number[-1]) + 1
    first = pl.Series(key).arg_unique().to_numpy().astype(np.int64, copy=False)
    wide = key.view(np.uint64)
    return _lookup(wide, wide[first]), first.size


def _firsts(code: np.ndarray, k: int) -> np.ndarray:
    """One row of each of the numbers ``0..k-1`` of ``code``."""
    rows = np.empty(k, dtype=np.int64)
    rows[code] = np.arange(code.size, dtype=np.int64)
    return rows


def _hashes(frame: pl.DataFrame) -> list[np.ndarray]:
    """A 64-bit hash per value of each column, the columns hashed side by side (tests
    replace it with one that collides)."""
    return [s.to_numpy() for s in frame.select(pl.all().hash(seed=0)).get_columns()]


def _same(a: pl.Series, b: pl.Series) -> bool:
    """Whether two Series are equal element by element (nulls equal nulls)."""
    if a.null_count() or b.null_count():
        return bool(a.eq_missing(b).all())
    return bool((a == b).all())


def _lookup(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The index in ``keys`` (distinct) of each of ``values`` (each one of ``keys``).

    A table indexed by the top bits of a multiplicative hash, sparse enough that most keys
    have a slot of their own: a value whose slot holds one key can only be that key, so it
    is found with one gather; values of shared slots are looked up by binary search.
    """
    bits = max((keys.size * 64).bit_length(), 8)
    shift = np.uint64(64 - bits)
    with np.errstate(over="ignore"):
        home = ((keys * _MIX) >> shift).astype(np.int64)
    table = np.full(1 << bits, -1, dtype=np.int32)
    table[home] = np.arange(keys.size, dtype=np.int32)
    shared = np.bincount(home, minlength=1 << bits) > 1
    table[shared] = -1
    with np.errstate(over="ignore"):
        slots = values * _MIX
    slots >>= shift
    code = table[slots.view(np.int64)]
    del slots
    rest = np.flatnonzero(code < 0)
    if rest.size:
        order = np.argsort(keys)
        code[rest] = order[np.searchsorted(keys, values[rest], sorter=order)]
    return code


class CallCodes:
    """One number per call naming its (server, tool, arguments text): everything a
    stateless verdict reads unless a condition looks at another call field. Computed once
    per frame and shared by every policy replayed over it; ``take`` gives the codes of a
    subset of rows."""

    def __init__(self, calls: pl.DataFrame | None = None) -> None:
        self.call = np.zeros(0, dtype=np.int32)
        # The first row of each number when the numbers are those of these rows (0..k-1).
        self.first: np.ndarray | None = None
        if calls is not None and calls.height:
            self.call, self.first = dense_codes(*(calls.get_column(c) for c in _SIGNATURE))

    def take(self, rows: np.ndarray) -> CallCodes:
        codes = CallCodes()
        codes.call = self.call[rows]
        return codes


_SIGNATURE = ("server", "tool", "arguments")


@dataclass
class VerdictClasses:
    """Stateless verdicts as classes: per call a class number (``klass``), per class a
    verdict (``table``: :class:`Verdicts` whose arrays are indexed by class, not by call).

    The calls of one signature share a class; a call judged on its own fields (a condition
    on ``agent_id`` …) has the class of its verdict. Replay keeps calls as classes until
    it writes its result: one gather per call at the end instead of one per call for every
    field of the verdict on the way.
    """

    klass: np.ndarray
    table: Verdicts

    def per_call(self) -> Verdicts:
        t, k = self.table, self.klass
        return replace(
            t,
            decision=t.decision[k],
            rule=t.rule[k],
            message=t.message[k],
            entry=t.entry[k],
            pair=t.pair[k],
        )


def stateless_verdicts(
    policy: CompiledPolicy, calls: pl.DataFrame, *, codes: CallCodes | None = None
) -> Verdicts:
    """The verdict of every row of ``calls`` apart from rate limits, as codes per call
    (:func:`stateless_classes`, spread over the calls)."""
    return stateless_classes(policy, calls, codes=codes).per_call()


def stateless_classes(
    policy: CompiledPolicy, calls: pl.DataFrame, *, codes: CallCodes | None = None
) -> VerdictClasses:
    """The verdict of every row of ``calls`` apart from rate limits, as classes.

    Calls with the same (server, tool, arguments text) get the same verdict unless a
    condition reads another call field, so the verdict is computed on one call of each
    such signature (``codes``: :class:`CallCodes` of ``calls``, when the caller has it),
    whose number is the calls' class; the calls of entries with conditions on other
    fields are evaluated one by one (as column expressions) and get classes of their own.
    """
    missing = [c for c in INPUT_COLUMNS if c not in calls.columns]
    if missing:
        raise ValueError(f"calls lack column(s): {', '.join(missing)}")
    rules, messages = Interner(), Interner()
    messages("")
    if calls.height == 0:
        e = np.zeros(0, np.int32)
        return VerdictClasses(e, Verdicts(np.zeros(0, np.int8), e, e, e, e, [], rules, messages))
    if codes is None:
        codes = CallCodes(calls)
    if codes.first is not None:  # numbered over these very rows: 0..k-1, firsts known
        first, klass = codes.first, codes.call
    else:
        first, klass = _distinct(codes.call)
    sample = calls.select(INPUT_COLUMNS)[positions(first)]
    v = _sample_verdicts(policy, sample, rules, messages)
    classes = VerdictClasses(klass, v)
    by_row = _pairs_read_fields(policy, v.pairs)
    if by_row.any():
        rows = np.flatnonzero(by_row[v.pair][klass])
        if rows.size:
            _classes_by_row(policy, calls, rows, classes)
    return classes


def _pairs_read_fields(policy: CompiledPolicy, pairs: list[tuple[str, str]]) -> np.ndarray:
    """Per (server, tool): whether its verdict depends on a call field other than the
    arguments (its entry is consulted and has a condition on such a field)."""
    out = np.zeros(len(pairs), dtype=bool)
    for i, (server, tool) in enumerate(pairs):
        entry, hidden = policy.resolve(server, tool)
        if not hidden and entry is not None and entry.action != DENY:
            out[i] = bool(_fields_read(entry))
    return out


def _classes_by_row(
    policy: CompiledPolicy, calls: pl.DataFrame, rows: np.ndarray, classes: VerdictClasses
) -> None:
    """Steps 4-6, call by call, for entries whose conditions read a call field other than
    the arguments (``agent_id``, ``grant`` …): their verdict is not one per signature.
    Each distinct verdict found becomes a class; ``rows`` move to theirs."""
    t = classes.table
    rules, messages = t.rules, t.messages
    k = classes.klass[rows]
    entry, pair = t.entry[k], t.pair[k]
    decision, rule = t.decision[k], t.rule[k]
    for index in np.unique(entry).tolist():
        at = np.flatnonzero(entry == index)
        these = rows[at]
        tool = policy.tools[index]
        arguments = None
        if _reads_arguments(tool):
            arguments, _ = dense_codes(calls.get_column("arguments").gather(positions(these)))
            arguments_of = np.zeros(calls.height, dtype=np.int32)
            arguments_of[these] = arguments
            arguments = arguments_of
        verdict, rule_codes = _entry_verdicts(tool, calls, these, rules, arguments)
        decision[at], rule[at] = verdict, rule_codes
    part = calls.select(INPUT_COLUMNS)[positions(rows)]
    message = _messages(policy, part, decision, rule, pair, rules, messages)
    found = np.stack([decision.astype(np.int64), rule, message, entry, pair], axis=1)
    distinct, which = np.unique(found, axis=0, return_inverse=True)
    base = t.decision.size
    t.decision = np.concatenate([t.decision, distinct[:, 0].astype(np.int8)])
    t.rule = np.concatenate([t.rule, distinct[:, 1].astype(np.int32)])
    t.message = np.concatenate([t.message, distinct[:, 2].astype(np.int32)])
    t.entry = np.concatenate([t.entry, distinct[:, 3].astype(np.int32)])
    t.pair = np.concatenate([t.pair, distinct[:, 4].astype(np.int32)])
    klass = classes.klass.astype(np.int32)  # a copy: the numbers may be shared
    klass[rows] = base + which.reshape(-1)
    classes.klass = klass


def _sample_verdicts(
    policy: CompiledPolicy, calls: pl.DataFrame, rules: Interner, messages: Interner
) -> Verdicts:
    """The verdicts of a (small) frame of calls, row by row in column expressions: tool
    resolution once per (server, tool), conditions once per distinct arguments text."""
    n = calls.height
    decision = np.full(n, UNREADABLE, dtype=np.int8)
    rule = np.zeros(n, dtype=np.int32)
    entry = np.full(n, -1, dtype=np.int32)
    pair = np.zeros(n, dtype=np.int32)
    groups = (
        calls.select("server", "tool")
        .with_row_index("__row")
        .group_by("server", "tool")
        .agg(pl.col("__row"))
        .with_row_index("__pair")
    )
    # Rows come out grouped by pair, so each pair's rows are one slice: no sort needed.
    exploded = groups.select("__pair", "__row").explode("__row")
    all_rows = exploded.get_column("__row").to_numpy()
    pair[all_rows] = exploded.get_column("__pair").to_numpy()
    sizes = groups.select(pl.col("__row").list.len()).to_series().to_numpy()
    bounds = np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(sizes, dtype=np.int64)])
    pairs = [(str(s), str(t)) for s, t in groups.select("server", "tool").iter_rows()]
    p_decision, p_rule, p_entry, p_dynamic = _resolve_pairs(policy, pairs, rules)
    decision[:] = p_decision[pair]
    rule[:] = p_rule[pair]
    entry[:] = p_entry[pair]
    by_entry: dict[int, list[np.ndarray]] = {}
    for p in np.flatnonzero(p_dynamic):
        by_entry.setdefault(int(p_entry[p]), []).append(all_rows[bounds[p] : bounds[p + 1]])
    codes = None
    extracted = None
    reading = [i for i in by_entry if _reads_arguments(policy.tools[i])]
    if reading:
        codes, first = dense_codes(calls.get_column("arguments"))
        # One DuckDB query for every entry: each distinct text parsed once, every pointer
        # any entry reads extracted (a query per entry costs more than its rows here).
        conditions = [
            c
            for i in reading
            for r in (*policy.tools[i].require, *policy.tools[i].deny_if)
            for c in r.conditions
        ]
        part, columns, readable = _extract_arguments(
            calls.select("arguments")[positions(first)], conditions
        )
        extracted = (part, columns, readable, codes)
    for index, chunks in by_entry.items():
        rows = np.concatenate(chunks)
        verdict, rule_codes = _entry_verdicts(
            policy.tools[index], calls, rows, rules, codes, extracted
        )
        decision[rows] = verdict
        rule[rows] = rule_codes
    message = _messages(policy, calls, decision, rule, pair, rules, messages)
    return Verdicts(decision, rule, message, entry, pair, pairs, rules, messages)


def _fields_read(entry: ToolRule) -> list[str]:
    """The call fields other than arguments that the entry's conditions read."""
    conditions = [c for r in (*entry.require, *entry.deny_if) for c in r.conditions]
    return sorted({c.path[0] for c in conditions if c.path[0] in FIELD_ROOTS})


def _resolve_pairs(
    policy: CompiledPolicy, pairs: list[tuple[str, str]], rules: Interner
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct (server, tool): the governing entry, and the verdict when it does not
    depend on the arguments (taken from ``decide`` itself)."""
    index_of = {id(t): i for i, t in enumerate(policy.tools)}
    k = len(pairs)
    p_decision = np.zeros(k, dtype=np.int8)
    p_rule = np.zeros(k, dtype=np.int32)
    p_entry = np.full(k, -1, dtype=np.int32)
    p_dynamic = np.zeros(k, dtype=bool)
    for i, (server, tool) in enumerate(pairs):
        entry, hidden = policy.resolve(server, tool)
        p_entry[i] = -1 if entry is None else index_of[id(entry)]
        if (
            hidden
            or (entry is None and policy.default != ALLOW)
            or (entry is not None and entry.action == DENY)
        ):
            d = decide(
                policy, Request(tool=tool, arguments={}, server=server), InMemoryLimitState(), 0.0
            )
            p_decision[i], p_rule[i] = _CODE[d.decision], rules(d.rule)
        elif entry is None:
            p_decision[i], p_rule[i] = _CODE[ALLOW], rules("/default")
        else:
            p_dynamic[i] = True
    return p_decision, p_rule, p_entry, p_dynamic


def _messages(
    policy: CompiledPolicy,
    calls: pl.DataFrame,
    decision: np.ndarray,
    rule: np.ndarray,
    pair: np.ndarray,
    rules: Interner,
    messages: Interner,
) -> np.ndarray:
    """The engine's message for each refused (server, tool, rule), from ``decide`` run on one
    representative call, which must agree with the vectorized verdict."""
    message = np.zeros(len(decision), dtype=np.int32)
    refused = np.flatnonzero(decision > 0)
    if refused.size == 0:
        return message
    width = len(rules.values) + 1
    key = pair[refused].astype(np.int64) * width + rule[refused]
    if (int(pair.max()) + 1) * width <= 1 << 24:
        # A small table over every (pair, rule): any refused row of a combination serves.
        representative = np.full((int(pair.max()) + 1) * width, -1, dtype=np.int64)
        representative[key] = refused
        combos = np.flatnonzero(representative >= 0)
        firsts = representative[combos]
    else:
        combos, at = np.unique(key, return_index=True)
        firsts = refused[at]
    answers = np.zeros(combos.size, dtype=np.int32)
    for j, i in enumerate(firsts.tolist()):
        row = calls.row(i, named=True)
        d = decide(policy, request_of(row), InMemoryLimitState(), 0.0)
        want = (DECISION_CODES[decision[i]], rules.values[rule[i]])
        if (d.decision, d.rule) != want:
            raise EngineDisagreement(
                f"call {i} ({row['tool']}): the engine says {d.decision} {d.rule}, "
                f"the vectorized verdict says {want[0]} {want[1]}"
            )
        answers[j] = messages(d.message)
    if combos.size and int(combos[-1]) < 1 << 24:
        table = np.zeros(int(combos[-1]) + 1, dtype=np.int32)
        table[combos] = answers
        message[refused] = table[key]
    else:
        message[refused] = answers[np.searchsorted(combos, key)]
    return message


class EngineDisagreement(RuntimeError):
    """The vectorized verdict and the engine differ on a call: a bug, never a guess."""


# --------------------------------------------------------------------------- one tool entry


def _reads_arguments(entry: ToolRule) -> bool:
    return any(c.path[0] == "args" for r in (*entry.require, *entry.deny_if) for c in r.conditions)


def _entry_verdicts(
    entry: ToolRule,
    calls: pl.DataFrame,
    rows: np.ndarray,
    rules: Interner,
    codes: np.ndarray | None,
    extracted: _Extracted | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The engine's steps 4-6 for the calls governed by one ``tools`` entry, as codes.

    With ``codes`` (numbers of the arguments texts), arguments are read once per distinct
    text; when no condition looks at the other call fields, the conditions themselves
    are evaluated once per distinct text too, and the answers are spread back.
    ``extracted`` is the argument values of every distinct text, already read (numbered
    by ``codes``), with the columns of every pointer this entry reads.
    """
    conditions = [c for r in (*entry.require, *entry.deny_if) for c in r.conditions]
    fields = _fields_read(entry)
    inverse: np.ndarray | None = None
    if codes is not None and _reads_arguments(entry):
        first, inverse = _distinct(codes[rows])
        if extracted is not None:
            everything, columns, readable_all, _ = extracted
            texts = codes[rows[first]]
            part = everything[positions(texts)]
            readable = None if readable_all is None else readable_all[texts]
        else:
            distinct = calls.select("arguments")[positions(rows[first])]
            part, columns, readable = _extract_arguments(distinct, conditions)
        if fields:
            part = part[positions(inverse)].hstack(calls.select(fields)[positions(rows)])
            readable = None if readable is None else readable[inverse]
            inverse = None
    else:
        part = calls.select("arguments", *fields)[positions(rows)]
        part, columns, readable = _extract_arguments(part, conditions)
    compiled: dict[int, pl.Expr] = {}

    def rule_expr(conds: Iterable[Condition]) -> pl.Expr:
        expr = pl.lit(True)
        for c in conds:
            if id(c) not in compiled:
                compiled[id(c)] = _condition_expr(c, part, columns)
            expr = expr & compiled[id(c)]
        return expr

    branches: list[tuple[pl.Expr, str, str]] = []
    for r in entry.require:
        branches.append((~rule_expr(r.conditions), DENY, r.pointer))
    for r in entry.deny_if:
        if r.action == DENY:
            branches.append((rule_expr(r.conditions), DENY, r.pointer))
    for r in entry.deny_if:
        if r.action == REQUIRE_APPROVAL:
            branches.append((rule_expr(r.conditions), REQUIRE_APPROVAL, r.pointer))
    if entry.action == REQUIRE_APPROVAL:
        branches.append((pl.lit(True), REQUIRE_APPROVAL, entry.pointer + "/action"))
    else:
        branches.append((pl.lit(True), ALLOW, entry.pointer))
    # The first branch that holds wins, as in decide: build the chain from the last one.
    chosen: Any = pl.lit(len(branches) - 1, dtype=pl.Int32)
    for i in range(len(branches) - 2, -1, -1):
        chosen = pl.when(branches[i][0]).then(pl.lit(i, dtype=pl.Int32)).otherwise(chosen)
    # with_columns, not select: a chain of literals (conditions such as ``in: []``) would
    # select a single row instead of one per call.
    picked = part.with_columns(chosen.alias("__b")).get_column("__b").to_numpy()
    b_decision = np.array([_CODE[d] for _, d, _ in branches], dtype=np.int8)
    b_rule = np.array([rules(r) for _, _, r in branches], dtype=np.int32)
    verdict = b_decision[picked]
    if readable is not None:
        verdict = np.where(readable, verdict, UNREADABLE).astype(np.int8)
    if inverse is not None:  # evaluated once per distinct arguments text
        return verdict[inverse], b_rule[picked][inverse]
    return verdict, b_rule[picked]


def _distinct(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For small non-negative codes: the position of one element of each distinct code,
    and for every element the index of its code among them (a table, not a sort)."""
    size = int(codes.max()) + 1 if codes.size else 0
    if size > 4 * codes.size + 1024:
        _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        return first, inverse
    where = np.full(size, -1, dtype=np.int64)
    where[codes] = np.arange(codes.size, dtype=np.int64)
    present = np.flatnonzero(where >= 0)
    number = np.zeros(size, dtype=np.int32)
    number[present] = np.arange(present.size, dtype=np.int32)
    return where[present], number[codes]


_Extracted = tuple[pl.DataFrame, dict[str, "_ArgColumns"], np.ndarray | None, np.ndarray]


def _extract_arguments(
    part: pl.DataFrame, conditions: list[Condition]
) -> tuple[pl.DataFrame, dict[str, _ArgColumns], np.ndarray | None]:
    """Add, per distinct argument pointer, its raw JSON text, decoded string and number;
    and say which rows have readable arguments (None: arguments were not read).

    One DuckDB pass parses each arguments text once for all pointers of the entry.
    """
    pointers: list[str] = []
    reads_whole = False
    for c in conditions:
        if c.path[0] == "args":
            p = json_pointer(c.path) if len(c.path) > 1 else None
            if p is None:
                reads_whole = True
            elif p not in pointers:
                pointers.append(p)
    if not pointers and not reads_whole:
        return part, {}, None
    if part.schema["arguments"] != pl.String:  # Categorical texts (as replay loads them)
        part = part.with_columns(pl.col("arguments").cast(pl.String))
    columns = {p: _ArgColumns(f"__r{i}", f"__s{i}", f"__n{i}") for i, p in enumerate(pointers)}
    # try() turns an invalid text into NULL; a valid JSON text whose first non-blank
    # character is "{" is an object (checked below, without re-serializing anything).
    selects = ["v IS NOT NULL AS __readable"]
    for i, p in enumerate(pointers):
        v = f"v[{i + 1}]"
        col = columns[p]
        selects.append(f"{v} AS {col.raw}")
        selects.append(
            f"CASE WHEN starts_with({v}, '\"') THEN json_extract_string({v}, '$') END AS {col.text}"
        )
        selects.append(f"TRY_CAST({v} AS DOUBLE) AS {col.number}")
    literal = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in pointers or ["/"]) + "]"
    con = _duckdb()
    try:
        con.register("part", part.select("arguments").to_arrow())
        # try(): an unreadable text gives NULL instead of failing the whole query. Row order
        # is kept (DuckDB preserves insertion order), so the result lines up with ``part``.
        extracted = con.sql(
            f"SELECT {', '.join(selects)} "
            f"FROM (SELECT try(json_extract(arguments, {literal})) AS v FROM part)"
        ).pl()
    finally:
        con.close()
    is_object = part.select(
        pl.col("arguments").str.strip_chars_start(" \t\n\r").str.starts_with("{")
    ).to_series()
    readable = (extracted.get_column("__readable") & is_object).to_numpy()
    return part.hstack(extracted.drop("__readable")), columns, readable


_CONNECTION: list[duckdb.DuckDBPyConnection] = []


def _duckdb() -> duckdb.DuckDBPyConnection:
    """A cursor on one in-memory DuckDB database per process (opening one costs ~0.1 s)."""
    if not _CONNECTION:
        _CONNECTION.append(duckdb.connect())
    return _CONNECTION[0].cursor()


# --------------------------------------------------------------------------- conditions


def _is_plain_scalar(v: Any) -> bool:
    """A policy value whose JSON equality a column comparison reproduces exactly."""
    if v is None or isinstance(v, str | bool):
        return True
    if isinstance(v, int):
        return abs(v) <= _SAFE_INT
    return isinstance(v, float) and math.isfinite(v)


def _condition_expr(
    cond: Condition, part: pl.DataFrame, columns: dict[str, _ArgColumns]
) -> pl.Expr:
    root = cond.path[0]
    if root in FIELD_ROOTS:
        return _field_condition(cond)
    pointer = json_pointer(cond.path) if len(cond.path) > 1 else None
    if pointer is None:
        return _engine_on_arguments(cond)
    col = columns[pointer]
    exact = _args_condition(cond, part, col)
    return exact if exact is not None else _engine_on_values(cond, col.raw)


def _field_condition(cond: Condition) -> pl.Expr:
    """Conditions on ``tool``, ``server``, ``agent_id``, ``session_id``, ``grant``: strings,
    always present; a longer path (``tool.x``) never exists."""
    if len(cond.path) > 1:
        return pl.lit(cond.op == "exists" and not cond.value)
    col = pl.col(cond.path[0])
    op, v = cond.op, cond.value
    if op == "exists":
        return pl.lit(bool(v))
    if op in ("eq", "neq"):
        eq = col == v if isinstance(v, str) else pl.lit(False)
        return eq if op == "eq" else ~eq
    if op in ("in", "not_in"):
        strings = [x for x in v if isinstance(x, str)]
        found = col.is_in(strings) if strings else pl.lit(False)
        return found if op == "in" else ~found
    if op == "contains":
        if isinstance(v, str):
            return col.str.contains(v, literal=True)
        return pl.lit(cond.on_wrong_type)
    if op in ("lt", "lte", "gt", "gte"):
        return pl.lit(cond.on_wrong_type)  # a string is never a number
    if op == "type":
        return pl.lit("string" in ([v] if isinstance(v, str) else v))
    return _engine_on_values(cond, cond.path[0], field=True)


def _args_condition(cond: Condition, part: pl.DataFrame, col: _ArgColumns) -> pl.Expr | None:
    """An exact column expression for an argument condition, or None to ask the engine."""
    raw, text, number = pl.col(col.raw), pl.col(col.text), pl.col(col.number)
    present = raw.is_not_null()
    is_str = raw.str.starts_with('"').fill_null(False)
    is_num = raw.str.contains(r"^-?[0-9]").fill_null(False)
    op, v = cond.op, cond.value
    # A present value the op cannot judge: the rule's fail-closed answer.
    wrong = present & pl.lit(cond.on_wrong_type)
    if op == "exists":
        return present if v else ~present
    if op == "type":
        return _type_expr(cond, part, col)
    uses_numbers = op in ("lt", "lte", "gt", "gte") or (
        op in ("eq", "neq", "in", "not_in")
        and any(
            isinstance(x, int | float) and not isinstance(x, bool)
            for x in (v if isinstance(v, list) else [v])
        )
    )
    if uses_numbers and not _numbers_are_safe(part, col.raw):
        return None

    def eq(x: Any) -> pl.Expr | None:
        if not _is_plain_scalar(x):
            return None
        if x is None:
            return (raw == "null").fill_null(False)
        if isinstance(x, bool):
            return (raw == ("true" if x else "false")).fill_null(False)
        if isinstance(x, str):
            return (is_str & (text == x)).fill_null(False)
        return (is_num & (number == float(x))).fill_null(False)

    if op in ("eq", "neq"):
        e = eq(v)
        if e is None:
            return None
        return e if op == "eq" else present & ~e
    if op in ("in", "not_in"):
        found: pl.Expr = pl.lit(False)
        for x in v:
            e = eq(x)
            if e is None:
                return None
            found = found | e
        return found if op == "in" else present & ~found
    if op in ("lt", "lte", "gt", "gte"):
        if isinstance(v, int) and abs(v) > _SAFE_INT:
            return None
        bound = float(v)
        compare = {
            "lt": number < bound,
            "lte": number <= bound,
            "gt": number > bound,
            "gte": number >= bound,
        }[op]
        return (is_num & compare).fill_null(False) | (~is_num & wrong)
    if op == "contains":
        has_lists = part.select(pl.col(col.raw).str.starts_with("[").any()).item()
        if not isinstance(v, str) or has_lists:
            return None
        found = (is_str & text.str.contains(v, literal=True)).fill_null(False)
        return found | (~is_str & wrong)
    return None  # regex (Python's re, not the Rust regex crate), path_under


# The first character of a JSON text names its type; a number is an integer when its
# text has no fraction or exponent (DuckDB writes ``1.0`` and ``1e3`` as ``1.0`` and
# ``1000.0``, keeping Python's int/float split; long ones are left to the engine).
_TYPE_TEXT = {
    "string": r'^"',
    "array": r"^\[",
    "object": r"^\{",
    "boolean": r"^(true|false)$",
    "null": r"^null$",
    "number": r"^-?[0-9]",
    "integer": r"^-?[0-9]+$",
}


def _type_expr(cond: Condition, part: pl.DataFrame, col: _ArgColumns) -> pl.Expr | None:
    """``type``, from the raw JSON text, or None to ask the engine."""
    names = [cond.value] if isinstance(cond.value, str) else cond.value
    if ("number" in names or "integer" in names) and not _numbers_are_safe(part, col.raw):
        return None
    pattern = "|".join(f"({_TYPE_TEXT[n]})" for n in names)
    return pl.col(col.raw).str.contains(pattern).fill_null(False)


def _numbers_are_safe(part: pl.DataFrame, raw: str) -> bool:
    """Whether every number at this path converts to float64 without changing comparisons."""
    numbers = pl.col(raw).str.contains(r"^-?[0-9NI]").fill_null(False)
    unsafe = numbers & (
        (pl.col(raw).str.len_chars() > _SAFE_NUMBER_CHARS) | pl.col(raw).str.contains("[NI]")
    )
    return not part.select(unsafe.any()).item()


# --------------------------------------------------------------------------- engine fallback


def _engine_on_values(cond: Condition, column: str, *, field: bool = False) -> pl.Expr:
    """``enforcer.engine.holds`` on each distinct value of one column (raw JSON for arguments)."""
    probe = replace(cond, path=("args", "v"))

    def decode(value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        return {"v": value if field else json.loads(value)}

    return pl.col(column).map_batches(
        _per_distinct(lambda value: holds(probe, Request(tool="", arguments=decode(value)))),
        return_dtype=pl.Boolean,
    )


def _engine_on_arguments(cond: Condition) -> pl.Expr:
    """``holds`` on each distinct arguments text, for paths a JSON pointer cannot express."""

    def check(text: Any) -> bool:
        try:
            arguments = json.loads(text)
        except ValueError:
            return False  # the row is marked unreadable anyway
        return isinstance(arguments, dict) and holds(cond, Request(tool="", arguments=arguments))

    return pl.col("arguments").map_batches(_per_distinct(check), return_dtype=pl.Boolean)


def _per_distinct(fn: Callable[[Any], bool]) -> Callable[[pl.Series], pl.Series]:
    def apply(series: pl.Series) -> pl.Series:
        uniques = series.unique()
        answers = {value: fn(value) for value in uniques.to_list()}
        null_answer = answers.pop(None) if None in answers else False
        if not answers:
            return pl.Series(series.name, [null_answer] * len(series), dtype=pl.Boolean)
        mapped = series.replace_strict(answers, default=None, return_dtype=pl.Boolean)
        return mapped.fill_null(null_answer)

    return apply


__all__ = [
    "DECISION_CODES",
    "INPUT_COLUMNS",
    "UNREADABLE",
    "CallCodes",
    "EngineDisagreement",
    "Interner",
    "VerdictClasses",
    "Verdicts",
    "dense_codes",
    "json_pointer",
    "positions",
    "request_of",
    "stateless_classes",
    "stateless_verdicts",
]
