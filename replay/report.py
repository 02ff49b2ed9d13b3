"""The replay report: a plain JSON-ready document built from a :class:`Comparison`.

The JSON shape is a stable, documented interface (docs/replay.md, and the JSON Schema in
``replay/report.schema.json``, which the tests validate every report against). Renderers
for the terminal, Markdown and HTML read this same document, so every format says the same.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl

from callward.replay.compare import UNKNOWN_REASONS, Comparison
from callward.replay.load import fetch_messages

SCHEMA_VERSION = 1
DECISIONS = ("allow", "deny", "require_approval")
EXAMPLES_PER_TRANSITION = 5
TOP_N = 10


def iso(us: int | None) -> str | None:
    if us is None:
        return None
    return datetime.fromtimestamp(us / 1_000_000, tz=UTC).isoformat().replace("+00:00", "Z")


def _share(n: int, total: int) -> float:
    return round(n / total, 6) if total else 0.0


def build_report(c: Comparison) -> dict[str, Any]:
    """The report document; ``gates`` is filled in later by the CLI."""
    calls = c.calls
    total = calls.height
    # Counts are taken with expressions; only the (few) changed calls are materialised.
    is_known = pl.col("unknown_reason").is_null()
    known_count, rule_only = calls.select(
        is_known.sum().alias("known"),
        (
            is_known
            & (pl.col("b_decision") == pl.col("r_decision"))
            & (pl.col("b_rule") != pl.col("r_rule"))
        )
        .sum()
        .alias("rule_only"),
    ).row(0)
    unknown = total - int(known_count)
    decision_changed = calls.filter(is_known & (pl.col("b_decision") != pl.col("r_decision")))
    newly_denied = decision_changed.filter(pl.col("r_decision") == "deny").height
    newly_allowed = decision_changed.filter(pl.col("r_decision") == "allow").height
    req = c.request
    message = None
    if total == 0:
        message = "no recorded calls in the selected range and filters"
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "total": total,
        "unchanged": int(known_count) - decision_changed.height,
        "changed": decision_changed.height,
        "rule_changed": int(rule_only),
        "unknown": unknown,
        "unknown_reasons": _reasons(calls, "unknown_reason"),
        "newly_denied": newly_denied,
        "newly_allowed": newly_allowed,
        "transitions": _transitions(c, decision_changed, total),
        "fidelity": _fidelity(calls),
        "most_affected": _most_affected(decision_changed),
        "newly_denied_over_time": _over_time(
            decision_changed.filter(pl.col("r_decision") == "deny"), c
        ),
        "candidate": {"version": req.candidate.version, "source": req.candidate.source},
        "baseline": (
            {"kind": "policy", "version": req.baseline.version, "source": req.baseline.source}
            if req.baseline is not None
            else {"kind": "recorded", "version": None, "source": None}
        ),
        "range": {
            "since": iso(int(req.since.timestamp() * 1e6)) if req.since else None,
            "until": iso(int(req.until.timestamp() * 1e6)) if req.until else None,
            "first_call": iso(c.first_call_us),
            "last_call": iso(c.last_call_us),
        },
        "filters": {"agent": req.agent, "tool": req.tool},
        "store": {
            "files_read": c.files_read,
            "skipped_files": [{"path": s.path, "reason": s.reason} for s in c.skipped_files],
            "invalid_policy_files": [
                {"path": s.path, "reason": s.reason} for s in c.invalid_policy_files
            ],
            "recorded_policy_versions": list(c.recorded_versions),
        },
        "replay": {
            "calls_replayed": c.stats.calls,
            "calls_with_limits": c.stats.pending_limits,
            "contended_keys": c.stats.contended_keys,
            "sequential_calls": c.stats.sequential_calls,
        },
        "gates": [],
        "message": message,
    }
    return report


def _reasons(calls: pl.DataFrame, column: str) -> dict[str, int]:
    counts = dict.fromkeys(UNKNOWN_REASONS, 0)
    for reason, n in calls.group_by(column).len().iter_rows():
        if reason is not None:
            counts[str(reason)] = int(n)
    return counts


def _transitions(c: Comparison, changed: pl.DataFrame, total: int) -> list[dict[str, Any]]:
    counts = (
        changed.group_by("b_decision", "r_decision")
        .len()
        .sort(["len", "b_decision", "r_decision"], descending=[True, False, False])
    )
    examples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    picked = (
        changed.sort("start_us", "span_id")
        .group_by("b_decision", "r_decision", maintain_order=True)
        .head(EXAMPLES_PER_TRANSITION)
    )
    need_messages = c.request.baseline is None
    recorded_messages = (
        fetch_messages(c.request.data_dir, picked.get_column("span_id").to_list())
        if need_messages and picked.height
        else {}
    )
    for row in picked.iter_rows(named=True):
        base_message = row["b_message"]
        if base_message is None:
            base_message = recorded_messages.get(row["span_id"], "")
        examples.setdefault((row["b_decision"], row["r_decision"]), []).append(
            {
                "span_id": row["span_id"],
                "call_id": row["call_id"],
                "start_time": iso(row["start_us"]),
                "agent_id": row["agent_id"],
                "session_id": row["session_id"],
                "server": row["server"],
                "tool": row["tool"],
                "from_rule": row["b_rule"],
                "from_message": base_message,
                "to_rule": row["r_rule"],
                "to_message": row["r_message"],
            }
        )
    out = []
    for b, r, n in counts.iter_rows():
        out.append(
            {
                "from": b,
                "to": r,
                "name": f"{b}->{r}",
                "count": int(n),
                "share": _share(int(n), total),
                "examples": examples.get((b, r), []),
            }
        )
    return out


def _fidelity(calls: pl.DataFrame) -> dict[str, Any]:
    is_judged = pl.col("fidelity_unknown_reason").is_null()
    same = (pl.col("f_decision") == pl.col("decision")) & (pl.col("f_rule") == pl.col("rule"))
    judged_count, reproduced_count = calls.select(
        is_judged.sum().alias("judged"), (is_judged & same).sum().alias("reproduced")
    ).row(0)
    judged_count, reproduced_count = int(judged_count or 0), int(reproduced_count or 0)
    mismatched = calls.filter(is_judged & ~same)
    by_version = []
    for version, n, ok in (
        calls.lazy()
        .filter(is_judged)
        .group_by("policy_version")
        .agg(pl.len(), same.sum().alias("ok"))
        .sort("policy_version")
        .collect()
        .iter_rows()
    ):
        by_version.append({"version": version, "calls": int(n), "reproduced": int(ok)})
    examples = [
        {
            "span_id": row["span_id"],
            "start_time": iso(row["start_us"]),
            "tool": row["tool"],
            "policy_version": row["policy_version"],
            "recorded_decision": row["decision"],
            "recorded_rule": row["rule"],
            "replayed_decision": row["f_decision"],
            "replayed_rule": row["f_rule"],
        }
        for row in mismatched.sort("start_us").head(EXAMPLES_PER_TRANSITION).iter_rows(named=True)
    ]
    return {
        "share": round(reproduced_count / judged_count, 6) if judged_count else None,
        "replayed": judged_count,
        "reproduced": reproduced_count,
        "unknown": calls.height - judged_count,
        "unknown_reasons": _reasons(calls, "fidelity_unknown_reason"),
        "by_version": by_version,
        "mismatches": examples,
    }


def _most_affected(changed: pl.DataFrame) -> dict[str, list[dict[str, Any]]]:
    # The rule responsible: the new rule when the call is now refused, else the old one.
    responsible = (
        pl.when(pl.col("r_decision") != "allow").then(pl.col("r_rule")).otherwise(pl.col("b_rule"))
    )
    frame = changed.with_columns(responsible.alias("__rule"))
    out: dict[str, list[dict[str, Any]]] = {}
    for key, column in (
        ("agents", "agent_id"),
        ("tools", "tool"),
        ("sessions", "session_id"),
        ("rules", "__rule"),
    ):
        top = (
            frame.group_by(column)
            .agg(
                pl.len().alias("changed"),
                (pl.col("r_decision") == "deny").sum().alias("newly_denied"),
                (pl.col("r_decision") == "allow").sum().alias("newly_allowed"),
            )
            .sort(["changed", column], descending=[True, False])
            .head(TOP_N)
        )
        out[key] = [
            {"name": name, "changed": int(n), "newly_denied": int(d), "newly_allowed": int(a)}
            for name, n, d, a in top.iter_rows()
        ]
    return out


def _over_time(denied: pl.DataFrame, c: Comparison) -> dict[str, Any]:
    """Newly denied calls per hour (ranges up to three days), else per day, or per several
    days so that a chart never has more than about 400 points."""
    span = (c.last_call_us or 0) - (c.first_call_us or 0)
    days = span // (86400 * 1_000_000) + 1
    bucket_s = 3600 if span <= 3 * 86400 * 1_000_000 else 86400 * -(-days // 400)
    points: list[dict[str, Any]] = []
    if c.first_call_us is not None and c.last_call_us is not None:
        b = bucket_s * 1_000_000
        counts = dict(denied.group_by((pl.col("start_us") // b).alias("bucket")).len().iter_rows())
        for k in range(c.first_call_us // b, c.last_call_us // b + 1):
            points.append({"start": iso(k * b), "count": int(counts.get(k, 0))})
    return {"bucket_seconds": bucket_s, "points": points}


__all__ = ["SCHEMA_VERSION", "build_report", "iso"]
