"""The `callward` command: every component registers, and only what runs is imported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from callward.cli import COMMANDS, app

runner = CliRunner()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_help(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_top_level_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_enforcer_does_not_import_the_dashboard_or_the_proxy() -> None:
    code = (
        "import sys, callward.cli; callward.cli._load('enforcer'); callward.cli._load('policy');"
        "print(sorted(m for m in ('streamlit', 'polars', 'mcp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
