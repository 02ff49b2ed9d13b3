"""The ``callward`` command. Each component registers its own subcommands.

Components are imported only when their command runs: `callward enforcer` must not pay
for Streamlit, Polars or the MCP SDK at start-up (and a smaller process is a smaller
attack surface for a gateway).
"""

from __future__ import annotations

import importlib
from typing import Any

import typer
from typer.core import TyperGroup

# command -> module exposing register(app: typer.Typer)
COMMANDS: dict[str, str] = {
    "policy": "callward.enforcer.cli",
    "enforcer": "callward.enforcer.cli",
    "proxy": "callward.enforcer.proxy.cli",
    "collector": "callward.collector.cli",
    "replay": "callward.replay.cli",
    "datasets": "callward.datasets.cli",
    "detect": "callward.detectors.cli",
    "dashboard": "callward.dashboard.cli",
}


def _load(name: str) -> Any:
    module = COMMANDS.get(name)
    if module is None:
        return None
    sub = typer.Typer()
    importlib.import_module(module).register(sub)
    command = typer.main.get_command(sub)
    commands = getattr(command, "commands", None)
    if isinstance(commands, dict):
        return commands.get(name)
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose subcommands are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return _load(cmd_name)


app = typer.Typer(
    name="callward",
    cls=LazyGroup,
    help="Policy gateway, audit trail and replay for AI-agent tool calls (MCP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from callward import __version__

        typer.echo(f"callward {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the installed version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """Policy gateway, audit trail and replay for AI-agent tool calls (MCP)."""


def run(*args: Any) -> None:
    app(*args)


if __name__ == "__main__":
    app()
