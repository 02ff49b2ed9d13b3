"""Making files durable: fsync of data and of the directory entry, atomic replacement.

Shared by the spool and the store (and kept free of heavy imports: decode workers load
the spool module).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from callward.record import TEMP_PREFIX, TEMP_SUFFIX  # the store layout's temp names

__all__ = ["TEMP_PREFIX", "TEMP_SUFFIX", "atomic_write_bytes", "fsync_dir"]


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (POSIX needs the directory fsync'ed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old state or all of it, never part."""
    tmp = path.with_name(f"{TEMP_PREFIX}{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
