"""How a command is told which store to use: the same option names and the same
environment variable for every command that reads or writes one, so a user sets
``CALLWARD_DATA`` once for ``detect``, ``replay``, ``dashboard`` and ``datasets``."""

from __future__ import annotations

DATA_ENV = "CALLWARD_DATA"
# --data is the name the README uses; --data-dir is what the collector takes.
DATA_OPTIONS = ("--data", "--data-dir")
