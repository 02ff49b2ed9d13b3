"""Fixtures: a realistic store written by the collector's writer, and an empty one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import streamlit as st

from tests.dashboard.store_fixture import FixtureStore, write_fixture_store

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "dashboard" / "app.py"


@pytest.fixture(scope="session")
def fixture_store(tmp_path_factory: pytest.TempPathFactory) -> FixtureStore:
    return write_fixture_store(tmp_path_factory.mktemp("store"))


@pytest.fixture()
def empty_store(tmp_path: Path) -> Path:
    (tmp_path / "tool_calls").mkdir()
    return tmp_path


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Each test sees its own store state, not a cached answer from another test."""
    st.cache_data.clear()
    yield
    st.cache_data.clear()
