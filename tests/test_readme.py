"""The README's quick tour runs as written.

The commands are read from the README itself (every ``sh`` block under "A quick tour"),
never copied here, and run by bash in order in a scratch directory that sees the
checkout's files, with the project's virtualenv activated as the tour says. Under CI
that virtualenv is the one ``make test`` just built on a fresh clone, the way the
README says to build it.

A command that serves (collector, dashboard, proxy) runs until it proves it is up, then
is stopped by pid. Every other command must exit 0, except that ``replay`` may exit 1
when one of its ``--fail-on`` gates fails, which is what the tour says it does.
"""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.proxy.test_http import INIT  # the initialize a raw client sends

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


def tour_commands(text: str) -> list[str]:
    """Every shell command of the quick tour, continuation lines joined, comments kept
    out (a ``#`` after whitespace and outside quotes starts one, as in bash)."""
    section = text.split("\n## A quick tour", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                commands.append(shlex.join(words))
    return commands


def test_tour_is_read_from_the_readme() -> None:
    commands = tour_commands(README.read_text())
    assert commands[0] == "source .venv/bin/activate"
    assert any(c.startswith("callward replay ") and "--fail-on" in c for c in commands)
    assert len(commands) >= 8, commands


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(check: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _dashboard_healthy(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    return check


def _serve(command: str, env: dict[str, str], cwd: Path) -> str:
    """Start a serving command, see it up, stop it; return what went wrong, or ''."""
    words = shlex.split(command)
    proxy = words[1] == "proxy"
    proc = subprocess.Popen(
        ["bash", "-c", f"source .venv/bin/activate && exec {command}"],
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if proxy else subprocess.DEVNULL,
        stdout=subprocess.PIPE if proxy else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        if proxy:
            # The proxy serves one MCP client on stdio: answer its initialize.
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(INIT).encode() + b"\n")
            proc.stdin.flush()
            ready, _, _ = select.select([proc.stdout], [], [], 300)  # uvx may download
            line = proc.stdout.readline() if ready else b""
            answer = json.loads(line) if line.strip() else {}
            if "serverInfo" not in answer.get("result", {}):
                return f"no initialize result: {line[:500]!r}"
            return ""
        if words[1] == "collector":
            port = int(words[words.index("--listen") + 1].rsplit(":", 1)[1])
            return "" if _wait(lambda: _port_open(port), proc, 120) else "never listened"
        if words[1] == "dashboard":
            port = int(words[words.index("--port") + 1]) if "--port" in words else 8501
            return "" if _wait(_dashboard_healthy(port), proc, 120) else "never healthy"
        return f"no way to see {words[1]!r} up"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode not in (0, -signal.SIGTERM, 128 + signal.SIGTERM) and err:
            print(err[-2000:])


SERVING = ("callward collector", "callward dashboard", "callward proxy")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_quick_tour_runs_as_written(tmp_path: Path) -> None:
    if not (REPO / ".venv" / "bin" / "activate").exists():
        pytest.skip("the tour runs in the project's virtualenv (make test builds it)")
    # The tour's relative paths (examples/, tests/, .venv) resolve as in the checkout;
    # what it writes (tour/) lands here.
    for entry in REPO.iterdir():
        if entry.name not in ("tour", ".git"):
            (tmp_path / entry.name).symlink_to(entry)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLWARD_")}
    failures: list[str] = []
    for command in tour_commands(README.read_text()):
        if command == "source .venv/bin/activate":
            continue
        if command.startswith(SERVING):
            problem = _serve(command, env, tmp_path)
            if problem:
                failures.append(f"{command}: {problem}")
            continue
        done = subprocess.run(
            ["bash", "-c", f"set -o pipefail; source .venv/bin/activate && {command}"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        allowed = (
            (0, 1) if command.startswith("callward replay ") and "--fail-on" in command else (0,)
        )
        if done.returncode not in allowed:
            failures.append(f"{command}: exit {done.returncode}\n{done.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert any((tmp_path / "tour").rglob("*.parquet")), "the tour wrote no store"
