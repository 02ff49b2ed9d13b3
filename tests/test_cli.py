"""The `callward` command: every component registers, and only what runs is imported."""

from __future__ import annotations

import socket
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from callward.cli import COMMANDS, app

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


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


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


HELP_OF = [["policy", "check"], ["policy", "test"], ["datasets", "generate"]] + [
    [c] for c in sorted(COMMANDS) if c not in ("policy", "datasets")
]


@pytest.mark.parametrize("command", HELP_OF, ids=" ".join)
def test_help_shows_readable_metavars(command: list[str]) -> None:
    text = _help(*command)
    # Typer's own labels are annotations in brackets: <bool> on a flag, <list[Path]>.
    assert "<bool>" not in text and "<list[" not in text and "<str>" not in text, text


def test_bracketed_defaults_and_env_vars_in_help_text_survive() -> None:
    text = " ".join(_help("collector").split())
    assert "[default 127.0.0.1:4317, env CALLWARD_COLLECTOR_LISTEN]" in text


@pytest.mark.parametrize("command", ["enforcer", "collector"])
def test_auth_settings_show_their_flag_and_variable_in_help(command: str) -> None:
    text = " ".join(_help(command).split())
    prefix = f"CALLWARD_{command.upper()}"
    for flag, variable in [
        ("--tokens FILE", "TOKENS"),
        ("--tls-cert FILE", "TLS_CERT"),
        ("--tls-key FILE", "TLS_KEY"),
        ("--tls-client-ca FILE", "TLS_CLIENT_CA"),
    ]:
        assert flag in text and f"{prefix}_{variable}" in text, (flag, text)


def test_the_same_option_reads_the_same_in_every_command() -> None:
    for command in (["replay"], ["proxy"], ["enforcer"], ["datasets", "generate"]):
        line = next(x for x in _help(*command).splitlines() if "--policy " in x)
        assert " FILE " in line, (command, line)


@pytest.mark.parametrize("spelling", ["--data", "--data-dir"])
def test_store_readers_take_data_and_data_dir(spelling: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    dash = runner.invoke(app, ["dashboard", spelling, missing])
    assert dash.exit_code == 2 and "does not exist" in " ".join(dash.output.split())
    policy = REPO / "examples" / "policies" / "seed.json"
    rep = runner.invoke(app, ["replay", spelling, missing, "--policy", str(policy)])
    assert rep.exit_code == 2, rep.output  # the store is missing, not the option
    det = runner.invoke(app, ["detect", spelling, missing])
    assert det.exit_code == 2 and "nowhere" in det.output, det.output


@pytest.mark.parametrize(
    "command", [["detect"], ["dashboard"], ["replay", "--policy", "examples/policies/seed.json"]]
)
def test_store_readers_take_the_store_from_the_environment(
    command: list[str], tmp_path: Path
) -> None:
    from callward.paths import DATA_ENV

    missing = tmp_path / "nowhere"
    args = [command[0], *(str(REPO / a) if a.endswith(".json") else a for a in command[1:])]
    without = runner.invoke(app, args, env={DATA_ENV: ""})
    assert without.exit_code == 2 and "Missing option" in " ".join(without.output.split())
    withenv = runner.invoke(app, args, env={DATA_ENV: str(missing)})
    assert withenv.exit_code == 2 and "Missing option" not in withenv.output, withenv.output


def test_generated_data_ends_today_by_default() -> None:
    from callward.datasets.cli import default_start

    start = default_start(3, today=date(2026, 3, 1))
    assert start == datetime(2026, 2, 27, tzinfo=UTC)
    assert default_start(1, today=date(2026, 3, 1)).date() == date(2026, 3, 1)
    assert default_start(3).date() + timedelta(days=2) == datetime.now(UTC).date()


def test_a_missing_server_command_is_named_and_exits_2(tmp_path: Path) -> None:
    """Not a warning and exit 0 once the first client arrives: the proxy refuses to start."""
    policy = REPO / "examples" / "policies" / "python_runner.json"
    missing = "callward-test-no-such-server"
    result = runner.invoke(app, ["proxy", "--policy", str(policy), "--", missing, "--stdio"])
    assert result.exit_code == 2, result.output
    assert f"server command {missing!r} not found" in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["enforcer", "collector"])
def test_a_taken_port_is_one_clear_message_and_no_grpc_log(command: str, tmp_path: Path) -> None:
    """gRPC's C core logs its own bind failure (``add_port.cc``) before returning; the
    servers check the address first, so the user reads callward's message alone."""
    policy = REPO / "examples" / "policies" / "python_runner.json"
    extra = {
        "enforcer": ["--policy", str(policy), "--no-otlp"],
        "collector": ["--data-dir", str(tmp_path / "store")],
    }[command]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "callward", command, "--listen", f"127.0.0.1:{port}", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode != 0
    assert "add_port" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert f"127.0.0.1:{port}" in proc.stderr + proc.stdout
    assert "already in use" in proc.stderr + proc.stdout
