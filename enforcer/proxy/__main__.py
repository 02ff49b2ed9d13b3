"""``python -m callward.enforcer.proxy …``: the proxy alone, without loading every callward component
(what ``callward proxy`` runs; quicker to start from an MCP client's config)."""

from __future__ import annotations

import typer

from callward.enforcer.proxy.cli import proxy

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
app.command(context_settings={"allow_interspersed_args": False})(proxy)

if __name__ == "__main__":
    app()
