"""A missing real component skips locally and fails under CI."""

from __future__ import annotations

import pytest

from tests.real import in_ci, require_real


@pytest.mark.parametrize("value", ["true", "1", "yes", "TRUE"])
def test_ci_values_that_mean_ci(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci()
    with pytest.raises(pytest.fail.Exception, match="CI needs Phoenix is not available: gone"):
        require_real("Phoenix", "gone")


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_outside_ci_it_skips(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    assert not in_ci()
    with pytest.raises(pytest.skip.Exception, match="Chromium is not available"):
        require_real("Chromium", "not installed")
