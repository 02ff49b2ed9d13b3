"""``--fail-on`` gates: small comparisons over the report, such as ``newly_denied>1%``.

A gate names a metric, a comparison and a threshold; it *fails* when the comparison holds.
Counts can be compared as numbers (``allow->deny>=10``) or as a percentage of the
reported calls (``newly_denied>1%``); ``fidelity`` is a share, compared as a percentage
(``fidelity<99.5%``) or a fraction (``fidelity<0.995``). A fidelity that cannot be measured
(no replayable calls under a known version) fails any fidelity gate: a CI check that
cannot see should not pass.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

DECISIONS = ("allow", "deny", "require_approval")
COUNT_METRICS = (
    "total",
    "changed",
    "unchanged",
    "rule_changed",
    "unknown",
    "newly_denied",
    "newly_allowed",
)
_OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_GATE = re.compile(
    r"^\s*(?P<metric>[a-z_]+(?:\s*(?:->|→)\s*[a-z_]+)?)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<percent>%)?\s*$"
)
MAX_GATE_CHARS = 200


class GateError(ValueError):
    """A ``--fail-on`` rule that cannot be parsed; the message says what is accepted."""


@dataclass(frozen=True)
class Gate:
    text: str
    metric: str
    op: str
    threshold: float
    percent: bool


def parse_gate(text: str) -> Gate:
    """Parse one rule like ``deny->allow>0``; raises GateError with the accepted forms."""
    if len(text) > MAX_GATE_CHARS:
        raise GateError(f"gate is {len(text)} characters long; the limit is {MAX_GATE_CHARS}")
    m = _GATE.match(text)
    if m is None:
        raise GateError(
            f"cannot read gate {text!r}: expected METRIC OP NUMBER[%], e.g. "
            "'newly_denied>1%', 'deny->allow>0', 'fidelity<99%'"
        )
    metric = re.sub(r"\s+", "", m.group("metric")).replace("→", "->")
    if "->" in metric:
        a, b = metric.split("->")
        bad = [x for x in (a, b) if x not in DECISIONS]
        if bad or a == b:
            raise GateError(
                f"gate {text!r}: a transition is FROM->TO with two different decisions "
                f"among {', '.join(DECISIONS)}"
            )
    elif metric not in (*COUNT_METRICS, "fidelity"):
        raise GateError(
            f"gate {text!r}: unknown metric {metric!r} (expected one of "
            f"{', '.join((*COUNT_METRICS, 'fidelity'))} or FROM->TO)"
        )
    return Gate(
        text.strip(), metric, m.group("op"), float(m.group("number")), bool(m.group("percent"))
    )


def metric_value(gate: Gate, report: Mapping[str, Any]) -> float | None:
    """The value the gate compares (a percentage when the threshold has ``%``)."""
    total = int(report["total"])
    if gate.metric == "fidelity":
        share = report["fidelity"]["share"]
        if share is None:
            return None
        return float(share) * 100 if gate.percent else float(share)
    if "->" in gate.metric:
        count = sum(int(t["count"]) for t in report["transitions"] if t["name"] == gate.metric)
    else:
        count = int(report[gate.metric])
    if gate.percent:
        return 100.0 * count / total if total else 0.0
    return float(count)


def evaluate_gates(gates: list[Gate], report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One result per gate: ``failed`` is true when the gate's condition holds."""
    results = []
    for g in gates:
        value = metric_value(g, report)
        failed = True if value is None else _OPS[g.op](value, g.threshold)
        results.append(
            {
                "rule": g.text,
                "metric": g.metric,
                "value": value,
                "threshold": g.threshold,
                "percent": g.percent,
                "failed": failed,
            }
        )
    return results


__all__ = ["Gate", "GateError", "evaluate_gates", "metric_value", "parse_gate"]
