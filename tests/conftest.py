"""Shared test configuration.

Two rules hold for the whole suite:

- **Property tests explore.** The default profile draws fresh random inputs on every run
  and prints the blob that reproduces a failure (``@reproduce_failure``); the ``repro``
  profile (``HYPOTHESIS_PROFILE=repro``) is the fixed, derandomized run for bisecting.
  Under CI the ``ci`` profile explores twice as far (tests that cap their own examples
  because each one is expensive keep their cap).
- **Nothing real skips in CI.** A test that needs a real component (an MCP server from
  PyPI, Phoenix, Chromium, ...) calls :func:`tests.real.require_real` when the component is missing:
  locally that is a skip with a line naming it; under CI (``CI`` set to a true value, as
  ``.ci/run`` does) it is a failure, so a green CI run means every real check ran.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.real import in_ci

REPO = Path(__file__).resolve().parent.parent

settings.register_profile(
    "explore",
    max_examples=100,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "repro",
    max_examples=100,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("ci", settings.get_profile("explore"), max_examples=200)
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if in_ci() else "explore")
settings.load_profile(PROFILE)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


def pytest_report_header() -> str:
    """Name the Hypothesis profile, so a run's log says how far its properties explored."""
    return f"hypothesis profile: {PROFILE}"
