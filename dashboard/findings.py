"""The detectors' findings, as a table the pages can filter and link from.

The dashboard never re-implements a detector: it calls :func:`detectors.findings.detect` on
the store, in a background thread (on a large store detection takes longer than a page may),
and keeps the result for a TTL. When the detectors package is not installed or fails, the
pages say so and carry on with the raw figures.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from callward.dashboard.queries import CallFilter

COLUMNS = (
    "kind",
    "pattern",
    "severity",
    "agent_id",
    "session_id",
    "first_seen",
    "last_seen",
    "span_ids",
    "explanation",
    "trace_id",
    "calls",
)
FINDINGS_TTL_S = 300.0
# How long a page waits for a running detection before showing "still running".
FINDINGS_WAIT_S = 0.5
SEVERITY_ORDER = {"critical": 0, "high": 1, "medium": 2, "low": 3, "info": 4}


@dataclass(frozen=True)
class Findings:
    frame: pd.DataFrame
    note: str | None = None  # why there are none, when it is not "nothing found"
    pending: bool = False  # the detectors are still running; come back shortly


def _as_row(finding: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(finding) and not isinstance(finding, type):
        raw = dataclasses.asdict(finding)
    else:
        raw = vars(finding)
    row = {c: raw.get(c) for c in COLUMNS}
    row["span_ids"] = tuple(row["span_ids"] or ())
    return row


def to_frame(found: list[Any]) -> pd.DataFrame:
    """Findings as a table, most severe first, then most recent."""
    frame = pd.DataFrame([_as_row(f) for f in found], columns=list(COLUMNS))
    for column in ("first_seen", "last_seen"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["rank"] = frame["severity"].map(SEVERITY_ORDER).fillna(len(SEVERITY_ORDER))
    frame = frame.sort_values(["rank", "last_seen"], ascending=[True, False], kind="stable")
    return frame.drop(columns="rank").reset_index(drop=True)


def _run_detectors(data_dir: str) -> Findings:
    try:
        from callward.detectors.findings import detect
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("detectors"):
            return Findings(to_frame([]), "the detectors are not installed")
        raise
    return Findings(to_frame(list(detect(Path(data_dir)))))


@dataclass
class _Job:
    future: Future[Findings]
    started: float


class DetectionRunner:
    """Runs the detectors off the page's thread, at most once per data directory at a time.

    On a large store the detectors take longer than a page may; the page shows the latest
    finished result (or a "still running" note) instead of waiting. A result older than
    FINDINGS_TTL_S (or five times what the run took, if longer) is recomputed in the
    background while the old one is still shown.
    """

    def __init__(self, detect: Callable[[str], Findings] = _run_detectors):
        self._detect = detect
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callward-detect")
        self._lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._done: dict[str, tuple[float, Findings]] = {}

    def _safe_detect(self, data_dir: str) -> Findings:
        try:
            return self._detect(data_dir)
        except Exception as e:  # a detector bug must not take the dashboard down
            return Findings(to_frame([]), f"the detectors failed: {type(e).__name__}: {e}")

    def ready(self, data_dir: str) -> bool:
        """Whether a finished result exists for ``data_dir`` (or the running job is done)."""
        with self._lock:
            job = self._jobs.get(data_dir)
            return data_dir in self._done or (job is not None and job.future.done())

    def get(self, data_dir: str, wait_s: float) -> Findings:
        now = time.monotonic()
        with self._lock:
            job = self._jobs.get(data_dir)
            done = self._done.get(data_dir)
            if job is None and (done is None or now > done[0]):
                job = _Job(self._executor.submit(self._safe_detect, data_dir), now)
                self._jobs[data_dir] = job
        if job is not None:
            try:
                result = job.future.result(timeout=wait_s)
            except FutureTimeout:
                pass
            else:
                with self._lock:
                    # Stale after the TTL, or after five runs' time on a store so large
                    # that detection would otherwise never stop competing with the pages.
                    finished = time.monotonic()
                    took = finished - job.started
                    self._done[data_dir] = (finished + max(FINDINGS_TTL_S, 5 * took), result)
                    if self._jobs.get(data_dir) is job:
                        del self._jobs[data_dir]
                done = self._done[data_dir]
        if done is not None:
            return done[1]
        return Findings(
            to_frame([]), "the detectors are still running over the store", pending=True
        )


@st.cache_resource(show_spinner=False)
def runner() -> DetectionRunner:
    return DetectionRunner()


def load(data_dir: str, wait_s: float = FINDINGS_WAIT_S) -> Findings:
    """The latest findings for ``data_dir``, waiting at most ``wait_s`` for a running job."""
    return runner().get(data_dir, wait_s)


def of_kind(frame: pd.DataFrame, word: str) -> pd.DataFrame:
    """Findings whose kind mentions ``word`` (e.g. "runaway", "exfil")."""
    return frame[frame["kind"].fillna("").str.contains(word, case=False)]


def within(frame: pd.DataFrame, flt: CallFilter) -> pd.DataFrame:
    """Findings that overlap the filter's time range and agents."""
    keep = pd.Series(True, index=frame.index)
    if flt.start is not None:
        keep &= frame["last_seen"] >= pd.Timestamp(flt.start)
    if flt.end is not None:
        keep &= frame["first_seen"] < pd.Timestamp(flt.end)
    if flt.agents:
        keep &= frame["agent_id"].isin(flt.agents)
    return frame[keep]
