"""The tool-call record's schema and the store's names, re-exported from
:mod:`callward.record`, their one home (kept so existing imports keep working)."""

from __future__ import annotations

from callward.record import (
    COLUMNS,
    DECISIONS,
    DUCKDB_FILE,
    OUTCOMES,
    PARQUET_DIR,
    PARTITION_COLUMN,
    POLICIES_DIR,
    STRING_COLUMNS,
    TABLE,
    TOOL_CALL_SCHEMA,
)

__all__ = [
    "COLUMNS",
    "DECISIONS",
    "DUCKDB_FILE",
    "OUTCOMES",
    "PARQUET_DIR",
    "PARTITION_COLUMN",
    "POLICIES_DIR",
    "STRING_COLUMNS",
    "TABLE",
    "TOOL_CALL_SCHEMA",
]
