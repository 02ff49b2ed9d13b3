"""The ``callward`` command. Each component registers its own subcommands."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    name="callward",
    help="Policy gateway, audit trail and replay for AI-agent tool calls (MCP).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module exposes register(app). Listed once here so `callward --help` shows them all.
COMPONENTS = (
    "enforcer.cli",
    "enforcer.proxy.cli",
    "collector.cli",
    "replay.cli",
    "datasets.cli",
    "detectors.cli",
    "dashboard.cli",
)

for _name in COMPONENTS:
    try:
        _mod = importlib.import_module(_name)
    except ModuleNotFoundError as e:  # a component not built yet; any other import error is real
        if e.name is None or not _name.startswith(e.name):
            raise
        continue
    _mod.register(app)


if __name__ == "__main__":
    app()
