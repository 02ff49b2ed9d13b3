"""Dedupe with bounded memory: exact against a plain set of everything written, whatever
the clock, the restarts and the mix of recent and late copies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pyarrow as pa
from hypothesis import event, given, settings
from hypothesis import strategies as st

from callward.collector.schema import DUCKDB_FILE
from callward.collector.store import StoreWriter

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
HORIZON = 600


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> float:
        return self.at.timestamp()


def table(ids: list[int], starts: list[datetime]) -> pa.Table:
    return pa.table(
        {
            "start_time": starts,
            "end_time": [t + timedelta(milliseconds=5) for t in starts],
            "trace_id": [f"{i:032x}" for i in ids],
            "span_id": [f"{i + 7:016x}" for i in ids],
            "tool": ["t"] * len(ids),
            "decision": ["allow"] * len(ids),
        }
    )


def stored(root: Path) -> list[tuple[str, str, datetime]]:
    with duckdb.connect(str(root / DUCKDB_FILE), read_only=True) as con:
        return con.execute("select trace_id, span_id, start_time from tool_calls").fetchall()


def test_memory_forgets_rows_behind_the_horizon_but_copies_are_still_dropped(
    tmp_path: Path,
) -> None:
    clock = Clock(NOW)
    writer = StoreWriter(tmp_path, dedupe_horizon_s=HORIZON, clock=clock)
    writer.write(table(list(range(50)), [NOW] * 50))
    assert writer.known_keys == 50
    clock.at = NOW + timedelta(seconds=HORIZON + 61)  # the whole minute is behind
    writer.write(table([1000], [clock.at]))  # any write moves the horizon
    assert writer.known_keys == 1
    # A late retry of the first batch is found in the files, not in memory.
    assert writer.write(table(list(range(50)), [NOW] * 50)) == []
    assert writer.duplicates_dropped == 50 and writer.dedupe.files_read >= 1
    assert len(stored(tmp_path)) == 51


def test_a_minute_partly_inside_the_horizon_is_kept(tmp_path: Path) -> None:
    clock = Clock(NOW)
    writer = StoreWriter(tmp_path, dedupe_horizon_s=HORIZON, clock=clock)
    writer.write(table([1], [NOW + timedelta(seconds=59)]))
    clock.at = NOW + timedelta(seconds=HORIZON + 59)  # cutoff is exactly that start
    writer.write(table([2], [clock.at]))
    assert writer.known_keys == 2
    clock.at += timedelta(microseconds=1)
    writer.write(table([3], [clock.at]))
    assert writer.known_keys == 3  # minute 0 still reaches past the cutoff by 1 s
    clock.at += timedelta(seconds=1)
    writer.write(table([4], [clock.at]))
    assert writer.known_keys == 3  # now it lies wholly behind: id 1 dropped from memory


def test_a_restart_reads_the_horizon_back(tmp_path: Path) -> None:
    clock = Clock(NOW)
    first = StoreWriter(tmp_path, dedupe_horizon_s=HORIZON, clock=clock)
    old = NOW - timedelta(seconds=HORIZON + 5)
    first.write(table([1, 2, 3], [old, NOW, NOW + timedelta(seconds=1)]))
    second = StoreWriter(tmp_path, dedupe_horizon_s=HORIZON, clock=clock)
    assert second.known_keys == 2  # the old row stays on disk only
    assert second.write(table([1, 2, 3], [old, NOW, NOW + timedelta(seconds=1)])) == []
    assert second.duplicates_dropped == 3


def test_the_clock_going_back_does_not_bring_forgotten_rows_back(tmp_path: Path) -> None:
    clock = Clock(NOW)
    writer = StoreWriter(tmp_path, dedupe_horizon_s=HORIZON, clock=clock)
    writer.write(table([1], [NOW]))
    clock.at = NOW + timedelta(seconds=HORIZON + 120)
    writer.write(table([2], [clock.at]))  # id 1 leaves memory
    clock.at = NOW  # a clock stepped back: id 1 would look recent, and unknown
    assert writer.write(table([1], [NOW])) == []
    assert len(stored(tmp_path)) == 2


steps = st.lists(
    st.tuples(
        st.integers(0, 2 * HORIZON),  # seconds the clock moves before this write
        st.lists(
            # an id from a small pool (so copies are common) and a start offset from the
            # clock, from well behind the horizon to a little ahead
            st.tuples(st.integers(0, 25), st.integers(-3 * HORIZON, 120)),
            min_size=1,
            max_size=12,
        ),
        st.booleans(),  # restart the writer first
    ),
    min_size=1,
    max_size=15,
)


@settings(max_examples=40, deadline=None)
@given(steps=steps)
def test_dedupe_is_exact_against_a_plain_set(tmp_path_factory, steps) -> None:
    root = tmp_path_factory.mktemp("store")
    clock = Clock(NOW)
    writer = StoreWriter(root, dedupe_horizon_s=HORIZON, clock=clock)
    expected: set[tuple[str, str, datetime]] = set()  # the contract's key: ids and start
    for advance, rows, restart in steps:
        clock.at += timedelta(seconds=advance)
        if restart:
            writer = StoreWriter(root, dedupe_horizon_s=HORIZON, clock=clock)
        ids = [i for i, _ in rows]
        starts = [clock.at + timedelta(seconds=off) for _, off in rows]
        writer.write(table(ids, starts))
        for i, t in zip(ids, starts, strict=True):
            key = (f"{i:032x}", f"{i + 7:016x}", t)
            if key in expected:
                late = t < clock.at - timedelta(seconds=HORIZON)
                event("copy found on disk" if late else "copy found in memory")
            else:
                expected.add(key)
    got = [(a, b, t.astimezone(UTC)) for a, b, t in stored(root)]
    assert len(got) == len(set(got)), "a copy was written twice"
    assert set(got) == expected, "a row was lost"


def test_same_ids_with_another_start_time_are_kept(tmp_path: Path) -> None:
    """Not a retry (a retry is the same span again): the trail keeps what it was sent."""
    clock = Clock(NOW)
    writer = StoreWriter(tmp_path, dedupe_horizon_s=HORIZON, clock=clock)
    writer.write(table([1], [NOW]))
    writer.write(table([1], [NOW + timedelta(seconds=1)]))
    assert len(stored(tmp_path)) == 2
