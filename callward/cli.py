"""The ``callward`` command. Each component registers its own subcommands.

Components are imported only when their command runs: `callward enforcer` must not pay
for Streamlit, Polars or the MCP SDK at start-up (and a smaller process is a smaller
attack surface for a gateway).
"""

from __future__ import annotations

import importlib
import typing
from pathlib import Path
from typing import Any, Literal

import typer
from typer.core import TyperGroup

# command -> module exposing register(app: typer.Typer)
COMMANDS: dict[str, str] = {
    "policy": "callward.enforcer.cli",
    "enforcer": "callward.enforcer.cli",
    "proxy": "callward.enforcer.proxy.cli",
    "collector": "callward.collector.cli",
    "audit": "callward.collector.audit_cli",
    "replay": "callward.replay.cli",
    "datasets": "callward.datasets.cli",
    "detect": "callward.detectors.cli",
    "dashboard": "callward.dashboard.cli",
}


# Help text is plain text, not Rich markup: "[default 2, env CALLWARD_X]" must print as
# written. Markdown keeps brackets and still lays out the panels.
MARKUP_MODE: Literal["markdown"] = "markdown"
# One metavar per meaning, whichever type a component declared the option with, so
# `--policy FILE` reads the same in every command.
OPTION_METAVARS = {
    "--policy": "FILE",
    "--baseline": "FILE",
    "--tokens": "FILE",
    "--tls-cert": "FILE",
    "--tls-key": "FILE",
    "--tls-client-ca": "FILE",
    "--enforcer-token-file": "FILE",
    "--data": "DIR",
    "--data-dir": "DIR",
    "--out": "PATH",
    "--decisions-out": "FILE",
    "--listen": "HOST:PORT",
    "--enforcer": "HOST:PORT",
    "--forward": "URL",
    "--upstream": "URL",
    "--otlp-endpoint": "URL",
    "--since": "TIME",
    "--until": "TIME",
    "--start": "YYYY-MM-DD",
}
TYPE_METAVARS: dict[Any, str] = {
    Path: "PATH",
    str: "TEXT",
    int: "INTEGER",
    float: "NUMBER",
}


def readable_metavar(param: Any) -> str | None:
    """The metavar help shows for ``param``: nothing for a flag, the meaning for a known
    option, else the type's name in capitals (Typer's default is ``<list[Path]>``)."""
    if getattr(param, "is_flag", False):
        return ""
    for opt in param.opts:
        if opt in OPTION_METAVARS:
            return OPTION_METAVARS[opt]
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    return TYPE_METAVARS.get(annotation)


_READABLE: dict[type, type] = {}


def _show_metavar(param: Any) -> None:
    """Make Typer's help print a readable metavar for ``param`` (its Rich help prints the
    annotation, ``<list[Path]>``, and ignores an option's metavar)."""
    if getattr(param, "param_type_name", "") == "option" and param.metavar is None:
        param.metavar = readable_metavar(param)
    label = param.metavar if param.metavar is not None else readable_metavar(param)
    cls = type(param)
    if label is None or not hasattr(cls, "display_type_rich"):
        return
    if cls not in _READABLE.values():
        if cls not in _READABLE:

            def display_type_rich(self: Any, ctx: Any) -> str | None:
                return str(self.readable_label)

            _READABLE[cls] = type(cls.__name__, (cls,), {"display_type_rich": display_type_rich})
        param.__class__ = _READABLE[cls]
    param.readable_label = label


def _is_param(param: Any) -> bool:
    return getattr(param, "param_type_name", "") in ("option", "argument")


def tidy_help(command: Any, ctx: Any) -> Any:
    """Give every option of ``command`` (and of its subcommands) a readable metavar, where
    the component did not choose one."""
    for param in command.get_params(ctx):
        if _is_param(param):
            _show_metavar(param)
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub, ctx)
    return command


def _load(name: str, ctx: Any = None) -> Any:
    module = COMMANDS.get(name)
    if module is None:
        return None
    sub = typer.Typer(rich_markup_mode=MARKUP_MODE, add_completion=False)
    importlib.import_module(module).register(sub)
    command: Any = typer.main.get_command(sub)
    commands = getattr(command, "commands", None)
    if isinstance(commands, dict):
        command = commands.get(name)
    if command is not None and ctx is not None:
        tidy_help(command, ctx)
    return command


class LazyGroup(TyperGroup):
    """A Typer group whose subcommands are imported on first use."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return _load(cmd_name, ctx)

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        for param in params:
            if _is_param(param):
                _show_metavar(param)
        return params


app = typer.Typer(
    name="callward",
    cls=LazyGroup,
    help="Policy gateway, audit trail and replay for AI-agent tool calls (MCP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=MARKUP_MODE,
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
