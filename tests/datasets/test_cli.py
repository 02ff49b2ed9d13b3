"""`callward datasets generate` end to end, and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from callward.cli import app
from callward.datasets.labels import read_labels

runner = CliRunner()


@pytest.mark.timeout(300)
def test_generate_writes_a_store_and_labels(tmp_path: Path) -> None:
    out = tmp_path / "d"
    r = runner.invoke(
        app,
        [
            "datasets",
            "generate",
            "--out",
            str(out),
            "--agents",
            "3",
            "--days",
            "1",
            "--seed",
            "9",
            "--calls",
            "1500",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and (out / "callward.duckdb").exists()
    assert read_labels(out)


@pytest.mark.parametrize(
    "args",
    [
        ["--agents", "0"],
        ["--days", "0"],
        ["--days", "-3"],
        ["--calls", "0"],
        ["--seed", "abc"],
        ["--policy", "/nonexistent/policy.yaml"],
        ["--policy", __file__],  # not a policy
    ],
)
def test_bad_arguments_are_refused(tmp_path: Path, args: list[str]) -> None:
    r = runner.invoke(app, ["datasets", "generate", "--out", str(tmp_path / "d"), *args])
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "d" / "labels.jsonl").exists()
