"""Replay: the decision each recorded call would get under a policy, exactly as the online
enforcer would have made it.

The deciding is the enforcer's batch entry point (:func:`enforcer.batch.decide_table`,
held equal to a per-call loop of :func:`enforcer.engine.decide` by a property test); what
is replay's own is reading the recorded trail as the limit state saw it. A recorded call
gives its quota back when it was executed and failed: ``outcome = "error"`` and a recorded
decision other than ``deny`` (a call the recording enforcer denied never ran, so nothing is
known of how it would have ended). Its quota then comes back at its ``end_time``, when the
enforcer received its Report. When several policy versions are replayed together
(fidelity: each call under its recorded version), a switch of version over the timeline is
a reload, and resets the counters a reload resets.
"""

from __future__ import annotations

from collections.abc import Mapping

import polars as pl

from callward.enforcer.batch import (
    BATCH_COLUMNS,
    BatchStats,
    EngineDisagreement,
    Progress,
    decide_table,
)
from callward.enforcer.batch import (
    NEEDED as BATCH_NEEDED,
)
from callward.enforcer.policy import CompiledPolicy
from callward.enforcer.vectorize import CallCodes

REPLAY_COLUMNS = ("r_decision", "r_rule", "r_message")
# Columns ``replay`` needs in its input frame: the batch's, with the recorded outcome in
# place of whether the call fails.
NEEDED = (*(c for c in BATCH_NEEDED if c != "fails"), "decision", "outcome")

ReplayStats = BatchStats
"""How much of the work each stage of the batch did (shown in reports and the benchmark)."""


def _no_progress(stage: str, fraction: float) -> None:
    return None


def replay(
    calls: pl.DataFrame,
    policies: Mapping[str, CompiledPolicy],
    version_of_row: pl.Series | str,
    *,
    progress: Progress = _no_progress,
    codes: CallCodes | None = None,
    with_messages: bool = True,
) -> tuple[pl.DataFrame, ReplayStats]:
    """Decide every row of ``calls`` and return ``r_decision``, ``r_rule``, ``r_message``
    in row order (``r_decision`` is null for a call whose arguments cannot be read), as
    Categorical columns.

    ``version_of_row`` is either one key of ``policies`` (replay all rows with that policy)
    or a string Series giving each row's key (fidelity: each call with its recorded version).
    ``codes`` and ``with_messages`` are those of :func:`enforcer.batch.decide_table`.
    """
    missing = [c for c in NEEDED if c not in calls.columns]
    if missing:
        raise ValueError(f"calls lack column(s): {', '.join(missing)}")
    fails = (pl.col("outcome") == "error") & (pl.col("decision") != "deny")
    table = calls.select(*(c for c in BATCH_NEEDED if c != "fails"), fails.alias("fails"))
    decided, stats = decide_table(
        table,
        policies,
        version_of_row,
        progress=progress,
        codes=codes,
        with_messages=with_messages,
    )
    names = dict(zip(BATCH_COLUMNS, REPLAY_COLUMNS, strict=True))
    return decided.rename({c: names[c] for c in decided.columns}), stats


__all__ = ["REPLAY_COLUMNS", "EngineDisagreement", "ReplayStats", "replay"]
