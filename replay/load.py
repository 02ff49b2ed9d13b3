"""Read recorded tool calls and recorded policy versions from the store, for replay.

Replay reads the Parquet files of the store directly (Polars' parallel reader, the time
filter pushed into the scan) rather than opening ``callward.duckdb``: the collector may
hold that file open for writing, and its view only points at the same files. Only the
columns replay needs are kept; messages are fetched later, with DuckDB, for the few
example calls a report shows.

A file that cannot be read is named in the error; with ``skip_bad_files`` the rest is
read and the skipped files are listed in the result (and in every report).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from callward.enforcer.errors import PolicyInvalid
from callward.enforcer.policy import CompiledPolicy, compile_text, policy_version
from callward.record import (
    PARQUET_DIR,
    TOOL_CALL_SCHEMA,
    data_files,
    partition_date,
    policy_files,
    policy_name_problem,
)

# A recorded decision that a human changed or confirmed carries an attribute whose name
# starts with this prefix (``callward.approval.id``, ``callward.approval.granted`` …).
APPROVAL_ATTRIBUTE_PREFIX = "callward.approval"

CALL_COLUMNS = (
    "start_us",
    "end_us",
    "span_id",
    "call_id",
    "agent_id",
    "session_id",
    "grant",
    "server",
    "tool",
    "arguments",
    "decision",
    "rule",
    "policy_version",
    "outcome",
    "approval",
)


_CONNECTION: list[duckdb.DuckDBPyConnection] = []


def _duckdb() -> duckdb.DuckDBPyConnection:
    """A cursor on one in-memory DuckDB database per process (opening one costs ~0.1 s)."""
    if not _CONNECTION:
        _CONNECTION.append(duckdb.connect())
    return _CONNECTION[0].cursor()


class StoreError(Exception):
    """The store cannot be read as asked (missing directory, no files, a corrupt file)."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class LoadedCalls:
    """The recorded calls of a time range, one row per span (columns: ``CALL_COLUMNS``)."""

    frame: pl.DataFrame
    files_read: int
    skipped: tuple[SkippedFile, ...] = ()


@dataclass(frozen=True)
class RecordedPolicies:
    """Every policy version kept in ``D/policies``; files that fail to load are listed."""

    by_version: dict[str, CompiledPolicy] = field(default_factory=dict)
    invalid: tuple[SkippedFile, ...] = ()


def store_files(data_dir: Path) -> list[Path]:
    """The Parquet files of the store, in a stable order; raises StoreError when none."""
    if not data_dir.is_dir():
        raise StoreError(f"data directory {data_dir} does not exist")
    files = data_files(data_dir)
    if not files:
        raise StoreError(f"no recorded tool calls in {data_dir} (no {PARQUET_DIR}/*/*.parquet)")
    return files


def _in_days(path: Path, since: datetime | None, until: datetime | None) -> bool:
    """Partition pruning: whether the file's date partition can hold calls of the range."""
    day = partition_date(path)
    if day is None:
        return True
    if since is not None and day < since.strftime("%Y-%m-%d"):
        return False
    return not (until is not None and day > until.strftime("%Y-%m-%d"))


# Columns read with the Parquet dictionary kept (as Categorical): few distinct texts for
# many calls. Each distinct text is decoded once, and its code names it exactly, so replay
# numbers call signatures from codes instead of hashing and comparing texts.
DICTIONARY_COLUMNS = (
    "server",
    "tool",
    "arguments",
    "decision",
    "rule",
    "policy_version",
    "outcome",
)


def _scan(
    files: Sequence[Path],
    since: datetime | None,
    until: datetime | None,
    *,
    with_dictionary_columns: bool = True,
    row_index: str | None = None,
) -> pl.LazyFrame:
    """The calls of ``files`` in the range, with the columns replay needs (without
    ``DICTIONARY_COLUMNS`` unless asked; then they are read as strings).

    Polars reads the files in parallel and pushes the time filter into the scan; the
    ``attributes`` text is only searched for the approval marker, never kept.
    """
    lf = pl.scan_parquet(
        list(files),
        hive_partitioning=False,
        missing_columns="insert",
        extra_columns="ignore",
        schema=_SCAN_SCHEMA,
        row_index_name=row_index,  # positions in the files, before any filter
    )
    if since is not None:
        lf = lf.filter(pl.col("start_time") >= since)
    if until is not None:
        lf = lf.filter(pl.col("start_time") < until)
    dictionary = [pl.col(c) for c in DICTIONARY_COLUMNS] if with_dictionary_columns else []
    return _finish(
        lf.select(
            *([] if row_index is None else [pl.col(row_index)]),
            pl.col("start_time").dt.epoch("us").alias("start_us"),
            pl.col("end_time").dt.epoch("us").alias("end_us"),
            *(pl.col(c).fill_null("") for c in ("span_id", "call_id", "agent_id", "session_id")),
            pl.col("grant").fill_null(""),
            *dictionary,
            pl.col("attributes")
            .str.contains(f'"{APPROVAL_ATTRIBUTE_PREFIX}', literal=True)
            .fill_null(False)
            .alias("approval"),
        ),
        dict.fromkeys(DICTIONARY_COLUMNS, pl.String()) if with_dictionary_columns else {},
    )


def _finish(lf: pl.LazyFrame, types: dict[str, pl.DataType]) -> pl.LazyFrame:
    """Nulls of the dictionary columns as the empty text (arguments: ``{}``); ``types``
    says which of them are Categorical and which strings."""
    if not types:
        return lf

    def text(value: str, column: str) -> pl.Expr:
        return pl.lit(value).cast(types[column])

    arguments = pl.col("arguments").fill_null(text("", "arguments"))
    return lf.with_columns(
        *(pl.col(c).fill_null(text("", c)) for c in DICTIONARY_COLUMNS if c != "arguments"),
        pl.when(arguments == "")
        .then(text("{}", "arguments"))
        .otherwise(arguments)
        .alias("arguments"),
    )


# A column whose dictionaries hold more entries than this and than half its rows is
# mostly distinct texts (call ids inside arguments …): a Categorical would cost more to
# build than it saves, so it is read as strings.
_MANY_ENTRIES = 1 << 16


def _read_dictionaries(files: Sequence[Path]) -> pl.DataFrame:
    """``start_us`` and ``DICTIONARY_COLUMNS`` of every row of ``files``, in file order
    (pyarrow reads a list of files in its order), with the files' dictionaries kept:
    pyarrow can, where Polars' reader decodes every value into a string of its own."""
    schema = TOOL_CALL_SCHEMA
    for name in DICTIONARY_COLUMNS:
        at = schema.get_field_index(name)
        schema = schema.set(at, pa.field(name, pa.dictionary(pa.int32(), pa.string())))
    options = ds.ParquetReadOptions(dictionary_columns=set(DICTIONARY_COLUMNS))
    dataset = ds.dataset(
        [str(p) for p in files], schema=schema, format=ds.ParquetFileFormat(read_options=options)
    )
    table = dataset.to_table(columns=["start_time", *DICTIONARY_COLUMNS])
    for name in DICTIONARY_COLUMNS:
        column = table.column(name)
        # The batches of one row group share its dictionary: count each dictionary once.
        sizes = {
            tuple(0 if b is None else b.address for b in chunk.dictionary.buffers()): len(
                chunk.dictionary
            )
            for chunk in column.chunks
        }
        entries = sum(sizes.values())
        if entries > _MANY_ENTRIES and entries * 2 > table.num_rows:
            at = table.schema.get_field_index(name)
            table = table.set_column(at, name, column.cast(pa.string()))
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    del table
    lf = frame.lazy().select(
        pl.col("start_time").dt.epoch("us").alias("start_us"), *DICTIONARY_COLUMNS
    )
    types = {c: frame.schema[c] for c in DICTIONARY_COLUMNS}
    return _finish(lf, types).collect().rechunk()


_SCAN_SCHEMA = pl.DataFrame(TOOL_CALL_SCHEMA.empty_table()).schema


def _read(files: Sequence[Path], since: datetime | None, until: datetime | None) -> pl.DataFrame:
    """Polars reads the calls, pyarrow their dictionary columns; the two are lined up by
    the rows' positions in the files (and checked on their start times). Should pyarrow
    fail on a file Polars reads, or the check fail, Polars reads those columns too, as
    strings (the same texts; replay hashes them instead of reading their codes)."""
    try:  # first: its buffers are freed before the bulk of the calls is read
        dictionaries: pl.DataFrame | None = _read_dictionaries(files)
    except (pa.ArrowException, OSError, ValueError, pl.exceptions.PolarsError):
        dictionaries = None
    pa.default_memory_pool().release_unused()
    if dictionaries is not None:
        lf = _scan(files, since, until, with_dictionary_columns=False, row_index="__pos")
        frame = lf.collect()
        at = frame.drop_in_place("__pos")
        if at.len() and int(at.max()) >= dictionaries.height:  # type: ignore[arg-type]
            dictionaries = None
        else:
            if not (since is None and until is None and at.len() == dictionaries.height):
                dictionaries = dictionaries[at]  # the rows the time filter kept
            if dictionaries.get_column("start_us").equals(frame.get_column("start_us")):
                return frame.hstack(dictionaries.drop("start_us"))
    return _scan(files, since, until).collect()


def _probe(files: Sequence[Path]) -> list[SkippedFile]:
    """Read each file on its own to find the ones that cannot be read."""
    bad = []
    for p in files:
        try:
            pq.read_metadata(p)
            _scan([p], None, None).collect()
        except Exception as e:  # any failure to read a file makes it a bad file
            bad.append(SkippedFile(str(p), _first_line(e)))
    return bad


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _files_with_untimed_calls(files: list[Path]) -> list[str]:
    found = []
    for f in files:
        try:
            nulls = pl.scan_parquet(f).select(pl.col("start_time").null_count()).collect().item()
        except (pl.exceptions.PolarsError, OSError):
            continue
        if nulls:
            found.append(str(f))
    return found


def load_calls(
    data_dir: Path,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    skip_bad_files: bool = False,
) -> LoadedCalls:
    """The calls with ``since <= start_time < until`` (UTC); raises StoreError."""
    files = [p for p in store_files(data_dir) if _in_days(p, since, until)]
    skipped: list[SkippedFile] = []
    if not files:
        return LoadedCalls(_empty(), 0)
    try:
        frame = _read(files, since, until)
    except (pl.exceptions.PolarsError, OSError) as e:
        bad = _probe(files)
        if not bad:
            raise StoreError(f"cannot read the store: {_first_line(e)}") from None
        if not skip_bad_files:
            names = "; ".join(f"{b.path}: {b.reason}" for b in bad)
            raise StoreError(
                f"corrupt or unreadable Parquet file(s): {names} "
                "(use --skip-bad-files to read the rest)"
            ) from None
        skipped = bad
        bad_paths = {b.path for b in bad}
        files = [p for p in files if str(p) not in bad_paths]
        if not files:
            return LoadedCalls(_empty(), 0, tuple(skipped))
        frame = _read(files, since, until)
    # One chunk per column, now while little else is in memory: replay adds its result
    # columns as single chunks, and Polars would otherwise copy every column of the frame
    # to align chunks at the first query over the combined frame.
    # Column by column, so that only one column is ever held twice.
    frame = frame.select(CALL_COLUMNS)
    untimed = frame.get_column("start_us").null_count()
    if untimed:
        # The collector never writes such a row (its schema says not null): a call with
        # no time has no place in the time order the limits are replayed in.
        where = _files_with_untimed_calls(files)
        if not skip_bad_files:
            raise StoreError(
                f"{untimed} call(s) without a start_time in {', '.join(where) or 'the store'} "
                "(use --skip-bad-files to leave them out)"
            )
        skipped += [SkippedFile(w, "calls without a start_time left out") for w in where]
        frame = frame.filter(pl.col("start_us").is_not_null())
    single = pl.DataFrame([frame.drop_in_place(c).rechunk() for c in CALL_COLUMNS])
    return LoadedCalls(single, len(files), tuple(skipped))


def _empty() -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {c: pl.String() for c in CALL_COLUMNS}
    schema.update(start_us=pl.Int64(), end_us=pl.Int64(), approval=pl.Boolean())
    schema.update(dict.fromkeys(DICTIONARY_COLUMNS, pl.Categorical()))
    return pl.DataFrame(schema=schema)


def fetch_messages(data_dir: Path, span_ids: Sequence[str]) -> dict[str, str]:
    """The recorded message of a few calls, by span id (for the report's examples)."""
    if not span_ids:
        return {}
    try:
        files = store_files(data_dir)
    except StoreError:
        return {}
    listing = "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in files) + "]"
    try:
        with _duckdb() as con:
            rows = con.execute(
                f"SELECT span_id, coalesce(message, '') FROM read_parquet({listing}, "
                "union_by_name = true) WHERE span_id IN (SELECT unnest(?))",
                [list(span_ids)],
            ).fetchall()
    except duckdb.Error:
        return {}  # examples lose their recorded message, the replay result stands
    return {str(s): str(m) for s, m in rows}


def load_recorded_policies(data_dir: Path) -> RecordedPolicies:
    """Compile every ``D/policies/<version>.json`` whose content hashes to its name."""
    found: dict[str, CompiledPolicy] = {}
    invalid: list[SkippedFile] = []
    for path in policy_files(data_dir):
        try:
            text = path.read_text(encoding="utf-8")
            policy = compile_text(text, str(path))
        except PolicyInvalid as e:
            invalid.append(SkippedFile(str(path), e.report().splitlines()[0]))
            continue
        except (OSError, UnicodeDecodeError) as e:
            invalid.append(SkippedFile(str(path), _first_line(e)))
            continue
        version = policy_version(json.loads(policy.canonical))
        problem = policy_name_problem(path, version)
        if problem is not None:
            invalid.append(SkippedFile(str(path), problem))
            continue
        found[version] = policy
    return RecordedPolicies(found, tuple(invalid))


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (``2026-05-01``, ``2026-05-01T12:00``, with or without offset) in UTC."""
    value = text.strip()
    if len(value) > 40:
        raise ValueError("a time is at most 40 characters")
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    t = datetime.fromisoformat(value)
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
