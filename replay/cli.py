"""``callward replay``: what a candidate policy would have changed on recorded traffic.

Exit codes: 0 the gates pass (or there are none), 1 a ``--fail-on`` gate fails, 2 a usage or
input error (invalid policy, missing store, corrupt file, unreadable gate or time).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import polars as pl
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import CompiledPolicy, load_policy
from callward.paths import DATA_ENV, DATA_OPTIONS
from callward.replay.compare import Comparison, ReplayRequest, compare
from callward.replay.evaluate import Progress as ProgressFn
from callward.replay.gates import Gate, GateError, evaluate_gates, parse_gate
from callward.replay.load import StoreError, parse_time
from callward.replay.render import FORMATS, render
from callward.replay.report import build_report

EXIT_OK, EXIT_GATE_FAILED, EXIT_USAGE = 0, 1, 2
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _policy(path: Path, what: str) -> CompiledPolicy:
    try:
        return load_policy(path)
    except PolicyInvalid as e:
        err.print(f"error: the {what} policy is invalid:", markup=False)
        err.print(e.report(), markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    except RecursionError:  # the policy loader recurses into the document
        err.print(f"error: the {what} policy {path} is nested too deeply to read", markup=False)
        raise typer.Exit(EXIT_USAGE) from None


def _time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_time(text)
    except ValueError:
        err.print(f"error: {option} {text!r} is not an ISO 8601 time (e.g. 2026-05-01T12:00Z)")
        raise typer.Exit(EXIT_USAGE) from None


@contextmanager
def _progress_bar() -> Iterator[ProgressFn]:
    """A Rich progress bar on stderr when it is a terminal; silent otherwise."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, fraction: float) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=1.0)
        bar.update(tasks[stage], completed=fraction)

    with bar:
        yield update


def write_decisions(c: Comparison, path: Path) -> None:
    """One row per reported call: recorded and replayed decision and rule."""
    frame = c.calls.select(
        "span_id",
        "call_id",
        pl.from_epoch(pl.col("start_us"), time_unit="us")
        .dt.replace_time_zone("UTC")
        .alias("start_time"),
        "agent_id",
        "session_id",
        # Strings in the file, whatever the columns are in memory (Categorical).
        pl.col("server").cast(pl.String),
        pl.col("tool").cast(pl.String),
        pl.col("decision").cast(pl.String).alias("recorded_decision"),
        pl.col("rule").cast(pl.String).alias("recorded_rule"),
        pl.col("b_decision").cast(pl.String).alias("baseline_decision"),
        pl.col("b_rule").cast(pl.String).alias("baseline_rule"),
        pl.col("r_decision").cast(pl.String).alias("replayed_decision"),
        pl.col("r_rule").cast(pl.String).alias("replayed_rule"),
        pl.col("unknown_reason").cast(pl.String),
    ).sort("start_time", "span_id")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)


def replay_command(
    data: Path = typer.Option(
        ..., *DATA_OPTIONS, envvar=DATA_ENV, help="Data directory of the store."
    ),
    policy: Path = typer.Option(..., "--policy", help="Candidate policy (JSON or YAML)."),
    baseline: Path | None = typer.Option(
        None, "--baseline", help="Policy to compare with (default: the recorded decisions)."
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        help="First call time (ISO 8601, UTC).",
        show_default="the first recorded call",
    ),
    until: str | None = typer.Option(
        None,
        "--until",
        help="Calls before this time only.",
        show_default="after the last recorded call",
    ),
    agent: str | None = typer.Option(None, "--agent", help="Report only this agent's calls."),
    tool: str | None = typer.Option(None, "--tool", help="Report only calls of this tool."),
    fmt: str = typer.Option("text", "--format", help="text, markdown, json or html."),
    out: Path | None = typer.Option(
        None, "--out", help="Write the report to this file.", show_default="standard output"
    ),
    decisions_out: Path | None = typer.Option(
        None, "--decisions-out", help="Write one row per call to this Parquet file."
    ),
    fail_on: list[str] | None = typer.Option(
        None, "--fail-on", help="Gate like 'newly_denied>1%' or 'deny->allow>0' (repeatable)."
    ),
    skip_bad_files: bool = typer.Option(
        False, "--skip-bad-files", help="Skip unreadable Parquet files (they are listed)."
    ),
) -> None:
    """Re-evaluate recorded calls under a candidate policy and report what would change."""
    if fmt not in FORMATS:
        err.print(f"error: --format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        raise typer.Exit(EXIT_USAGE)
    gates: list[Gate] = []
    for text in fail_on or []:
        try:
            gates.append(parse_gate(text))
        except GateError as e:
            err.print(f"error: {e}", markup=False)
            raise typer.Exit(EXIT_USAGE) from None
    t_since, t_until = _time(since, "--since"), _time(until, "--until")
    if t_since and t_until and t_since >= t_until:
        err.print("error: --since must be before --until")
        raise typer.Exit(EXIT_USAGE)
    candidate = _policy(policy, "candidate")
    base = _policy(baseline, "baseline") if baseline is not None else None
    request = ReplayRequest(
        data_dir=data,
        candidate=candidate,
        baseline=base,
        since=t_since,
        until=t_until,
        agent=agent,
        tool=tool,
        skip_bad_files=skip_bad_files,
    )
    try:
        with _progress_bar() as progress:
            comparison = compare(request, progress)
    except StoreError as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(EXIT_USAGE) from None
    report = build_report(comparison)
    report["gates"] = evaluate_gates(gates, report)
    for s in comparison.skipped_files:
        err.print(f"warning: skipped unreadable file {s.path}: {s.reason}", markup=False)
    if report["message"]:
        err.print(f"note: {report['message']}", markup=False)
    text = render(report, fmt)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
    else:
        typer.echo(text, nl=False)
    if decisions_out is not None:
        write_decisions(comparison, decisions_out)
    failed = [g for g in report["gates"] if g["failed"]]
    for g in failed:
        err.print(f"gate failed: {g['rule']} (value {g['value']})", markup=False)
    raise typer.Exit(EXIT_GATE_FAILED if failed else EXIT_OK)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay_command)


__all__ = ["register", "replay_command", "write_decisions"]
