"""Where the data directory comes from."""

from __future__ import annotations

from pathlib import Path

from callward.dashboard.settings import data_dir
from callward.paths import DATA_ENV


def test_the_argument_beats_the_environment() -> None:
    assert data_dir(["--data", "/a"], {DATA_ENV: "/b"}) == Path("/a")


def test_the_environment_is_the_fallback() -> None:
    assert data_dir([], {DATA_ENV: "/b"}) == Path("/b")


def test_nothing_given_is_none_and_abbreviations_are_not_taken() -> None:
    assert data_dir([], {}) is None
    assert data_dir(["--da", "/a", "--durations=5"], {}) is None
