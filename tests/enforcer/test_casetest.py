"""Golden policy cases (data, not code) and the `callward policy test` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from callward.cli import app
from callward.enforcer.casetest import run_case
from callward.enforcer.policy import load_policy

CASES = Path(__file__).parent / "cases"
runner = CliRunner()


def _case_params() -> list:
    params = []
    for f in sorted(CASES.glob("*.yaml")):
        doc = yaml.safe_load(f.read_text())
        policy_path = (f.parent / doc["policy"]).resolve()
        for i, case in enumerate(doc["cases"]):
            params.append(pytest.param(policy_path, case, id=f"{f.stem}-{i}"))
    return params


@pytest.mark.parametrize(("policy_path", "case"), _case_params())
def test_golden_case(policy_path: Path, case: dict) -> None:
    result = run_case(load_policy(policy_path), case)
    assert result.passed, f"{case['note']}: got {result.got}"


@pytest.mark.parametrize("cases_file", sorted(CASES.glob("*.yaml")), ids=lambda p: p.stem)
def test_policy_test_cli_passes(cases_file: Path) -> None:
    doc = yaml.safe_load(cases_file.read_text())
    policy = (cases_file.parent / doc["policy"]).resolve()
    result = runner.invoke(app, ["policy", "test", str(policy), str(cases_file)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"{len(doc['cases'])} passed, 0 failed"


def test_policy_test_cli_reports_failures(tmp_path: Path) -> None:
    seed = CASES / "seed.yaml"
    doc = yaml.safe_load(seed.read_text())
    doc["cases"][0]["decision"] = "deny"  # wrong on purpose
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    policy = (CASES / doc["policy"]).resolve()
    result = runner.invoke(app, ["policy", "test", str(policy), str(bad)])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert result.output.strip().splitlines()[-1] == f"{len(doc['cases']) - 1} passed, 1 failed"


def test_policy_test_cli_rejects_malformed_cases(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("cases: [{note: no request}]")
    policy = (CASES / "../../../examples/policies/seed.json").resolve()
    result = runner.invoke(app, ["policy", "test", str(policy), str(bad)])
    assert result.exit_code == 2
    assert "needs 'request'" in result.output


def test_policy_test_cli_rejects_invalid_policy(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text('{"version": "9"}')
    result = runner.invoke(app, ["policy", "test", str(p), str(CASES / "seed.yaml")])
    assert result.exit_code == 2
