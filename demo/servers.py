"""Real MCP servers from PyPI, each in its own virtualenv under ``.test-venvs/``.

The demo and the proxy tests share these: third-party servers pin their own
dependencies (``mcp-run-python-code`` only starts with ``mcp<2``), so they never
go into the project's environment.
"""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENVS = REPO / ".test-venvs"

# name -> (pip requirements, console script)
REAL_SERVERS: dict[str, tuple[tuple[str, ...], str]] = {
    "mcp-server-time": (("mcp-server-time",), "mcp-server-time"),
    "mcp-run-python-code": (("mcp-run-python-code", "mcp<2"), "mcp-run-python-code"),
    "mcp-proxy": (("mcp-proxy",), "mcp-proxy"),
}


class ServerInstallFailed(RuntimeError):
    """pip could not install a server into its virtualenv."""


def ensure_server(name: str, timeout: float = 900) -> Path:
    """The console script of a real server, installing its virtualenv on first use."""
    requirements, script = REAL_SERVERS[name]
    home = VENVS / name
    exe = home / "bin" / script
    if exe.exists():
        return exe
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(home)
        subprocess.run(
            [str(home / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    except subprocess.CalledProcessError as e:
        tail = (e.stderr or b"").decode(errors="replace")[-2000:]
        raise ServerInstallFailed(f"cannot install {name} into {home}: {tail}") from None
    except (subprocess.SubprocessError, OSError) as e:
        raise ServerInstallFailed(f"cannot install {name} into {home}: {e}") from None
    if not exe.exists():
        raise ServerInstallFailed(f"{name} installed but {exe} is missing")
    return exe
