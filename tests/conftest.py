"""Shared test configuration.

Two rules hold for the whole suite:

- **Property tests explore.** The default profile draws fresh random inputs on every run
  and prints the blob that reproduces a failure (``@reproduce_failure``); the ``repro``
  profile (``HYPOTHESIS_PROFILE=repro``) is the fixed, derandomized run for bisecting.
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
settings.register_profile("dev", max_examples=300, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
