"""Writing the ``tool_calls`` view into the DuckDB file: the one step of the store that
needs DuckDB to write.

Kept apart from ``store.py`` (which imports pyarrow) so that ``python -m callward.collector.view
FILE SQL`` runs it in a child process that loads DuckDB and nothing else: the collector
uses that (``store.refresh_view_in_child``) rather than keep DuckDB in its own memory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

LOCKED_EXIT = 3  # exit status of ``python -m callward.collector.view`` when the file is locked


class StoreLockedError(RuntimeError):
    """The DuckDB file is held by another read-write process; the view was not refreshed."""


# The view file holds nothing but the view's SQL, so it is written in the oldest storage
# format that can hold it: any DuckDB CLI or client from 1.0 on opens it, whatever
# version of the Python package wrote it (a file in the newest format is refused by
# every older reader).
VIEW_STORAGE_VERSION = "v1.0.0"


def apply_view(path: Path, sql: str, *, attempts: int = 5, wait_s: float = 0.1) -> None:
    """Run the ``CREATE VIEW`` statement ``sql`` in the DuckDB file ``path``, holding the
    file open only briefly. Raises StoreLockedError when another process keeps it open
    (readers open it read-only, which excludes a writer); callers retry later."""
    import duckdb  # here: importing this module must not load DuckDB

    last: Exception | None = None
    for attempt in range(attempts):
        try:
            con = duckdb.connect(
                str(path), config={"storage_compatibility_version": VIEW_STORAGE_VERSION}
            )
        except duckdb.IOException as e:  # lock held by another process
            last = e
            time.sleep(wait_s * (attempt + 1))
            continue
        try:
            con.execute(sql)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        return
    raise StoreLockedError(f"could not open {path} read-write: {last}")


if __name__ == "__main__":
    try:
        apply_view(Path(sys.argv[1]), sys.argv[2])
    except StoreLockedError as e:
        print(e, file=sys.stderr)
        sys.exit(LOCKED_EXIT)
