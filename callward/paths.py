"""How a command is told which store to use: the same option names and the same
environment variable for every command that reads or writes one, so a user sets
``CALLWARD_DATA`` once for ``detect``, ``replay``, ``dashboard`` and ``datasets``."""

from __future__ import annotations

import os

DATA_ENV = "CALLWARD_DATA"
# --data is the name the README uses; --data-dir is what the collector takes.
DATA_OPTIONS = ("--data", "--data-dir")

# What callward keeps on disk (spans, arguments, decisions) is its user's alone.
PRIVATE_UMASK = 0o077


def keep_files_private() -> None:
    """Create every later file 0600 and folder 0700, whatever umask the process was
    started with. Called by the commands that write a store or a spool (not by the
    proxy, whose upstream server inherits the umask and owns its own files)."""
    os.umask(os.umask(PRIVATE_UMASK) | PRIVATE_UMASK)
