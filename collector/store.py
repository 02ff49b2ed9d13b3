"""The store writer: tool-call rows into Hive-partitioned Parquet plus a DuckDB view.

Layout under the data directory ``D``::

    D/tool_calls/date=YYYY-MM-DD/part-<uuid>.parquet   the rows (partitioned by start_time's UTC date)
    D/callward.duckdb                                  a view ``tool_calls`` over those files
    D/policies/<version>.json                          every policy version seen (see decode.py)
    D/audit/heads.json                                 the head of each partition's hash chain

What it promises:

- **No half file is ever visible.** Each Parquet file is written under a temp name that
  no reader's ``*.parquet`` glob matches (``.part-<uuid>.parquet.tmp``; DuckDB's glob does
  not skip dot files), fsync'ed, renamed into place and the directory fsync'ed. A crash leaves either the whole file or a stale temp file, removed at start.
- **(trace_id, span_id) is unique across the store.** :class:`StoreWriter` drops rows
  whose key is already stored (keys are read back from the Parquet files of each date
  partition it writes to), so OTLP retries and spool replays after a crash never
  duplicate.
- **The rows are tamper-evident.** Each row carries ``row_hash``, its link in its date
  partition's hash chain, and each file its place in the chain (:mod:`.chain`; checked by
  ``callward audit verify``). The head record is advanced only after the file is durable.
- **Readers are never locked out.** DuckDB allows one read-write process *or* many
  read-only ones per file, so the DuckDB file is opened only for the moment it takes to
  (re)create the view, then closed. The view holds the absolute path of ``D``, so
  ``duckdb D/callward.duckdb`` works from any directory.
- **The view never fails on an empty store.** Until the first Parquet file exists the view
  is an empty, typed ``SELECT``; it is switched to ``read_parquet`` once files exist.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from callward.collector.chain import ChainWriter
from callward.collector.dedupe import DEDUPE_HORIZON_S, DedupeIndex, raw_keys, start_micros
from callward.collector.durable import TEMP_PREFIX, TEMP_SUFFIX, atomic_write_bytes, fsync_dir
from callward.collector.view import LOCKED_EXIT, StoreLockedError, apply_view
from callward.record import (
    AUDIT_DIR,
    DUCKDB_FILE,
    PARQUET_DIR,
    PARTITION_COLUMN,
    POLICIES_DIR,
    STRING_COLUMNS,
    TABLE,
    TOOL_CALL_SCHEMA,
    data_files,
    data_files_glob,
    partition_dir,
    policy_files,
    policy_path,
    temp_files,
)

log = logging.getLogger("callward.collector.store")

_REQUIRED = ("start_time", "end_time", "trace_id", "span_id")
_DUCKDB_TYPES = {
    "start_time": "TIMESTAMPTZ",
    "end_time": "TIMESTAMPTZ",
    "duration_ms": "DOUBLE",
    "result_bytes": "BIGINT",
}
# Parquet row groups sized for analytic scans; zstd is small on disk and fast to read.
_COMPRESSION = "zstd"


def conform(table: pa.Table) -> pa.Table:
    """Validate ``table`` and cast it to TOOL_CALL_SCHEMA (column order, types, UTC).

    Missing optional columns are filled (``""`` for text, null for numbers; ``row_hash``
    too, which only :class:`StoreWriter` sets); unknown
    columns and rows without a time or a well-formed trace/span id raise ValueError,
    because they would break the one schema every reader relies on.
    """
    unknown = [n for n in table.column_names if n not in TOOL_CALL_SCHEMA.names]
    if unknown:
        raise ValueError(f"columns not in the tool-call schema: {', '.join(sorted(unknown))}")
    missing_required = [n for n in _REQUIRED if n not in table.column_names]
    if missing_required:
        raise ValueError(f"required columns missing: {', '.join(missing_required)}")
    n = table.num_rows
    columns: list[pa.Array | pa.ChunkedArray] = []
    for field in TOOL_CALL_SCHEMA:
        if field.name in table.column_names:
            col = table.column(field.name)
            timestamp = pa.types.is_timestamp(field.type) and pa.types.is_timestamp(col.type)
            if timestamp and col.type.tz is None:  # naive timestamps are taken as UTC
                col = pc.assume_timezone(col, "UTC")
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise ValueError(f"column {field.name}: cannot cast to {field.type}: {e}") from e
            if field.name in STRING_COLUMNS and col.null_count:
                col = pc.fill_null(col, "")
        elif field.name in STRING_COLUMNS:
            col = pa.array([""] * n, type=field.type)
        else:
            col = pa.nulls(n, type=field.type)
        if not field.nullable and col.null_count:
            raise ValueError(f"column {field.name}: {col.null_count} null value(s)")
        columns.append(col)
    out = pa.Table.from_arrays(columns, schema=TOOL_CALL_SCHEMA)
    for name, width in (("trace_id", 32), ("span_id", 16)):
        ok = pc.match_substring_regex(out.column(name), f"^[0-9a-f]{{{width}}}$")
        if not pc.all(ok).as_py():
            raise ValueError(f"column {name}: every value must be {width} lowercase hex digits")
    return out


def parquet_files(data_dir: Path) -> list[Path]:
    """Every visible Parquet file of the store, in a stable order (:func:`record.data_files`)."""
    return data_files(data_dir)


def _empty_view_sql() -> str:
    cols = []
    for field in TOOL_CALL_SCHEMA:
        sql_type = _DUCKDB_TYPES.get(field.name, "VARCHAR")
        cols.append(f"CAST(NULL AS {sql_type}) AS {_ident(field.name)}")
    cols.append(f"CAST(NULL AS DATE) AS {_ident(PARTITION_COLUMN)}")
    return "SELECT " + ", ".join(cols) + " WHERE false"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def view_sql(data_dir: Path) -> str:
    """The ``CREATE VIEW`` statement for ``data_dir`` in its current state."""
    root = Path(data_dir).resolve()
    if data_files(root):
        glob = data_files_glob(root)
        body = (
            f"SELECT * FROM read_parquet({_literal(glob)}, "
            "hive_partitioning = true, union_by_name = true)"
        )
    else:
        body = _empty_view_sql()
    return f"CREATE OR REPLACE VIEW {_ident(TABLE)} AS {body}"


def refresh_view(data_dir: Path, *, attempts: int = 5, wait_s: float = 0.1) -> None:
    """(Re)create the ``tool_calls`` view, holding the DuckDB file open only briefly.

    Raises StoreLockedError when another process keeps the file open (readers open it
    read-only, which excludes a writer); callers retry on their next flush.
    """
    apply_view(Path(data_dir) / DUCKDB_FILE, view_sql(data_dir), attempts=attempts, wait_s=wait_s)


def refresh_view_in_child(data_dir: Path) -> None:
    """:func:`refresh_view` in a short-lived child process that loads DuckDB and nothing
    else (``python -m callward.collector.view``). A long-running writer (the collector) needs
    DuckDB only for the moment it (re)creates the view, a few times in its life;
    importing DuckDB itself would keep about 45 MB in its memory for good."""
    import subprocess
    import sys

    path = Path(data_dir) / DUCKDB_FILE
    out = subprocess.run(
        [sys.executable, "-m", "callward.collector.view", str(path), view_sql(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode == LOCKED_EXIT:
        raise StoreLockedError(out.stderr.strip())
    if out.returncode != 0:
        raise RuntimeError(f"refreshing the tool_calls view failed: {out.stderr.strip()[-2000:]}")


def ensure_store(data_dir: Path, *, view_in_child: bool = False) -> Path:
    """Create the store layout under ``data_dir`` (idempotent), remove stale temp files from
    an interrupted write, and (re)create the view. Returns the resolved data directory."""
    root = Path(data_dir).resolve()
    (root / PARQUET_DIR).mkdir(parents=True, exist_ok=True)
    (root / POLICIES_DIR).mkdir(parents=True, exist_ok=True)
    (root / AUDIT_DIR).mkdir(parents=True, exist_ok=True)
    for stale in temp_files(root):
        stale.unlink(missing_ok=True)
    try:
        (refresh_view_in_child if view_in_child else refresh_view)(root)
    except StoreLockedError as e:
        log.warning("tool_calls view not refreshed (%s); will retry after the next write", e)
    return root


# A span can carry any document with its matching hash, so the folder is bounded: past
# this many documents new ones are refused (and logged), never the store's rows. A real
# deployment changes its policy a few times a day.
MAX_POLICY_DOCUMENTS = 1000


def save_policy(data_dir: Path, version: str, document: str) -> bool:
    """Keep a policy document as ``D/policies/<version>.json`` (written once, atomically).

    The version is a content hash, so an existing file already holds this document.
    Returns True when the file was created now; False when it existed, or when the folder
    is full (:data:`MAX_POLICY_DOCUMENTS`).
    """
    path = policy_path(data_dir, version)
    if path.exists():
        return False
    if len(policy_files(data_dir)) >= MAX_POLICY_DOCUMENTS:
        log.warning(
            "policy %s not kept: %s already holds %d documents",
            version,
            path.parent,
            MAX_POLICY_DOCUMENTS,
        )
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, document.encode("utf-8"))
    return True


def _write_partition(root: Path, date: str, table: pa.Table) -> Path:
    part_dir = partition_dir(root, date)
    new_dir = not part_dir.exists()
    part_dir.mkdir(parents=True, exist_ok=True)
    if new_dir:
        fsync_dir(part_dir.parent)
    final = part_dir / f"part-{uuid.uuid4().hex}.parquet"
    tmp = part_dir / f"{TEMP_PREFIX}{final.name}{TEMP_SUFFIX}"
    with open(tmp, "wb") as f:
        pq.write_table(table, f, compression=_COMPRESSION)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(part_dir)
    return final


class StoreWriter:
    """Appends conformed tool-call rows to the store, at most once per (trace_id, span_id).

    Dedupe is per date partition: a retried or replayed span has the same start time, so
    it falls in the same partition as its first copy. :class:`~callward.collector.dedupe.
    DedupeIndex` knows the keys of recent rows in memory and looks older ones up in the
    files, so memory follows the rate of traffic, not the length of the history.

    Not thread-safe: one writer per store (the collector's writer thread, or the generator).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        view_in_child: bool = False,
        dedupe_horizon_s: int = DEDUPE_HORIZON_S,
        clock: Callable[[], float] = time.time,
    ):
        self._view_in_child = view_in_child
        self.root = ensure_store(data_dir, view_in_child=view_in_child)
        self.dedupe = DedupeIndex(self.root, horizon_s=dedupe_horizon_s, clock=clock)
        self.chains = ChainWriter(self.root)
        self._view_stale = False
        self.rows_written = 0
        self.duplicates_dropped = 0
        self.files_written = 0

    @property
    def known_keys(self) -> int:
        """Keys held in memory now (of the rows within the dedupe horizon)."""
        return self.dedupe.known_keys

    def write(self, table: pa.Table) -> list[Path]:
        """Conform, de-duplicate and write ``table``; returns the Parquet files created."""
        table = conform(table)
        if table.num_rows == 0:
            return []
        had_files = self.files_written > 0 or bool(parquet_files(self.root))
        dates = pc.strftime(table.column("start_time"), format="%Y-%m-%d")
        written: list[Path] = []
        days = sorted(pc.unique(dates).to_pylist())
        for date in days:
            part = table if len(days) == 1 else table.filter(pc.equal(dates, date))
            keys = raw_keys(part)
            starts = start_micros(part)
            stored = self.dedupe.stored(date, keys, starts)
            spans = list(zip(keys, starts, strict=True))
            fresh_keys = set(spans)
            keep: list[bool] = []
            if len(fresh_keys) < len(keys) or any(stored):
                # Retries or replays among them: keep the first copy of each new span.
                fresh_keys = set()
                for key, known in zip(spans, stored, strict=True):
                    fresh = not known and key not in fresh_keys
                    keep.append(fresh)
                    if fresh:
                        fresh_keys.add(key)
            self.duplicates_dropped += len(keys) - len(fresh_keys)
            if not fresh_keys:
                continue
            if len(fresh_keys) < len(keys):
                mask = pa.array(keep, type=pa.bool_())
                part = part.filter(mask)
                keys = [k for k, kept in zip(keys, keep, strict=True) if kept]
                starts = [t for t, kept in zip(starts, keep, strict=True) if kept]
            sealed, link = self.chains.seal(date, part)
            path = _write_partition(self.root, date, sealed)
            written.append(path)
            # Only now, with the file durable, do its keys count as stored and its link
            # become the partition's head.
            self.dedupe.add(keys, starts)
            self.chains.advance(link, path.name)
            self.rows_written += part.num_rows
        self.files_written += len(written)
        if written and (not had_files or self._view_stale):
            self._try_refresh_view()
        return written

    def _try_refresh_view(self) -> None:
        try:
            (refresh_view_in_child if self._view_in_child else refresh_view)(self.root)
            self._view_stale = False
        except StoreLockedError as e:
            self._view_stale = True
            log.warning("tool_calls view not refreshed (%s); will retry", e)

    def close(self) -> None:
        if self._view_stale:
            self._try_refresh_view()


def write_tool_calls(data_dir: Path, table: pa.Table | Iterable[pa.RecordBatch]) -> None:
    """Write tool-call rows into the store at ``data_dir`` (creating it if needed).

    The batch entry point for other writers such as the dataset generator: validates and
    casts to TOOL_CALL_SCHEMA, drops rows whose (trace_id, span_id) is already stored,
    partitions by date, writes each file atomically and refreshes the ``tool_calls`` view.
    """
    if not isinstance(table, pa.Table):
        table = pa.Table.from_batches(list(table))
    writer = StoreWriter(data_dir)
    writer.write(table)
    writer.close()
