"""The housekeeping loop runs the core's pass on its timer and survives a failing pass."""

from __future__ import annotations

import threading

import pytest

from callward.enforcer.housekeeping import HousekeepingLoop
from callward.enforcer.service import Housekeeping

pytestmark = pytest.mark.timeout(30)


def test_loop_keeps_running_after_a_failing_pass_and_stops() -> None:
    calls = 0
    third = threading.Event()

    def upkeep() -> Housekeeping:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("first pass fails")
        if calls >= 3:
            third.set()
        return Housekeeping(expired_calls=1, pruned_counters=0)

    loop = HousekeepingLoop(upkeep, interval_s=0.01)
    loop.start()
    assert third.wait(10)
    loop.stop()
    after_stop = calls
    threading.Event().wait(0.1)  # ten intervals: a running loop would have passed again
    assert calls == after_stop
