"""``callward datasets generate``: build a labeled store of realistic agent traffic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from callward.datasets.generator import DEMO_POLICY, GenerateConfig, generate
from callward.enforcer.errors import PolicyInvalid
from callward.paths import DATA_ENV, DATA_OPTIONS, keep_files_private

_STAGES = (
    "argument pools",
    "normal calls",
    "incidents",
    "policy decisions",
    "redaction",
    "writing store",
)


def default_start(days: int, today: date | None = None) -> datetime:
    """The first day when none is given: the data ends today (UTC), so a fresh store shows
    up in the dashboard's recent ranges and in a replay of the last days."""
    last = today or datetime.now(UTC).date()
    first = last - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


datasets_app = typer.Typer(
    help="Generate labeled agent traffic into a callward store.", no_args_is_help=True
)


@datasets_app.command("generate")
def generate_command(
    out: Path = typer.Option(
        ...,
        "--out",
        *DATA_OPTIONS,
        envvar=DATA_ENV,
        help="Data directory of the store to create or extend.",
    ),
    agents: int = typer.Option(7, "--agents", min=1, max=10_000, help="Number of agents."),
    days: int = typer.Option(3, "--days", min=1, max=3650, help="Days of traffic."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same store."),
    calls: int | None = typer.Option(
        None, "--calls", min=1, max=200_000_000, help="Approximate number of ordinary calls."
    ),
    policy: Path = typer.Option(
        DEMO_POLICY,
        "--policy",
        help="Policy that decides the calls.",
        show_default="the shipped demo.yaml",
    ),
    start: str | None = typer.Option(
        None,
        "--start",
        help="First day, UTC (YYYY-MM-DD).",
        show_default="today - days + 1, so the data ends today",
    ),
) -> None:
    """Generate multi-agent MCP traffic with labeled runaway and exfiltration incidents."""
    console = Console(stderr=True)
    keep_files_private()
    try:
        first_day = (
            datetime.strptime(start, "%Y-%m-%d").replace(tzinfo=UTC)
            if start
            else default_start(days)
        )
    except ValueError:
        console.print(f"[red]--start must be a date like 2026-01-05, got {start!r}[/]")
        raise typer.Exit(2) from None
    cfg = GenerateConfig(
        out=out, agents=agents, days=days, seed=seed, calls=calls, policy=policy, start=first_day
    )
    with Progress(
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        tasks = {stage: progress.add_task(stage, total=1.0) for stage in _STAGES}

        def report(stage: str, fraction: float) -> None:
            progress.update(tasks[stage], completed=fraction)

        try:
            summary = generate(cfg, report)
        except PolicyInvalid as e:
            progress.stop()
            console.print(f"[red]policy {policy} is invalid:[/]\n{e}")
            raise typer.Exit(2) from None
    console.print(
        f"[green]wrote[/] {summary.rows} calls in {summary.sessions} sessions to {out} "
        f"({summary.incidents} incidents, {summary.hard_negatives} hard negatives; "
        f"labels: {summary.labels_path})"
    )
    decided = ", ".join(f"{k} {v}" for k, v in sorted(summary.decisions.items()))
    console.print(
        f"decisions: {decided}; {summary.replayed_decisions} replayed under contended limits"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(datasets_app, name="datasets")
