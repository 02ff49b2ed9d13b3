"""The transport-free service core: pending calls, retries, release on error, expiry, reload.

No gRPC here: the core takes engine requests and a fake clock, so every window boundary
and expiry is crossed by moving the clock, never by sleeping.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from callward.enforcer.engine import Request
from callward.enforcer.policy import CompiledPolicy, compile_document
from callward.enforcer.server_config import EnforcerConfig
from callward.enforcer.service import (
    CallIdConflict,
    EnforcerCore,
    UnknownCall,
    new_call_id,
)
from callward.enforcer.telemetry import POLICY_SPAN_NAME, CallRecorder

T0 = datetime(2026, 3, 1, 12, 0, 10, tzinfo=UTC).timestamp()
WINDOW = int(T0 // 60) * 60


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def policy_of(
    max_charges: int = 2, window: str = "minute", sliding: bool = False
) -> CompiledPolicy:
    return compile_document(
        {
            "version": "1",
            "default": "deny",
            "tools": {
                "charge": {
                    "limits": [
                        {
                            "counter": "charges",
                            "window": window,
                            "max": max_charges,
                            "scope": "grant",
                            "sliding": sliding,
                        }
                    ]
                },
                "read": {
                    "limits": [{"counter": "reads", "window": "minute", "max": 5, "scope": "grant"}]
                },
            },
        }
    )


def charge(call_id: str, grant: str = "g", **args: Any) -> Request:
    return Request(tool="charge", arguments=args, grant=grant, call_id=call_id)


def core_of(
    clock: FakeClock, *, policy: CompiledPolicy | None = None, **config: Any
) -> EnforcerCore:
    return EnforcerCore(policy or policy_of(), config=EnforcerConfig(**config), clock=clock)


def test_allowed_call_is_pending_until_reported() -> None:
    core = core_of(FakeClock())
    assert core.check_call(charge("c1"), 1).allowed
    assert core.pending_count() == 1
    assert core.state.count(("charges", "g", WINDOW)) == 1
    assert core.report_call("c1", "ok") == 0
    assert core.pending_count() == 0
    assert core.state.count(("charges", "g", WINDOW)) == 1  # an ok call keeps its quota
    with pytest.raises(UnknownCall):
        core.report_call("c1", "ok")


def test_denied_call_is_not_pending() -> None:
    core = core_of(FakeClock())
    denied = core.check_call(Request(tool="unknown", arguments={}, call_id="c1"), 1)
    assert not denied.allowed
    assert core.pending_count() == 0
    with pytest.raises(UnknownCall):
        core.report_call("c1", "error")


def test_error_report_releases_the_quota() -> None:
    core = core_of(FakeClock())
    core.check_call(charge("c1"), 1)
    core.check_call(charge("c2"), 2)
    assert not core.check_call(charge("c3"), 3).allowed  # max 2 per minute
    assert core.report_call("c1", "error") == 1
    assert core.state.count(("charges", "g", WINDOW)) == 1
    assert core.check_call(charge("c4"), 4).allowed


def test_retried_call_id_gets_the_first_decision_without_reserving_again() -> None:
    core = core_of(FakeClock())
    first = core.check_call(charge("c1"), 7)
    again = core.check_call(charge("c1"), 7)
    assert again == first
    assert core.state.count(("charges", "g", WINDOW)) == 1
    assert core.pending_count() == 1


def test_reused_call_id_with_another_request_is_a_conflict() -> None:
    core = core_of(FakeClock())
    core.check_call(charge("c1"), 7)
    with pytest.raises(CallIdConflict, match="c1"):
        core.check_call(charge("c1", grant="other"), 8)
    assert core.state.count(("charges", "other", WINDOW)) == 0


def test_windows_follow_the_injected_clock() -> None:
    clock = FakeClock()
    core = core_of(clock)
    core.check_call(charge("c1"), 1)
    core.check_call(charge("c2"), 2)
    assert not core.check_call(charge("c3"), 3).allowed
    clock.now += 50  # the next calendar minute: a new window
    assert core.check_call(charge("c4"), 4).allowed


def test_a_sliding_limit_follows_the_clock_the_report_and_housekeeping() -> None:
    clock = FakeClock()
    core = core_of(clock, policy=policy_of(sliding=True))
    core.check_call(charge("c1"), 1)
    clock.now += 1
    core.check_call(charge("c2"), 2)
    clock.now += 50  # the next calendar minute, but c1 and c2 are within the last 60 s
    assert not core.check_call(charge("c3"), 3).allowed
    assert core.report_call("c2", "error") == 1  # c2 failed: its place is free again
    assert core.check_call(charge("c4"), 4).allowed
    assert not core.check_call(charge("c5"), 5).allowed
    clock.now += 10  # 61 s after c1: it left the window
    assert core.check_call(charge("c6"), 6).allowed
    clock.now += 60  # c1, c4 and c6 (exactly 60 s ago) are out of the window now
    assert core.housekeeping().pruned_counters == 3
    assert core.state.instants == {}
    # A reload that turns the limit into a calendar one resets it.
    core.check_call(charge("c7"), 7)
    swap = core.swap_policy(policy_of(sliding=False))
    assert "charges" in swap.reset and core.state.instants == {}


def test_expired_calls_are_closed_and_keep_their_quota() -> None:
    clock = FakeClock()
    core = core_of(clock, pending_ttl_s=5.0)
    core.check_call(charge("old"), 1)
    clock.now += 3
    core.check_call(charge("young"), 2)
    clock.now += 3  # "old" is 6 s old, "young" 3 s
    done = core.housekeeping()
    assert done.expired_calls == 1
    with pytest.raises(UnknownCall):
        core.report_call("old", "error")
    assert core.report_call("young", "error") == 1
    # "old" ran as far as the enforcer knows: its unit is still taken.
    assert core.state.count(("charges", "g", WINDOW)) == 1


def test_housekeeping_drops_counters_of_ended_windows() -> None:
    clock = FakeClock()
    core = core_of(clock)
    core.check_call(charge("c1"), 1)
    assert core.housekeeping().pruned_counters == 0
    clock.now += 120
    assert core.housekeeping().pruned_counters == 1
    assert core.state.counts == {}


def test_pending_map_is_bounded_oldest_first() -> None:
    core = core_of(FakeClock(), max_pending=2, policy=policy_of(max_charges=10))
    for i in range(3):
        core.check_call(charge(f"c{i}"), i)
    assert core.pending_count() == 2
    with pytest.raises(UnknownCall):
        core.report_call("c0", "ok")
    assert core.report_call("c2", "ok") == 0


def test_reload_keeps_unchanged_counters_and_forgets_reset_reservations() -> None:
    core = core_of(FakeClock())
    core.check_call(charge("c1"), 1)
    core.check_call(Request(tool="read", arguments={}, grant="g", call_id="r1"), 2)
    swap = core.swap_policy(policy_of(max_charges=9))  # "charges" changed, "reads" did not
    assert (swap.kept, swap.reset) == (("reads",), ("charges",))
    assert core.state.count(("reads", "g", WINDOW)) == 1
    assert core.state.count(("charges", "g", WINDOW)) == 0
    # The reset counter is not decremented by a call reserved under the old policy.
    core.check_call(charge("c2"), 3)
    assert core.report_call("c1", "error") == 0
    assert core.state.count(("charges", "g", WINDOW)) == 1
    assert core.report_call("r1", "error") == 1


def test_every_call_gets_its_span_and_reported_calls_their_outcome() -> None:
    exporter = InMemorySpanExporter()
    recorder = CallRecorder(exporter=exporter, synchronous=True)
    clock = FakeClock()
    core = EnforcerCore(
        policy_of(), config=EnforcerConfig(pending_ttl_s=5.0), recorder=recorder, clock=clock
    )
    core.check_call(charge("ok"), 1)
    core.check_call(charge("expires"), 2)
    core.check_call(Request(tool="unknown", arguments={}, call_id="denied"), 3)
    core.report_call("ok", "error", 2.5, 10, "Boom")
    clock.now += 10
    core.housekeeping()
    spans = {
        s.attributes["gen_ai.tool.call.id"]: s  # type: ignore[index]
        for s in exporter.get_finished_spans()
        if s.name != POLICY_SPAN_NAME
    }
    assert set(spans) == {"ok", "expires", "denied"}
    assert spans["expires"].attributes["callward.pending_closed"] == "expired"  # type: ignore[index]
    assert spans["ok"].attributes["callward.outcome"] == "error"  # type: ignore[index]
    assert spans["ok"].attributes["callward.duration_ms"] == 2.5  # type: ignore[index]
    assert core.telemetry_errors == 0
    recorder.shutdown()


def test_call_ids_are_fresh_and_fixed_length() -> None:
    ids = {new_call_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert {len(i) for i in ids} == {32}
