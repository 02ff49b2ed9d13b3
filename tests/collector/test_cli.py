"""`callward collector` refuses bad settings with a clear message and exit 2."""

from __future__ import annotations

import os
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
        (["--tokens", "/nonexistent/tokens.yaml"], "unreadable"),
        (["--tls-client-ca", "/nonexistent/ca.pem"], "--tls-client-ca needs --tls-cert"),
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


@pytest.mark.timeout(120)
def test_what_the_collector_writes_is_its_users_alone(tmp_path: Path) -> None:
    """Under a permissive umask the store, the spool and the view are 0600/0700."""
    import grpc

    from callward.collector.otlp_build import SpanSpec, build_request, callward_attributes
    from callward.collector.receiver import EXPORT_METHOD
    from tests.collector.test_crash import CollectorProcess

    data = tmp_path / "data"
    collector = CollectorProcess(data, entry=("-m", "callward", "collector"), decode_workers=0)
    old = os.umask(0o022)
    try:
        collector.start()
    finally:
        os.umask(old)
    specs = [SpanSpec(attributes=callward_attributes(i)) for i in range(5)]
    with grpc.insecure_channel(collector.address) as channel:
        channel.unary_unary(EXPORT_METHOD)(build_request(specs).SerializeToString(), timeout=30)
    assert collector.terminate() == 0
    written = [data, *data.rglob("*")]
    assert any(p.suffix == ".parquet" for p in written)
    exposed = [(str(p), oct(p.stat().st_mode & 0o777)) for p in written if p.stat().st_mode & 0o077]
    assert exposed == []
