"""``callward dashboard``: arguments, the missing-directory message and the server command."""

from __future__ import annotations

import socket
from pathlib import Path

from typer.testing import CliRunner

from callward.cli import app
from callward.dashboard.cli import APP, streamlit_command


def test_a_missing_data_directory_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dashboard", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())


def test_a_bad_port_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["dashboard", "--data", str(tmp_path), "--port", "0"])
    assert result.exit_code == 2


def test_the_server_runs_headless_without_usage_statistics(tmp_path: Path) -> None:
    command = streamlit_command(tmp_path, 8765, "127.0.0.1")
    joined = " ".join(command)
    assert str(APP) in command
    assert "--server.headless true" in joined
    assert "--browser.gatherUsageStats false" in joined
    assert "--server.port 8765" in joined and "--server.address 127.0.0.1" in joined
    assert command[-2:] == ["--data", str(tmp_path)]


def test_a_port_in_use_is_a_clear_error_before_any_url(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = CliRunner().invoke(
            app, ["dashboard", "--data", str(tmp_path), "--port", str(port)]
        )
    text = " ".join(result.output.split())
    assert result.exit_code == 2, text
    assert f"port {port} on 127.0.0.1 is already in use" in text and "--port" in text
    assert "http://" not in text
