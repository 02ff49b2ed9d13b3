"""The detectors run off the page's thread; pages show the latest result or say why not."""

from __future__ import annotations

import threading

import pytest

from callward.dashboard.findings import DetectionRunner, Findings, load, of_kind, to_frame
from tests.dashboard.store_fixture import EXFIL_AGENT, EXFIL_SESSION, RUNAWAY_AGENT, FixtureStore


@pytest.mark.timeout(60)
def test_a_slow_detection_is_pending_then_ready() -> None:
    release = threading.Event()

    def slow(_: str) -> Findings:
        release.wait(30)
        return Findings(to_frame([]))

    runner = DetectionRunner(slow)
    first = runner.get("d", wait_s=0.01)
    assert first.pending and not runner.ready("d")
    release.set()
    done = runner.get("d", wait_s=30)
    assert not done.pending and done.note is None and runner.ready("d")


@pytest.mark.timeout(60)
def test_a_failing_detector_is_a_note_not_a_crash() -> None:
    def broken(_: str) -> Findings:
        raise RuntimeError("boom")

    result = DetectionRunner(broken).get("d", wait_s=30)
    assert result.note is not None and "boom" in result.note and result.frame.empty


@pytest.mark.timeout(60)
def test_detection_runs_once_per_directory_until_it_expires() -> None:
    calls: list[str] = []

    def counting(data_dir: str) -> Findings:
        calls.append(data_dir)
        return Findings(to_frame([]))

    runner = DetectionRunner(counting)
    for _ in range(3):
        runner.get("a", wait_s=30)
    runner.get("b", wait_s=30)
    assert calls == ["a", "b"]


@pytest.mark.timeout(120)
def test_the_real_detectors_find_the_fixture_incidents(fixture_store: FixtureStore) -> None:
    found = load(str(fixture_store.data_dir), wait_s=100)
    assert found.note is None, found.note
    exfil = of_kind(found.frame, "exfil")
    runaway = of_kind(found.frame, "runaway")
    assert (exfil["session_id"] == EXFIL_SESSION).any()
    assert (exfil["agent_id"] == EXFIL_AGENT).all()
    assert (runaway["agent_id"] == RUNAWAY_AGENT).any()
    # Most severe first.
    order = {"critical": 0, "high": 1, "medium": 2, "low": 3}
    ranks = [order.get(v, 9) for v in found.frame["severity"]]
    assert ranks == sorted(ranks)
