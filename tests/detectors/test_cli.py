"""`callward detect` on a real store: table, JSON, windows and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callward.cli import app
from callward.collector.store import ensure_store
from tests.detectors.conftest import call, history

runner = CliRunner()


@pytest.fixture
def store(make_store) -> Path:
    rows = history(hours=3) + [
        call("read_file", {"path": "/w/a.py"}, 20000 + i, session="loop") for i in range(8)
    ]
    return make_store(rows)


def test_json_output_is_the_findings(store: Path) -> None:
    r = runner.invoke(app, ["detect", "--data", str(store), "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert [f["pattern"] for f in data] == ["identical_call_loop"]
    assert data[0]["session_id"] == "loop" and len(data[0]["span_ids"]) == 8


def test_table_output(store: Path) -> None:
    r = runner.invoke(app, ["detect", "--data", str(store)])
    assert r.exit_code == 0 and "identical_call_loop" in r.stdout


def test_empty_window_says_so(store: Path) -> None:
    r = runner.invoke(app, ["detect", "--data", str(store), "--since", "2030-01-01T00:00:00Z"])
    assert r.exit_code == 0 and "no tool calls in this time window" in r.stdout
    r = runner.invoke(
        app, ["detect", "--data", str(store), "--since", "2030-01-01", "--format", "json"]
    )
    assert r.exit_code == 0 and json.loads(r.stdout) == []


def test_empty_store_says_so(tmp_path: Path) -> None:
    ensure_store(tmp_path / "d")
    r = runner.invoke(app, ["detect", "--data", str(tmp_path / "d")])
    assert r.exit_code == 0 and "no tool calls in the store" in r.stdout


@pytest.mark.parametrize(
    "extra",
    [
        ["--format", "xml"],
        ["--since", "yesterday"],
        ["--since", "2026-03-03", "--until", "2026-03-02"],
        ["--until", "2026-13-45"],
    ],
)
def test_bad_options_are_refused(store: Path, extra: list[str]) -> None:
    r = runner.invoke(app, ["detect", "--data", str(store), *extra])
    assert r.exit_code == 2


def test_missing_store_is_refused(tmp_path: Path) -> None:
    r = runner.invoke(app, ["detect", "--data", str(tmp_path / "nope")])
    assert r.exit_code == 2
