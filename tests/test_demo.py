"""`make demo` end to end, without the dashboard: the real pipeline on a temporary store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from callward.demo.agents import FAKE_AWS_KEY, FAKE_GITHUB_TOKEN, SCRIPTS
from tests.devtools import dev_only_modules, guard_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_pipeline(tmp_path: Path) -> None:
    """The demo as ``make demo`` runs it, in every process it starts refusing the packages
    only the dev extras install (``make demo`` installs the runtime dependencies only)."""
    data = tmp_path / "demo"
    blocked = dev_only_modules()
    assert {"pytest", "hypothesis", "playwright"} <= blocked
    guard = guard_dir(tmp_path / "guard", blocked)
    proc = subprocess.run(
        [sys.executable, "-m", "callward.demo", "--no-dashboard", "--data", str(data)],
        cwd=REPO,
        env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(guard)},
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    store = data / "store"
    con = duckdb.connect()
    rows = con.execute(
        "select agent_id, tool, decision, count(*) from read_parquet(?, hive_partitioning = true) "
        "where agent_id in ('report-bot', 'ci-loop-bot', 'support-bot', 'grpc-client') "
        "group by all",
        [str(store / "tool_calls" / "**" / "*.parquet")],
    ).fetchall()
    counts = {(a, t, d): n for a, t, d, n in rows}
    # The runaway loop: 24 runs, exactly 10 through in the minute, the rest rate-limited.
    assert counts[("ci-loop-bot", "run_python_file", "allow")] == 10
    assert counts[("ci-loop-bot", "run_python_file", "deny")] == 14
    # Every scripted call through the proxy is in the trail with its decision.
    scripted = sum(len(calls) for _, per in SCRIPTS.values() for calls in per.values())
    recorded = sum(n for (a, _, _), n in counts.items() if a != "grpc-client")
    assert recorded == scripted
    assert counts[("support-bot", "pip_install_package", "deny")] == 1
    assert counts[("grpc-client", "run_python_file", "deny")] == 2
    # The planted credentials never reach disk.
    for f in data.rglob("*"):
        if f.is_file():
            blob = f.read_bytes()
            assert FAKE_AWS_KEY.encode() not in blob, f
            assert FAKE_GITHUB_TOKEN.encode() not in blob, f
    # The replay report was written and the enforced policy was kept for replay.
    assert (data / "replay.html").read_text().lstrip().lower().startswith("<!doctype html")
    assert any((store / "policies").glob("*.json"))
    # Laid out for an 80-column terminal: a summary, the full list of findings in a file.
    wide = [line for line in proc.stdout.splitlines() if len(line) > 80]
    assert not wide, wide[:5]
    findings = json.loads((data / "findings.json").read_text())
    assert findings and str(data / "findings.json") in proc.stdout
    assert {f["pattern"] for f in findings} <= set(proc.stdout.split())
    assert "replayed all recorded calls" in proc.stdout
    assert (data / "replay.md").read_text().startswith("#")
