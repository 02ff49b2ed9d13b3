"""The tool-call record and the store layout: the contract between the one writer and
every reader of a data directory.

The collector writes the store; the dataset generator writes stores of the same shape;
the detectors, replay and the dashboard read it. They all take the schema, the paths and
the file listing from here (docs/schema.md documents the columns). Layout under a data
directory ``D``::

    D/tool_calls/date=YYYY-MM-DD/part-<uuid>.parquet   the rows, by start_time's UTC date
    D/callward.duckdb                                  a view ``tool_calls`` over those files
    D/policies/<version>.json                          every policy version seen
    D/audit/heads.json                                 the last link of each partition's hash chain

A file whose name starts with a dot is never a store file: writers write under a temp
name (``.<name>.<random>.tmp``) and rename it into place, so a reader that goes through
:func:`data_files` / :data:`DATA_FILES_GLOB` or :func:`policy_files` sees a whole file or
none. The listing follows symlinks as the file system does (an operator may link a
partition in); the collector itself never writes one.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa

TABLE = "tool_calls"
DUCKDB_FILE = "callward.duckdb"
PARQUET_DIR = "tool_calls"
POLICIES_DIR = "policies"
AUDIT_DIR = "audit"
HEADS_FILE = "heads.json"
PARTITION_COLUMN = "date"
ROW_HASH = "row_hash"
"""The column holding each row's link in its partition's hash chain (docs/audit.md)."""

DECISIONS = ("allow", "deny", "require_approval")
OUTCOMES = ("ok", "error")

TOOL_CALL_SCHEMA = pa.schema(
    [
        pa.field("start_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("end_time", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("trace_id", pa.string(), nullable=False),  # 32 lowercase hex
        pa.field("span_id", pa.string(), nullable=False),  # 16 lowercase hex
        pa.field("parent_span_id", pa.string()),  # "" for a root span
        pa.field("call_id", pa.string()),  # gen_ai.tool.call.id
        pa.field("agent_id", pa.string()),  # gen_ai.agent.id
        pa.field("session_id", pa.string()),  # gen_ai.conversation.id
        pa.field("grant", pa.string()),  # callward.grant
        pa.field("server", pa.string()),  # callward.server
        pa.field("tool", pa.string()),  # gen_ai.tool.name
        pa.field("arguments", pa.string()),  # JSON text, redacted
        pa.field("decision", pa.string()),  # allow | deny | require_approval | "" (no decision)
        pa.field("rule", pa.string()),  # JSON pointer into the policy
        pa.field("message", pa.string()),
        pa.field("policy_version", pa.string()),
        pa.field("outcome", pa.string()),  # ok | error | "" (not executed / unknown)
        pa.field("error_type", pa.string()),
        pa.field("duration_ms", pa.float64()),
        pa.field("result_bytes", pa.int64()),
        pa.field("service_name", pa.string()),
        pa.field("attributes", pa.string()),  # JSON object of every other attribute
        # SHA-256 of the previous row's hash and this row's other columns, 64 lowercase
        # hex; set by the store writer alone, null in files written before the chain
        pa.field(ROW_HASH, pa.string()),
    ]
)

COLUMNS = tuple(TOOL_CALL_SCHEMA.names)
RECORD_COLUMNS = tuple(n for n in COLUMNS if n != ROW_HASH)
"""The columns a producer supplies (all but :data:`ROW_HASH`), in schema order: the ones
each row's hash covers."""
STRING_COLUMNS = tuple(f.name for f in TOOL_CALL_SCHEMA if pa.types.is_string(f.type))

# Temp files start with a dot and end in .tmp: no listing below (nor its glob) sees them.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"
DATA_SUFFIX = ".parquet"
POLICY_SUFFIX = ".json"

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PARTITION = re.compile(rf"{PARTITION_COLUMN}=({_DATE.pattern})")

DATA_FILES_GLOB = f"*/[!{TEMP_PREFIX}]*{DATA_SUFFIX}"
"""The :func:`data_files` listing as a glob relative to ``D/tool_calls``, for DuckDB's
``read_parquet`` (whose glob does not skip dot files by itself)."""


def parquet_root(data_dir: Path | str) -> Path:
    """``D/tool_calls``: the folder of the date partitions."""
    return Path(data_dir) / PARQUET_DIR


def partition_dir(data_dir: Path | str, date: str) -> Path:
    """``D/tool_calls/date=<date>``; ``date`` must be ``YYYY-MM-DD`` (no path can escape)."""
    if not _DATE.fullmatch(date):
        raise ValueError(f"not a partition date: {date!r}")
    return parquet_root(data_dir) / f"{PARTITION_COLUMN}={date}"


def partition_date(path: Path) -> str | None:
    """The ``YYYY-MM-DD`` of the partition holding data file ``path``; None if it has none."""
    m = _PARTITION.fullmatch(path.parent.name)
    return m.group(1) if m else None


def data_files_glob(data_dir: Path | str) -> str:
    """The absolute glob of every data file of ``data_dir`` (the same set as :func:`data_files`)."""
    return str(parquet_root(Path(data_dir).resolve()) / DATA_FILES_GLOB)


def _visible(path: Path, suffix: str) -> bool:
    return path.name.endswith(suffix) and not path.name.startswith(TEMP_PREFIX)


def partition_files(folder: Path) -> list[Path]:
    """The data files of one partition folder, in name order (temp files skipped)."""
    return sorted(p for p in folder.glob(f"*{DATA_SUFFIX}") if _visible(p, DATA_SUFFIX))


def data_files(data_dir: Path | str) -> list[Path]:
    """Every data file of the store, in a stable order: ``D/tool_calls/*/*.parquet``
    without dot-named (temp) files. Every reader of the rows lists them here."""
    root = parquet_root(data_dir)
    return sorted(p for p in root.glob(f"*/*{DATA_SUFFIX}") if _visible(p, DATA_SUFFIX))


def policy_path(data_dir: Path | str, version: str) -> Path:
    """``D/policies/<version>.json``; a version that is not a plain file name raises."""
    if not version or "/" in version or "\\" in version or version.startswith(TEMP_PREFIX):
        raise ValueError(f"not a policy version: {version!r}")
    return Path(data_dir) / POLICIES_DIR / f"{version}{POLICY_SUFFIX}"


def policy_name_problem(path: Path, version: str) -> str | None:
    """Why policy file ``path`` may not be read as the document of ``version`` (the hash
    of its content), or None when its name is that version: ``sha256:<hex>.json``, or
    ``sha256-<hex>.json`` where a file system has no colons. Documents are content-addressed,
    so every reader refuses a file whose content hashes to another name."""
    if path.stem in (version, version.replace(":", "-")):
        return None
    return f"content hashes to {version}, not to the file name {path.name}: refused"


def policy_files(data_dir: Path | str) -> list[Path]:
    """Every kept policy document, ``D/policies/*.json`` without temp files, in name order."""
    root = Path(data_dir) / POLICIES_DIR
    return sorted(p for p in root.glob(f"*{POLICY_SUFFIX}") if _visible(p, POLICY_SUFFIX))


def heads_path(data_dir: Path | str) -> Path:
    """``D/audit/heads.json``: the head record of the hash chains (docs/audit.md)."""
    return Path(data_dir) / AUDIT_DIR / HEADS_FILE


def temp_files(data_dir: Path | str) -> list[Path]:
    """Temp files a crashed writer left in the partitions, the policy and the audit folder."""
    pattern = f"{TEMP_PREFIX}*{TEMP_SUFFIX}"
    root = Path(data_dir)
    return sorted(
        [
            *parquet_root(root).glob(f"*/{pattern}"),
            *(root / POLICIES_DIR).glob(pattern),
            *(root / AUDIT_DIR).glob(pattern),
        ]
    )
