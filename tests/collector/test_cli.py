"""`callward collector` refuses bad settings with a clear message and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--forward", "ftp://backend:4317"], "forward endpoint 'ftp://backend:4317'"),
        (["--forward", "not a url"], "forward endpoint 'not a url'"),
        (["--listen", "nowhere"], "listen"),
        (["--batch-size", "0"], "batch"),
    ],
)
def test_bad_settings_exit_2_with_a_message(tmp_path: Path, args: list[str], expected: str) -> None:
    cmd = [sys.executable, "-m", "callward.collector", "--data-dir", str(tmp_path / "d")]
    if "--listen" not in args:
        cmd += ["--listen", "127.0.0.1:0"]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=100, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert expected in output
    assert "Traceback" not in output
