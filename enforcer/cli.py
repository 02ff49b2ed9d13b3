"""``callward policy check|test`` and ``callward enforcer``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from callward.enforcer.casetest import CasesInvalid, load_cases, run_cases
from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import load_policy

policy_app = typer.Typer(help="Validate and test policies.", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@policy_app.command("check")
def check(files: list[Path] = typer.Argument(..., help="Policy files (JSON or YAML).")) -> None:
    """Report every problem of each policy as FILE:LINE:COL: code: message; exit 1 if any."""
    bad = 0
    for f in files:
        try:
            p = load_policy(f)
        except PolicyInvalid as e:
            bad += 1
            for error in e.errors:
                out.print(str(error), markup=False)
            continue
        out.print(f"{f}: ok ({p.version}, {len(p.tools)} tool rule(s))", markup=False)
    raise typer.Exit(1 if bad else 0)


@policy_app.command("test")
def test(
    policy_file: Path = typer.Argument(..., help="Policy file."),
    cases_file: Path = typer.Argument(..., help="YAML table of cases."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print passing cases too."),
) -> None:
    """Run table cases against a policy, like `opa test`; exit 1 on any failure."""
    try:
        policy = load_policy(policy_file)
    except PolicyInvalid as e:
        err.print(e.report(), markup=False)
        raise typer.Exit(2) from None
    try:
        cases = load_cases(cases_file)
        results = run_cases(policy, cases)
    except CasesInvalid as e:
        err.print(f"error: {e}", markup=False)
        raise typer.Exit(2) from None
    failed = 0
    for r in results:
        if not r.passed:
            failed += 1
            want = r.expected[0] + (f" {r.expected[1]}" if r.expected[1] else "")
            out.print(
                f"[red]FAIL[/red] {r.note}: want {want}, got {r.got.decision} {r.got.rule}"
                + (f" ({r.got.message})" if r.got.message else "")
            )
        elif verbose:
            out.print(f"[green]PASS[/green] {r.note}")
    passed = len(results) - failed
    out.print(f"{passed} passed, {failed} failed")
    raise typer.Exit(1 if failed else 0)


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")
    try:
        from callward.enforcer.server_cli import register as register_server
    except ModuleNotFoundError as e:
        if e.name != "callward.enforcer.server_cli":
            raise
    else:
        register_server(app)
