"""Run a command while busy processes keep every core loaded: races show up under load.

    python -m tests.under_load [--hogs N] -- COMMAND ...

Starts N processes (default: one per core) that spin until the command ends, runs the
command, stops the spinners and exits with the command's status. ``make stress`` uses it
to run the timing-sensitive test files several times over (pytest-repeat).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    n = 0
    while not stop.is_set():
        for _ in range(100_000):
            n += 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hogs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    opts = ap.parse_args(argv)
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        ap.error("a command to run is required")
    stop = multiprocessing.Event()
    hogs = [
        multiprocessing.Process(target=_spin, args=(stop,), daemon=True) for _ in range(opts.hogs)
    ]
    for h in hogs:
        h.start()
    try:
        return subprocess.call(command)
    finally:
        stop.set()
        for h in hogs:
            h.join(5)
            if h.is_alive():
                h.kill()


if __name__ == "__main__":
    sys.exit(main())
