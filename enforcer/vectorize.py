"""The stateless part of a policy, compiled into column expressions over many calls at once.

Replay needs the verdict of millions of recorded calls. Everything in a decision except
the rate limits depends only on the call itself (tool resolution, ``hide``, ``default``,
``action``, ``require`` and ``deny_if``), so it can be computed for a whole table at once.
This module compiles a :class:`~enforcer.policy.CompiledPolicy` into Polars expressions
that follow :func:`enforcer.engine.decide` step by step, and returns for every call:

* ``s_decision``: ``allow`` (meaning: allowed unless a rate limit is full), ``deny`` or
  ``require_approval``;
* ``s_rule``: the JSON pointer the engine would name;
* ``s_entry``: the index in ``policy.tools`` of the governing entry (-1 when none), which
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
import polars as pl

from enforcer.engine import ALLOW, DENY, REQUIRE_APPROVAL, InMemoryLimitState, Request, decide, holds
from enforcer.policy import CompiledPolicy, Condition, ToolRule

FIELD_ROOTS = ("tool", "server", "agent_id", "session_id", "grant")
INPUT_COLUMNS = ("tool", "server", "agent_id", "session_id", "grant", "arguments")
VERDICT_COLUMNS = ("s_decision", "s_rule", "s_entry")
# Integers up to 2**53 and decimal texts of 15 significant digits convert to float64
# exactly, so comparing them as floats gives Python's answer.
_SAFE_INT = 2**53
_SAFE_NUMBER_CHARS = 15
_ROW = "__row"


@dataclass(frozen=True)
class _ArgColumns:
    """Names of the columns that hold one argument path's value: raw JSON, string, number."""

    raw: str
    text: str
    number: str


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


def stateless_verdicts(policy: CompiledPolicy, calls: pl.DataFrame) -> pl.DataFrame:
    """``s_decision``, ``s_rule`` and ``s_entry`` for every row of ``calls``, in row order."""
    missing = [c for c in INPUT_COLUMNS if c not in calls.columns]
    if missing:
        raise ValueError(f"calls lack column(s): {', '.join(missing)}")
    if calls.height == 0:
        return pl.DataFrame(
            schema={"s_decision": pl.String, "s_rule": pl.String, "s_entry": pl.Int32}
        )
    frame = calls.select(INPUT_COLUMNS).with_row_index(_ROW)
    pairs = _resolve_pairs(policy, frame.select("server", "tool").unique())
    frame = frame.join(pairs, on=["server", "tool"], how="left")
    static = frame.filter(pl.col("__dynamic").not_())
    parts = [
        static.select(
            _ROW,
            pl.col("__decision").alias("s_decision"),
            pl.col("__rule").alias("s_rule"),
            pl.col("__entry").alias("s_entry"),
        )
    ]
    dynamic = frame.filter(pl.col("__dynamic"))
    if dynamic.height:
        for (index,), part in dynamic.partition_by("__entry", as_dict=True).items():
            parts.append(_entry_verdicts(policy.tools[int(index)], int(index), part))
    out = pl.concat(parts, how="vertical").sort(_ROW)
    return out.select(
        pl.col("s_decision"), pl.col("s_rule"), pl.col("s_entry").cast(pl.Int32)
    )


def _resolve_pairs(policy: CompiledPolicy, pairs: pl.DataFrame) -> pl.DataFrame:
    """Per distinct (server, tool): the governing entry, and the verdict when it does not
    depend on the arguments (taken from ``decide`` itself)."""
    index_of = {id(t): i for i, t in enumerate(policy.tools)}
    rows: dict[str, list[Any]] = {
        k: [] for k in ("server", "tool", "__dynamic", "__decision", "__rule", "__entry")
    }
    for server, tool in pairs.iter_rows():
        entry, hidden = policy.resolve(server, tool)
        entry_index = -1 if entry is None else index_of[id(entry)]
        dynamic = False
        if hidden or (entry is None and policy.default != ALLOW) or (
            entry is not None and entry.action == DENY
        ):
            d = decide(policy, Request(tool=tool, arguments={}, server=server),
                       InMemoryLimitState(), 0.0)
            decision, rule = d.decision, d.rule
        elif entry is None:
            decision, rule = ALLOW, "/default"
        else:
            decision, rule, dynamic = ALLOW, entry.pointer, True
        for k, v in (
            ("server", server),
            ("tool", tool),
            ("__dynamic", dynamic),
            ("__decision", decision),
            ("__rule", rule),
            ("__entry", entry_index),
        ):
            rows[k].append(v)
    return pl.DataFrame(
        rows,
        schema={
            "server": pl.String,
            "tool": pl.String,
            "__dynamic": pl.Boolean,
            "__decision": pl.String,
            "__rule": pl.String,
            "__entry": pl.Int32,
        },
    )


# --------------------------------------------------------------------------- one tool entry


def _entry_verdicts(entry: ToolRule, index: int, part: pl.DataFrame) -> pl.DataFrame:
    """The engine's steps 4-6 for the calls governed by one ``tools`` entry."""
    conditions = [c for r in (*entry.require, *entry.deny_if) for c in r.conditions]
    part, columns = _extract_arguments(part, conditions)
    compiled: dict[int, pl.Expr] = {}

    def rule_expr(conds: Iterable[Condition]) -> pl.Expr:
        expr = pl.lit(True)
        for c in conds:
            if id(c) not in compiled:
                compiled[id(c)] = _condition_expr(c, part, columns)
            expr = expr & compiled[id(c)]
        return expr

    branches: list[tuple[pl.Expr, str, str]] = []
    for rule in entry.require:
        branches.append((~rule_expr(rule.conditions), DENY, rule.pointer))
    for rule in entry.deny_if:
        if rule.action == DENY:
            branches.append((rule_expr(rule.conditions), DENY, rule.pointer))
    for rule in entry.deny_if:
        if rule.action == REQUIRE_APPROVAL:
            branches.append((rule_expr(rule.conditions), REQUIRE_APPROVAL, rule.pointer))
    if entry.action == REQUIRE_APPROVAL:
        fallback = (REQUIRE_APPROVAL, entry.pointer + "/action")
    else:
        fallback = (ALLOW, entry.pointer)
    decision: Any = pl.lit(fallback[0])
    rule_col: Any = pl.lit(fallback[1])
    # Build from the last branch backwards so the first branch that holds wins, as in decide.
    for cond, d, r in reversed(branches):
        decision = pl.when(cond).then(pl.lit(d)).otherwise(decision)
        rule_col = pl.when(cond).then(pl.lit(r)).otherwise(rule_col)
    return part.select(
        _ROW,
        decision.alias("s_decision"),
        rule_col.alias("s_rule"),
        pl.lit(index, dtype=pl.Int32).alias("s_entry"),
    )


def _extract_arguments(
    part: pl.DataFrame, conditions: list[Condition]
) -> tuple[pl.DataFrame, dict[str, _ArgColumns]]:
    """Add, per distinct argument pointer, its raw JSON text, decoded string and number.

    One DuckDB pass parses each arguments text once for all pointers of the entry.
    """
    pointers: list[str] = []
    for c in conditions:
        if c.path[0] == "args" and len(c.path) > 1:
            p = json_pointer(c.path)
            if p is not None and p not in pointers:
                pointers.append(p)
    if not pointers:
        return part, {}
    columns = {
        p: _ArgColumns(f"__r{i}", f"__s{i}", f"__n{i}") for i, p in enumerate(pointers)
    }
    selects = []
    for i, p in enumerate(pointers):
        v = f"v[{i + 1}]"
        col = columns[p]
        selects.append(f"{v} AS {col.raw}")
        selects.append(
            f"CASE WHEN starts_with({v}, '\"') THEN json_extract_string({v}, '$') END AS {col.text}"
        )
        selects.append(f"TRY_CAST({v} AS DOUBLE) AS {col.number}")
    literal = "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in pointers) + "]"
    con = _duckdb()
    try:
        con.register("part", part.select(_ROW, "arguments").to_arrow())
        extracted = con.sql(
            f"SELECT {_ROW}, {', '.join(selects)} "
            f"FROM (SELECT {_ROW}, json_extract(arguments, {literal}) AS v FROM part)"
        ).pl()
    finally:
        con.close()
    return part.join(extracted, on=_ROW, how="left"), columns


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


def _condition_expr(cond: Condition, part: pl.DataFrame, columns: dict[str, _ArgColumns]) -> pl.Expr:
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
        return col.str.contains(v, literal=True) if isinstance(v, str) else pl.lit(False)
    if op in ("lt", "lte", "gt", "gte"):
        return pl.lit(False)
    return _engine_on_values(cond, cond.path[0], field=True)


def _args_condition(cond: Condition, part: pl.DataFrame, col: _ArgColumns) -> pl.Expr | None:
    """An exact column expression for an argument condition, or None to ask the engine."""
    raw, text, number = pl.col(col.raw), pl.col(col.text), pl.col(col.number)
    present = raw.is_not_null()
    is_str = raw.str.starts_with('"').fill_null(False)
    is_num = raw.str.contains(r"^-?[0-9]").fill_null(False)
    op, v = cond.op, cond.value
    if op == "exists":
        return present if v else ~present
    uses_numbers = op in ("lt", "lte", "gt", "gte") or (
        op in ("eq", "neq", "in", "not_in")
        and any(isinstance(x, int | float) and not isinstance(x, bool)
                for x in (v if isinstance(v, list) else [v]))
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
        return (is_num & compare).fill_null(False)
    if op == "contains":
        has_lists = part.select(pl.col(col.raw).str.starts_with("[").any()).item()
        if not isinstance(v, str) or has_lists:
            return None
        return (is_str & text.str.contains(v, literal=True)).fill_null(False)
    return None  # regex: Python's re, not the Rust regex crate


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
        return holds(cond, Request(tool="", arguments=json.loads(text)))

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


__all__ = ["INPUT_COLUMNS", "VERDICT_COLUMNS", "json_pointer", "stateless_verdicts"]
