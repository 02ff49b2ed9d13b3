"""``callward detect``: runaway and exfiltration findings over a store."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from callward.detectors.findings import detect_report, findings_json
from callward.paths import DATA_ENV, DATA_OPTIONS

_STYLE = {"critical": "bold red", "high": "red", "medium": "yellow", "low": "dim"}


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=name) from None


def detect_command(
    data: Path = typer.Option(
        ..., *DATA_OPTIONS, envvar=DATA_ENV, help="Data directory of the store."
    ),
    since: str | None = typer.Option(None, "--since", help="Only calls at or after (ISO 8601)."),
    until: str | None = typer.Option(None, "--until", help="Only calls before (ISO 8601)."),
    output: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """Find runaway agents and data exfiltration in the recorded tool calls."""
    if output not in ("table", "json"):
        raise typer.BadParameter("must be 'table' or 'json'", param_hint="--format")
    start, end = _time(since, "--since"), _time(until, "--until")
    if start and end and start >= end:
        raise typer.BadParameter("--since must be before --until", param_hint="--since")
    if not data.is_dir():
        raise typer.BadParameter(f"{data} is not a directory", param_hint="--data")
    report = detect_report(data, start, end)
    err = Console(stderr=True)
    if output == "json":
        typer.echo(findings_json(report.findings))
        err.print(report.message)
        return
    # piped output (less, grep, a CI log) gets full-width rows rather than 80 columns
    console = Console() if sys.stdout.isatty() else Console(width=220)
    if not report.findings:
        console.print(report.message)
        return
    table = Table(title=report.message, show_lines=False)
    for col in ("severity", "kind", "pattern", "agent", "session / trace", "first seen", "calls"):
        table.add_column(col, no_wrap=True)
    table.add_column("explanation", overflow="fold", ratio=1)
    for f in report.findings:
        table.add_row(
            f"[{_STYLE[f.severity]}]{f.severity}[/]",
            f.kind,
            f.pattern,
            f.agent_id or "-",
            f.session_key,
            f.first_seen.strftime("%Y-%m-%d %H:%M:%S"),
            str(f.calls),
            f.explanation,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("detect")(detect_command)
