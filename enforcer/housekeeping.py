"""The enforcer's housekeeping thread: every few seconds, one pass of the core's upkeep.

The pass itself (:meth:`EnforcerCore.housekeeping`: close expired pending calls, drop
counters of ended windows) lives in the core, which owns that state; this module only runs
it on a timer, so that tests can call the pass directly with a fake clock.
A failing pass is logged and the loop carries on: upkeep must never stop the server.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from callward.enforcer.service import Housekeeping

log = logging.getLogger("callward.enforcer")


class HousekeepingLoop:
    """Runs ``housekeeping`` every ``interval_s`` seconds on a daemon thread until stopped."""

    def __init__(self, housekeeping: Callable[[], Housekeeping], interval_s: float) -> None:
        self._housekeeping = housekeeping
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="enforcer-housekeeping", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                done = self._housekeeping()
            except Exception:
                log.exception("housekeeping failed")
                continue
            if done.expired_calls:
                log.info("closed %d pending call(s) with no Report", done.expired_calls)


__all__ = ["HousekeepingLoop"]
