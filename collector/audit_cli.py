"""``callward audit verify D``: check the store's hash chains (docs/audit.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from callward.collector.audit import AuditReport, verify_store
from callward.paths import DATA_ENV, DATA_OPTIONS

BROKEN_EXIT = 1
"""Exit status when a chain is broken (2 is a usage error, as for every command)."""

audit_app = typer.Typer(help="Check the tamper-evident trail of a store.", no_args_is_help=True)

_STATUS = {"intact": "green", "unchained": "yellow", "broken": "bold red"}


def verify_command(
    store: Path | None = typer.Argument(None, help="Data directory of the store.", metavar="D"),
    data: Path | None = typer.Option(
        None, *DATA_OPTIONS, envvar=DATA_ENV, help="Data directory of the store (instead of D)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Recompute every row's hash chain; exit 1 with the first broken link per partition."""
    root = store or data
    if root is None:
        raise typer.BadParameter("give the store as D or with --data", param_hint="D")
    if not root.is_dir():
        raise typer.BadParameter(f"{root} does not exist or is not a directory", param_hint="D")
    report = verify_store(root)
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print(report)
    if not report.ok:
        raise typer.Exit(BROKEN_EXIT)


def _print(report: AuditReport) -> None:
    console = Console() if sys.stdout.isatty() else Console(width=200)
    for problem in report.problems:
        console.print(f"[bold red]store:[/] {escape(problem)}")
    if not report.partitions:
        console.print(f"no partitions in {escape(report.data_dir)}: nothing to verify")
        return
    table = Table(title=f"hash chains of {escape(report.data_dir)}")
    for col in ("partition", "status", "files", "chained", "unchained", "rows verified", "head"):
        table.add_column(col, no_wrap=True)
    for p in report.partitions:
        head = "-" if p.head is None else f"{p.head.seq} {p.head.last[:12]}"
        if p.head_lags:
            head += " (one file behind)"
        style = _STATUS[p.status]
        table.add_row(
            p.date,
            f"[{style}]{p.status}[/]",
            str(p.files),
            str(p.chained_files),
            str(p.unchained_files),
            str(p.rows),
            head,
        )
    console.print(table)
    for p in report.partitions:
        b = p.broken
        if b is None:
            continue
        console.print(f"[bold red]{p.date}: {b.kind}[/] {escape(b.message)}")
        if b.file:
            where = b.file if b.row is None else f"{b.file}, row {b.row}"
            console.print(f"  at      {escape(where)}")
        if b.trace_id:
            console.print(f"  span    trace {b.trace_id} span {b.span_id} started {b.start_time}")
        console.print(f"  covers  {escape(b.covers)}")
    unchained = sum(1 for p in report.partitions if p.status == "unchained")
    if unchained:
        console.print(
            f"[yellow]{unchained} partition(s) written before the chain existed: "
            "not verifiable, not tampering[/]"
        )
    if report.ok:
        console.print("[green]intact[/]: every chained row matches its hash")


def register(app: typer.Typer) -> None:
    audit_app.command("verify")(verify_command)
    app.add_typer(audit_app, name="audit")
