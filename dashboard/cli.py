"""``callward dashboard``: start the Streamlit app on a data directory."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from callward.paths import DATA_ENV, DATA_OPTIONS

APP = Path(__file__).with_name("app.py")
err = Console(stderr=True)
STOP_GRACE_S = 10.0
DEFAULT_PORT = 8501


def streamlit_command(data_dir: Path, port: int, host: str) -> list[str]:
    """The ``streamlit run`` command line: headless, no usage statistics, no file watcher."""
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP),
        "--server.headless",
        "true",
        "--server.port",
        str(port),
        "--server.address",
        host,
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--client.toolbarMode",
        "viewer",
        "--",
        "--data",
        str(data_dir),
    ]


def port_in_use(host: str, port: int) -> bool:
    """Whether ``host:port`` cannot be listened on (another server has it)."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def dashboard(
    data: Annotated[
        Path,
        typer.Option(*DATA_OPTIONS, envvar=DATA_ENV, help="Data directory of the store to show."),
    ],
    port: Annotated[
        int,
        typer.Option(min=1, max=65535, envvar="CALLWARD_DASHBOARD_PORT", help="Port to listen on."),
    ] = DEFAULT_PORT,
    host: Annotated[
        str, typer.Option(envvar="CALLWARD_DASHBOARD_HOST", help="Address to listen on.")
    ] = "127.0.0.1",
) -> None:
    """Open the dashboard on a store (read-only): findings, sessions, replay and policies."""
    if not data.is_dir():
        err.print(
            f"[red]error:[/red] data directory [bold]{data}[/bold] does not exist. Write one "
            "with `callward collector` or `callward datasets generate`, then pass it as --data."
        )
        raise typer.Exit(2)
    if port_in_use(host, port):
        err.print(
            f"[red]error:[/red] port {port} on {host} is already in use. Pick a free one "
            "with --port (e.g. --port 8502), or stop what is listening there."
        )
        raise typer.Exit(2)
    resolved = data.resolve()
    err.print(f"callward dashboard on [bold]http://{host}:{port}[/bold] ({resolved})")
    env = {**os.environ, DATA_ENV: str(resolved)}
    raise typer.Exit(run_until_stopped(streamlit_command(resolved, port, host), env))


def run_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the server; pass SIGTERM/SIGINT on so stopping us stops it too, cleanly."""
    proc = subprocess.Popen(command, env=env)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                forward(signal.SIGINT, None)  # a terminal sent it already; a parent may not have
                try:
                    proc.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    app.command("dashboard")(dashboard)
