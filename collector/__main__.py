"""``python -m callward.collector``: the ``callward collector`` command without loading the other
components (a faster start for service managers and restart-heavy tests)."""

from __future__ import annotations

import typer

from callward.collector.cli import collector

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command()(collector)

if __name__ == "__main__":
    app()
