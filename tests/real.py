"""Tests that need a real component say so through :func:`require_real`.

Locally a missing component is a skip with a line naming it; under CI (``CI`` set to a
true value, as ``.ci/run`` does) it is a failure, so CI can never go green with the
end-to-end checks skipped.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """True when the suite runs as CI (``CI=true``/``1``/``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def require_real(component: str, why: str) -> NoReturn:
    """A real component this test needs is missing: skip locally, fail under CI."""
    message = f"{component} is not available: {why}"
    if in_ci():
        pytest.fail(f"CI needs {message}", pytrace=False)
    pytest.skip(message)
